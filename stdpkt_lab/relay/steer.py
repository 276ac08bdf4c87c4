"""Steering (an RFC 7665 classifier in the relay): the flow table and per-rule counters.

A :class:`FlowTable` is shared by the two pumps of a link.  Once a pump has one
(``Pump(flow_table=...)`` or ``pump.flow_table = table``) it records every IPv4
and IPv6 flow it relays under a symmetric key — (protocol, {address, port}
pair), so both directions of a flow share one entry — with the id of the rule
that owns it (0: the default path):

* a **new** flow — TCP: a SYN without ACK; UDP, ICMP and the rest: the first
  frame of an unknown (or expired) key — is offered to the pump's rules in the
  order they were added (``Pump.add_steer(rule_id, filter_expr, endpoint)``);
  the first whose pcap filter matches the frame owns the flow;
* every later frame of a recorded flow, in **either** pump, goes to that pump's
  output for the recorded rule id.  So a detour a->X ... Y->b is two calls with
  the same id: ``a_to_b.add_steer(7, "tcp port 80", X)`` classifies, and
  ``b_to_a.add_steer(7, None, Y)`` (no filter: it classifies nothing) carries the
  replies of those flows to Y.  A pump without an output for a recorded id uses
  its default destination;
* flows already recorded when a rule is added keep their path (a TCP
  connection opened before the rule, a UDP flow that had frames before it) until
  they expire: after ``idle_timeout`` seconds without frames (default 30), or
  ``closed_timeout`` (default 2) once a TCP FIN or RST was seen;
* ICMP echo requests and replies are keyed by their identifier (one ping run, one
  flow), other ICMP messages by addresses only;
* frames that are not IP (ARP, LLDP...) always take the default path; IPv4
  fragments are keyed without ports; IPv6 extension headers are not walked.

The relay counts per rule, per pump: ``flows`` (new flows it took), ``frames``
and ``bytes`` (written to its output) and ``drops`` (lost because the output
failed: a steering output that fails is marked dead and its frames are dropped
and counted, so a detour through a stopped firewall never bypasses it; the pump
itself goes on).  A pump's own ``frames``/``bytes`` counters include steered
frames.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from stdpkt_lab.errors import ConfigError, PcapError
from stdpkt_lab.relay import bpf
from stdpkt_lab.relay._relay import ffi, lib

__all__ = ["Flow", "FlowTable", "FlowTableStats", "SteerStats", "bpf_program"]

_NS = 1_000_000_000


@dataclass(frozen=True)
class SteerStats:
    """Counters of one steering rule on one pump."""

    flows: int = 0
    frames: int = 0
    bytes: int = 0
    drops: int = 0


@dataclass(frozen=True)
class FlowTableStats:
    capacity: int
    active: int  # entries not expired
    flows: int  # entries ever recorded
    evictions: int  # live entries overwritten because their bucket was full


@dataclass(frozen=True)
class Flow:
    """One live entry: the two ends in key order (lower (address, port) first)."""

    proto: int
    addr_lo: ipaddress.IPv4Address | ipaddress.IPv6Address
    port_lo: int
    addr_hi: ipaddress.IPv4Address | ipaddress.IPv6Address
    port_hi: int
    rule: int  # 0: the default path
    closing: bool  # a TCP FIN or RST was seen
    idle: float  # seconds since its last frame


class FlowTable:
    """The flow table of a link's two pumps (see the module docstring)."""

    def __init__(
        self, *, capacity: int = 16384, idle_timeout: float = 30.0, closed_timeout: float = 2.0
    ) -> None:
        if capacity < 64 or capacity > 1 << 24 or capacity & (capacity - 1):
            raise ConfigError(f"flow table capacity must be a power of two in 64..2**24, not {capacity}")
        for name, value in (("idle_timeout", idle_timeout), ("closed_timeout", closed_timeout)):
            if not value > 0:
                raise ConfigError(f"flow table {name} must be > 0 seconds, not {value}")
        t = lib.relay_flowtab_new(capacity, int(idle_timeout * _NS), int(closed_timeout * _NS))
        if t == ffi.NULL:
            raise MemoryError("cannot allocate the flow table")
        self._t = ffi.gc(t, lib.relay_flowtab_free)
        self.capacity = capacity
        self.idle_timeout = idle_timeout
        self.closed_timeout = closed_timeout

    @property
    def _ptr(self) -> object:
        return self._t

    def stats(self) -> FlowTableStats:
        s = ffi.new("relay_flowtab_stats *")
        lib.relay_flowtab_get_stats(self._t, s)
        return FlowTableStats(s.capacity, s.active, s.flows, s.evictions)

    def __len__(self) -> int:
        return int(self.stats().active)

    def flows(self, limit: int = 4096) -> list[Flow]:
        """The live entries (at most ``limit``)."""
        limit = max(0, min(limit, self.capacity))
        if limit == 0:
            return []
        out = ffi.new("relay_flow_info[]", limit)
        n = lib.relay_flowtab_dump(self._t, out, limit)
        flows = []
        for i in range(n):
            e = out[i]
            size = 4 if e.family == 4 else 16
            lo = ipaddress.ip_address(bytes(ffi.buffer(e.addr_lo, size)))
            hi = ipaddress.ip_address(bytes(ffi.buffer(e.addr_hi, size)))
            flows.append(Flow(e.proto, lo, e.port_lo, hi, e.port_hi, e.rule, bool(e.closing),
                              e.idle_ns / _NS))
        return flows

    def clear(self) -> None:
        """Forgets every flow: each flow's next frame is classified afresh (TCP: only a SYN)."""
        lib.relay_flowtab_clear(self._t)

    def __repr__(self) -> str:
        return f"<FlowTable {len(self)}/{self.capacity} flows>"


def bpf_program(expr: str) -> tuple[object, int]:
    """A pcap filter expression compiled to a cffi ``relay_bpf_insn[]`` and its length
    (the same compiler as the trace filter: :func:`stdpkt_lab.relay.bpf.compile_filter`)."""
    prog = bpf.compile_filter(expr)
    insns = ffi.new("relay_bpf_insn[]", len(prog))
    for i, ins in enumerate(prog):
        insns[i].code = ins.code
        insns[i].jt = ins.jt
        insns[i].jf = ins.jf
        insns[i].k = ins.k
    if lib.relay_bpf_validate(insns, len(prog)) != 0:
        raise PcapError(f"filter {expr!r} compiled to an invalid BPF program")
    return insns, len(prog)
