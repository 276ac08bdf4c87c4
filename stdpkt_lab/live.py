"""Live chains: re-wire a running :class:`~stdpkt_lab.lab.Lab` without restarting anything.

::

    lab.insert(("fw", "server"), "mon", kind="bridge")   # booted, spliced in
    lab.add("ids", kind="bridge")                        # booted, on no path yet (a detour)
    lab.steer(("nat", "fw"), "tcp port 80", via=["ids"]) # new HTTP flows detour through ids
    lab.replace("fw", kind="firewall", allow=["icmp"])   # new one first; conntrack carried
    lab.remove("mon")                                    # the link heals

How a splice works: the new instance boots (from the lab's warm pool when
one fits, :meth:`LiveChains.warm`) *before* anything is touched; then the
link's two pumps stop and two new links start on the same ports (the sockets
belong to the instances, so frames in flight wait in them: nothing is lost
but the time of the switch).  A transparent kind (``bridge``, ``filter``)
keeps every address, so established TCP connections carry on.  Each change
is planned first (:mod:`stdpkt_lab.describe.rewire`): a change that would
renumber a running instance's ports, or is otherwise invalid, raises
:class:`~stdpkt_lab.errors.ChainError` before any process starts or stops.

Inserting a *routing* kind (router, nat, firewall, ...) into a link makes a
new subnet on the far side (``b`` of ``(a, b)``): ``b`` is renumbered into
it, routes of every instance are re-derived and applied through the agents,
and ``/etc/hosts`` is rewritten everywhere.  Connections to or from ``b``'s
old address cannot survive that (their endpoint address is gone: TCP
identifies a connection by its addresses); connections that only pass
through keep going after a short outage.

Each operation appends a record to :attr:`LiveChains.history` (what, when,
the switch time in seconds, conntrack entries carried).
"""

from __future__ import annotations

import dataclasses
import itertools
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import networkx as nx

from .describe import ChainPlan, build_plan
from .describe.rewire import (
    check_kept,
    node_changes,
    pinned_graph,
    splice,
    unsplice,
    with_link,
    without_link,
)
from .engine.instance import Instance
from .engine.links import Link
from .engine.spec import default_port_kind
from .errors import BootError, ChainError, StateError, StdpktError

if TYPE_CHECKING:
    from .describe import KindRegistry
    from .engine.pool import InstancePool
    from .lab import Lab
    from .steering import SteerRule

__all__ = ["LiveChains", "Change", "ANNOUNCE"]

LinkRef = tuple[str, str]
#: Gratuitous ARP for every address of an instance (after a boot or a renumbering).
ANNOUNCE = ('ip -4 -o addr show | while read -r _ dev _ cidr _; do [ "$dev" = lo ] || '
            'busybox arping -q -U -c 1 -I "$dev" "${cidr%/*}"; done; true')
_serial = itertools.count(1)
#: Node attributes a replacement keeps from the node it replaces.
_KEPT_ATTRS = ("label", "pos", "mem_mb")


@dataclasses.dataclass
class Change:
    """One live change: ``what`` ('insert', 'remove', ...), ``node``, the time it was made,
    the switch time (pumps stopped → new links running, seconds) and details."""

    what: str
    node: str
    time: float
    switch_s: float = 0.0
    boot_s: float = 0.0
    details: dict[str, Any] = dataclasses.field(default_factory=dict)


