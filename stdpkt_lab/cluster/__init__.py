"""Labs across machines: instances placed on Dask workers, linked by pcap streams over TCP.

``sl.Lab(g, cluster=client)`` returns a :class:`DistributedLab`; without
``cluster=`` nothing here is imported.  Live changes (``lab.insert`` ...) and
``lab.dashboard()`` work on it as on a local Lab (see :mod:`.live`).  Needs the ``cluster`` extra
(``pip install stdpkt-lab[cluster]``: Dask distributed).
"""

from .lab import DistributedLab
from .live import ClusterRule, DistributedLive
from .placement import WorkerInfo, place
from .remote import RemoteInstance
from .worker import WorkerSide

__all__ = ["DistributedLab", "DistributedLive", "ClusterRule", "RemoteInstance", "WorkerInfo",
           "WorkerSide", "place"]
