"""The worker side of a distributed Lab: one Dask actor per worker owns its instances.

A :class:`WorkerSide` lives in a Dask worker process (created with
``client.submit(WorkerSide, ..., actor=True, workers=[address])``).  It starts the
instances placed on its worker, joins the links whose two ends it holds with
ordinary relays, and serves the ends of cross-worker links as pcap streams over
TCP (:mod:`stdpkt_lab.engine.streams`, authenticated by the lab's token).

Ownership: every instance is spawned from the actor's own long-lived thread, so
the launcher's parent-death signal follows the worker process: a killed worker
takes its kernels and run directories with it (the launcher cleans up).  The
notebook holds a *lease*: it calls :meth:`heartbeat` every few seconds, and a
watchdog stops everything when the lease runs out (a killed notebook, a lost
scheduler, a network partition), so nothing outlives its owner on any worker.
"""

from __future__ import annotations

import logging
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from ..engine.agent import ExecResult
from ..engine.instance import Instance
from ..engine.links import Link, offload_port
from ..engine.ownership import remove_run_dir
from ..engine.paths import make_run_root
from ..engine.spec import InstanceSpec
from ..engine.streams import StreamEnds, StreamPort, listen_socket
from ..errors import StateError
from ..relay import Pump, TracedFrame
from .worker_live import WorkerLive

__all__ = ["WorkerSide", "LocalLinkSpec"]

log = logging.getLogger(__name__)

#: (a, a_port, b, b_port) of a link whose two ends run on one worker
LocalLinkSpec = tuple[str, int, str, int]


def _worker_host() -> str:
    try:
        from distributed import get_worker

        address = get_worker().address
    except (ImportError, ValueError):
        return "127.0.0.1"
    return address.split("://", 1)[-1].rsplit(":", 1)[0].strip("[]")


