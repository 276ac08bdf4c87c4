"""The packet relay: moves Ethernet frames between sockets and pcap streams (C, via cffi).

::

    from stdpkt_lab.relay import Endpoint, Pump

    p = Pump(Endpoint.socket(guest_fd), Endpoint.pcap(pipe_w), name="eth0 tx").start()
    p.stats.frames, p.trace(limit=10), p.inject(frame), p.stop()

    p.retarget(Endpoint.socket(other_fd))            # re-wire while running
    p.add_steer(7, "tcp port 80", Endpoint.socket(detour_fd))   # steer new flows
    p.steer_stats()[7].flows, p.remove_steer(7)
"""

from stdpkt_lab.relay import pcap
from stdpkt_lab.relay.group import start_together
from stdpkt_lab.relay.pump import Endpoint, Pump, PumpResult, PumpStats, TracedFrame
from stdpkt_lab.relay.steer import Flow, FlowTable, FlowTableStats, SteerStats

__all__ = [
    "Endpoint",
    "Flow",
    "FlowTable",
    "FlowTableStats",
    "Pump",
    "PumpResult",
    "PumpStats",
    "SteerStats",
    "TracedFrame",
    "pcap",
    "start_together",
]
