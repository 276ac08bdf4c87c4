"""Graded exercises: checks a teacher writes, run against a running lab, with hints.

::

    from stdpkt_lab import check as ck

    report = ck.run(lab, [
        ck.reachable("client", "server", hint="is the NAT masquerading toward fw?"),
        ck.port_open("client", "server", 80, hint="the firewall must allow tcp/80"),
        ck.port_closed("client", "server", 22, hint="only tcp/80 and icmp may pass"),
        ck.route("r1", "10.0.3.0/24", via="10.0.12.2", hint="does r3 announce its LAN?"),
        ck.traverses("client", "server", "fw", port=80, hint="the flow must cross the firewall"),
    ])
    print(report)          # one row per check (PASS/FAIL, what was seen, the hint when it failed)
    report.passed          # True when every check passed

A check never raises for a failing lab: a guest error is a FAIL with its message.
Destinations are node names (resolved through the plan when the node has a derived
address) or addresses.  :func:`load_checks` reads the same checks from a YAML/JSON
file (``stdpkt lab check DIR`` uses ``DIR/checks.yaml``).
"""

from __future__ import annotations

import ipaddress
import json
import re
import shlex
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import ConfigError, StdpktError

if TYPE_CHECKING:
    from .lab import Lab

__all__ = [
    "Check", "CheckResult", "Report", "run", "reachable", "unreachable", "route", "no_route",
    "port_open", "port_closed", "http", "traverses", "command", "load_checks", "CHECKS",
]

Outcome = tuple[bool, str]


@dataclass(frozen=True)
class Check:
    """One thing to verify: ``test(lab) -> (passed, what was seen)``, with a hint for a FAIL."""

    name: str
    test: Callable[[Lab], Outcome]
    hint: str = ""


@dataclass(frozen=True)
class CheckResult:
    name: str
    passed: bool
    detail: str
    hint: str
    seconds: float


@dataclass
class Report:
    results: list[CheckResult] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return bool(self.results) and all(r.passed for r in self.results)

    @property
    def verdict(self) -> str:
        return "PASS" if self.passed else "FAIL"

    def rows(self) -> list[dict[str, Any]]:
        return [{"check": r.name, "result": "PASS" if r.passed else "FAIL", "seen": r.detail,
                 "hint": "" if r.passed else r.hint} for r in self.results]

    def __str__(self) -> str:
        rows = self.rows()
        widths = {k: max([len(k), *(len(str(r[k])) for r in rows)]) for k in ("check", "result", "seen")}
        widths["seen"] = min(widths["seen"], 60)
        line = f"{'check':<{widths['check']}}  {'result':<6}  {'seen':<{widths['seen']}}  hint"
        out = [line, "-" * len(line)]
        for r in rows:
            seen = str(r["seen"])
            seen = seen if len(seen) <= 60 else seen[:57] + "..."
            out.append(f"{r['check']:<{widths['check']}}  {r['result']:<6}  {seen:<{widths['seen']}}  {r['hint']}")
        good = sum(r.passed for r in self.results)
        out.append(f"{self.verdict}: {good}/{len(self.results)} checks passed")
        return "\n".join(out)

    def _repr_html_(self) -> str:
        import html

        def colour_of(result: str) -> str:
            return "green" if result == "PASS" else "red"

        cells = "".join(
            f"<tr><td>{html.escape(r['check'])}</td><td style='color:{colour_of(r['result'])}'>"
            f"<b>{r['result']}</b></td><td>{html.escape(str(r['seen']))}</td><td>{html.escape(r['hint'])}</td></tr>"
            for r in self.rows())
        colour = "green" if self.passed else "red"
        return (f"<table><tr><th>check</th><th>result</th><th>seen</th><th>hint</th></tr>{cells}</table>"
                f"<p style='color:{colour}'><b>{self.verdict}</b></p>")


def run(lab: Lab, checks: Iterable[Check], *, progress: bool = False) -> Report:
    """Run every check in order against a running lab; never raises for a failing check."""
    from tqdm.auto import tqdm

    items = list(checks)
    report = Report()
    for item in tqdm(items, desc="checking", unit="check", disable=not progress):
        start = time.monotonic()
        try:
            ok, seen = item.test(lab)
        except StdpktError as exc:
            ok, seen = False, f"error: {str(exc).splitlines()[0]}"
        report.results.append(CheckResult(item.name, ok, seen, item.hint, time.monotonic() - start))
    return report