class LiveChains:
    """The live-change controller of one lab (``lab.live``); the Lab methods delegate here."""

    def __init__(self, lab: Lab) -> None:
        self.lab = lab
        self.history: list[Change] = []
        self.detours: dict[str, Instance] = {}
        self._pool: InstancePool | None = None
        self._lock = threading.RLock()
        from .steering import Steering

        self.steering = Steering(self)

    # ------------------------------------------------------------ warm pool
    def warm(self, size: int = 1, *, ports: int = 2, mem_mb: int = 128,
             port_kind: str | None = None) -> InstancePool:
        """Keep ``size`` blank instances of ``ports`` ports booted for the next inserts
        (a pooled NF is up in milliseconds); stopped with the lab.  Their port kind is
        ``port_kind``, else the lab graph's ``ports=`` attribute, else ``$STDPKT_PORTS``
        or the default: an insert whose ports are of another kind boots cold."""
        from .engine.pool import InstancePool

        with self._lock:
            if self._pool is not None:
                self._pool.stop()
            if port_kind is None:  # what the lab's nodes get unless a node says otherwise
                plan = getattr(self.lab, "plan", None)  # a worker's side of a lab has none
                port_kind = (plan.graph.graph.get("ports") if plan is not None else None) or default_port_kind()
            self._pool = InstancePool(size, ports=ports, mem_mb=mem_mb, port_kind=port_kind).start()
            return self._pool

    @property
    def pool(self) -> InstancePool | None:
        return self._pool

    def close(self) -> None:
        """Stop the warm pool and the detours (the lab stops everything else). Idempotent."""
        self.steering.close()
        with self._lock:
            pool, self._pool = self._pool, None
            detours = list(self.detours.values())
            self.detours.clear()
        if pool is not None:
            pool.stop()
        for inst in detours:
            inst.stop()

    # ------------------------------------------------------------ helpers
    @property
    def _registry(self) -> KindRegistry | None:
        return getattr(self.lab, "_registry", None)

    def _plan(self, g: nx.Graph) -> ChainPlan:
        return build_plan(g, registry=self._registry)

    def _kind(self, kind: Any, node: str) -> Any:
        from .describe.catalogue import default_registry

        return (self._registry or default_registry).lookup(kind, node=node)

    def _require_running(self) -> None:
        self.lab._require_running()  # noqa: SLF001 - the lab's own check

    def _boot(self, spec: Any, what: str) -> tuple[Instance, float]:
        """A running instance for ``spec``: from the warm pool if one fits, else a cold boot."""
        from .engine.spec import pool_mismatch

        t0 = time.perf_counter()
        pool = self._pool
        inst: Instance | None = None
        if pool is not None and pool.available and not pool_mismatch(pool._shape, spec):  # noqa: SLF001
            inst = pool.take(spec, timeout=5.0)
        if inst is None:
            root = self.lab._run_root  # noqa: SLF001 - new instances live in the lab's run dir
            assert root is not None
            gen = Path(root) / f"live-{next(_serial)}"  # a replacement may share the old's name
            gen.mkdir(mode=0o700)
            inst = Instance(spec, run_root=gen)
            inst.start()
        bar = _progress(f"{what} {spec.name}", self.lab.progress)
        try:
            inst.wait_ready(self.lab.boot_timeout)
            _check_setup(inst)
            inst.exec(ANNOUNCE, timeout=20)
            bar.update(1)
        except BaseException:
            inst.stop()
            raise
        finally:
            bar.close()
        return inst, time.perf_counter() - t0

    def _new_link(self, plan: ChainPlan, a: str, b: str, instances: Mapping[str, Instance]) -> Link:
        lp = next(lp for lp in plan.links if {lp.a, lp.b} == {a, b})
        slots, snap = self.lab._trace  # noqa: SLF001
        return Link(instances[lp.a], lp.a_port, instances[lp.b], lp.b_port,
                    trace_slots=slots, trace_snap=snap, on_end=self.lab._link_ended)  # noqa: SLF001

    def _switch(self, old_links: Sequence[Link], new: Sequence[tuple[str, str]], plan: ChainPlan,
                instances: Mapping[str, Instance]) -> tuple[list[Link], float]:
        """Stop ``old_links`` and start links ``new`` (as planned in ``plan``); on a failure
        put the old links back.  Returns the new links and the switch time."""
        made = [self._new_link(plan, a, b, instances) for a, b in new]
        t0 = time.perf_counter()
        for link in old_links:
            link.stop()
        started: list[Link] = []
        try:
            for link in made:
                link.start()
                started.append(link)
        except BaseException:
            for link in started:
                link.stop()
            restored = [Link(k.a, k.a_port, k.b, k.b_port, trace_slots=self.lab._trace[0],  # noqa: SLF001
                             trace_snap=self.lab._trace[1], on_end=self.lab._link_ended)  # noqa: SLF001
                        for k in old_links]
            for link in restored:
                link.start()
            links = self.lab._links  # noqa: SLF001
            for old, back in zip(old_links, restored, strict=True):
                links[links.index(old)] = back
            raise
        dt = time.perf_counter() - t0
        links = self.lab._links  # noqa: SLF001
        for link in old_links:
            links.remove(link)
        links.extend(made)
        return made, dt

    def _link(self, a: str, b: str) -> Link:
        try:
            return self.lab.link(a, b)
        except KeyError:
            raise ChainError(f"no link between {a!r} and {b!r} in the running chain (links: "
                             + ", ".join(f"{k.a.name}–{k.b.name}" for k in self.lab.links) + ")") from None

    def _links_of(self, node: str) -> list[Link]:
        return [k for k in self.lab._links if node in (k.a.name, k.b.name)]  # noqa: SLF001

    def _apply(self, old: ChainPlan, new: ChainPlan, skip: Iterable[str] = (),
               flush: Iterable[str] = ()) -> dict[str, Any]:
        """Push address, route, gateway and /etc/hosts changes to running instances (all at
        once: each exec costs tens of ms under ptrace); ``flush`` nodes also drop their ARP
        caches and announce their addresses."""
        skipped, flushed = set(skip), set(flush)
        work = {}
        for name, inst in self.lab._instances.items():  # noqa: SLF001
            if name in skipped or name not in old.nodes or name not in new.nodes:
                continue
            changes = node_changes(old, new, name)
            if changes or name in flushed:
                work[name] = (inst, changes)
        if work:
            with ThreadPoolExecutor(max_workers=min(8, len(work))) as pool:
                list(pool.map(lambda item: apply_changes(item[0], item[1], flush=item[0].name in flushed),
                              work.values()))
        return {name: sorted(changes) for name, (_, changes) in work.items() if changes}

    def _record(self, change: Change) -> Change:
        self.history.append(change)
        self.lab.events.append((change.time, f"live {change.what} {change.node}: "
                                f"switch {change.switch_s * 1e3:.1f} ms"))
        return change

    # ------------------------------------------------------------ operations
    def insert(self, link: LinkRef, node: str, *, kind: Any, **params: Any) -> Instance:
        """Boot ``node`` (``kind``, ``params``) and splice it into the running ``link`` = (a, b)."""
        a, b = _link_ref(link)
        with self._lock, self.lab._lock:  # noqa: SLF001
            self._require_running()
            old = self.lab.plan
            if node in old.nodes or node in self.detours:
                raise ChainError("a node of that name is already in the chain", node=node)
            current = self._link(a, b)
            transparent = self._kind(kind, node).transparent
            g = splice(pinned_graph(old), (a, b), node, {"kind": kind, **params},
                       keep_addresses=transparent)
            new = self._plan(g)
            check_kept(old, new, old.nodes, {(a, b): node, (b, a): node},
                       renumbered=() if transparent else (b,))
            inst, boot_s = self._boot(new.nodes[node].spec, "inserting")
            instances = {**self.lab._instances, node: inst}  # noqa: SLF001
            try:
                self._unsteer_links([current])
                _, dt = self._switch([current], [(a, node), (node, b)], new, instances)
            except BaseException:
                inst.stop()
                raise
            self.lab.plan = new  # the plan first: the sampler looks instances up in it
            self.lab._instances[node] = inst  # noqa: SLF001
            details: dict[str, Any] = {"link": (a, b), "kind": new.nodes[node].kind.name,
                                       "pooled": inst._pooled}  # noqa: SLF001
            if not transparent:
                details["applied"] = self._apply(old, new, skip=[node], flush=(a, b))
            self._record(Change("insert", node, time.time(), dt, boot_s, details))
            return inst

    def remove(self, node: str) -> None:
        """Stop ``node`` and join its two neighbours directly (the link heals)."""
        with self._lock, self.lab._lock:  # noqa: SLF001
            self._require_running()
            if node in self.detours:
                self._unsteer_node(node)
                self.detours.pop(node).stop()
                self._record(Change("remove", node, time.time(), details={"detour": True}))
                return
            old = self.lab.plan
            if node not in old.nodes:
                raise ChainError("no such node in the chain", node=node)
            transparent = old.nodes[node].kind.transparent
            g, (x, y) = unsplice(pinned_graph(old), node, keep_addresses=transparent)
            new = self._plan(g)
            check_kept(old, new, [n for n in old.nodes if n != node],
                       {(x, node): y, (y, node): x}, renumbered=() if transparent else (y,))
            self._unsteer_links(self._links_of(node))
            _, dt = self._switch(self._links_of(node), [(x, y)], new, self.lab._instances)  # noqa: SLF001
            inst = self.lab._instances.pop(node)  # noqa: SLF001
            self.lab.plan = new
            inst.stop()
            details: dict[str, Any] = {"healed": (x, y)}
            if not transparent:
                details["applied"] = self._apply(old, new, flush=(x, y))
            self._record(Change("remove", node, time.time(), dt, 0.0, details))

    def add(self, node: str, *, kind: Any, **params: Any) -> Instance:
        """Boot ``node`` on no path yet: a detour for :meth:`steer` (a transparent kind with
        two ports), listed in :attr:`detours` and not in ``lab.graph`` until it is linked."""
        with self._lock, self.lab._lock:  # noqa: SLF001
            self._require_running()
            old = self.lab.plan
            if node in old.nodes or node in self.detours:
                raise ChainError("a node of that name is already in the chain", node=node)
            if not self._kind(kind, node).transparent:
                raise ChainError(f"add() boots a detour, which must be a transparent kind "
                                 f"(bridge, filter), not {kind!r}; to put a routing NF on a "
                                 "path use insert()", node=node)
            # planned in place between two stand-in ends, so rules naming nodes resolve
            g = pinned_graph(old)
            stubs = [f"{node}-in", f"{node}-out"]
            for s in stubs:
                if s in g:
                    raise ChainError(f"cannot plan the detour: {s!r} is taken", node=node)
                g.add_node(s, kind="host")
            g.add_node(node, kind=kind, **params)
            g.add_edge(stubs[0], node)
            g.add_edge(node, stubs[1])
            spec = dataclasses.replace(self._plan(g).nodes[node].spec, hosts=_hosts_of(old))
            inst, boot_s = self._boot(spec, "adding")
            self.detours[node] = inst
            self._record(Change("add", node, time.time(), 0.0, boot_s, {"kind": str(kind)}))
            return inst

    def replace(self, node: str, *, kind: Any, carry_state: bool = True, **params: Any) -> Instance:
        """Boot a new ``node`` of ``kind`` first; only once it is up (its setup succeeded)
        move the links over; if it fails, the old one keeps serving and the error says why.

        With ``carry_state`` the old instance's conntrack table is dumped
        (``conntrack -L -o save``) and loaded into the new one (``conntrack -I``)
        just before the switch, so established flows stay ESTABLISHED for a
        stateful NF (firewall, filter, nat, lb)."""
        with self._lock, self.lab._lock:  # noqa: SLF001
            self._require_running()
            old = self.lab.plan
            if node not in old.nodes:
                raise ChainError("no such node in the chain", node=node)
            g = pinned_graph(old)
            attrs = {k: v for k, v in g.nodes[node].items() if k in _KEPT_ATTRS}
            g.nodes[node].clear()
            g.nodes[node].update({**attrs, "kind": kind, **params})
            new = self._plan(g)
            check_kept(old, new, [n for n in old.nodes if n != node])
            if len(new.nodes[node].spec.ports) != len(old.nodes[node].spec.ports):
                raise ChainError("the replacement would have a different number of ports", node=node)
            try:
                inst, boot_s = self._boot(new.nodes[node].spec, "replacing")
            except StdpktError as exc:
                raise BootError(f"replacement not started, the old {node!r} keeps serving: {exc}",
                                name=node, console_tail=getattr(exc, "console_tail", "")) from exc
            old_inst = self.lab._instances[node]  # noqa: SLF001
            carried = 0
            try:
                if carry_state:
                    carried = carry_conntrack(old_inst, inst)
                instances = {**self.lab._instances, node: inst}  # noqa: SLF001
                links = self._links_of(node)
                self._unsteer_links(links)
                pairs = [(k.a.name, k.b.name) for k in links]
                _, dt = self._switch(links, pairs, new, instances)
            except BaseException:
                inst.stop()
                raise
            self.lab._instances[node] = inst  # noqa: SLF001
            self.lab.plan = new
            old_inst.stop()
            applied = self._apply(old, new, skip=[node])
            self._record(Change("replace", node, time.time(), dt, boot_s,
                                {"kind": new.nodes[node].kind.name, "conntrack_carried": carried,
                                 "applied": applied}))
            return inst

    def connect(self, a: str, b: str, **attrs: Any) -> Link:
        """A new link between running ``a`` and ``b``: a hot-plugged port on each
        (:mod:`stdpkt_lab.engine.hotplug`), addressed as the re-planned chain says, routes
        re-derived and applied everywhere."""
        from .engine import hotplug

        with self._lock, self.lab._lock:  # noqa: SLF001
            self._require_running()
            old = self.lab.plan
            g = with_link(pinned_graph(old), a, b, attrs)
            new = self._plan(g)
            check_kept(old, new, old.nodes)
            lp = next(lp for lp in new.links if {lp.a, lp.b} == {a, b})
            plugged: list[tuple[Instance, int]] = []
            try:
                for end, index in ((lp.a, lp.a_port), (lp.b, lp.b_port)):
                    inst = self.lab._instances[end]  # noqa: SLF001
                    port = new.nodes[end].spec.ports[index]
                    if _has_port(inst, index):  # a boot-time port left unlinked by disconnect()
                        booted = inst.spec.ports[index].mtu
                        if booted != port.mtu:
                            raise ChainError(f"eth{index} was booted with MTU {booted}, the link "
                                             f"wants {port.mtu}", node=end)
                        if port.address is not None:
                            inst.exec(f"ip addr add {port.address} dev eth{index}", timeout=20).check()
                        continue
                    hotplug.plug(inst, index, mtu=port.mtu,
                                 address=str(port.address) if port.address else None)
                    plugged.append((inst, index))
                made, dt = self._switch([], [(lp.a, lp.b)], new, self.lab._instances)  # noqa: SLF001
            except BaseException:
                for inst, index in plugged:
                    hotplug.unplug(inst, index)
                raise
            self.lab.plan = new
            applied = self._apply(old, new)
            self._record(Change("connect", f"{a}-{b}", time.time(), dt, 0.0, {"applied": applied}))
            return made[0]

    def disconnect(self, a: str, b: str) -> None:
        """Remove the link between ``a`` and ``b``; a hot-plugged port is unplugged, a boot-time
        port stays (unlinked: a running kernel's boot ports cannot be removed)."""
        from .engine import hotplug

        with self._lock, self.lab._lock:  # noqa: SLF001
            self._require_running()
            old = self.lab.plan
            link = self._link(a, b)
            # ports keep their numbers, and a plan with fewer links numbers later ports down:
            # only a link on the last port of both ends can go (a hot-plugged one, say)
            for inst, index in ((link.a, link.a_port), (link.b, link.b_port)):
                last = len(old.nodes[inst.name].spec.ports) - 1
                if index != last:
                    raise ChainError(f"eth{index} is not its last port (eth{last}): disconnecting "
                                     "it would renumber the ports after it; remove() the node "
                                     "between instead", node=inst.name)
            new_graph = without_link(pinned_graph(old), a, b)
            try:
                new = self._plan(new_graph)
            except ChainError as exc:
                raise ChainError(f"cannot disconnect {a!r} and {b!r}: {exc}") from None
            check_kept(old, new, [n for n in old.nodes if n not in (a, b)])
            self._unsteer_links([link])
            link.stop()
            self.lab._links.remove(link)  # noqa: SLF001
            for inst, index in ((link.a, link.a_port), (link.b, link.b_port)):
                if hotplug.is_plugged(inst, index):
                    hotplug.unplug(inst, index)
                else:  # a boot-time port stays, unlinked and unaddressed, for a later connect()
                    inst.exec(f"ip addr flush dev eth{index}", timeout=20)
            self.lab.plan = new
            applied = self._apply(old, new, skip=[a, b])
            self._record(Change("disconnect", f"{a}-{b}", time.time(), details={"applied": applied}))

    # ------------------------------------------------------------ steering (stdpkt_lab.steering)
    def steer(self, link: LinkRef, match: str, *, via: Sequence[str]) -> SteerRule:
        """New flows a → b on ``link`` matching the pcap filter ``match`` traverse the detours
        ``via`` (booted with :meth:`add`) in order; replies come back the same way."""
        a, b = _link_ref(link)
        with self._lock, self.lab._lock:  # noqa: SLF001
            self._require_running()
            rule = self.steering.steer((a, b), match, via=via)
            self._record(Change("steer", rule.name, time.time(),
                                details={"link": (a, b), "match": match, "via": list(rule.via)}))
            return rule

    def unsteer(self, rule: int | str | SteerRule) -> None:
        """Remove a steering rule; its flows take the default path from the next frame."""
        with self._lock, self.lab._lock:  # noqa: SLF001
            self.steering.unsteer(rule)
            self._record(Change("unsteer", str(getattr(rule, "name", rule)), time.time()))

    def _unsteer_links(self, links: Iterable[Link]) -> None:
        """Steering rules on links about to be replaced are dropped (their flows fall back
        to the default path)."""
        for link in links:
            self.steering.drop_link(link)

    def _unsteer_node(self, node: str) -> None:
        self.steering.drop_via(node)

    def graph(self) -> nx.Graph:
        """The running chain plus detours (``detour=True``): for drawing, not for saving."""
        g = self.lab.plan.graph.copy()
        for name, inst in self.detours.items():
            g.add_node(name, kind="detour", detour=True)
            del inst
        return g


