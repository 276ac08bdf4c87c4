"""Re-wiring a running distributed lab: which worker does which part of a change.

A mixin of :class:`~.lab.DistributedLab`.  A link whose two ends run on one worker
is a local relay there; any other is a pcap stream over TCP whose listening end
is on the worker of the link's first node (as the plan orders it), so the
counters, traces and injections of a link always come from one known place.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from .placement import WorkerInfo, place

if TYPE_CHECKING:
    from ..describe import ChainPlan, KindRegistry
    from .remote import RemoteInstance

__all__ = ["Wiring"]

Pair = tuple[str, str]


def cross_offloads(actor: Any, lp: Any) -> tuple[bool, bool]:
    """Whether each end of the cross-worker link ``lp`` sends offloaded frames (a vhost
    port with offload), asked of the worker running it: each end then finishes its frames
    unless the other takes them (what :class:`~stdpkt_lab.engine.links.Link` does locally)."""
    fa = actor(lp.a).port_offloads(lp.a, lp.a_port)
    fb = actor(lp.b).port_offloads(lp.b, lp.b_port)
    return bool(fa.result(timeout=60)), bool(fb.result(timeout=60))


class Wiring:
    """Placement of new nodes, link switches and plan pushes across the workers."""

    plan: ChainPlan
    placement: dict[str, WorkerInfo]
    client: Any
    progress: bool
    boot_timeout: float
    _registry: KindRegistry | None
    _actors: dict[str, Any]
    _boot_seconds: dict[str, float]
    _pids: dict[str, int | None]

    if TYPE_CHECKING:  # provided by DistributedLab
        def worker_of(self, node: str) -> str: ...
        def _actor(self, node: str) -> Any: ...
        def _call(self, node: str, method: str, *args: Any, wait: float | None = 60.0) -> Any: ...
        def _require_running(self) -> None: ...
        def _forget_states(self) -> None: ...
        def __getitem__(self, node: str) -> RemoteInstance: ...

    def _place_new(self, node: str, mem_mb: int, host: Any = None) -> WorkerInfo:
        """A worker for a new node: ``host`` if given, else as :func:`.place` spreads nodes,
        the running ones staying where they are.  Recorded in :attr:`placement`."""
        from .lab import _workers

        workers = _workers(self.client)
        known = {w.address for w in workers}
        mem = {n: (self.plan.nodes[n].spec.mem_mb if n in self.plan.nodes else 128)
               for n in self.placement}
        pins: dict[str, str] = {n: w.address for n, w in self.placement.items() if w.address in known}
        if host is not None:
            pins[node] = str(host)
        found = place({**{n: mem[n] for n in pins if n != node}, node: mem_mb}, workers, pins)[node]
        self.placement[node] = found
        return found

    def _link_plan(self, plan: ChainPlan, a: str, b: str) -> Any:
        return next(lp for lp in plan.links if {lp.a, lp.b} == {a, b})

    def _wire(self, lp: Any, plan: ChainPlan | None = None, *, wait: bool = True) -> None:
        """Join link ``lp``: a local relay when both ends run on one worker, else a pcap stream
        (the listening end on ``lp.a``'s worker)."""
        plan = plan or self.plan
        wa, wb = self.worker_of(lp.a), self.worker_of(lp.b)
        if wa == wb:
            self._actors[wa].switch(plan, [], [(lp.a, lp.b)]).result(timeout=60)
            return
        oa, ob = cross_offloads(self._actor, lp)
        host, port = self._actor(lp.a).listen(lp.a, lp.a_port, lp.b, ob).result(timeout=60)
        self._actor(lp.b).connect(lp.b, lp.b_port, lp.a, host, port, oa).result(timeout=60)
        if wait:  # relaying at both ends (a boot-time link instead connects while the guests boot)
            for end, other in ((lp.a, lp.b), (lp.b, lp.a)):
                self._actor(end).wait_stream(end, other, 30.0).result(timeout=60)

    def _rewire(self, old: Sequence[Pair], new: Sequence[Pair], plan: ChainPlan) -> float:
        """Stop the links ``old`` wherever their ends run and make the links ``new`` as ``plan``
        numbers them; returns the switch time (first stop → last link made, seconds)."""
        involved: dict[str, tuple[list[Pair], list[Pair]]] = {}
        for a, b in old:
            for node in (a, b):
                involved.setdefault(self.worker_of(node), ([], []))[0].append((a, b))
        cross = []
        for a, b in new:
            wa, wb = self.worker_of(a), self.worker_of(b)
            if wa == wb:
                involved.setdefault(wa, ([], []))[1].append((a, b))
            else:
                cross.append(self._link_plan(plan, a, b))
        t0 = time.perf_counter()
        pending = [self._actors[w].switch(plan, sorted(set(o)), n) for w, (o, n) in involved.items()]
        for f in pending:
            f.result(timeout=60)
        for lp in cross:
            self._wire(lp, plan)
        return time.perf_counter() - t0

    def _undo(self, pairs: Sequence[Pair], plan: ChainPlan) -> None:
        """After a failed change: stop whatever of the new links ``pairs`` was made (best effort)."""
        try:
            self._rewire(pairs, [], plan)
        except Exception:  # noqa: BLE001 - the error of the change is the one to raise
            pass

    def _restore(self, old: ChainPlan, pairs: Sequence[Pair]) -> None:
        """After a failed change: the links ``pairs`` of ``old`` joined again (best effort)."""
        self._broadcast_plan(old)
        for a, b in pairs:
            try:
                self._rewire([(a, b)], [], old)
                self._wire(self._link_plan(old, a, b), old)
            except Exception:  # noqa: BLE001 - the error of the change is the one to raise
                continue

    def _broadcast_plan(self, plan: ChainPlan | None = None) -> None:
        plan = plan or self.plan
        pending = [a.set_plan(plan, self._registry, self.boot_timeout) for a in self._actors.values()]
        for f in pending:
            f.result(timeout=60)

    def _apply_all(self, old: ChainPlan, new: ChainPlan, skip: Sequence[str] = (),
                   flush: Sequence[str] = ()) -> dict[str, Any]:
        """Addresses, routes and /etc/hosts of every running instance as ``new`` says (each
        worker applies them to its own instances)."""
        pending = [a.apply_plan(old, new, list(skip), list(flush)) for a in self._actors.values()]
        applied: dict[str, Any] = {}
        for f in pending:
            applied.update(f.result(timeout=120))
        return applied

    def restart(self, node: str) -> RemoteInstance:
        """Boot a fresh ``node`` on its worker and re-join its links (as ``Lab.restart``)."""
        from tqdm.auto import tqdm

        self._require_running()
        cross = self._call(node, "restart_node", node, wait=120)
        for a, b in cross:
            self._actor(b if a == node else a).switch(self.plan, [(a, b)], []).result(timeout=60)
            self._wire(self._link_plan(self.plan, a, b))
        bar = tqdm(total=1, desc=f"booting {node}", unit="instance", disable=not self.progress)
        try:
            self._boot_seconds[node] = self._call(node, "wait_node", node, self.boot_timeout,
                                                  wait=self.boot_timeout + 30)
            bar.update(1)
        finally:
            bar.close()
        self._pids.clear()
        self._forget_states()
        conditioner = getattr(self, "_conditioner", None)
        if conditioner is not None:
            conditioner.restarted(node)
        return self[node]
