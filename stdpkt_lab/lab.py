"""``Lab``: a chain graph brought to life.

::

    with Lab(g) as lab:                    # plans (validates) at once; boots on enter
        lab.exec("client", "wget -qO- http://server/")
        lab["nat"].read_file("/proc/net/nf_conntrack")

The description (``stdpkt_lab.chain``) is planned in the constructor, so a bad
graph fails before any process starts.  :meth:`Lab.start` boots every instance
concurrently with a progress bar, joins the links with relays, and on any
failure rolls back exactly what it had started (Click's stage-aware
initialisation).  :meth:`Lab.stop` is idempotent.
"""

from __future__ import annotations

import enum
import shutil
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .chain import ChainPlan, build_plan
from .errors import BootError, StateError
from .engine.instance import Instance
from .engine.links import Link
from .engine.paths import make_run_root

if TYPE_CHECKING:
    import networkx as nx

    from .chain import KindRegistry
    from .engine.agent import ExecResult

__all__ = ["Lab", "LabState"]


class LabState(enum.Enum):
    CREATED = "created"
    STARTING = "starting"
    RUNNING = "running"
    STOPPED = "stopped"
    FAILED = "failed"


class Lab:
    """Running instances and links of one chain graph."""

    def __init__(
        self,
        graph: nx.Graph,
        *,
        registry: KindRegistry | None = None,
        boot_timeout: float = 120.0,
        progress: bool = True,
        trace_slots: int = 1024,
        trace_snap: int = 256,
    ) -> None:
        self.plan: ChainPlan = build_plan(graph, registry=registry)
        self.boot_timeout = boot_timeout
        self.progress = progress
        self._trace = (trace_slots, trace_snap)
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
            for name, node in self.plan.nodes.items():  # stage 1: spawn every kernel
                instance = Instance(node.spec, run_root=self._run_root)
                self._instances[name] = instance
                instance.start()
            slots, snap = self._trace
            for lp in self.plan.links:  # stage 2: join ports (frames wait in the sockets)
                link = Link(self._instances[lp.a], lp.a_port, self._instances[lp.b], lp.b_port,
                            trace_slots=slots, trace_snap=snap, on_end=self._link_ended)
                self._links.append(link)
                link.start()
            self._wait_booted()  # stage 3: every guest configured and answering
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
            self._state = LabState.STOPPED
        self._teardown()

    def _teardown(self) -> None:
        for link in self._links:
            link.stop()
        if self._instances:
            with ThreadPoolExecutor(max_workers=min(16, len(self._instances))) as pool:
                list(pool.map(lambda i: i.stop(), self._instances.values()))
        if self._run_root is not None:
            shutil.rmtree(self._run_root, ignore_errors=True)
            self._run_root = None

    def __enter__(self) -> Lab:
        if self._state is LabState.CREATED:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _link_ended(self, link: Link, why: str) -> None:
        self.events.append((time.time(), f"link {link.name}: {why}"))

    # ------------------------------------------------------------ commands
    def exec(self, node: str, cmd: str | Sequence[str], *, timeout: float | None = 30.0,
             input: bytes | None = None) -> ExecResult:
        """Run ``cmd`` in ``node`` (a string goes through /bin/sh -c); returns stdout/stderr/status."""
        self._require_running()
        return self[node].exec(cmd, timeout=timeout, input=input)

    def _require_running(self) -> None:
        if self._state is not LabState.RUNNING:
            raise StateError(f"lab is {self._state.value}, not running")

    def __repr__(self) -> str:
        return f"<Lab {len(self)} nodes {self._state.value}>"


def _progress(total: int, desc: str, enabled: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="instance", disable=not enabled, leave=False)
