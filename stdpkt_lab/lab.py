"""``Lab``: a chain graph brought to life.

::

    with Lab(g) as lab:                    # plans (validates) at once; boots on enter
        lab.exec("client", "wget -qO- http://server/")
        lab["nat"].read_file("/proc/net/nf_conntrack")

The description (``stdpkt_lab.describe``) is planned in the constructor, so a bad
graph fails before any process starts.  :meth:`Lab.start` boots every instance
concurrently with a progress bar, joins the links with relays, and on any
failure rolls back exactly what it had started (Click's stage-aware
initialisation).  :meth:`Lab.stop` is idempotent.
"""

from __future__ import annotations

import enum
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .describe import ChainPlan, build_plan
from .describe.startorder import start_waves, stop_actions
from .engine.instance import Instance
from .engine.links import Link
from .engine.ownership import remove_run_dir
from .engine.paths import make_run_root
from .errors import StateError
from .lab_features import LinkConditions, LiveChainOps, StateTables
from .observe import Journey, Sampler, Subscription, follow_packet, records, to_packets, write_pcap
from .observe.state import parse_iptables_save

if TYPE_CHECKING:
    import networkx as nx

    from .describe import KindRegistry
    from .engine.agent import ExecResult
    from .live import LiveChains
    from .relay import Pump, TracedFrame

LinkRef = tuple[str, str]
#: Gratuitous ARP for every address of a (re)booted instance.
_ANNOUNCE = ('ip -4 -o addr show | while read -r _ dev _ cidr _; do [ "$dev" = lo ] || '
             'busybox arping -q -U -c 1 -I "$dev" "${cidr%/*}"; done; true')

__all__ = ["Lab", "LabState"]


class LabState(enum.Enum):
    CREATED = "created"
    STARTING = "starting"
    RUNNING = "running"
    STOPPED = "stopped"
    FAILED = "failed"


