"""Counters and traces of a running chain, as plain Python data (no Jupyter imports)."""

from .sampler import Sampler, Subscription
from .samples import LinkSample, NodeSample, Sample, parse_ip_vs, parse_proc_net_dev, records
from .traces import Hop, Journey, follow_packet, packet_key, to_packets, write_pcap

__all__ = [
    "Sampler", "Subscription", "LinkSample", "NodeSample", "Sample", "records",
    "parse_ip_vs", "parse_proc_net_dev", "Hop", "Journey", "follow_packet", "packet_key",
    "to_packets", "write_pcap",
]
