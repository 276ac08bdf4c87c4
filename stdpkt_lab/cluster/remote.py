"""The notebook's view of instances that run on Dask workers, and the sampler that reads them.

A :class:`RemoteInstance` is what ``lab[node]`` and ``lab.instances`` give on a
:class:`~.lab.DistributedLab`: the part of :class:`~stdpkt_lab.engine.instance.Instance`
that the dashboard, the state tables and the link conditions use (``state``,
``exec``, ``read_file``, ``agent.read_files``, ``stop``), each a call to the
worker's actor.  :class:`ClusterSampler` is the local Lab's
:class:`~stdpkt_lab.observe.Sampler` with its two reads done by the workers: link
counters in one call per worker and round, instance counters by a ``Sampler``
on each worker over its own instances.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from ..engine.instance import InstanceState
from ..observe.sampler import Sampler
from ..observe.samples import LinkSample, NodeSample

if TYPE_CHECKING:
    from ..engine.agent import ExecResult
    from .lab import DistributedLab

__all__ = ["ClusterState", "RemoteInstance", "RemoteAgent", "ClusterSampler"]

#: how long a state read from a worker is taken as current (seconds)
STATE_FRESH_S = 1.0


class ClusterState(str, enum.Enum):
    """A distributed lab's life cycle (``.value`` as for ``LabState``; equal to its string)."""

    CREATED = "created"
    STARTING = "starting"
    RUNNING = "running"
    STOPPED = "stopped"
    FAILED = "failed"

    def __str__(self) -> str:
        return self.value


class RemoteAgent:
    """``instance.agent`` of a remote instance: file reads in one round trip."""

    def __init__(self, instance: RemoteInstance) -> None:
        self._instance = instance

    def read_files(self, paths: Sequence[str], timeout: float = 5.0) -> dict[str, bytes | None]:
        inst = self._instance
        return dict(inst.lab._call(inst.name, "read_files", inst.name, list(paths), wait=timeout + 30))  # noqa: SLF001


class RemoteInstance:
    """One instance of a distributed lab, seen from the notebook."""

    def __init__(self, lab: DistributedLab, name: str) -> None:
        self.lab = lab
        self.name = name
        self.agent = RemoteAgent(self)

    @property
    def worker(self) -> str:
        return self.lab.worker_of(self.name)

    @property
    def state(self) -> InstanceState:
        return InstanceState(self.lab._state_of(self.name))  # noqa: SLF001

    @property
    def pid(self) -> int | None:
        return self.lab._pid_of(self.name)  # noqa: SLF001

    @property
    def boot_seconds(self) -> float | None:
        return self.lab._boot_seconds.get(self.name)  # noqa: SLF001

    @property
    def ready(self) -> bool:
        return self.state is InstanceState.RUNNING

    def exec(self, cmd: str | Sequence[str], *, timeout: float | None = 30.0,
             input: bytes | None = None) -> ExecResult:
        return self.lab.exec(self.name, cmd, timeout=timeout, input=input)

    def read_file(self, path: str, *, timeout: float = 5.0) -> bytes:
        data = self.agent.read_files([path], timeout=timeout).get(path)
        if data is None:
            from ..errors import ExecError

            raise ExecError(f"cannot read {path} in {self.name!r}", name=self.name)
        return data

    def stop(self) -> None:
        """Stop this instance's kernel (its links stay; ``lab.restart(node)`` boots it again)."""
        self.lab._call(self.name, "stop_instance", self.name, wait=60)  # noqa: SLF001
        self.lab._forget_states()  # noqa: SLF001

    def __repr__(self) -> str:
        return f"<RemoteInstance {self.name} on {self.worker}>"


class ClusterSampler(Sampler):
    """The local Lab's sampler, reading link and instance counters through the workers."""

    def __init__(self, lab: DistributedLab, *, rate_hz: float = 5.0) -> None:
        super().__init__(lab, rate_hz=rate_hz)  # type: ignore[arg-type]  # the reads are overridden
        self.dlab = lab

    def link_samples(self, now: float) -> list[LinkSample]:
        out = []
        for row, _worker in self.dlab._link_rows():  # noqa: SLF001
            key = (row["src"], row["dst"])
            prev = self._previous.get(key)
            pps = bps = 0.0
            if prev is not None and now > prev.time:
                dt = now - prev.time
                pps = (row["frames"] + row["injected"] - prev.frames - prev.injected) / dt
                bps = 8 * (row["bytes"] - prev.bytes) / dt
            sample = LinkSample(now, row["link"], row["src"], row["dst"], row["frames"], row["bytes"],
                                row["drops"], row["malformed"], row["injected"], max(pps, 0.0),
                                max(bps, 0.0))
            self._previous[key] = sample
            out.append(sample)
        return out

    def node_samples(self, now: float) -> dict[str, NodeSample]:
        out: dict[str, NodeSample] = {}
        for _address, samples in self.dlab._each_worker("node_samples", now):  # noqa: SLF001
            out.update(samples or {})
        self.dlab._note_states({n: s.state for n, s in out.items()}, time.monotonic())  # noqa: SLF001
        return out