# ------------------------------------------------------------------ helpers
def _target(lab: Lab, dst: str) -> str:
    try:
        ipaddress.IPv4Address(dst)
        return dst
    except ValueError:
        pass
    if dst in lab.plan.nodes:
        try:
            return str(lab.plan.address(dst))
        except StdpktError:
            pass  # no derived address (a Kathará device): let the guest resolve the name
    return dst


def _exec(lab: Lab, node: str, cmd: str, timeout: float = 30) -> tuple[int, str]:
    r = lab.exec(node, cmd, timeout=timeout)
    return r.returncode, (r.stdout + r.stderr).strip()


def _last(text: str) -> str:
    lines = [x for x in text.splitlines() if x.strip()]
    return lines[-1].strip() if lines else ""


# ------------------------------------------------------------------ checks
def reachable(src: str, dst: str, *, hint: str = "", count: int = 2, wait: int = 3,
              retries: int = 2) -> Check:
    """``src`` pings ``dst`` (a node or an address) and gets replies."""
    def test(lab: Lab) -> Outcome:
        target = _target(lab, dst)
        out = ""
        for _ in range(retries + 1):  # the first ping may wait for ARP
            rc, out = _exec(lab, src, f"ping -c {count} -W {wait} {shlex.quote(target)}")
            if rc == 0:
                m = re.search(r"(\d+) received", out)
                return True, f"{m.group(1) if m else '?'}/{count} replies from {target}"
        m = re.search(r"\d+ packets transmitted, \d+ received[^\n]*", out)
        return False, m.group(0) if m else _last(out)
    return Check(f"{src} reaches {dst}", test, hint)


def unreachable(src: str, dst: str, *, hint: str = "", wait: int = 2) -> Check:
    """``src`` gets no reply from ``dst``."""
    def test(lab: Lab) -> Outcome:
        target = _target(lab, dst)
        rc, out = _exec(lab, src, f"ping -c 2 -W {wait} {shlex.quote(target)}")
        return rc != 0, "no reply" if rc != 0 else f"{target} answered"
    return Check(f"{src} cannot reach {dst}", test, hint)


def route(node: str, prefix: str, *, via: str | None = None, dev: str | None = None,
          proto: str | None = None, hint: str = "") -> Check:
    """``node``'s kernel routing table has ``prefix`` (``"default"`` allowed), optionally
    through ``via`` / ``dev`` / of protocol ``proto`` (``ospf``, ``static``, ``kernel``...)."""
    def test(lab: Lab) -> Outcome:
        rc, out = _exec(lab, node, f"ip route show exact {shlex.quote(prefix)}"
                        if prefix != "default" else "ip route show default")
        line = _last(out)
        if rc != 0 or not line:
            return False, f"no route to {prefix}"
        for word, want in (("via", via), ("dev", dev), ("proto", proto)):
            if want is not None and not re.search(rf"\b{word} {re.escape(want)}\b", line):
                return False, line
        return True, line
    parts = [p for p in (via and f"via {via}", dev and f"dev {dev}", proto and f"proto {proto}") if p]
    return Check(f"{node} routes {prefix}" + (f" {' '.join(parts)}" if parts else ""), test, hint)


def no_route(node: str, prefix: str, *, hint: str = "") -> Check:
    def test(lab: Lab) -> Outcome:
        _, out = _exec(lab, node, f"ip route show exact {shlex.quote(prefix)}")
        return not out.strip(), _last(out) or "no route"
    return Check(f"{node} has no route to {prefix}", test, hint)


def _port(src: str, dst: str, port: int, proto: str, want_open: bool, hint: str, wait: int) -> Check:
    if proto not in ("tcp", "udp"):
        raise ConfigError(f"port check: proto {proto!r} must be tcp or udp")

    def test(lab: Lab) -> Outcome:
        target = _target(lab, dst)
        flag = "-u " if proto == "udp" else ""
        rc, out = _exec(lab, src, f"nc -z {flag}-w {wait} {shlex.quote(target)} {int(port)}",
                        timeout=wait + 20)
        is_open = rc == 0
        return is_open == want_open, f"{proto}/{port} on {target} {'open' if is_open else 'closed or filtered'}"
    state = "open" if want_open else "closed"
    return Check(f"{src} → {dst} {proto}/{port} {state}", test, hint)


