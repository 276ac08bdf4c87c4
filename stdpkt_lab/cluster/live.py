"""Live chains on a :class:`~.lab.DistributedLab`: insert, remove, add, steer while traffic flows.

The same calls as on a local Lab (:mod:`stdpkt_lab.live`)::

    lab.insert(("nat", "fw"), "mon", kind="bridge")            # placed, booted, spliced in
    lab.insert(("fw", "server"), "ids", kind="filter", host="worker-2")  # on a named worker
    lab.add("dpi", kind="bridge", host=lab.worker_of("nat"))    # a detour for steering
    rule = lab.steer(("nat", "fw"), "tcp port 80", via=["dpi"])
    lab.unsteer(rule); lab.remove("mon")

Each change is planned here exactly as the local Lab plans it
(:mod:`stdpkt_lab.describe.rewire`: ports keep their numbers, an impossible
change raises :class:`~stdpkt_lab.errors.ChainError` before anything starts).
A new node is placed like the others (``host=`` pins it, else the least loaded
worker, :mod:`.placement`) and booted by its worker's actor; then every worker
holding an end of the old links stops them and the new links are made: a
local relay when both ends run on one worker, else a pcap stream over TCP.
The worker-side steps reuse the local Lab's live chains (:mod:`.worker_live`).

Steering runs on the relays of one worker: a rule's link must join two nodes of
one worker and every ``via`` detour must run there too (``lab.add(...,
host=lab.worker_of(a))``); any other rule raises ``ChainError`` naming the
workers.  ``replace`` boots the new NF on the old one's worker; ``connect`` /
``disconnect`` hot-plug and unplug ports on the workers of the two ends.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..describe import ChainPlan, build_plan
from ..describe.rewire import check_kept, pinned_graph, splice, unsplice, with_link, without_link
from ..errors import ChainError
from ..live import _KEPT_ATTRS, Change, _link_ref

if TYPE_CHECKING:
    from .lab import DistributedLab
    from .remote import RemoteInstance

__all__ = ["DistributedLive", "ClusterRule", "ClusterLiveOps"]

Pair = tuple[str, str]
_ids = itertools.count(1)


@dataclass(frozen=True)
class ClusterRule:
    """A steering rule of a distributed lab: ``id`` here, ``remote_id`` on its worker."""

    id: int
    link: Pair
    match: str
    via: tuple[str, ...]
    worker: str
    remote_id: int

    @property
    def name(self) -> str:
        return f"steer-{self.id}"


class ClusterSteering:
    """``lab.live.steering`` of a distributed lab: the rules, and their counters from the workers."""

    def __init__(self, live: DistributedLive) -> None:
        self.live = live
        self.rules: dict[int, ClusterRule] = {}

    def find(self, rule: int | str | ClusterRule) -> ClusterRule:
        rid: Any = rule.id if isinstance(rule, ClusterRule) else rule
        if isinstance(rid, str) and rid.startswith("steer-") and rid[6:].isdigit():
            rid = int(rid[6:])
        if not isinstance(rid, int) or isinstance(rid, bool) or rid not in self.rules:
            raise ChainError(f"no steering rule {rule!r} (rules: "
                             f"{', '.join(r.name for r in self.rules.values()) or 'none'})")
        return self.rules[rid]

    def table(self) -> list[dict[str, Any]]:
        """One row per rule, as the local Lab's: id, link, match, via, flows, frames, bytes,
        drops, plus the worker."""
        by_worker: dict[str, dict[int, ClusterRule]] = {}
        for rule in self.rules.values():
            by_worker.setdefault(rule.worker, {})[rule.remote_id] = rule
        rows = []
        for address, rules in by_worker.items():
            actor = self.live.lab._actors.get(address)  # noqa: SLF001
            try:
                remote = actor.steer_table().result(timeout=30) if actor is not None else []
            except Exception:  # noqa: BLE001 - its worker is gone: no counters
                remote = []
            for row in remote:
                mine = rules.get(row["id"])
                if mine is not None:
                    rows.append({**row, "id": mine.id, "worker": address})
        return sorted(rows, key=lambda r: r["id"])


class DistributedLive:
    """The live-change controller of a distributed lab (``lab.live``)."""

    def __init__(self, lab: DistributedLab) -> None:
        self.lab = lab
        self.history: list[Change] = []
        self.detours: dict[str, str] = {}  # detour name -> worker address
        self.steering = ClusterSteering(self)
        self._lock = threading.RLock()

    # ------------------------------------------------------------ helpers
    def _plan(self, g: Any) -> ChainPlan:
        return build_plan(g, registry=self.lab._registry)  # noqa: SLF001

    def _kind(self, kind: Any, node: str) -> Any:
        from ..describe.catalogue import default_registry

        return (self.lab._registry or default_registry).lookup(kind, node=node)  # noqa: SLF001

    def _link_plan(self, a: str, b: str) -> Any:
        lp = next((lp for lp in self.lab.plan.links if {lp.a, lp.b} == {a, b}), None)
        if lp is None:
            raise ChainError(f"no link between {a!r} and {b!r} in the running chain (links: "
                             + ", ".join(f"{k.a}–{k.b}" for k in self.lab.plan.links) + ")")
        return lp

    def _new_name(self, node: str) -> None:
        if node in self.lab.plan.nodes or node in self.detours:
            raise ChainError("a node of that name is already in the chain", node=node)

    def _boot(self, node: str, spec: Any, mem_mb: int, host: Any, what: str,
              detour: Any = None) -> tuple[str, dict[str, Any]]:
        """Place ``node`` and boot it there (``detour``: (kind, params) of a detour)."""
        from tqdm.auto import tqdm

        lab = self.lab
        address = lab._place_new(node, mem_mb, host).address  # noqa: SLF001
        bar = tqdm(total=1, desc=f"{what} {node}", unit="instance", disable=not lab.progress, leave=False)
        try:
            actor = lab._ensure_actor(address)  # noqa: SLF001
            if detour is not None:
                info = actor.add_detour(node, *detour).result(timeout=lab.boot_timeout + 60)
            else:
                script = spec.script
                text = Path(script).read_text() if script is not None else None
                info = actor.boot_node(spec, text, what).result(timeout=lab.boot_timeout + 60)
            bar.update(1)
        except BaseException:
            lab.placement.pop(node, None)
            raise
        finally:
            bar.close()
        return address, info

    def warm(self, size: int = 1, *, ports: int = 2, mem_mb: int = 128, host: Any = None) -> dict[str, int]:
        """Keep ``size`` blank instances booted on the worker ``host`` (default: every worker
        of the lab) for the next inserts there (``LiveChains.warm`` on each worker)."""
        from .lab import _workers

        lab = self.lab
        lab._require_running()  # noqa: SLF001
        if host is None:
            targets = list(lab._actors)  # noqa: SLF001
        else:
            found = [w for w in _workers(lab.client) if w.matches(str(host))]
            if not found:
                raise ChainError(f"warm(host={host!r}) names no worker of the cluster")
            targets = [found[0].address]
        pending = {a: lab._ensure_actor(a).warm(size, ports, mem_mb) for a in targets}  # noqa: SLF001
        return {a: f.result(timeout=60) for a, f in pending.items()}

    def pool_available(self) -> dict[str, int]:
        """Ready instances in each worker's warm pool."""
        return dict(self.lab._each_worker("pool_available"))  # noqa: SLF001

    def _record(self, change: Change) -> Change:
        self.history.append(change)
        self.lab.events.append((change.time, f"live {change.what} {change.node}: "
                                f"switch {change.switch_s * 1e3:.1f} ms"))
        return change

    # ------------------------------------------------------------ operations
    def insert(self, link: Any, node: str, *, kind: Any, **params: Any) -> RemoteInstance:
        """Place and boot ``node`` (``host=`` names its worker) and splice it into ``link``."""
        a, b = _link_ref(link)
        lab = self.lab
        with self._lock, lab._lock:  # noqa: SLF001
            lab._require_running()  # noqa: SLF001
            old = lab.plan
            self._new_name(node)
            self._link_plan(a, b)
            transparent = self._kind(kind, node).transparent
            g = splice(pinned_graph(old), (a, b), node, {"kind": kind, **params},
                       keep_addresses=transparent)
            new = self._plan(g)
            check_kept(old, new, old.nodes, {(a, b): node, (b, a): node},
                       renumbered=() if transparent else (b,))
            spec = new.nodes[node].spec
            address, info = self._boot(node, spec, spec.mem_mb, params.get("host"), "inserting")
            self._forget_rules([(a, b)])
            try:
                dt = lab._rewire([(a, b)], [(a, node), (node, b)], new)  # noqa: SLF001
            except BaseException:
                lab._undo([(a, node), (node, b)], new)  # noqa: SLF001
                lab._actors[address].drop_node(node).result(timeout=60)  # noqa: SLF001
                lab.placement.pop(node, None)
                lab._restore(old, [(a, b)])  # noqa: SLF001
                raise
            lab.plan = new
            lab._broadcast_plan()  # noqa: SLF001
            lab._boot_seconds[node] = info["boot_s"]  # noqa: SLF001
            lab._pids.clear()  # noqa: SLF001
            details: dict[str, Any] = {"link": (a, b), "kind": new.nodes[node].kind.name,
                                       "pooled": info["pooled"], "worker": address}
            if not transparent:
                details["applied"] = lab._apply_all(old, new, skip=[node], flush=(a, b))  # noqa: SLF001
            self._record(Change("insert", node, time.time(), dt, info["boot_s"], details))
            return lab[node]

    def remove(self, node: str) -> None:
        """Stop ``node`` and join its two neighbours directly (the link heals)."""
        lab = self.lab
        with self._lock, lab._lock:  # noqa: SLF001
            lab._require_running()  # noqa: SLF001
            if node in self.detours:
                address = self.detours[node]
                for rule in [r for r in self.steering.rules.values() if node in r.via]:
                    self.steering.rules.pop(rule.id)  # the worker drops them with the detour
                lab._actors[address].remove_detour(node).result(timeout=60)  # noqa: SLF001
                del self.detours[node]
                lab.placement.pop(node, None)
                self._record(Change("remove", node, time.time(), details={"detour": True}))
                return
            old = lab.plan
            if node not in old.nodes:
                raise ChainError("no such node in the chain", node=node)
            transparent = old.nodes[node].kind.transparent
            g, (x, y) = unsplice(pinned_graph(old), node, keep_addresses=transparent)
            new = self._plan(g)
            check_kept(old, new, [n for n in old.nodes if n != node],
                       {(x, node): y, (y, node): x}, renumbered=() if transparent else (y,))
            self._forget_rules([(x, node), (node, y)])
            try:
                dt = lab._rewire([(x, node), (node, y)], [(x, y)], new)  # noqa: SLF001
            except BaseException:  # put node back on its path: it still runs
                lab._undo([(x, y)], new)  # noqa: SLF001
                lab._restore(old, [(x, node), (node, y)])  # noqa: SLF001
                raise
            address = lab.worker_of(node)
            lab.plan = new
            lab._actors[address].drop_node(node).result(timeout=60)  # noqa: SLF001
            lab.placement.pop(node, None)
            lab._broadcast_plan()  # noqa: SLF001
            details: dict[str, Any] = {"healed": (x, y), "worker": address}
            if not transparent:
                details["applied"] = lab._apply_all(old, new, flush=(x, y))  # noqa: SLF001
            self._record(Change("remove", node, time.time(), dt, 0.0, details))

    def add(self, node: str, *, kind: Any, **params: Any) -> RemoteInstance:
        """Boot a detour ``node`` (a transparent kind) on no path yet, for :meth:`steer`;
        ``host=`` names its worker (it must be the worker of the link it will serve)."""
        lab = self.lab
        with self._lock, lab._lock:  # noqa: SLF001
            lab._require_running()  # noqa: SLF001
            self._new_name(node)
            found = self._kind(kind, node)
            if not found.transparent:
                raise ChainError(f"add() boots a detour, which must be a transparent kind "
                                 f"(bridge, filter), not {kind!r}; to put a routing NF on a "
                                 "path use insert()", node=node)
            host = params.pop("host", None)
            mem = int(params.get("mem_mb") or 128)
            address, info = self._boot(node, None, mem, host, "adding", detour=(kind, params))
            self.detours[node] = address
            self._record(Change("add", node, time.time(), 0.0, info["boot_s"],
                                {"kind": str(kind), "worker": address}))
            return lab[node]

    def steer(self, link: Any, match: str, *, via: Sequence[str]) -> ClusterRule:
        """New flows a → b on ``link`` matching ``match`` go through the detours ``via``; the
        link and every detour must run on one worker."""
        a, b = _link_ref(link)
        via_t = (via,) if isinstance(via, str) else tuple(via)
        lab = self.lab
        with self._lock, lab._lock:  # noqa: SLF001
            lab._require_running()  # noqa: SLF001
            self._link_plan(a, b)
            wa, wb = lab.worker_of(a), lab.worker_of(b)
            if wa != wb:
                raise ChainError(f"steer on {a}–{b}: the link joins two workers ({a} on {wa}, "
                                 f"{b} on {wb}: a TCP stream link); on a DistributedLab steering "
                                 "runs on the relays of one worker, so the link's two ends and "
                                 "every via detour must run on the same worker",
                                 hint="pin the two nodes to one worker (g.nodes[n]['host'])")
            for v in via_t:
                if v not in self.detours:
                    raise ChainError(f"steer via {v!r}: not a detour booted with lab.add() "
                                     f"(detours: {', '.join(self.detours) or 'none'})", node=v)
                if self.detours[v] != wa:
                    raise ChainError(f"steer on {a}–{b} via {v!r}: the detour runs on worker "
                                     f"{self.detours[v]}, the link on {wa}; steering needs them "
                                     "on one worker",
                                     hint=f"lab.add({v!r}, kind=..., host={wa!r}) boots it there")
            remote = lab._actors[wa].steer((a, b), match, list(via_t)).result(timeout=60)  # noqa: SLF001
            rule = ClusterRule(next(_ids), (a, b), match, via_t, wa, int(remote))
            self.steering.rules[rule.id] = rule
            self._record(Change("steer", rule.name, time.time(),
                                details={"link": (a, b), "match": match, "via": list(via_t),
                                         "worker": wa}))
            return rule

    def unsteer(self, rule: int | str | ClusterRule) -> None:
        """Remove a steering rule; its flows take the default path from the next frame."""
        with self._lock:
            found = self.steering.find(rule)
            self.lab._actors[found.worker].unsteer(found.remote_id).result(timeout=60)  # noqa: SLF001
            del self.steering.rules[found.id]
            self._record(Change("unsteer", found.name, time.time()))

    def _forget_rules(self, pairs: Sequence[Pair]) -> None:
        """Rules on links about to be re-made go with them (the workers drop theirs)."""
        gone = [set(p) for p in pairs]
        for rule in [r for r in self.steering.rules.values() if set(r.link) in gone]:
            del self.steering.rules[rule.id]

    def replace(self, node: str, *, kind: Any, carry_state: bool = True, **params: Any) -> RemoteInstance:
        """Boot a new ``node`` of ``kind`` on its worker first; only once it is up move its links
        over, its conntrack table carried (as :meth:`Lab.replace`)."""
        lab = self.lab
        with self._lock, lab._lock:  # noqa: SLF001
            lab._require_running()  # noqa: SLF001
            old = lab.plan
            if node not in old.nodes:
                raise ChainError("no such node in the chain", node=node)
            if "host" in params:
                raise ChainError("replace() boots the new NF on the old one's worker; to move it, "
                                 "insert() a new NF and remove() this one", node=node)
            g = pinned_graph(old)
            attrs = {k: v for k, v in g.nodes[node].items() if k in (*_KEPT_ATTRS, "host")}
            g.nodes[node].clear()
            g.nodes[node].update({**attrs, "kind": kind, **params})
            new = self._plan(g)
            check_kept(old, new, [n for n in old.nodes if n != node])
            if len(new.nodes[node].spec.ports) != len(old.nodes[node].spec.ports):
                raise ChainError("the replacement would have a different number of ports", node=node)
            spec = new.nodes[node].spec
            text = Path(spec.script).read_text() if spec.script is not None else None
            self._forget_rules([(lp.a, lp.b) for lp in old.links if node in (lp.a, lp.b)])
            from tqdm.auto import tqdm

            bar = tqdm(total=1, desc=f"replacing {node}", unit="instance", disable=not lab.progress,
                       leave=False)
            try:
                info = lab._call(node, "replace_node", new, spec, text, carry_state,  # noqa: SLF001
                                 wait=lab.boot_timeout + 120)
                bar.update(1)
            finally:
                bar.close()
            t0 = time.perf_counter()
            for a, b in info["cross"]:
                peer = b if a == node else a
                lab._actor(peer).switch(new, [(a, b)], []).result(timeout=60)  # noqa: SLF001
                lab._wire(lab._link_plan(new, a, b), new)  # noqa: SLF001
            switch_s = info["switch_s"] + (time.perf_counter() - t0 if info["cross"] else 0.0)
            lab.plan = new
            lab._broadcast_plan()  # noqa: SLF001
            lab._boot_seconds[node] = info["boot_s"]  # noqa: SLF001
            lab._pids.clear()  # noqa: SLF001
            lab._forget_states()  # noqa: SLF001
            applied = lab._apply_all(old, new, skip=[node])  # noqa: SLF001
            self._record(Change("replace", node, time.time(), switch_s, info["boot_s"],
                                {"kind": new.nodes[node].kind.name, "conntrack_carried": info["carried"],
                                 "applied": applied, "worker": lab.worker_of(node)}))
            return lab[node]

    def connect(self, a: str, b: str, **attrs: Any) -> Pair:
        """A new link between running ``a`` and ``b`` (hot-plugged ports on their workers; a
        stream link if they run on two), routes re-derived everywhere; returns (a, b) as the
        plan orders them."""
        lab = self.lab
        with self._lock, lab._lock:  # noqa: SLF001
            lab._require_running()  # noqa: SLF001
            old = lab.plan
            g = with_link(pinned_graph(old), a, b, attrs)
            new = self._plan(g)
            check_kept(old, new, old.nodes)
            lp = lab._link_plan(new, a, b)  # noqa: SLF001
            plugged: list[tuple[str, int]] = []
            try:
                for end, index in ((lp.a, lp.a_port), (lp.b, lp.b_port)):
                    port = new.nodes[end].spec.ports[index]
                    address = str(port.address) if port.address is not None else None
                    if lab._call(end, "plug_port", end, index, port.mtu, address, wait=120):  # noqa: SLF001
                        plugged.append((end, index))
                dt = lab._rewire([], [(lp.a, lp.b)], new)  # noqa: SLF001
            except BaseException:
                lab._undo([(lp.a, lp.b)], old)  # noqa: SLF001
                for end, index in plugged:
                    lab._call(end, "unplug_port", end, index, wait=60)  # noqa: SLF001
                raise
            lab.plan = new
            lab._broadcast_plan()  # noqa: SLF001
            applied = lab._apply_all(old, new)  # noqa: SLF001
            self._record(Change("connect", f"{a}-{b}", time.time(), dt, 0.0, {"applied": applied}))
            return (lp.a, lp.b)

    def disconnect(self, a: str, b: str) -> None:
        """Remove the link between ``a`` and ``b`` (only a link on the last port of both ends:
        ports keep their numbers); a hot-plugged port is unplugged."""
        lab = self.lab
        with self._lock, lab._lock:  # noqa: SLF001
            lab._require_running()  # noqa: SLF001
            old = lab.plan
            lp = self._link_plan(a, b)
            for end, index in ((lp.a, lp.a_port), (lp.b, lp.b_port)):
                last = len(old.nodes[end].spec.ports) - 1
                if index != last:
                    raise ChainError(f"eth{index} is not its last port (eth{last}): disconnecting "
                                     "it would renumber the ports after it; remove() the node "
                                     "between instead", node=end)
            try:
                new = self._plan(without_link(pinned_graph(old), a, b))
            except ChainError as exc:
                raise ChainError(f"cannot disconnect {a!r} and {b!r}: {exc}") from None
            check_kept(old, new, [n for n in old.nodes if n not in (a, b)])
            self._forget_rules([(a, b)])
            lab._rewire([(lp.a, lp.b)], [], new)  # noqa: SLF001
            for end, index in ((lp.a, lp.a_port), (lp.b, lp.b_port)):
                lab._call(end, "unplug_port", end, index, wait=60)  # noqa: SLF001
            lab.plan = new
            lab._broadcast_plan()  # noqa: SLF001
            applied = lab._apply_all(old, new, skip=[a, b])  # noqa: SLF001
            self._record(Change("disconnect", f"{a}-{b}", time.time(), details={"applied": applied}))

    def graph(self) -> Any:
        g = self.lab.plan.graph.copy()
        for name in self.detours:
            g.add_node(name, kind="detour", detour=True)
        return g


