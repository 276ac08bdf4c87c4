"""What the dashboard needs from a running lab, as a structural type.

:class:`stdpkt_lab.Lab` satisfies it, and so does
:class:`stdpkt_lab.cluster.DistributedLab` (its instances run on Dask workers:
``lab[node]`` is a :class:`~stdpkt_lab.cluster.remote.RemoteInstance`); the view
never imports ``stdpkt_lab.lab`` (``lab.dashboard()`` passes the lab in), so the
two layers import one way only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from ..describe import ChainPlan
    from ..engine.agent import ExecResult
    from ..observe import Sampler

__all__ = ["LabView", "InstanceView"]


class InstanceView(Protocol):
    """What the dashboard reads of one instance (an ``Instance``, or a remote one)."""

    @property
    def name(self) -> str: ...

    @property
    def state(self) -> Any: ...  # an InstanceState: ``.value`` is "running", "stopped", ...

    @property
    def agent(self) -> Any: ...  # ``read_files(paths, timeout=)``

    @property
    def boot_seconds(self) -> float | None: ...

    def stop(self) -> None: ...


class LabView(Protocol):
    """The public surface of a running lab that the dashboard reads and acts on."""

    @property
    def plan(self) -> ChainPlan: ...

    @property
    def state(self) -> Any: ...  # a LabState: ``.value`` is "running", "stopped", ...

    @property
    def instances(self) -> Mapping[str, InstanceView]: ...

    @property
    def sampler(self) -> Sampler: ...

    def __getitem__(self, node: str) -> InstanceView: ...

    def exec(self, node: str, cmd: str | Sequence[str], *, timeout: float | None = 30.0,
             input: bytes | None = None) -> ExecResult: ...

    def restart(self, node: str) -> InstanceView: ...

    def trace(self, link: tuple[str, str], count: int | None = 50, *, direction: str = "both") -> Any: ...

    def save_pcap(self, link: tuple[str, str], path: str | Path, *, direction: str = "both") -> int: ...

    def set_trace_filter(self, link: tuple[str, str], expr: str | None, *, direction: str = "both") -> None: ...
