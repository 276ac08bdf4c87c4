"""Packet traces from the relays' rings: raw bytes kept, dissected (scapy) only when asked.

Each packet returned carries where it was seen: ``pkt.link`` = (src, dst) and
``pkt.time`` (seconds since the epoch, a float, from the relay's timestamp);
``pkt.wirelen`` its length on the wire (the ring keeps at most ``trace_snap``
bytes of it).  What a person reads shows datetimes: :class:`Trace` (the
PacketList returned) renders as a table with a wall-clock column and has
:meth:`Trace.to_frame`; a :class:`Journey` shows each hop's time and its
offset in milliseconds from the first hop.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..htmltable import Cell, html_table
from ..relay import TracedFrame
from ..relay import pcap as pcapfmt
from .clock import clock_text, local_datetime, time_frame

__all__ = ["to_packets", "write_pcap", "Hop", "Journey", "packet_key", "follow_packet"]

def to_packets(frames: Iterable[tuple[tuple[str, str], TracedFrame]]) -> Any:
    """(link, frame) pairs → a scapy PacketList sorted by time."""
    import scapy.layers.inet  # noqa: F401 - binds IP/TCP/UDP/ICMP under Ether (else: Raw)
    from scapy.layers.l2 import Ether

    from .tracelist import Trace

    pkts: list[Any] = []
    for link, frame in sorted(frames, key=lambda lf: lf[1].ts_ns):
        pkt = Ether(frame.data)
        pkt.time = frame.ts_ns / 1e9
        pkt.wirelen = frame.orig_len
        pkt.link = link
        pkt.injected = frame.injected
        pkts.append(pkt)
    return Trace(pkts, name="stdpkt trace")


def write_pcap(frames: Sequence[TracedFrame], path: str | Path) -> int:
    """Write frames (already in time order) as a standard pcap file; returns the count."""
    with open(path, "wb") as out:
        out.write(pcapfmt.global_header(nanosecond=True))
        for frame in frames:
            out.write(pcapfmt.record_header(len(frame.data), ts_ns=frame.ts_ns,
                                            orig_len=frame.orig_len, nanosecond=True))
            out.write(frame.data)
    return len(frames)


def _summary(pkt: Any) -> str:
    text = str(pkt.summary())
    return text[len("Ether / "):] if text.startswith("Ether / ") else text


def packet_key(pkt: Any) -> tuple | None:
    """What stays the same when a NAT, firewall or IPVS forwards a packet.

    Addresses, ports, TTL and checksums change; the IP ID, the L4 protocol,
    TCP sequence/acknowledgement numbers, ICMP sequence and the payload do
    not (Linux NAT and IPVS rewrite neither).  None for non-IPv4 frames.
    """
    from scapy.layers.inet import ICMP, IP, TCP, UDP

    if IP not in pkt:
        return None
    ip = pkt[IP]
    l4: tuple = (ip.proto,)
    if TCP in pkt:
        l4 += (pkt[TCP].seq, pkt[TCP].ack, int(pkt[TCP].flags))
        payload = bytes(pkt[TCP].payload)
    elif UDP in pkt:
        payload = bytes(pkt[UDP].payload)
    elif ICMP in pkt:
        l4 += (pkt[ICMP].type, pkt[ICMP].seq)
        payload = bytes(pkt[ICMP].payload)
    else:
        payload = bytes(ip.payload)
    return (ip.id, *l4, ip.len, hashlib.blake2s(payload, digest_size=8).digest())


_FIELDS = (("IP", "src"), ("IP", "dst"), ("IP", "ttl"), ("TCP", "sport"), ("TCP", "dport"),
           ("UDP", "sport"), ("UDP", "dport"), ("ICMP", "id"), ("Ether", "src"), ("Ether", "dst"))


def _fields(pkt: Any) -> dict[str, Any]:
    out = {}
    for layer, name in _FIELDS:
        if pkt.haslayer(layer):
            out[f"{layer}.{name}"] = getattr(pkt.getlayer(layer), name)
    return out


@dataclass(frozen=True)
class Hop:
    """The packet as seen on one link direction; ``time`` in epoch seconds, ``offset_ms``
    after the journey's first hop."""

    link: tuple[str, str]
    time: float
    packet: Any
    changed: dict[str, tuple[Any, Any]] = field(default_factory=dict)  # field: (before, after)
    offset_ms: float = 0.0

    @property
    def when(self) -> Any:
        """The local wall-clock time of this sighting (a ``datetime``)."""
        return local_datetime(self.time)

    def __str__(self) -> str:
        what = ", ".join(f"{k} {a}→{b}" for k, a, b in ((k, *v) for k, v in self.changed.items()))
        return (f"{self.link[0]}→{self.link[1]} {clock_text(self.time, digits=6)} "
                f"+{self.offset_ms:.3f} ms {_summary(self.packet)}" + (f"  [{what}]" if what else ""))


