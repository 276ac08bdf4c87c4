"""``Lab(g, cluster=client)``: one chain whose instances run on the workers of a Dask cluster.

The notebook side of a distributed lab.  It plans the chain as :class:`~stdpkt_lab.Lab`
does, places the nodes on workers (:mod:`.placement`), starts one
:class:`~.worker.WorkerSide` actor per worker used, joins links whose ends share a
worker with local relays and the others with pcap streams over TCP (the
listening end on the worker of the link's first node), and keeps the workers'
lease alive.  Results come back through the actors: exec, counters, traces,
follow, NF counters, pcap files.  The running chain changes as a local Lab's
does (insert, remove, replace, steer...: :mod:`.live`, with the re-wiring in
:mod:`.wiring`), and ``lab.dashboard()`` shows it: ``lab[node]`` and
``lab.instances`` are :class:`~.remote.RemoteInstance` views and ``lab.sampler``
reads the workers (:mod:`.remote`), which is all the dashboard reads.

Any ``distributed.Client`` works: ``Client(LocalCluster(...))`` on one machine,
a ``dask-jobqueue`` cluster on an HPC scheduler, ``dask-kubernetes`` or Dask
Gateway.  Every worker must have stdpkt-lab installed (and ``linux.uml``), and
the workers must reach each other's hosts on ephemeral TCP ports.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import networkx as nx

from ..describe import ChainPlan, KindRegistry, build_plan
from ..engine.agent import ExecResult
from ..errors import ChainError, StateError, StdpktError
from ..lab_features import LinkConditions, StateTables
from ..observe.samples import LinkSample, records
from ..observe.traces import Journey, follow_packet, to_packets, write_pcap
from .live import ClusterLiveOps, DistributedLive
from .placement import WorkerInfo, place
from .remote import STATE_FRESH_S, ClusterSampler, ClusterState, RemoteInstance
from .wiring import Wiring, cross_offloads
from .worker import LocalLinkSpec, WorkerSide

__all__ = ["DistributedLab"]

LinkRef = tuple[str, str]


class DistributedLab(StateTables, LinkConditions, ClusterLiveOps, Wiring):
    """Running instances of one chain graph, spread over a Dask cluster's workers."""

    def __init__(self, graph: nx.Graph, *, cluster: Any, registry: KindRegistry | None = None,
                 boot_timeout: float = 120.0, progress: bool = True, lease: float = 15.0,
                 trace_slots: int = 1024, trace_snap: int = 256, sample_hz: float | None = 5.0,
                 **_ignored: Any) -> None:
        self.client = cluster
        self.plan: ChainPlan = build_plan(graph, registry=registry)
        self._registry = registry
        self.boot_timeout = boot_timeout
        self.progress = progress
        self.lease = lease
        self._trace = (trace_slots, trace_snap)
        self.lab_id = f"dl{secrets.token_hex(4)}"
        self._token = secrets.token_hex(16).encode()
        self.placement: dict[str, WorkerInfo] = {}
        self._actors: dict[str, Any] = {}  # worker address -> actor proxy
        self._futures: list[Any] = []
        self._state = ClusterState.CREATED
        self._lock = threading.RLock()
        self._live: DistributedLive | None = None
        self.sampler = ClusterSampler(self, rate_hz=sample_hz or 1.0)
        self._sample_hz = sample_hz
        self._states: dict[str, tuple[float, str]] = {}  # node -> (monotonic time, state)
        self._pids: dict[str, int | None] = {}
        self._boot_seconds: dict[str, float] = {}
        self._unreachable: dict[str, str] = {}  # worker address -> why (heartbeats fail)
        self._scheduler_lost = ""
        self._beats: threading.Thread | None = None
        self._stop_beats = threading.Event()
        self._previous: dict[tuple[str, str], tuple[float, int, int]] = {}
        self.events: list[tuple[float, str]] = []
        pinned = {n: d["host"] for n, d in graph.nodes(data=True) if d.get("host") is not None}
        workers = _workers(cluster)
        self.placement = place({n: p.spec.mem_mb for n, p in self.plan.nodes.items()}, workers, pinned)

    # ------------------------------------------------------------ views
    @property
    def state(self) -> ClusterState:
        return self._state

    @property
    def graph(self) -> nx.Graph:
        return self.plan.graph

    def __iter__(self) -> Any:
        return iter(self.plan.nodes)

    def __len__(self) -> int:
        return len(self.plan.nodes)

    def worker_of(self, node: str) -> str:
        """The address of the worker running ``node``."""
        try:
            return self.placement[node].address
        except KeyError:
            raise KeyError(f"no node {node!r} in this lab") from None

    def _actor(self, node: str) -> Any:
        address = self.worker_of(node)
        if address in self._unreachable:
            raise StateError(f"node {node!r}: its worker {address} is unreachable "
                             f"({self._unreachable[address]})",
                             hint="lab.drain_events() says what ended; stop this lab and start a new one")
        return self._actors[address]

    def _call(self, node: str, method: str, *args: Any, wait: float | None = 60.0) -> Any:
        """``method(*args)`` on the actor of ``node``'s worker; a lost worker is a StateError."""
        actor = self._actor(node)
        try:
            return getattr(actor, method)(*args).result(timeout=wait)
        except (StdpktError, KeyError, ValueError, TypeError):
            raise  # the worker's own answer (an unknown node, a bad argument, a guest's error)
        except Exception as exc:  # the worker, its actor or the scheduler is gone
            self._check_scheduler()
            raise StateError(f"node {node!r}: its worker {self.worker_of(node)} did not answer "
                             f"{method}: {type(exc).__name__}: {exc}",
                             hint="lab.drain_events() says what ended; stop this lab and start "
                                  "a new one") from exc

    def _each_worker(self, method: str, *args: Any, wait: float = 30.0) -> list[tuple[str, Any]]:
        """``method(*args)`` on every reachable worker at once; (address, result) pairs."""
        pending = []
        for address, actor in list(self._actors.items()):
            if address in self._unreachable:
                continue
            try:
                pending.append((address, getattr(actor, method)(*args)))
            except Exception:  # noqa: BLE001 - a lost worker: the heartbeat says so
                continue
        out = []
        for address, future in pending:
            try:
                out.append((address, future.result(timeout=wait)))
            except StdpktError:
                raise
            except Exception:  # noqa: BLE001 - as above
                continue
        return out

    # ------------------------------------------------------------ the Instance-like views
    def __getitem__(self, node: str) -> RemoteInstance:
        if node in self.placement:
            return RemoteInstance(self, node)
        raise KeyError(f"no node {node!r} in this lab (nodes: {', '.join(self.plan.nodes)})")

    @property
    def instances(self) -> dict[str, RemoteInstance]:
        return {name: RemoteInstance(self, name) for name in self.plan.nodes}

    def _note_states(self, states: dict[str, str], when: float) -> None:
        for name, state in states.items():
            self._states[name] = (when, state)

    def _forget_states(self) -> None:
        self._states.clear()

    def _state_of(self, node: str) -> str:
        if self._state is ClusterState.STOPPED or node not in self.placement:
            return "stopped"  # the lab, or this node (removed), was stopped
        found = self._states.get(node)
        if found is None or time.monotonic() - found[0] > STATE_FRESH_S:
            address = self.worker_of(node)
            if address in self._unreachable:
                return "exited"
            try:
                states = self._actors[address].states().result(timeout=10)
            except Exception:  # noqa: BLE001 - its worker is gone
                return "exited"
            self._note_states(states, time.monotonic())
            found = self._states.get(node, (0.0, "exited"))
        return found[1]

    def _pid_of(self, node: str) -> int | None:
        if node not in self._pids:
            self._pids.update(self.pids())
        return self._pids.get(node)

    # ------------------------------------------------------------ lifecycle
    def start(self) -> DistributedLab:
        if self._state is not ClusterState.CREATED:
            raise StateError(f"lab is {self._state.value}; start() needs a new Lab")
        self._state = ClusterState.STARTING
        try:
            self._start()
        except BaseException:
            self._state = ClusterState.FAILED
            self._teardown()
            raise
        self._state = ClusterState.RUNNING
        if self._sample_hz:
            self.sampler.start()
        return self

    def _new_actor(self, address: str) -> Any:
        future = self.client.submit(WorkerSide, self.lab_id, self.lease, self._trace,
                                    actor=True, workers=[address], allow_other_workers=False,
                                    pure=False)
        self._futures.append(future)
        actor = self._actors[address] = future.result(timeout=60)
        return actor

    def _ensure_actor(self, address: str) -> Any:
        """The actor of ``address``, started (with an empty part of the lab) if this lab did not
        use that worker yet."""
        if address in self._actors:
            return self._actors[address]
        actor = self._new_actor(address)
        actor.start([], [], self._token).result(timeout=60)
        actor.set_plan(self.plan, self._registry, self.boot_timeout).result(timeout=60)
        return actor

    def _start(self) -> None:
        from tqdm.auto import tqdm

        used = sorted({w.address for w in self.placement.values()})
        for address in used:
            self._new_actor(address)
        self._beats = threading.Thread(target=self._heartbeat, daemon=True, name="stdpkt-lease")
        self._beats.start()
        per_worker: dict[str, tuple[list[Any], list[LocalLinkSpec]]] = {a: ([], []) for a in used}
        for name, node in self.plan.nodes.items():
            script = node.spec.script
            text = Path(script).read_text() if script is not None else None
            per_worker[self.worker_of(name)][0].append((node.spec, text))
        cross = []
        for lp in self.plan.links:
            wa, wb = self.worker_of(lp.a), self.worker_of(lp.b)
            if wa == wb:
                per_worker[wa][1].append((lp.a, lp.a_port, lp.b, lp.b_port))
            else:
                cross.append(lp)
        started = [self._actors[a].start(nodes, links, self._token)
                   for a, (nodes, links) in per_worker.items()]
        for f in started:
            f.result()
        for f in [self._actors[a].set_plan(self.plan, self._registry, self.boot_timeout) for a in used]:
            f.result()
        for lp in cross:
            oa, ob = cross_offloads(self._actor, lp)
            host, port = self._actor(lp.a).listen(lp.a, lp.a_port, lp.b, ob).result()
            self._actor(lp.b).connect(lp.b, lp.b_port, lp.a, host, port, oa).result()
        bar = tqdm(total=len(self.plan.nodes), desc="booting chain", unit="instance",
                   disable=not self.progress)
        try:
            waits = {a: self._actors[a].wait_ready(self.boot_timeout) for a in used}
            for address, f in waits.items():
                names = f.result()
                bar.update(len(names))
                bar.set_postfix_str(address)
        finally:
            bar.close()

    def _heartbeat(self) -> None:
        while not self._stop_beats.wait(max(self.lease / 5, 0.5)):
            self._check_scheduler()
            for address, actor in list(self._actors.items()):
                try:
                    why = actor.heartbeat().result(timeout=self.lease)
                except Exception as exc:  # noqa: BLE001 - a lost worker: its lease lapses by itself
                    why = f"heartbeat failed: {type(exc).__name__}: {exc}"
                if why and address not in self._unreachable:
                    self._unreachable[address] = str(why)
                    self.events.append((time.time(), f"worker {address} lost: {why}"))

    def stop(self) -> None:
        if self._state in (ClusterState.STOPPED, ClusterState.CREATED):
            self._state = ClusterState.STOPPED
            return
        self._state = ClusterState.STOPPED
        self._teardown()

    def _teardown(self) -> None:
        self._stop_beats.set()
        self.sampler.stop()
        pending = []
        for address, actor in self._actors.items():
            if address in self._unreachable or self._scheduler_lost:
                continue  # gone, or stopping itself: do not wait a minute for it
            try:
                pending.append(actor.stop())
            except Exception:  # noqa: BLE001
                continue
        for f in pending:
            try:
                f.result(timeout=60)
            except Exception:  # noqa: BLE001 - a dead worker took its instances with it
                continue
        self._actors.clear()
        for future in self._futures:
            future.release()
        self._futures.clear()

    def __enter__(self) -> DistributedLab:
        if self._state is ClusterState.CREATED:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _check_scheduler(self) -> None:
        status = str(getattr(self.client, "status", "running"))
        if status not in ("running", "newly-created") and not self._scheduler_lost:
            self._scheduler_lost = ("the Dask client was closed" if status in ("closing", "closed")
                                    else f"the Dask client is {status!r}, the scheduler unreachable")
            self.events.append((time.time(), f"scheduler lost: {self._scheduler_lost}"))

    def _require_running(self) -> None:
        self._check_scheduler()
        if self._scheduler_lost:
            raise StateError(f"this lab lost its Dask scheduler ({self._scheduler_lost}): its "
                             "workers stop its instances when they lose the scheduler",
                             hint="lab.stop(), then start a new cluster and a new Lab")
        if self._state is not ClusterState.RUNNING:
            raise StateError(f"lab is {self._state.value}, not running")

    def _repr_html_(self) -> str:
        """Nodes with kind, state and addresses, as a local Lab shows them in Jupyter."""
        from ..labview import lab_html

        return lab_html(self)  # type: ignore[arg-type]  # it reads plan, instances and state only

    def dashboard(self, **options: Any) -> Any:
        """The live Jupyter view of this lab (as :meth:`Lab.dashboard`: the ``lab`` extra)."""
        from ..dashboard import Dashboard

        return Dashboard(self, **options).start()

    # ------------------------------------------------------------ commands
    def exec(self, node: str, cmd: str | Sequence[str], *, timeout: float | None = 30.0,
             input: bytes | None = None) -> ExecResult:
        self._require_running()
        wait = None if timeout is None else timeout + 30
        result: ExecResult = self._call(node, "exec", node, cmd, timeout, input, wait=wait)
        return result

    def pids(self) -> dict[str, int | None]:
        out: dict[str, int | None] = {}
        for _address, found in self._each_worker("pids"):
            out.update(found)
        return out

    # ------------------------------------------------------------ observation
    def _link_rows(self) -> list[tuple[dict[str, Any], str]]:
        """Every link direction's counters from the workers, once each: (row, worker)."""
        out, seen = [], set()
        for address, rows in self._each_worker("link_stats"):
            for row in rows:
                key = (row["src"], row["dst"])
                if key not in seen:
                    seen.add(key)
                    out.append((row, address))
        return out

    def counters(self) -> Any:
        """One row per link direction, as :meth:`Lab.counters`, plus ``kind`` (local/tcp) and
        ``worker``.  A cross-worker link is counted by the relays of its listening end (the
        one :meth:`trace` and :meth:`inject` use)."""
        self._require_running()
        now = time.time()
        samples, extra = [], []
        for row, address in self._link_rows():
            key = (row["src"], row["dst"])
            prev = self._previous.get(key)
            pps = bps = 0.0
            if prev is not None and now > prev[0]:
                dt = now - prev[0]
                pps = max((row["frames"] + row["injected"] - prev[1]) / dt, 0.0)
                bps = max(8 * (row["bytes"] - prev[2]) / dt, 0.0)
            self._previous[key] = (now, row["frames"] + row["injected"], row["bytes"])
            samples.append(LinkSample(now, row["link"], row["src"], row["dst"], row["frames"],
                                      row["bytes"], row["drops"], row["malformed"],
                                      row["injected"], pps, bps))
            extra.append((row["kind"], address))
        table = records(samples)
        if isinstance(table, list):
            for row, (kind, address) in zip(table, extra, strict=True):
                row.update(kind=kind, worker=address)
            return table
        table["kind"] = [k for k, _ in extra]
        table["worker"] = [a for _, a in extra]
        return table

    def _holder(self, link: LinkRef) -> Any:
        a, b = link
        if self.placement[a].address == self.placement[b].address:
            return self._actor(a)
        lp = next((lp for lp in self.plan.links if {lp.a, lp.b} == {a, b}), None)
        if lp is None:
            raise KeyError(f"no link between {a!r} and {b!r}")
        return self._actor(lp.a)  # the listening end's relays

    @staticmethod
    def _direction(direction: str) -> str:
        if direction not in ("both", "forward", "backward"):
            raise ValueError(f"direction {direction!r}: expected 'both', 'forward' or 'backward'")
        return direction

    def _frames(self, link: LinkRef, direction: str, count: int | None) -> list[Any]:
        self._direction(direction)
        frames: list[Any] = self._holder(link).trace(link[0], link[1], count).result(timeout=30)
        if direction == "forward":
            frames = [f for f in frames if f[0] == tuple(link)]
        elif direction == "backward":
            frames = [f for f in frames if f[0] == (link[1], link[0])]
        return frames

    def trace(self, link: LinkRef, count: int | None = 50, *, direction: str = "both") -> Any:
        self._require_running()
        return to_packets(self._frames(link, direction, count))

    def set_trace_filter(self, link: LinkRef, expr: str | None, *, direction: str = "both") -> None:
        """Keep only frames matching a pcap filter (``"tcp port 80"``) in ``link``'s trace."""
        self._holder(link).set_trace_filter(link[0], link[1], expr,
                                            self._direction(direction)).result(timeout=30)

    def inject(self, link: LinkRef, packet: Any, *, count: int = 1, interval: float = 0.0) -> None:
        """Send ``packet`` (scapy or bytes) on ``link`` = (a, b) toward b, as :meth:`Lab.inject`."""
        self._require_running()
        wait = 30 + count * interval
        self._holder(link).inject(link[0], link[1], bytes(packet), count, interval).result(timeout=wait)

    def save_pcap(self, link: LinkRef, path: str | Path, *, direction: str = "both") -> int:
        return write_pcap([f for _, f in self._frames(link, direction, None)], path)

    def follow(self, packet: Any, *, window: float = 2.0) -> Journey:
        everything = []
        for lp in self.plan.links:
            everything += self._frames((lp.a, lp.b), "both", None)
        return follow_packet(packet, to_packets(everything), window=window)

    def nf_counters(self, node: str) -> dict[str, Any]:
        from ..observe.samples import parse_proc_net_dev

        files = self._actor(node).read_files(node, ["/proc/net/dev",
                                                    "/proc/sys/net/netfilter/nf_conntrack_count"])
        files = files.result(timeout=30)
        dev, count = files.get("/proc/net/dev"), files.get("/proc/sys/net/netfilter/nf_conntrack_count")
        return {"interfaces": parse_proc_net_dev(dev.decode()) if dev else {},
                "conntrack_entries": int(count) if count and count.strip().isdigit() else None,
                "worker": self.worker_of(node)}

    def drain_events(self, timeout: float = 30.0) -> list[tuple[float, str]]:
        """Link ends, refused connections and lease expiries the workers saw since the last call.

        All live workers are asked at once: one that is lost or silent cannot hold back the rest.
        """
        pending: dict[str, Any] = {}
        for address, actor in self._actors.items():
            if address in self._unreachable:
                continue  # the heartbeat already recorded why
            try:
                pending[address] = actor.drain_events()
            except Exception as exc:  # noqa: BLE001 - a lost worker is itself an event
                self.events.append((time.time(), f"worker {address} unreachable: {exc}"))
        deadline = time.monotonic() + timeout
        while pending:
            for address, future in list(pending.items()):
                if future.done():
                    del pending[address]
                    try:
                        self.events += future.result(timeout=1)
                    except Exception as exc:  # noqa: BLE001
                        self.events.append((time.time(), f"worker {address} unreachable: {exc}"))
                elif address in self._unreachable:
                    del pending[address]  # lost while we waited: the heartbeat said so
            if pending and time.monotonic() >= deadline:
                for address in pending:
                    self.events.append((time.time(), f"worker {address} unreachable: no answer "
                                                     f"to drain_events in {timeout:g} s"))
                break
            if pending:
                time.sleep(0.05)
        return list(self.events)

    def __repr__(self) -> str:
        spread: dict[str, list[str]] = {}
        for node, w in self.placement.items():
            spread.setdefault(w.name, []).append(node)
        return f"<DistributedLab {len(self)} nodes on {len(spread)} workers {self._state.value}>"


def _workers(client: Any) -> list[WorkerInfo]:
    try:
        info = client.scheduler_info()["workers"]
    except Exception as exc:  # noqa: BLE001
        raise StdpktError(f"cannot ask the Dask scheduler for its workers: {exc}") from exc
    workers = [WorkerInfo(address, str(w.get("name", address)), int(w.get("memory_limit") or 0))
               for address, w in info.items()]
    if not workers:
        raise ChainError("the Dask cluster has no workers")
    return sorted(workers, key=lambda w: w.address)