class ClusterLiveOps:
    """The live-chain methods of :class:`~.lab.DistributedLab` (delegations to ``lab.live``)."""

    _live: DistributedLive | None

    @property
    def live(self) -> DistributedLive:
        if self._live is None:
            self._live = DistributedLive(self)  # type: ignore[arg-type]
        return self._live

    def insert(self, link: Pair, node: str, *, kind: Any, **params: Any) -> RemoteInstance:
        """Place, boot and splice ``node`` into the running ``link`` (``host=`` names a worker)."""
        return self.live.insert(link, node, kind=kind, **params)

    def remove(self, node: str) -> None:
        """Stop ``node``; the link it sat on heals (across workers too)."""
        self.live.remove(node)

    def add(self, node: str, *, kind: Any, **params: Any) -> RemoteInstance:
        """Boot a transparent detour for :meth:`steer` (``host=`` the link's worker)."""
        return self.live.add(node, kind=kind, **params)

    def steer(self, link: Pair, match: str, *, via: Sequence[str]) -> ClusterRule:
        """New flows on ``link`` matching ``match`` traverse the detours ``via`` (one worker)."""
        return self.live.steer(link, match, via=via)

    def unsteer(self, rule: Any) -> None:
        self.live.unsteer(rule)

    def replace(self, node: str, *, kind: Any, **params: Any) -> RemoteInstance:
        """Boot a new ``node`` first (on its worker), carry its conntrack state, move its links."""
        return self.live.replace(node, kind=kind, **params)

    def connect(self, a: str, b: str, **attrs: Any) -> Pair:
        """A new link between running ``a`` and ``b`` (hot-plugged ports, across workers too)."""
        return self.live.connect(a, b, **attrs)

    def disconnect(self, a: str, b: str) -> None:
        """Remove the link between ``a`` and ``b``."""
        self.live.disconnect(a, b)
