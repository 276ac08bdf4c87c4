"""The packet relay: moves Ethernet frames between sockets and pcap streams (C, via cffi).

::

    from stdpkt_lab.relay import Endpoint, Pump

    p = Pump(Endpoint.socket(guest_fd), Endpoint.pcap(pipe_w), name="eth0 tx").start()
    p.stats.frames, p.trace(limit=10), p.inject(frame), p.stop()
"""

from stdpkt_lab.relay import pcap
from stdpkt_lab.relay.pump import Endpoint, Pump, PumpResult, PumpStats, TracedFrame

__all__ = ["Endpoint", "Pump", "PumpResult", "PumpStats", "TracedFrame", "pcap"]