class WorkerSide(WorkerLive):
    """Instances, local links and stream ends of one lab on one worker."""

    def __init__(self, lab_id: str, lease: float = 15.0, trace: tuple[int, int] = (1024, 256)) -> None:
        self.lab_id = lab_id
        self.lease = lease
        self._trace = trace
        # one long-lived thread spawns every launcher: its parent-death signal is bound to it
        self._spawner = ThreadPoolExecutor(1, thread_name_prefix=f"stdpkt-{lab_id}")
        self._spawner_ident = self._spawner.submit(threading.get_ident).result()
        self._instances: dict[str, Instance] = {}
        self._links: list[Link] = []
        self._streams: dict[tuple[str, int], StreamPort] = {}
        self._peers: dict[tuple[str, int], tuple[str, str]] = {}  # our end -> (src, dst) names
        self._run_root: Path | None = None
        self._scripts: Path | None = None
        self._token = b""
        self._lock = threading.RLock()
        self._stopped = False
        self._beat = time.monotonic()
        self.events: list[tuple[float, str]] = []
        self._worker = _dask_worker()
        self.stopped_because = ""
        self._watchdog = threading.Thread(target=self._watch, daemon=True, name="stdpkt-lease")
        self._watchdog.start()

    # ------------------------------------------------------------ lease
    async def heartbeat(self) -> str:
        """The notebook's lease renewal; returns "" while running, else why this part stopped.
        (A coroutine: it runs on the worker's event loop, not behind a long operation.)"""
        self._beat = time.monotonic()
        return self.stopped_because if self._stopped else ""

    def _watch(self) -> None:
        lost_since: float | None = None
        while not self._stopped:
            time.sleep(min(0.5, self.lease / 4))
            why = ""
            if time.monotonic() - self._beat > self.lease:
                why = f"lease expired: no heartbeat from the notebook for {self.lease:g} s"
            closing, lost = _scheduler_lost(self._worker)
            if closing:  # the worker is closing: at once, before its process goes
                why = lost
            elif lost:  # a broken scheduler connection, for a second: the worker is going
                lost_since = lost_since or time.monotonic()
                if time.monotonic() - lost_since >= 1.0:
                    why = lost
            else:
                lost_since = None
            if why:
                log.warning("stdpkt lab %s: %s: stopping its instances", self.lab_id, why)
                self.events.append((time.time(), why))
                self.stopped_because = why
                self.stop()

    # ------------------------------------------------------------ building
    def start(self, nodes: list[tuple[InstanceSpec, str | None]], links: list[LocalLinkSpec],
              token: bytes) -> str:
        """Spawn ``nodes`` (spec, script text) and join ``links``; returns this worker's host."""
        self._spawner.submit(self._start, nodes, links, token).result()
        return _worker_host()

    def _start(self, nodes: list[tuple[InstanceSpec, str | None]], links: list[LocalLinkSpec],
               token: bytes) -> None:
        with self._lock:
            if self._stopped:
                raise StateError("this worker's part of the lab was stopped")
            self._token = token
            self._run_root = make_run_root(prefix="stdpkt-lab-", need_bytes=len(nodes) << 26)
            for spec, script_text in nodes:
                if script_text is not None:  # the script travelled as text: the path is the client's
                    if self._scripts is None:
                        self._scripts = Path(tempfile.mkdtemp(prefix="scripts-", dir=self._run_root))
                    path = self._scripts / f"{spec.name}.sh"
                    path.write_text(script_text)
                    spec = replace(spec, script=path)
                instance = Instance(spec, run_root=self._run_root)
                self._instances[spec.name] = instance
                instance.start()
            slots, snap = self._trace
            for a, ap, b, bp in links:
                link = Link(self._instances[a], ap, self._instances[b], bp, trace_slots=slots,
                            trace_snap=snap, on_end=self._link_ended)
                self._links.append(link)
                link.start()

    def port_offloads(self, node: str, port: int) -> bool:
        """True if ``node``'s ``port`` is a vhost port sending offloaded frames (partial
        checksums, TCP super-frames): its far end on another worker must take them."""
        return offload_port(self._instance(node), port) is not None

    def listen(self, node: str, port: int, peer: str, peer_offload: bool = False) -> tuple[str, int]:
        """Serve ``node``'s ``port`` (toward ``peer``) on a TCP port of this worker's host.
        ``peer_offload``: the far port takes offloaded frames (else this port finishes its own)."""
        host = _worker_host()
        srv = listen_socket(host, 0)
        address = srv.getsockname()[:2]
        self._stream(node, port, peer, StreamEnds(port, True, host, int(address[1])), srv, peer_offload)
        return str(address[0]), int(address[1])

    def connect(self, node: str, port: int, peer: str, host: str, tcp_port: int,
                peer_offload: bool = False) -> None:
        """Join ``node``'s ``port`` to a listening end on another worker."""
        self._stream(node, port, peer, StreamEnds(port, False, host, tcp_port), None, peer_offload)

    def _stream(self, node: str, port: int, peer: str, ends: StreamEnds, srv: Any,
                peer_offload: bool) -> None:
        with self._lock:
            if self._stopped:
                raise StateError("this worker's part of the lab was stopped")
            vport = offload_port(self._instance(node), port)
            if vport is not None:  # as Link does for two local ports (engine/links.py)
                vport.set_finish(not peer_offload)
            slots, _snap = self._trace
            sp = StreamPort(ends, self._instance(node).port(port), token=self._token,
                            on_end=lambda p, why: self.events.append((time.time(), f"{node}: {why}")),
                            trace_slots=slots, listener=srv, accept_timeout=120.0,
                            on_refused=lambda msg: self.events.append((time.time(), msg)))
            self._streams[(node, port)] = sp
            self._peers[(node, port)] = (node, peer)
            sp.start()

    def _link_ended(self, link: Link, why: str) -> None:
        self.events.append((time.time(), f"link {link.name}: {why}"))

    def wait_ready(self, timeout: float) -> list[str]:
        """Wait until every instance here booted; returns their names (raises BootError)."""
        deadline = time.monotonic() + timeout
        for instance in list(self._instances.values()):
            instance.wait_ready(max(deadline - time.monotonic(), 1.0))
        return list(self._instances)

    # ------------------------------------------------------------ using
    def _instance(self, node: str) -> Instance:
        if self._stopped:
            raise StateError(f"this worker's part of the lab was stopped: {self.stopped_because or 'lab.stop()'}")
        if node not in self._instances and self._live is not None and node in self._live.detours:
            return self._live.detours[node]
        return self._instances[node]

    def exec(self, node: str, cmd: Any, timeout: float | None = 30.0,
             input: bytes | None = None) -> ExecResult:
        return self._instance(node).exec(cmd, timeout=timeout, input=input)

    def read_files(self, node: str, paths: list[str]) -> dict[str, bytes | None]:
        return dict(self._instance(node).agent.read_files(paths))

    def pids(self) -> dict[str, int | None]:
        return {name: i.pid for name, i in self._instances.items()}

    def link_stats(self) -> list[dict[str, Any]]:
        """Counters of every link direction this worker relays: its local links, and the
        cross-worker links it listens for (the connecting end relays the same frames)."""
        rows = []
        for link in self._links:
            for (src, dst), link_stats in link.stats().items():
                rows.append({"link": f"{link.a.name}-{link.b.name}", "src": src, "dst": dst,
                             "kind": "local", **_stats(link_stats)})
        for (node, _port), sp in self._streams.items():
            if not sp.ends.listen:
                continue
            _, peer = self._peers[(node, _port)]
            for direction, stats in sp.stats().items():
                if stats is None:
                    continue
                src, dst = (node, peer) if direction == "tx" else (peer, node)
                rows.append({"link": "-".join(sorted((node, peer))), "src": src, "dst": dst,
                             "kind": "tcp", "peer": sp.peer, **_stats(stats)})
        return rows

    def _pumps(self, a: str, b: str) -> list[Pump]:
        for link in self._links:
            if {link.a.name, link.b.name} == {a, b}:
                return [link.pump(a, b), link.pump(b, a)]
        for (node, port), sp in self._streams.items():
            if {node, self._peers[(node, port)][1]} == {a, b}:
                return [p for p in (sp.tx, sp.rx) if p is not None]
        return []

    def has_link(self, a: str, b: str) -> bool:
        return bool(self._pumps(a, b))

    def trace(self, a: str, b: str, count: int | None = None) -> list[tuple[tuple[str, str], TracedFrame]]:
        out = []
        for pump in self._pumps(a, b):
            src, dst = _pump_direction(pump, a, b, self)
            out += [((src, dst), f) for f in pump.trace(count)]
        out.sort(key=lambda lf: lf[1].ts_ns)
        return out[-count:] if count else out

    def inject(self, a: str, b: str, frame: bytes, count: int = 1, interval: float = 0.0) -> int:
        """Send ``frame`` on the link toward ``b``, as if ``a`` had sent it; returns the count."""
        pump = next((p for p in self._pumps(a, b) if _pump_direction(p, a, b, self) == (a, b)), None)
        if pump is None:
            raise StateError(f"no direction {a}->{b} relayed on this worker")
        for i in range(count):
            if i and interval:
                time.sleep(interval)
            pump.inject(frame)
        return count

    def set_trace_filter(self, a: str, b: str, expr: str | None, direction: str = "both") -> None:
        for pump in self._pumps(a, b):
            d = _pump_direction(pump, a, b, self)
            if direction == "both" or d == ((a, b) if direction == "forward" else (b, a)):
                pump.set_filter(expr)

    def drain_events(self) -> list[tuple[float, str]]:
        events, self.events = self.events, []
        return events

    # ------------------------------------------------------------ ending
    def stop(self) -> None:
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
        try:
            self._close_live()  # detours, warm pool, steering rules
        except Exception:  # noqa: BLE001 - stop the rest regardless
            log.exception("stopping the detours")
        for sp in self._streams.values():
            sp.stop()
        for link in self._links:
            link.stop()
        for instance in self._instances.values():
            try:
                instance.stop()
            except Exception:  # noqa: BLE001 - stop the others regardless
                log.exception("stopping %s", instance.name)
        if self._run_root is not None:
            remove_run_dir(self._run_root)  # with its owner file (engine/ownership.py)
        self._spawner.shutdown(wait=False)

    def __del__(self) -> None:  # the actor released by Dask: no owner is left
        if not getattr(self, "_stopped", True):
            self.stop()


