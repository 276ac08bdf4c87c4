"""What the dashboard's controls do to the real chain, off the kernel's main thread.

Every action runs in a small worker pool (a stopping kernel or a 30-second
traffic run must not freeze the notebook) and leaves a line in :attr:`Actions.log`;
the dashboard's update thread shows the log, so the workers never touch a widget.
No widget imports here: the actions are tested on their own.
"""

from __future__ import annotations

import collections
import shlex
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..describe.rules import parse_rule, resolve_peer

if TYPE_CHECKING:
    from .source import LabView

__all__ = ["Actions", "Job", "TRAFFIC_KINDS", "traffic_command"]

#: Traffic generator kinds: what runs in the source host for ``seconds`` toward ``dst``.
TRAFFIC_KINDS = ("ping", "http", "iperf3")


def traffic_command(kind: str, dst: str, seconds: int) -> str:
    """The shell command a traffic generator runs in its source host."""
    d = shlex.quote(dst)
    if kind == "ping":
        return f"ping -q -i 0.2 -w {seconds} {d}"
    if kind == "http":
        return (f"end=$(( $(date +%s) + {seconds} )); ok=0; bad=0; "
                f"while [ $(date +%s) -lt $end ]; do "
                f"if wget -qO /dev/null -t 1 -T 2 http://{d}/; then ok=$((ok+1)); "
                f"else bad=$((bad+1)); sleep 0.2; fi; "
                f"done; echo \"$ok requests answered, $bad failed\"; [ $ok -gt 0 ]")
    if kind == "iperf3":
        return f"iperf3 -c {d} -t {seconds} -f m --connect-timeout 3000"
    raise ValueError(f"traffic kind {kind!r}: expected one of {', '.join(TRAFFIC_KINDS)}")


def _summary(kind: str, out: str) -> str:
    lines = [ln.strip() for ln in out.splitlines() if ln.strip()]
    if kind == "ping":
        lines = [ln for ln in lines if "transmitted" in ln] or lines
    elif kind == "iperf3":
        lines = [ln for ln in lines if "receiver" in ln] or lines
    return lines[-1] if lines else "(no output)"


@dataclass
class Job:
    """A running (or finished) action; ``seconds`` is its expected length when known."""

    label: str
    started: float
    seconds: float | None
    future: Future = field(repr=False)

    @property
    def done(self) -> bool:
        return self.future.done()

    @property
    def progress(self) -> float:
        if self.done:
            return 1.0
        if not self.seconds:
            return 0.0
        return min(0.99, (time.monotonic() - self.started) / self.seconds)