class Lab(StateTables, LinkConditions, LiveChainOps):
    """Running instances and links of one chain graph.

    ``Lab(g, cluster=client)`` (a ``dask.distributed.Client``) spreads the
    instances over the cluster's workers instead and returns a
    :class:`stdpkt_lab.cluster.DistributedLab` with the same main methods.
    """

    def __new__(cls, graph: nx.Graph, *args: Any, cluster: Any = None, **kwargs: Any) -> Any:
        if cluster is not None:
            from .cluster import DistributedLab

            return DistributedLab(graph, cluster=cluster, **kwargs)
        return super().__new__(cls)

    def __init__(
        self,
        graph: nx.Graph,
        *,
        registry: KindRegistry | None = None,
        boot_timeout: float = 120.0,
        progress: bool = True,
        trace_slots: int = 1024,
        trace_snap: int = 256,
        sample_hz: float | None = 5.0,
    ) -> None:
        self.plan: ChainPlan = build_plan(graph, registry=registry)
        self._registry = registry
        self._live: LiveChains | None = None
        self._waves = start_waves(self.plan.graph)  # --- start order / stop actions ---
        self._on_stop = stop_actions(self.plan.graph)
        self.boot_timeout = boot_timeout
        self.progress = progress
        self._trace = (trace_slots, trace_snap)
        self.sampler: Sampler = Sampler(self, rate_hz=sample_hz or 1.0)
        self._sample_hz = sample_hz
        self._state = LabState.CREATED
        self._instances: dict[str, Instance] = {}
        self._links: list[Link] = []
        self._run_root: Path | None = None
        self._lock = threading.RLock()
        self.events: list[tuple[float, str]] = []  # (time, what) — link ends, instance deaths

    # ------------------------------------------------------------ mapping view
    @property
    def state(self) -> LabState:
        return self._state

    @property
    def graph(self) -> nx.Graph:
        return self.plan.graph

    def __getitem__(self, node: str) -> Instance:
        try:
            return self._instances[node]
        except KeyError:
            if self._live is not None and node in self._live.detours:
                return self._live.detours[node]
            raise KeyError(f"no node {node!r} in this lab (nodes: {', '.join(self.plan.nodes)})") from None

    def __iter__(self) -> Iterator[str]:
        return iter(self.plan.nodes)

    def __len__(self) -> int:
        return len(self.plan.nodes)

    @property
    def instances(self) -> dict[str, Instance]:
        return dict(self._instances)

    @property
    def links(self) -> list[Link]:
        return list(self._links)

    def link(self, a: str, b: str) -> Link:
        """The link between nodes ``a`` and ``b`` (either order)."""
        for link in self._links:
            if {link.a.name, link.b.name} == {a, b}:
                return link
        raise KeyError(f"no link between {a!r} and {b!r}")

    def shell(self) -> str:
        """The equivalent ``stdpkt run`` pipeline (linear chains only)."""
        return self.plan.shell_pipeline()

    # ------------------------------------------------------------ lifecycle
    def start(self) -> Lab:
        with self._lock:
            if self._state is not LabState.CREATED:
                raise StateError(f"lab is {self._state.value}; start() needs a new Lab")
            self._state = LabState.STARTING
        try:
            self._run_root = make_run_root(prefix="stdpkt-lab-", need_bytes=len(self.plan.nodes) << 26)
            slots, snap = self._trace
            for wave in self._waves:  # one wave unless the graph declares a start order
                for name in wave:  # stage 1: spawn every kernel
                    instance = Instance(self.plan.nodes[name].spec, run_root=self._run_root)
                    self._instances[name] = instance
                    instance.start()
                for lp in self.plan.links:  # stage 2: join ports (frames wait in the sockets)
                    if (lp.a in wave or lp.b in wave) and lp.a in self._instances and lp.b in self._instances:
                        link = Link(self._instances[lp.a], lp.a_port, self._instances[lp.b], lp.b_port,
                                    trace_slots=slots, trace_snap=snap, on_end=self._link_ended)
                        self._links.append(link)
                        link.start()
                self._wait_booted()  # stage 3: every guest configured and answering
            self._state = LabState.RUNNING
            if self._sample_hz:
                self.sampler.start()  # stage 4: counters
        except BaseException:
            self._state = LabState.FAILED
            self._teardown()
            raise
        self._state = LabState.RUNNING
        return self

    def _wait_booted(self) -> None:
        pending = dict(self._instances)
        bar = _progress(len(pending), "booting chain", self.progress)
        deadline = time.monotonic() + self.boot_timeout
        try:
            while pending:
                for name, instance in list(pending.items()):
                    if instance.ready or instance.exited:
                        instance.wait_ready(max(deadline - time.monotonic(), 1.0))
                        del pending[name]
                        bar.update(1)
                        bar.set_postfix_str(name)
                if pending and time.monotonic() > deadline:
                    name, instance = next(iter(pending.items()))
                    instance.wait_ready(0)  # raises BootError with its console tail
                time.sleep(0.02)
        finally:
            bar.close()

    def stop(self) -> None:
        with self._lock:
            if self._state in (LabState.STOPPED, LabState.CREATED):
                self._state = LabState.STOPPED
                return
            running = self._state is LabState.RUNNING
            self._state = LabState.STOPPED
        if running and self._on_stop:
            self._run_stop_actions()
        self._teardown()

    def _teardown(self) -> None:
        self.sampler.stop()
        if self._live is not None:
            self._live.close()
        for link in self._links:
            link.stop()
        if self._instances:
            with ThreadPoolExecutor(max_workers=min(16, len(self._instances))) as pool:
                list(pool.map(lambda i: i.stop(), self._instances.values()))
        if self._run_root is not None:
            remove_run_dir(self._run_root)  # with its owner file (engine/ownership.py)
            self._run_root = None

    def __enter__(self) -> Lab:
        if self._state is LabState.CREATED:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _link_ended(self, link: Link, why: str) -> None:
        self.events.append((time.time(), f"link {link.name}: {why}"))

    def restart(self, node: str) -> Instance:
        """Boot a fresh instance of ``node`` from its plan (stopping the old one if it still
        runs) and re-join its links.  State inside the old guest (conntrack, added rules) is lost."""
        self._require_running()
        with self._lock:
            for link in [k for k in self._links if node in (k.a.name, k.b.name)]:
                link.stop()
                self._links.remove(link)
            self[node].stop()
            instance = self._instances[node] = Instance(self.plan.nodes[node].spec, run_root=self._run_root)
            instance.start()
            slots, snap = self._trace
            for lp in self.plan.links:
                other = lp.b if lp.a == node else lp.a if lp.b == node else None
                if other is not None and self._instances[other].state.value in ("booting", "running"):
                    link = Link(self._instances[lp.a], lp.a_port, self._instances[lp.b], lp.b_port,
                                trace_slots=slots, trace_snap=snap, on_end=self._link_ended)
                    self._links.append(link)
                    link.start()
        bar = _progress(1, f"booting {node}", self.progress)
        try:
            instance.wait_ready(self.boot_timeout)
            instance.exec(_ANNOUNCE, timeout=10)  # its MACs are new: update the neighbours' ARP caches
            bar.update(1)
        finally:
            bar.close()
        self._conditioner.restarted(node)  # link conditions changed live since boot
        return instance

    # ------------------------------------------------------------ commands
    def exec(self, node: str, cmd: str | Sequence[str], *, timeout: float | None = 30.0,
             input: bytes | None = None) -> ExecResult:
        """Run ``cmd`` in ``node`` (a string goes through /bin/sh -c); returns stdout/stderr/status."""
        self._require_running()
        return self[node].exec(cmd, timeout=timeout, input=input)

    def _require_running(self) -> None:
        if self._state is not LabState.RUNNING:
            raise StateError(f"lab is {self._state.value}, not running")

    # ------------------------------------------------------------ observation
    def counters(self) -> Any:
        """One row per link direction: frames, bytes, drops, malformed, injected, pps, bps.

        A pandas DataFrame when pandas is installed, else a list of dicts.  Rates
        are over the sampler's last interval (or since the previous call).
        """
        latest = self.sampler.latest if self.sampler.running else None
        if latest is None or time.time() - latest.time > 2.0 / (self._sample_hz or 1.0):
            return records(self.sampler.link_samples(time.time()))
        return records(list(latest.links))

    def subscribe(self, callback: Any) -> Subscription:
        """``callback(sample)`` after every sampling round (from the sampler thread)."""
        return self.sampler.subscribe(callback)

    def nf_counters(self, node: str) -> dict[str, Any]:
        """Inside ``node``: interface counters, conntrack entries, netfilter rule hits
        (``iptables-save -c``: one exec, so call it on demand, not in a loop), for a
        load balancer IPVS per-backend connections, and the egress qdiscs' statistics."""
        from .observe.samples import parse_ip_vs, parse_proc_net_dev

        self._require_running()
        instance = self[node]
        files = instance.agent.read_files(
            ["/proc/net/dev", "/proc/sys/net/netfilter/nf_conntrack_count", "/proc/net/ip_vs"])
        dev, count, ipvs = (files.get(k) for k in (
            "/proc/net/dev", "/proc/sys/net/netfilter/nf_conntrack_count", "/proc/net/ip_vs"))
        saved = instance.exec(["iptables-save", "-c"], timeout=30)
        return {
            "interfaces": parse_proc_net_dev(dev.decode()) if dev else {},
            "conntrack_entries": int(count) if count and count.strip().isdigit() else None,
            "rules": parse_iptables_save(saved.stdout),
            "ipvs": parse_ip_vs(ipvs.decode()) if ipvs else [],
            "qdiscs": self._conditioner.qdisc_stats(node),
        }

    def _pumps(self, link: LinkRef, direction: str = "both") -> list[Pump]:
        a, b = link
        found = self.link(a, b)
        if direction == "both":
            return [found.pump(a, b), found.pump(b, a)]
        if direction == "forward":
            return [found.pump(a, b)]
        if direction == "backward":
            return [found.pump(b, a)]
        raise ValueError(f"direction {direction!r}: expected 'both', 'forward' or 'backward'")

    def _frames(self, link: LinkRef, direction: str, count: int | None
                ) -> list[tuple[LinkRef, TracedFrame]]:
        pairs = []
        for pump in self._pumps(link, direction):
            src, dst = pump.name.split("->")
            pairs += [((src, dst), f) for f in pump.trace(count)]
        pairs.sort(key=lambda lf: lf[1].ts_ns)
        return pairs[-count:] if count else pairs

    def trace(self, link: LinkRef, count: int | None = 50, *, direction: str = "both") -> Any:
        """Recent frames on ``link`` = (a, b) as a scapy PacketList (``direction``:
        'both', 'forward' = a→b, 'backward' = b→a); each packet has ``.link`` and ``.time``."""
        return to_packets(self._frames(link, direction, count))

    def set_trace_filter(self, link: LinkRef, expr: str | None, *, direction: str = "both") -> None:
        """Keep only frames matching a pcap filter (``"tcp port 80"``) in ``link``'s trace."""
        for pump in self._pumps(link, direction):
            pump.set_filter(expr)

    def set_tracing(self, link: LinkRef, on: bool, *, direction: str = "both") -> None:
        for pump in self._pumps(link, direction):
            pump.trace_enabled = on

    def save_pcap(self, link: LinkRef, path: str | Path, *, direction: str = "both") -> int:
        """Write ``link``'s trace to a standard pcap file (Wireshark opens it); returns the count."""
        return write_pcap([f for _, f in self._frames(link, direction, None)], path)

    def inject(self, link: LinkRef, packet: Any, *, count: int = 1, interval: float = 0.0) -> None:
        """Send ``packet`` (scapy or bytes) on ``link`` = (a, b) toward b, as if a had sent it.

        ``count`` copies, ``interval`` seconds apart.  Every injected frame reaches b's
        socket (the relay counts them exactly, as ``injected``), but a back-to-back burst
        into a guest that was idle can lose a few frames inside the guest's receive
        path; a small interval (a few ms) avoids that.
        """
        self._require_running()
        a, b = link
        pump = self.link(a, b).pump(a, b)
        data = bytes(packet)
        for i in range(count):
            if i and interval:
                time.sleep(interval)
            pump.inject(data)

    def follow(self, packet: Any, *, window: float = 2.0) -> Journey:
        """The same packet on every link it crossed (matched through NAT by IP ID, TCP
        sequence numbers and payload), with the header fields each hop changed."""
        everything = []
        for link in self._links:
            everything += self._frames((link.a.name, link.b.name), "both", None)
        return follow_packet(packet, to_packets(everything), window=window)

    def dashboard(self, **options: Any) -> Any:
        """The live Jupyter view of this lab, started (needs the ``lab`` extra); options:
        :class:`stdpkt_lab.dashboard.Dashboard`."""
        from .dashboard import Dashboard

        return Dashboard(self, **options).start()

    def __repr__(self) -> str:
        return f"<Lab {len(self)} nodes {self._state.value}>"

    # --- notebook view ---
    def _repr_html_(self) -> str:
        """Nodes with kind, state and addresses (Jupyter shows this for a bare ``lab``)."""
        from .labview import lab_html

        return lab_html(self)

    # --- start order / stop actions (Kathará lab.dep, DEV.shutdown) ---
    def _run_stop_actions(self) -> None:
        """Run ``g.graph["on_stop"]`` commands in their nodes (concurrently, 30 s each)."""
        def run(item: tuple[str, str]) -> None:
            instance = self._instances.get(item[0])
            if instance is None or instance.state.value != "running":
                return
            try:
                instance.exec(item[1], timeout=30)
            except Exception as exc:  # a failing shutdown script must not stop the teardown
                self.events.append((time.time(), f"{item[0]}: stop action failed: {exc}"))

        with ThreadPoolExecutor(max_workers=min(8, len(self._on_stop))) as pool:
            list(pool.map(run, self._on_stop.items()))


def _progress(total: int, desc: str, enabled: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="instance", disable=not enabled, leave=True)