# ---------------------------------------------------------------- helpers used by the operations
def _has_port(inst: Instance, index: int) -> bool:
    try:
        inst.port(index)
    except (StateError, IndexError):
        return False
    return True


def _link_ref(link: Any) -> LinkRef:
    if not (isinstance(link, (tuple, list)) and len(link) == 2 and all(isinstance(x, str) for x in link)):
        raise ChainError(f"a link is a pair of node names, got {link!r}")
    return str(link[0]), str(link[1])


def _hosts_of(plan: ChainPlan) -> str | None:
    return next((n.spec.hosts for n in plan.nodes.values() if n.spec.hosts), None)


def _check_setup(inst: Instance) -> None:
    """A replacement whose kind set-up failed (say, an iptables rule the kernel refused)
    is not put in service: BootError with the console, which shows the failing command."""
    tail = inst.console_tail(80)
    if "setup script exited with status" in tail:
        status = tail.rsplit("setup script exited with status", 1)[1].split()[0]
        raise BootError(f"its set-up failed (status {status})", name=inst.name, console_tail=tail)


def apply_changes(inst: Instance, changes: Mapping[str, Any], *, flush: bool = False) -> None:
    """Apply :func:`~stdpkt_lab.describe.rewire.node_changes` to a running instance (and with
    ``flush`` forget its ARP cache and announce its addresses)."""
    cmds: list[str] = []
    for index, (before, after) in sorted(changes.get("addresses", {}).items()):
        if before is not None:
            cmds.append(f"ip addr del {before} dev eth{index}")
        if after is not None:
            cmds.append(f"ip addr add {after} dev eth{index}")
    if "routes" in changes:
        before, after = changes["routes"]
        cmds += [f"ip route del {r}" for r in before if r not in after]
        cmds += [f"ip route replace {r}" for r in after]
    if "gateway" in changes:
        _, gw = changes["gateway"]
        cmds.append(f"ip route replace default via {gw}" if gw else "ip route del default")
    if cmds or flush:
        # routes whose gateway is not yet reachable are retried once after the others
        script = "\n".join(f"{c} 2>/dev/null || echo {c!r} >> /tmp/.retry" for c in cmds)
        script += "\n[ -f /tmp/.retry ] && { sh /tmp/.retry; rm -f /tmp/.retry; }; true"
        if flush:
            script += "\nip neigh flush all; " + ANNOUNCE
        result = inst.exec(script, timeout=30)
        if result.returncode != 0:
            raise StateError(f"{inst.name}: applying {sorted(changes)} failed: "
                             f"{(result.stderr or result.stdout).strip()}")
    if "hosts" in changes and changes["hosts"] is not None:
        inst.exec("cat > /etc/hosts", input=changes["hosts"].encode(), timeout=20)


def carry_conntrack(old: Instance, new: Instance) -> int:
    """Dump ``old``'s conntrack table and load it into ``new``; returns the entries loaded."""
    dump = old.exec("conntrack -L -o save 2>/dev/null", timeout=30)
    lines = [ln.strip() for ln in dump.stdout.splitlines() if ln.strip().startswith("-A ")]
    if not lines:
        return 0
    script = "\n".join("conntrack -I " + ln[3:] + " 2>/dev/null && echo ok" for ln in lines)
    loaded = new.exec(script, timeout=60)
    return loaded.stdout.split().count("ok")


def _progress(desc: str, enabled: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=1, desc=desc, unit="instance", disable=not enabled, leave=False)