class Actions:
    """Acts on ``lab`` in ``workers`` background threads; results go to :attr:`log`."""

    def __init__(self, lab: LabView, *, workers: int = 3, log_lines: int = 8) -> None:
        self.lab = lab
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="stdpkt-action")
        self._lock = threading.Lock()
        self.log: collections.deque[tuple[float, str]] = collections.deque(maxlen=log_lines)
        self.jobs: list[Job] = []
        self.rules: dict[str, str] = {}  # node → its FORWARD chain as last listed
        self.version = 0  # bumped on every change the view should show

    def note(self, text: str) -> None:
        with self._lock:
            self.log.append((time.time(), text))
            self.version += 1

    def submit(self, label: str, work: Callable[[], str], *, seconds: float | None = None) -> Future:
        """Run ``work()`` in the pool; its returned text (or its error) is logged after ``label``."""
        def run() -> str:
            try:
                result = work()
            except Exception as exc:  # shown to the student, not raised into a thread
                self.note(f"{label}: failed: {exc}")
                raise
            self.note(f"{label}: {result}")
            return result

        self.note(f"{label} …")
        future = self._pool.submit(run)
        with self._lock:
            self.jobs = [j for j in self.jobs if not j.done] + [
                Job(label, time.monotonic(), seconds, future)]
        return future

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    # ------------------------------------------------------------ instances
    def stop_node(self, node: str) -> Future:
        def work() -> str:
            self.lab[node].stop()
            return f"{self.lab[node].state.value}"
        return self.submit(f"stop {node}", work)

    def start_node(self, node: str) -> Future:
        def work() -> str:
            if self.lab[node].state.value == "running":
                return "already running"
            instance = self.lab.restart(node)
            return f"{instance.state.value} (booted in {instance.boot_seconds or 0:.1f} s, fresh state)"
        return self.submit(f"start {node}", work, seconds=3.0)

    # ------------------------------------------------------------ firewall rules
    def rule_args(self, rule: str) -> list[str]:
        """``"tcp/22 from client"`` (the firewall kind's syntax) or raw iptables match
        arguments (``"-p tcp --dport 22"``) → iptables arguments."""
        if rule.strip().startswith("-"):
            return shlex.split(rule)
        plan = self.lab.plan

        def addresses(name: str) -> list[str] | None:
            if name not in plan.nodes:
                return None
            return [str(p.address.ip) for p in plan[name].spec.ports if p.address is not None]

        return parse_rule(rule).args(lambda p: resolve_peer(p, addresses, list(plan.nodes)))

    def _iptables(self, node: str, *args: str) -> str:
        result = self.lab.exec(node, ["iptables", *args], timeout=30)
        if result.returncode != 0:
            raise RuntimeError(result.stderr.strip() or f"iptables exited {result.returncode}")
        return self._list_rules(node)

    def _list_rules(self, node: str) -> str:
        text = self.lab.exec(node, ["iptables", "-S", "FORWARD"], timeout=30).stdout
        with self._lock:
            self.rules[node] = text
            self.version += 1
        return text

    def add_rule(self, node: str, rule: str, verdict: str = "DROP") -> Future:
        """Insert ``rule`` at the top of ``node``'s FORWARD chain with ``verdict`` (ACCEPT/DROP)."""
        args = [*self.rule_args(rule), "-j", _verdict(verdict)]

        def work() -> str:
            self._iptables(node, "-I", "FORWARD", "1", *args)
            return "added: iptables -I FORWARD " + " ".join(args)
        return self.submit(f"{node}: {verdict.lower()} {rule}", work)

    def remove_rule(self, node: str, rule: str, verdict: str = "DROP") -> Future:
        args = [*self.rule_args(rule), "-j", _verdict(verdict)]

        def work() -> str:
            self._iptables(node, "-D", "FORWARD", *args)
            return "removed"
        return self.submit(f"{node}: remove {verdict.lower()} {rule}", work)

    def list_rules(self, node: str) -> Future:
        return self.submit(f"{node}: list rules", lambda: f"{len(self._list_rules(node).splitlines())} lines")

    # ------------------------------------------------------------ traffic and traces
    def traffic(self, kind: str, src: str, dst: str, seconds: int = 10) -> Future:
        """Run a traffic generator (``ping``, ``http``, ``iperf3``) from ``src`` to ``dst``."""
        command = traffic_command(kind, dst, seconds)

        def work() -> str:
            result = self.lab.exec(src, command, timeout=seconds + 30)
            text = _summary(kind, result.stdout + result.stderr)
            return text if result.returncode == 0 else f"exit {result.returncode}: {text}"
        return self.submit(f"{kind} {src}→{dst} {seconds}s", work, seconds=seconds)

    def save_pcap(self, link: tuple[str, str], target: str | Path) -> Future:
        """Save ``link``'s trace; ``target`` is a .pcap path or a directory (a file name is made)."""
        path = Path(target).expanduser()
        if path.suffix != ".pcap":
            path = path / f"{link[0]}-{link[1]}-{time.strftime('%Y%m%d-%H%M%S')}.pcap"
        path = path.resolve()

        def work() -> str:
            path.parent.mkdir(parents=True, exist_ok=True)
            return f"{self.lab.save_pcap(link, path)} packets saved to {path}"
        return self.submit(f"save pcap {link[0]}-{link[1]}", work)

    def set_filter(self, link: tuple[str, str], expr: str) -> Future:
        def work() -> str:
            self.lab.set_trace_filter(link, expr or None)
            return f"trace filter {expr!r}" if expr else "trace filter cleared"
        return self.submit(f"{link[0]}-{link[1]}", work)

    def snapshot(self) -> dict[str, Any]:
        """A consistent copy for the view: log lines, rules, running jobs, version."""
        with self._lock:
            return {"log": list(self.log), "rules": dict(self.rules),
                    "jobs": [j for j in self.jobs if not j.done], "version": self.version}


def _verdict(verdict: str) -> str:
    v = verdict.upper()
    if v not in ("ACCEPT", "DROP", "REJECT"):
        raise ValueError(f"verdict {verdict!r}: expected ACCEPT, DROP or REJECT")
    return v