@dataclass(frozen=True)
class Journey:
    """One packet's hops across the chain, in time order."""

    hops: tuple[Hop, ...]

    def __len__(self) -> int:
        return len(self.hops)

    def __iter__(self) -> Iterator[Hop]:
        return iter(self.hops)

    def __getitem__(self, i: int) -> Hop:
        return self.hops[i]

    @property
    def links(self) -> list[tuple[str, str]]:
        return [h.link for h in self.hops]

    def __str__(self) -> str:
        return "\n".join(str(h) for h in self.hops)

    def to_frame(self) -> Any:
        """One row per hop: ``time`` (datetime64), ``ms`` since the first hop, ``src``,
        ``dst``, the followed header fields, ``changed`` (names), ``timestamp``."""
        rows = []
        for hop in self.hops:
            row: dict[str, Any] = {"time": hop.time, "ms": round(hop.offset_ms, 3),
                                   "src": hop.link[0], "dst": hop.link[1]}
            row.update({k: str(v) for k, v in _fields(hop.packet).items() if not k.startswith("Ether.")})
            row["changed"] = ", ".join(hop.changed)
            rows.append(row)
        return time_frame(rows)

    def _repr_html_(self) -> str:
        shown = [k for k in _SHOWN if any(k in _fields(h.packet) for h in self.hops)]
        rows = []
        for hop in self.hops:
            values = _fields(hop.packet)
            cells: list[Any] = [clock_text(hop.time, digits=6), f"+{hop.offset_ms:.3f}",
                                f"{hop.link[0]} → {hop.link[1]}"]
            for k in shown:
                before = hop.changed.get(k)
                cells.append(Cell(values.get(k, ""), highlight=before is not None,
                                  title=f"was {before[0]}" if before else ""))
            rows.append(cells)
        note = f"{len(self.hops)} hops; highlighted: rewritten on that hop (hover for the old value)"
        return html_table(("time", "ms", "link", *shown), rows, title="journey", note=note,
                          css_class="stdpkt-journey")


#: fields a journey's table shows (those present in at least one hop)
_SHOWN = ("IP.src", "IP.dst", "TCP.sport", "TCP.dport", "UDP.sport", "UDP.dport", "ICMP.id", "IP.ttl")


def follow_packet(pkt: Any, candidates: Iterable[Any], *, window: float = 2.0) -> Journey:
    """Every sighting of ``pkt`` among ``candidates`` (packets with ``.link``/``.time``)
    within ``window`` seconds, with the header fields each hop changed."""
    key = packet_key(pkt)
    if key is None:
        raise ValueError("follow() needs an IPv4 packet")
    t0 = float(pkt.time)
    seen: dict[tuple[str, str], Any] = {}
    for cand in candidates:
        if abs(float(cand.time) - t0) > window or packet_key(cand) != key:
            continue
        link = tuple(cand.link)
        if link not in seen or abs(float(cand.time) - t0) < abs(float(seen[link].time) - t0):
            seen[link] = cand
    ordered = sorted(seen.values(), key=lambda p: float(p.time))
    hops = []
    before: dict[str, Any] | None = None
    first = float(ordered[0].time) if ordered else 0.0
    for cand in ordered:
        now = _fields(cand)
        changed = {} if before is None else {
            k: (before.get(k), v) for k, v in now.items()
            if k in before and before[k] != v and not k.startswith(("Ether.", "IP.ttl"))}
        hops.append(Hop((cand.link[0], cand.link[1]), float(cand.time), cand, changed,
                        (float(cand.time) - first) * 1e3))
        before = now
    return Journey(tuple(hops))