def _dask_worker() -> Any:
    try:
        from distributed import get_worker

        return get_worker()
    except (ImportError, ValueError):
        return None


def _scheduler_lost(worker: Any) -> tuple[bool, str]:
    """(closing, why) when ``worker`` (a ``distributed.Worker``) is closing or has lost its
    scheduler connection, else (False, "")."""
    if worker is None:
        return False, ""
    status = getattr(getattr(worker, "status", None), "name", "")
    if status in ("closing", "closed", "closing_gracefully", "failed"):
        return True, f"its Dask worker is {status} (the scheduler is gone or closed it)"
    stream = getattr(worker, "batched_stream", None)
    comm = getattr(stream, "comm", None)
    if stream is not None and (comm is None or comm.closed()):
        return False, "its Dask worker lost the connection to the scheduler"
    return False, ""


def _stats(stats: Any) -> dict[str, Any]:
    row = asdict(stats) if hasattr(stats, "__dataclass_fields__") else dict(stats)
    return {k: row[k] for k in ("frames", "bytes", "drops", "malformed", "injected") if k in row}


def _pump_direction(pump: Pump, a: str, b: str, side: WorkerSide) -> tuple[str, str]:
    if "->" in pump.name:
        src, dst = pump.name.split("->", 1)
        return src, dst
    # a stream end: "ethN tx" leaves our node toward the peer, "ethN rx" enters it
    ours = a if a in side._instances else b
    peer = b if ours == a else a
    return (ours, peer) if pump.name.endswith("tx") else (peer, ours)

