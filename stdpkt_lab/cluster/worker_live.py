"""Live-chain primitives of a :class:`~.worker.WorkerSide`: it is the *lab* of a
:class:`~stdpkt_lab.live.LiveChains` that sees only this worker's instances.

The notebook plans every change (:mod:`stdpkt_lab.describe.rewire`, as the local
Lab does) and then asks each worker involved to do its part, through these
methods.  What a local Lab's live chains do is reused, not copied: booting a new
NF (warm pool, set-up check, gratuitous ARP) is ``LiveChains._boot``, moving
links is ``LiveChains._switch`` (it puts the old links back when a new one fails),
pushing addresses and routes is ``LiveChains._apply``, and detours and steering
rules are :meth:`LiveChains.add` / :meth:`LiveChains.steer` on this worker's own
links.  Stream ends (links to other workers) are stopped here; the notebook
re-makes them with :meth:`WorkerSide.listen` / :meth:`WorkerSide.connect`.

Every method that may start a kernel runs on the worker side's spawner thread
(the launcher's parent-death signal is bound to the thread that started it).
"""

from __future__ import annotations

import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from ..engine.instance import Instance
from ..engine.links import Link
from ..errors import ChainError, StateError

if TYPE_CHECKING:
    from ..describe import ChainPlan, KindRegistry
    from ..engine.spec import InstanceSpec
    from ..engine.streams import StreamPort
    from ..live import LiveChains

__all__ = ["WorkerLive"]

T = TypeVar("T")
Pair = tuple[str, str]


