"""Link conditions on a running lab (and on ``stdpkt run``), by the guests' own qdiscs.

The description (what a condition means, its ``tc`` commands) is
:mod:`stdpkt_lab.describe.conditions`; this module applies it:

* :class:`LinkConditioner` — what ``Lab.set_link`` / ``link_conditions`` /
  ``clear_link`` delegate to.  A direction ``(src, dst)`` of a link is the
  egress qdisc of ``src``'s interface toward ``dst``; a change is one
  ``tc -batch -`` run through ``src``'s agent (``replace`` in place: no restart,
  established connections stay).  It also reads the qdiscs' statistics
  (``tc -s -j qdisc show``) for ``nf_counters`` and the sampler.
* :func:`conditions_from_env` — ``DELAYn``, ``JITTERn``, ``LOSSn``, ``RATEn``
  (and ``REORDERn``, ``DUPLICATEn``, ``CORRUPTn``, ``LIMITn``) of ``stdpkt run``:
  conditions on what leaves ``eth<n>``, applied by the instance's set-up at boot.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from .describe.conditions import (
    CONDITION_KEYS,
    QDISC_MODULES,
    LinkConditions,
    offload_argv,
    parse_conditions,
    setup_text,
    tc_batch,
    tc_clear,
)
from .errors import ChainError, LinkError, VariableError

if TYPE_CHECKING:
    from .describe.plan import LinkPlan
    from .engine.instance import Instance
    from .engine.spec import InstanceSpec
    from .lab import Lab

__all__ = ["LinkConditioner", "conditions_from_env", "parse_qdisc_json", "ENV_VARIABLES"]

#: ``stdpkt run`` variable prefix → condition key.
ENV_VARIABLES = {key.upper(): key for key in CONDITION_KEYS}
_ENV = re.compile(r"^(" + "|".join(ENV_VARIABLES) + r")(\d+)$")
_QDISC_FIELDS = ("bytes", "packets", "drops", "overlimits", "requeues", "backlog", "qlen")

Direction = tuple[str, str]


def conditions_from_env(env: Mapping[str, str], spec: InstanceSpec) -> InstanceSpec:
    """``spec`` with the link conditions of ``env`` (``DELAY0=20ms`` ...) in its set-up.

    Raises :class:`~stdpkt_lab.errors.VariableError` naming the variable.
    """
    per_port: dict[int, dict[str, tuple[str, str]]] = {}
    for name, value in env.items():
        match = _ENV.match(name)
        if match:
            per_port.setdefault(int(match.group(2)), {})[ENV_VARIABLES[match.group(1)]] = (name, value)
    if not per_port:
        return spec
    mtus = {p.index: p.mtu for p in spec.ports}
    shaping: dict[str, tuple[LinkConditions, int]] = {}
    for index, given in sorted(per_port.items()):
        if index not in mtus:
            variable = sorted(v for v, _ in given.values())[0]
            raise VariableError(variable, f"is set but IF{index} is not")
        cond = LinkConditions()
        for key in CONDITION_KEYS:  # delay comes first: a JITTERn without it is named
            if key not in given:
                continue
            variable, value = given[key]
            try:
                cond = parse_conditions({key: value}, base=cond)
            except ValueError as exc:
                hint = f" (set DELAY{index} too)" if "needs a delay" in str(exc) else ""
                raise VariableError(variable, f"{exc}{hint}") from None
        if not cond.empty:
            shaping[f"eth{index}"] = (cond, mtus[index])
    text = setup_text(shaping, [p.device for p in spec.ports])
    return replace(spec, setup="\n".join(t for t in (text, spec.setup) if t) or None)


def parse_qdisc_json(text: str) -> dict[str, list[dict[str, Any]]]:
    """``tc -s -j qdisc show`` → ``{device: [{kind, handle, parent, bytes, packets, drops,
    overlimits, requeues, backlog, qlen}, ...]}`` (root first)."""
    try:
        rows = json.loads(text or "[]")
    except json.JSONDecodeError:
        return {}
    out: dict[str, list[dict[str, Any]]] = {}
    for row in rows if isinstance(rows, list) else []:
        if not isinstance(row, dict) or "dev" not in row:
            continue
        entry: dict[str, Any] = {
            "kind": row.get("kind"), "handle": row.get("handle"),
            "parent": "root" if row.get("root") else row.get("parent"),
        }
        for key in _QDISC_FIELDS:
            value = row.get(key)
            entry[key] = int(value) if isinstance(value, (int, float)) else 0
        out.setdefault(str(row["dev"]), []).append(entry)
    return out


class LinkConditioner:
    """The conditions of every link direction of one :class:`~stdpkt_lab.Lab` (host-side state
    mirrors what is set in the guests; it starts as the plan's)."""

    def __init__(self, lab: Lab) -> None:
        self._lab = lab
        self._lock = threading.RLock()
        self._state: dict[Direction, LinkConditions] = {}
        for lp in lab.plan.links:
            self._state.update(lp.conditions)
        self._boot = dict(self._state)
        self._modules: set[tuple[str, int | None]] = set()
        #: nodes whose interfaces have GSO/GRO off (the set-up did it for the plan's)
        self._offloads_off: set[str] = {src for (src, _), c in self._boot.items() if c.needs_netem}

    # ------------------------------------------------------------ lookups
    def _link(self, link: Any) -> LinkPlan:
        try:
            a, b = link
        except (TypeError, ValueError):
            raise ChainError(f"link {link!r}: expected a pair of node names (a, b)") from None
        for lp in self._lab.plan.links:
            if {lp.a, lp.b} == {a, b}:
                return lp
        raise ChainError(f"no link between {a!r} and {b!r} in this lab")

    def _directions(self, link: Any, direction: Any) -> tuple[LinkPlan, list[Direction]]:
        lp = self._link(link)
        a, b = link
        if direction in (None, "both"):
            return lp, [(a, b), (b, a)]
        if direction == "forward":
            return lp, [(a, b)]
        if direction == "backward":
            return lp, [(b, a)]
        if isinstance(direction, (tuple, list)) and len(direction) == 2 and set(direction) == {a, b}:
            return lp, [(str(direction[0]), str(direction[1]))]
        raise ChainError(f"link {a!r}–{b!r}: direction={direction!r}: expected ({a!r}, {b!r}), "
                         f"({b!r}, {a!r}), 'both', 'forward' or 'backward'")

    @staticmethod
    def _port(lp: LinkPlan, src: str) -> tuple[str, int]:
        return f"eth{lp.a_port if src == lp.a else lp.b_port}", lp.mtu

    def _instance(self, src: str, dst: str) -> Instance:
        instance = self._lab.instances.get(src)
        if instance is None:
            raise ChainError(f"link {src!r}→{dst!r}: {src!r} is not an instance (a tap or a pcap "
                             "file has no qdisc): condition the direction an instance sends")
        return instance

    # ------------------------------------------------------------ public
    def set(self, link: Any, *, direction: Any = None, update: bool = False,
            **values: Any) -> dict[str, dict[str, Any]]:
        """Make the conditions of ``link``'s direction(s) ``values`` (``update``: change only
        the keys given; ``None`` unsets one).  Validated for every direction before any change."""
        lp, dirs = self._directions(link, direction)
        with self._lock:
            wanted: dict[Direction, LinkConditions] = {}
            for src, dst in dirs:
                base = self._state.get((src, dst)) if update else None
                try:
                    wanted[(src, dst)] = parse_conditions(values, base=base)
                except ValueError as exc:
                    raise ChainError(f"link {src!r}→{dst!r}: {exc}") from None
            instances = {d: self._instance(*d) for d in dirs}
            for d in dirs:
                if wanted[d].needs_netem:
                    self._offloads(d[0], instances[d], on=False)
                self._apply(lp, d, instances[d], wanted[d])
                if not self._netem_on(d[0]):
                    self._offloads(d[0], instances[d], on=True)
        return self.get(link)

    def clear(self, link: Any, *, direction: Any = None) -> None:
        """Remove every condition of ``link`` (or of one direction): default qdiscs again."""
        self.set(link, direction=direction)

    def get(self, link: Any) -> dict[str, dict[str, Any]]:
        """``{"a->b": {...}, "b->a": {...}}``: what is set per direction, as graph values."""
        _, dirs = self._directions(link, None)
        with self._lock:
            return {f"{s}->{d}": self._state.get((s, d), LinkConditions()).plain() for s, d in dirs}

    def conditions(self, src: str, dst: str) -> LinkConditions:
        with self._lock:
            return self._state.get((src, dst), LinkConditions())

    def _netem_on(self, node: str) -> bool:
        return any(src == node and c.needs_netem for (src, _), c in self._state.items())

    def conditioned(self, node: str) -> bool:
        with self._lock:
            return any(src == node and not c.empty for (src, _), c in self._state.items())

    def qdisc_stats(self, node: str, *, timeout: float = 10.0) -> dict[str, list[dict[str, Any]]]:
        """The qdiscs of ``node``'s interfaces with their statistics (one exec of ``tc``)."""
        for _ in range(3):  # output was at times corrupted (NUL runs) on hosts without the XSTATE shim
            result = self._lab[node].exec(["tc", "-s", "-j", "qdisc", "show"], timeout=timeout)
            if result.returncode != 0:
                raise LinkError(f"node {node!r}: tc -s -j qdisc show: {result.stderr.strip()}")
            parsed = parse_qdisc_json(result.stdout)
            if parsed:
                return {dev: rows for dev, rows in parsed.items() if dev != "lo"}
        raise LinkError(f"node {node!r}: tc -s -j qdisc show: unreadable output {result.stdout[:200]!r}")

    def restarted(self, node: str) -> None:
        """``node`` booted afresh from its plan: put back what was changed live since."""
        with self._lock:
            if any(src == node and c.needs_netem for (src, _), c in self._boot.items()):  # set-up did
                self._offloads_off.add(node)
            else:
                self._offloads_off.discard(node)
            for lp in self._lab.plan.links:
                if node not in (lp.a, lp.b):
                    continue
                dst = lp.b if lp.a == node else lp.a
                now = self._state.get((node, dst), LinkConditions())
                booted = self._boot.get((node, dst), LinkConditions())
                if now != booted:
                    self._state[(node, dst)] = booted  # what the fresh instance has
                    instance = self._instance(node, dst)
                    if now.needs_netem:
                        self._offloads(node, instance, on=False)
                    self._apply(lp, (node, dst), instance, now)
            if not self._netem_on(node) and node in self._lab.instances:
                self._offloads(node, self._lab[node], on=True)

    # ------------------------------------------------------------ applying
    def _apply(self, lp: LinkPlan, d: Direction, instance: Instance, cond: LinkConditions) -> None:
        dev, mtu = self._port(lp, d[0])
        previous = self._state.get(d, LinkConditions()).shape
        lines = tc_batch(dev, cond, mtu=mtu, previous=previous) if not cond.empty else tc_clear(dev, previous)
        if not lines:
            return
        self._load_modules(d[0], instance)
        result = instance.exec(["tc", "-batch", "-"], input=("\n".join(lines) + "\n").encode(), timeout=30)
        if result.returncode != 0:
            raise LinkError(f"link {d[0]!r}→{d[1]!r} ({dev} of {d[0]!r}): tc refused "
                            f"{lines!r}: {result.stderr.strip()}")
        if cond.empty:
            self._state.pop(d, None)
        else:
            self._state[d] = cond

    def _offloads(self, node: str, instance: Instance, *, on: bool) -> None:
        """GSO/GRO of every interface of ``node`` off (conditions act per frame) or on again."""
        if (node not in self._offloads_off) == on:
            return
        for port in self._lab.plan[node].spec.ports:
            result = instance.exec(offload_argv(port.device, on=on), timeout=30)
            if result.returncode != 0:
                raise LinkError(f"node {node!r}: {' '.join(offload_argv(port.device, on=on))}: "
                                f"{result.stderr.strip() or result.stdout.strip()}")
        if on:
            self._offloads_off.discard(node)
        else:
            self._offloads_off.add(node)

    def _load_modules(self, node: str, instance: Instance) -> None:
        key = (node, instance.pid)
        if key in self._modules:
            return
        loaded = instance.read_file("/proc/modules").decode(errors="replace")
        missing = [m for m in QDISC_MODULES if not re.search(rf"^{m} ", loaded, re.M)]
        if missing:
            result = instance.exec(["modprobe", "-a", *missing], timeout=60)
            if result.returncode != 0:
                raise LinkError(f"node {node!r}: cannot load {', '.join(missing)}: {result.stderr.strip()}")
        self._modules.add(key)