def port_open(src: str, dst: str, port: int, *, proto: str = "tcp", hint: str = "", wait: int = 3) -> Check:
    """A ``proto`` connection from ``src`` to ``dst:port`` succeeds (``nc -z``)."""
    return _port(src, dst, port, proto, True, hint, wait)


def port_closed(src: str, dst: str, port: int, *, proto: str = "tcp", hint: str = "", wait: int = 2) -> Check:
    """A connection from ``src`` to ``dst:port`` fails (refused, dropped or timed out)."""
    return _port(src, dst, port, proto, False, hint, wait)


def http(src: str, url: str, *, contains: str | None = None, hint: str = "", wait: int = 5) -> Check:
    """``src`` fetches ``url`` (``http://server/``; node names resolve through the plan)."""
    def test(lab: Lab) -> Outcome:
        m = re.match(r"^(https?://)([^/:]+)(.*)$", url)
        target = m.group(1) + _target(lab, m.group(2)) + m.group(3) if m else url
        rc, out = _exec(lab, src, f"wget -qO- -T {wait} {shlex.quote(target)}", timeout=wait + 20)
        if rc != 0:
            return False, f"wget failed ({rc}): {_last(out)}"
        if contains is not None and contains not in out:
            return False, f"page does not contain {contains!r}: {_last(out)[:50]}"
        return True, _last(out)[:60]
    return Check(f"{src} fetches {url}", test, hint)


def command(node: str, cmd: str, *, expect: int = 0, contains: str | None = None, hint: str = "",
            name: str | None = None) -> Check:
    """Any command: passes when it exits ``expect`` (and its output has ``contains``)."""
    def test(lab: Lab) -> Outcome:
        rc, out = _exec(lab, node, cmd)
        if rc != expect:
            return False, f"exit {rc}: {_last(out)}"
        if contains is not None and contains not in out:
            return False, f"output lacks {contains!r}"
        return True, _last(out) or f"exit {rc}"
    return Check(name or f"{node}: {cmd}", test, hint)


def traverses(src: str, dst: str, via: str, *, proto: str = "icmp", port: int = 80, hint: str = "") -> Check:
    """Traffic from ``src`` to ``dst`` crosses node ``via`` (seen in the traces of its links).

    ``proto="icmp"`` sends pings of an unusual size; ``"tcp"`` connects to ``port``.
    The frames are looked for among those traced after the check started, on every
    link of ``via`` (addresses may be rewritten by a NAT on the way: only the size /
    the port is matched).
    """
    if proto not in ("icmp", "tcp"):
        raise ConfigError(f"traverses: proto {proto!r} must be icmp or tcp")
    size = 1111

    def test(lab: Lab) -> Outcome:
        links = [(k.a.name, k.b.name) for k in lab.links if via in (k.a.name, k.b.name)]
        if not links:
            return False, f"{via} has no links"
        seen_before = {link: _newest(lab, link) for link in links}
        target = _target(lab, dst)
        if proto == "icmp":
            _exec(lab, src, f"ping -c 2 -W 2 -s {size} {shlex.quote(target)}")
        else:
            _exec(lab, src, f"nc -z -w 3 {shlex.quote(target)} {int(port)}")
        deadline = time.monotonic() + 2
        while True:
            hits = [link for link in links if _matches(lab, link, seen_before[link], proto, size, port)]
            if hits or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        if hits:
            return True, "seen on " + ", ".join(f"{a}–{b}" for a, b in hits)
        return False, f"no {proto} frame of this flow on any link of {via}"
    return Check(f"{src} → {dst} ({proto}) crosses {via}", test, hint)


def _newest(lab: Lab, link: tuple[str, str]) -> int:
    frames = lab._frames(link, "both", 1)
    return frames[-1][1].ts_ns if frames else -1