class WorkerLive:
    """Mixin of :class:`~.worker.WorkerSide`: what a ``LiveChains`` needs of a lab, plus the
    per-worker steps of a live change."""

    # provided by WorkerSide
    _instances: dict[str, Instance]
    _links: list[Link]
    _streams: dict[tuple[str, int], StreamPort]
    _peers: dict[tuple[str, int], tuple[str, str]]
    _lock: threading.RLock
    _run_root: Path | None
    _scripts: Path | None
    _stopped: bool
    _spawner: ThreadPoolExecutor
    _spawner_ident: int
    _trace: tuple[int, int]
    events: list[tuple[float, str]]
    _link_ended: Callable[[Link, str], None]

    plan: ChainPlan | None = None
    _registry: KindRegistry | None = None
    _live: LiveChains | None = None
    progress = False  # the notebook shows the progress bars
    boot_timeout = 120.0

    # ------------------------------------------------------------ what LiveChains reads
    def _require_running(self) -> None:
        if self._stopped:
            raise StateError("this worker's part of the lab was stopped")
        if self.plan is None:
            raise StateError("this worker has no plan of the chain yet")

    @property
    def links(self) -> list[Link]:
        return list(self._links)

    @property
    def instances(self) -> dict[str, Instance]:
        return dict(self._instances)

    def link(self, a: str, b: str) -> Link:
        for link in self._links:
            if {link.a.name, link.b.name} == {a, b}:
                return link
        raise KeyError(f"no link between {a!r} and {b!r} on this worker")

    @property
    def live(self) -> LiveChains:
        if self._live is None:
            from ..live import LiveChains

            self._live = LiveChains(self)  # type: ignore[arg-type]  # a lab for its own instances
        return self._live

    def _spawned(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run ``fn`` on the spawner thread (at once if this is it)."""
        if threading.get_ident() == self._spawner_ident:
            return fn(*args, **kwargs)
        return self._spawner.submit(fn, *args, **kwargs).result()

    # ------------------------------------------------------------ the notebook's steps
    def set_plan(self, plan: ChainPlan, registry: KindRegistry | None = None,
                 boot_timeout: float | None = None) -> None:
        """The running chain as the notebook planned it (every node, on any worker)."""
        with self._lock:
            self.plan = plan
            self._registry = registry
            if boot_timeout is not None:
                self.boot_timeout = boot_timeout

    def boot_node(self, spec: InstanceSpec, script_text: str | None, what: str = "inserting") -> dict[str, Any]:
        """Boot a new node of the chain here (not linked yet); returns its pid and boot time."""
        return self._spawned(self._boot_node, spec, script_text, what)

    def _boot_node(self, spec: InstanceSpec, script_text: str | None, what: str) -> dict[str, Any]:
        with self._lock:
            self._require_running()
            if spec.name in self._instances:
                raise ChainError("a node of that name already runs on this worker", node=spec.name)
            spec = self._script_here(spec, script_text)
            inst, boot_s = self.live._boot(spec, what)  # noqa: SLF001 - the local Lab's own boot
            self._instances[spec.name] = inst
            return {"pid": inst.pid, "boot_s": boot_s, "pooled": inst._pooled}  # noqa: SLF001

    def _script_here(self, spec: InstanceSpec, script_text: str | None) -> InstanceSpec:
        if script_text is None:
            return spec
        if self._scripts is None:
            assert self._run_root is not None
            self._scripts = Path(tempfile.mkdtemp(prefix="scripts-", dir=self._run_root))
        path = self._scripts / f"{spec.name}.sh"
        path.write_text(script_text)
        return replace(spec, script=path)

    def switch(self, plan: ChainPlan, old: Sequence[Pair], new_local: Sequence[Pair]) -> float:
        """Stop the links (or stream ends) of ``old`` held here and start the local links
        ``new_local`` as ``plan`` numbers them; returns the switch time (seconds)."""
        with self._lock:
            self._require_running()
            wanted = [set(p) for p in old]
            old_links = [k for k in self._links if {k.a.name, k.b.name} in wanted]
            self.live._unsteer_links(old_links)  # noqa: SLF001 - their rules go with them
            t0 = time.perf_counter()
            for pair in old:
                self._stop_stream(*pair)
            self.plan = plan
            self.live._switch(old_links, list(new_local), plan, self._instances)  # noqa: SLF001
            return time.perf_counter() - t0

    def wait_stream(self, node: str, peer: str, timeout: float = 30.0) -> str:
        """Wait until the stream end of ``node`` toward ``peer`` relays (connected and
        authenticated); returns the peer's address.  Raises LinkError if it failed."""
        from ..errors import LinkError

        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                found = [sp for key, sp in self._streams.items() if self._peers[key] == (node, peer)]
            if not found:
                raise LinkError(f"no stream end of {node!r} toward {peer!r} on this worker")
            sp = found[0]
            if sp.failed:
                raise LinkError(f"the stream link {node}–{peer} failed: "
                                + "; ".join(why for _, why in self.events[-3:]))
            if sp.tx is not None and sp.rx is not None:
                return str(sp.peer)
            if time.monotonic() > deadline:
                raise LinkError(f"the stream link {node}–{peer} did not connect within {timeout:g} s")
            time.sleep(0.002)

    def replace_node(self, plan: ChainPlan, spec: InstanceSpec, script_text: str | None,
                     carry_state: bool = True) -> dict[str, Any]:
        """Boot a new ``spec.name`` here first; carry the old one's conntrack table, move its
        local links to it and stop the old one.  Its stream ends are stopped: the notebook
        re-makes them (``"cross"``: their pairs).  A replacement that fails to boot or set up
        is never put in service (BootError; the old one keeps serving)."""
        return self._spawned(self._replace_node, plan, spec, script_text, carry_state)

    def _replace_node(self, plan: ChainPlan, spec: InstanceSpec, script_text: str | None,
                      carry_state: bool) -> dict[str, Any]:
        from ..errors import BootError, StdpktError
        from ..live import carry_conntrack

        node = spec.name
        with self._lock:
            self._require_running()
            spec = self._script_here(spec, script_text)
            try:
                inst, boot_s = self.live._boot(spec, "replacing")  # noqa: SLF001
            except StdpktError as exc:
                raise BootError(f"replacement not started, the old {node!r} keeps serving: {exc}",
                                name=node, console_tail=getattr(exc, "console_tail", "")) from exc
            old = self._instances[node]
            try:
                carried = carry_conntrack(old, inst) if carry_state else 0
                links = [k for k in self._links if node in (k.a.name, k.b.name)]
                self.live._unsteer_links(links)  # noqa: SLF001
                t0 = time.perf_counter()
                cross = []
                for key in [k for k in self._streams if k[0] == node]:
                    cross.append(self._peers.pop(key))
                    self._streams.pop(key).stop()
                self.plan = plan
                self.live._switch(links, [(k.a.name, k.b.name) for k in links], plan,  # noqa: SLF001
                                  {**self._instances, node: inst})
                switch_s = time.perf_counter() - t0
            except BaseException:
                inst.stop()
                raise
            self._instances[node] = inst
        old.stop()
        return {"boot_s": boot_s, "carried": carried, "cross": cross, "switch_s": switch_s,
                "pid": inst.pid, "pooled": inst._pooled}  # noqa: SLF001

    def plug_port(self, node: str, index: int, mtu: int, address: str | None) -> bool:
        """Port ``index`` of running ``node`` for a new link, as ``LiveChains.connect`` makes it:
        a boot-time port left unlinked is addressed again, else one is hot-plugged (True)."""
        from ..engine import hotplug
        from ..live import _has_port

        def work() -> bool:
            with self._lock:
                self._require_running()
                inst = self._instances[node]
                if _has_port(inst, index):
                    booted = inst.spec.ports[index].mtu
                    if booted != mtu:
                        raise ChainError(f"eth{index} was booted with MTU {booted}, the link "
                                         f"wants {mtu}", node=node)
                    if address is not None:
                        inst.exec(f"ip addr add {address} dev eth{index}", timeout=20).check()
                    return False
                hotplug.plug(inst, index, mtu=mtu, address=address)
                return True
        return self._spawned(work)

    def unplug_port(self, node: str, index: int) -> None:
        """Undo :meth:`plug_port` (a boot-time port stays, unaddressed, for a later connect)."""
        from ..engine import hotplug

        with self._lock:
            inst = self._instances[node]
            if hotplug.is_plugged(inst, index):
                hotplug.unplug(inst, index)
            else:
                inst.exec(f"ip addr flush dev eth{index}", timeout=20)

    def _stop_stream(self, a: str, b: str) -> bool:
        for key, (node, peer) in list(self._peers.items()):
            if {node, peer} == {a, b}:
                sp = self._streams.pop(key)
                del self._peers[key]
                sp.stop()
                return True
        return False

    def drop_node(self, node: str) -> None:
        """Stop ``node`` (after its links moved away) and forget it."""
        with self._lock:
            inst = self._instances.pop(node, None)
            for link in [k for k in self._links if node in (k.a.name, k.b.name)]:
                self.live._unsteer_links([link])  # noqa: SLF001
                link.stop()
                self._links.remove(link)
            for key in [k for k in self._streams if k[0] == node]:
                self._streams.pop(key).stop()
                self._peers.pop(key, None)
        if inst is not None:
            inst.stop()

    def apply_plan(self, old: ChainPlan, new: ChainPlan, skip: Sequence[str] = (),
                   flush: Sequence[str] = ()) -> dict[str, Any]:
        """Addresses, routes, gateways and /etc/hosts of this worker's instances as ``new``
        says (``LiveChains._apply``); ``flush`` nodes also forget their ARP caches."""
        with self._lock:
            self._require_running()
            self.plan = new
            return self.live._apply(old, new, skip=skip, flush=flush)  # noqa: SLF001

    # ------------------------------------------------------------ instances
    def stop_instance(self, node: str) -> str:
        """Stop ``node``'s kernel, its links stay (what the dashboard's stop button does)."""
        inst = self._instances[node]
        inst.stop()
        return inst.state.value

    def restart_node(self, node: str) -> list[Pair]:
        """Boot a fresh ``node`` from the plan and re-join its local links; returns the pairs of
        its links to other workers (their stream ends here are stopped: the notebook re-makes them)."""
        return self._spawned(self._restart_node, node)

    def _restart_node(self, node: str) -> list[Pair]:
        with self._lock:
            self._require_running()
            assert self.plan is not None
            for link in [k for k in self._links if node in (k.a.name, k.b.name)]:
                self.live._unsteer_links([link])  # noqa: SLF001
                link.stop()
                self._links.remove(link)
            cross = []
            for key in [k for k in self._streams if k[0] == node]:
                cross.append(self._peers.pop(key))
                self._streams.pop(key).stop()
            old = self._instances[node]
            old.stop()
            spec = old.spec
            instance = self._instances[node] = Instance(spec, run_root=old._run_root or self._run_root)  # noqa: SLF001
            instance.start()
            slots, snap = self._trace
            for lp in self.plan.links:
                other = lp.b if lp.a == node else lp.a if lp.b == node else None
                if other is not None and other in self._instances:
                    link = Link(self._instances[lp.a], lp.a_port, self._instances[lp.b], lp.b_port,
                                trace_slots=slots, trace_snap=snap, on_end=self._link_ended)
                    self._links.append(link)
                    link.start()
            return cross

    def wait_node(self, node: str, timeout: float) -> float:
        """Wait for ``node`` to boot and announce its addresses; returns its boot time."""
        from ..live import ANNOUNCE

        inst = self._instances[node]
        inst.wait_ready(timeout)
        inst.exec(ANNOUNCE, timeout=20)
        return float(getattr(inst, "boot_seconds", None) or 0.0)

    def states(self) -> dict[str, str]:
        """Every instance's state here (chain nodes and detours)."""
        out = {name: i.state.value for name, i in self._instances.items()}
        if self._live is not None:
            out.update({name: i.state.value for name, i in self._live.detours.items()})
        return out

    def node_samples(self, now: float) -> dict[str, Any]:
        """Counters of this worker's instances, as the local Lab's sampler reads them."""
        from ..observe.sampler import Sampler

        if self._stopped or self.plan is None:
            return {}
        return Sampler(self).node_samples(now)  # type: ignore[arg-type]

    def warm(self, size: int, ports: int, mem_mb: int) -> int:
        """Keep ``size`` blank instances booted here for the next inserts (``LiveChains.warm``)."""
        def work() -> int:
            with self._lock:
                self._require_running()
                kind = self.plan.graph.graph.get("ports") if self.plan is not None else None
                self.live.warm(size, ports=ports, mem_mb=mem_mb, port_kind=kind)  # fills in the background
                return size
        return self._spawned(work)

    def pool_available(self) -> int:
        """Blank instances ready in this worker's warm pool."""
        pool = self._live.pool if self._live is not None else None
        return int(pool.available) if pool is not None else 0

    # ------------------------------------------------------------ detours and steering
    def add_detour(self, node: str, kind: Any, params: dict[str, Any]) -> dict[str, Any]:
        """Boot a detour (``LiveChains.add``) here."""
        def work() -> dict[str, Any]:
            with self._lock:
                self._require_running()
                self.live.add(node, kind=kind, **params)
                change = self.live.history[-1]
                return {"boot_s": change.boot_s, "pid": self.live.detours[node].pid}
        return self._spawned(work)

    def remove_detour(self, node: str) -> None:
        with self._lock:
            if node not in self.live.detours:
                raise ChainError("no detour of that name on this worker", node=node)
            self.live.remove(node)

    def detour_names(self) -> list[str]:
        return list(self._live.detours) if self._live is not None else []

    def steer(self, link: Pair, match: str, via: Sequence[str]) -> int:
        """A steering rule on a link of this worker through detours of this worker."""
        with self._lock:
            self._require_running()
            return self.live.steer(link, match, via=via).id

    def unsteer(self, rule_id: int) -> None:
        with self._lock:
            self.live.unsteer(rule_id)

    def steer_table(self) -> list[dict[str, Any]]:
        return self._live.steering.table() if self._live is not None else []

    def steer_rules(self) -> list[int]:
        return list(self._live.steering.rules) if self._live is not None else []

    def _close_live(self) -> None:
        if self._live is not None:
            self._live.close()
