"""Labs across machines: instances placed on Dask workers, linked by pcap streams over TCP.

``sl.Lab(g, cluster=client)`` returns a :class:`DistributedLab`; without
``cluster=`` nothing here is imported.  Needs the ``cluster`` extra
(``pip install stdpkt-lab[cluster]``: Dask distributed).
"""

from .lab import DistributedLab
from .placement import WorkerInfo, place
from .worker import WorkerSide

__all__ = ["DistributedLab", "WorkerInfo", "WorkerSide", "place"]