def _matches(lab: Lab, link: tuple[str, str], after: int, proto: str, size: int, port: int) -> bool:
    from scapy.layers.inet import ICMP, IP, TCP
    from scapy.layers.l2 import Ether

    for _, frame in lab._frames(link, "both", None):
        if frame.ts_ns <= after:
            continue
        pkt = Ether(frame.data)
        if IP not in pkt:
            continue
        if proto == "icmp" and ICMP in pkt and pkt[ICMP].type == 8 and frame.orig_len >= size + 28:
            return True
        if proto == "tcp" and TCP in pkt and pkt[TCP].dport == port:
            return True
    return False


# ------------------------------------------------------------------ check files
#: check file keyword → (function, required arguments, optional arguments)
CHECKS: Mapping[str, tuple[Callable[..., Check], tuple[str, ...], tuple[str, ...]]] = {
    "reachable": (reachable, ("from", "to"), ("count",)),
    "unreachable": (unreachable, ("from", "to"), ()),
    "route": (route, ("node", "prefix"), ("via", "dev", "proto")),
    "no_route": (no_route, ("node", "prefix"), ()),
    "port_open": (port_open, ("from", "to", "port"), ("proto",)),
    "port_closed": (port_closed, ("from", "to", "port"), ("proto",)),
    "http": (http, ("from", "url"), ("contains",)),
    "traverses": (traverses, ("from", "to", "via"), ("proto", "port")),
    "command": (command, ("node", "cmd"), ("expect", "contains", "name")),
}


def load_checks(path: str | Path) -> list[Check]:
    """Checks from a YAML or JSON list, e.g.::

        - reachable: {from: pc1, to: 10.0.3.3}
          hint: r1 needs a route toward 10.0.3.0/24
        - route: {node: r1, prefix: 10.0.3.0/24, via: 10.0.12.2}
        - port_closed: {from: pc, to: srv, port: 22}

    A malformed entry raises :class:`~stdpkt_lab.errors.ConfigError` naming its number.
    """
    file = Path(path)
    try:
        text = file.read_text()
    except OSError as exc:
        raise ConfigError(f"{file}: cannot read: {exc.strerror or exc}") from None
    try:
        if file.suffix == ".json":
            data = json.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text)
    except Exception as exc:
        raise ConfigError(f"{file}: not valid {'JSON' if file.suffix == '.json' else 'YAML'}: {exc}") from None
    if not isinstance(data, list) or not data:
        raise ConfigError(f"{file}: expected a non-empty list of checks")
    return [_entry(file, i, item) for i, item in enumerate(data, start=1)]


def _entry(file: Path, number: int, item: Any) -> Check:
    where = f"{file}: check {number}"
    if not isinstance(item, Mapping):
        raise ConfigError(f"{where}: expected a mapping like {{reachable: {{from: a, to: b}}}}, got {item!r}")
    hint = str(item.get("hint", ""))
    kinds = [k for k in item if k != "hint"]
    if len(kinds) != 1 or kinds[0] not in CHECKS:
        raise ConfigError(f"{where}: expected exactly one of {', '.join(CHECKS)} (and an optional hint), "
                          f"got {', '.join(map(str, kinds)) or 'nothing'}")
    kind = kinds[0]
    fn, required, optional = CHECKS[kind]
    args = item[kind]
    if not isinstance(args, Mapping):
        raise ConfigError(f"{where}: {kind} needs a mapping of {', '.join(required)}")
    missing = [a for a in required if a not in args]
    unknown = [a for a in args if a not in required and a not in optional]
    if missing or unknown:
        raise ConfigError(f"{where}: {kind}: " + "; ".join(
            ([f"missing {', '.join(missing)}"] if missing else [])
            + ([f"unknown {', '.join(map(str, unknown))} (takes {', '.join([*required, *optional])})"]
               if unknown else [])))
    positional: Sequence[Any] = [args[a] for a in required]
    keywords = {a: args[a] for a in optional if a in args}
    try:
        return fn(*(str(v) if not isinstance(v, int) else v for v in positional), hint=hint, **keywords)
    except (TypeError, ValueError, ConfigError) as exc:
        raise ConfigError(f"{where}: {kind}: {exc}") from None
