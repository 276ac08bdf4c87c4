"""Which Dask worker runs which instance: pure logic, no Dask calls.

A node may name its worker (``g.nodes["fw"]["host"] = "worker-2"``: a worker's
name, its address ``tcp://10.0.0.5:40000``, or its host ``10.0.0.5``); the others
are placed greedily, biggest guest memory first, on the worker with the least
memory committed relative to its limit, ties broken by instance count.  So
instances spread by count when their memory is equal, and a worker with twice
the memory takes twice as many.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from ..errors import ChainError

__all__ = ["WorkerInfo", "place"]


@dataclass(frozen=True)
class WorkerInfo:
    """What placement needs to know of one worker."""

    address: str  # tcp://host:port, the key Dask uses
    name: str
    memory_limit: int = 0  # bytes; 0 = unknown (treated as equal for all)

    @property
    def host(self) -> str:
        return self.address.split("://", 1)[-1].rsplit(":", 1)[0].strip("[]")

    def matches(self, wanted: str) -> bool:
        return wanted in (self.address, self.name, self.host, str(self.name))


def place(nodes: Mapping[str, int], workers: list[WorkerInfo],
          pinned: Mapping[str, str] | None = None) -> dict[str, WorkerInfo]:
    """``nodes``: name → guest memory (MiB); ``pinned``: name → wanted worker."""
    if not workers:
        raise ChainError("the Dask cluster has no workers")
    pinned = dict(pinned or {})
    out: dict[str, WorkerInfo] = {}
    load = {w.address: [0, 0] for w in workers}  # MiB committed, instances
    for node, wanted in pinned.items():
        if node not in nodes:
            continue
        found = [w for w in workers if w.matches(str(wanted))]
        if not found:
            names = ", ".join(f"{w.name} ({w.address})" for w in workers)
            raise ChainError(f"host={wanted!r} names no worker of the cluster (workers: {names})",
                             node=node)
        out[node] = found[0]
        load[found[0].address][0] += nodes[node]
        load[found[0].address][1] += 1

    def pressure(w: WorkerInfo) -> tuple[float, int, str]:
        committed, count = load[w.address]
        limit = w.memory_limit / 2**20 if w.memory_limit else 1.0
        return committed / limit, count, w.address

    for node in sorted((n for n in nodes if n not in out), key=lambda n: (-nodes[n], n)):
        best = min(workers, key=lambda w: pressure(w))
        out[node] = best
        load[best.address][0] += nodes[node]
        load[best.address][1] += 1
    return out
