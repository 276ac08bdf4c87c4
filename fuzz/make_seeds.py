#!/usr/bin/env python3
"""Writes the seed corpora fuzz/corpus/<harness>/ (committed; re-run only to change them).

pcap_stream: valid pcap streams (µs/ns, both byte orders, a second global header
mid-stream, large frames) and streams with errors (bad magic, wrong link type,
a corrupt record header, a runt, a truncated tail, garbage between records),
each behind the harness's flags byte.
pcap_rx: pcap streams with large records, behind the harness's flags byte (guest
buffers, a slow guest, offload, the stream in two parts).
bpf: the programs the project's own filter compiler (stdpkt_lab.relay.bpf)
makes for typical trace expressions, each with a packet.
vhost_proto: vhost-user sessions as UML's front end holds them (features, memory
table, both queues set up, configuration read), with acknowledgements asked or not,
a region past its file, two regions, traffic-time queries, a stop, and a tail that
loses the framing.

Usage: .venv/bin/python fuzz/make_seeds.py
"""

from __future__ import annotations

import struct
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from stdpkt_lab.relay import bpf, pcap  # noqa: E402

CORPUS = Path(__file__).resolve().parent / "corpus"
TS = 1_700_000_000_000_000_000


def eth(ethertype: int, payload: bytes) -> bytes:
    return bytes.fromhex("020000000002020000000001") + struct.pack("!H", ethertype) + payload


def ipv4_tcp(dport: int = 80, flags: int = 0x02, size: int = 0) -> bytes:
    tcp = struct.pack("!HHIIBBHHH", 40000, dport, 1, 0, 5 << 4, flags, 65535, 0, 0) + b"x" * size
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, min(20 + len(tcp), 65535), 1, 0, 64, 6, 0,
                     bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2]))
    return eth(0x0800, ip + tcp)


def ipv4_icmp() -> bytes:
    icmp = struct.pack("!BBHHH", 8, 0, 0, 1, 1) + b"ping" * 8
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(icmp), 2, 0, 64, 1, 0,
                     bytes([192, 168, 1, 1]), bytes([192, 168, 1, 2]))
    return eth(0x0800, ip + icmp)


def arp() -> bytes:
    return eth(0x0806, bytes(28))


def swapped(stream_frames: list[bytes], nsec: bool = False) -> bytes:
    magic = 0xA1B23C4D if nsec else 0xA1B2C3D4
    out = struct.pack(">IHHiIII", magic, 2, 4, 0, 0, 262144, 1)
    for i, f in enumerate(stream_frames):
        out += struct.pack(">IIII", 1_700_000_000 + i, 5, len(f), len(f)) + f
    return out


def pcap_seeds() -> dict[str, bytes]:
    frames = [ipv4_tcp(), ipv4_icmp(), arp(), ipv4_tcp(443, 0x10, 1000)]
    good = pcap.encode(frames, ts_ns=TS)
    ns = pcap.global_header(nanosecond=True) + b"".join(
        pcap.record(f, ts_ns=TS + i, nanosecond=True) for i, f in enumerate(frames))
    big = pcap.encode([ipv4_tcp(size=9000), ipv4_tcp(size=65550 - 54)], ts_ns=TS)
    rec = pcap.record(ipv4_icmp(), ts_ns=TS)
    bad_hdr = good[:24] + rec + struct.pack("<IIII", 1, 2_000_000, 60, 60) + bytes(60) + rec
    runt = good[:24] + rec + pcap.record(b"\x01\x02\x03", ts_ns=TS) + rec
    huge_incl = good[:24] + rec + struct.pack("<IIII", TS // 10**9, 0, 70000, 70000) + bytes(200) + rec
    seeds = {
        "empty": b"",
        "ghdr-only": pcap.global_header(),
        "valid-usec": good,
        "valid-nsec": ns,
        "valid-bigendian": swapped(frames),
        "valid-bigendian-nsec": swapped(frames, nsec=True),
        "valid-two-headers": good + pcap.encode(frames[:2], ts_ns=TS + 10**9),
        "valid-large-frames": big,
        "bad-magic": b"\xde\xad\xbe\xef" + good[4:],
        "bad-linktype": pcap.global_header(linktype=101) + rec,
        "corrupt-header-resync": bad_hdr,
        "runt-record": runt,
        "incl-too-large": huge_incl,
        "orig-less-than-incl": good[:24] + pcap.record(arp(), ts_ns=TS, orig_len=10) + rec,
        "truncated-record": good[:-7],
        "truncated-ghdr": good[:13],
        "garbage-between": good[:24] + rec + b"\x00\xff" * 37 + rec,
        "ghdr-mid-bad-linktype": good + pcap.global_header(linktype=113) + rec,
    }
    out = {}
    for name, data in seeds.items():
        out[f"{name}.mem"] = b"\x00" + data                 # memfd, no trace
        out[f"{name}.pipe-trace"] = b"\x33" + data          # pipe in chunks, trace on
    out["valid-usec.pipe-filter"] = b"\x57" + good          # pipe, trace + ip filter
    return out


def pcap_rx_seeds() -> dict[str, bytes]:
    """Streams with records of 4096 bytes and more (the direct receive path takes those),
    behind flags for each kind of guest buffers, a slow guest, offload, two parts."""
    mixed = [ipv4_tcp(size=9000), ipv4_icmp(), ipv4_tcp(size=4100), arp(), ipv4_tcp(size=12000),
             ipv4_tcp(size=1400)]
    streams = {
        "mixed": pcap.encode(mixed, ts_ns=TS),
        "max-frame": pcap.encode([ipv4_tcp(size=65550 - 54), ipv4_icmp()], ts_ns=TS),
        "small-run": pcap.encode([ipv4_tcp(size=1400)] * 12 + [ipv4_tcp(size=8000)], ts_ns=TS),
        "corrupt-after-large": pcap.encode(mixed[:3], ts_ns=TS)
        + struct.pack("<IIII", 1, 2_000_000, 5000, 5000) + bytes(5000) + pcap.record(arp(), ts_ns=TS),
        "truncated-large": pcap.encode(mixed[:3], ts_ns=TS)[:-100],
    }
    out = {}
    for name, data in streams.items():
        for flags in (0x00, 0x02, 0x03, 0x8D, 0xF1):
            out[f"{name}.{flags:02x}"] = bytes([flags]) + data
    return out


def bpf_seeds() -> dict[str, bytes]:
    exprs = {
        "ip": "ip",
        "tcp-port-80": "tcp port 80",
        "icmp-or-arp": "icmp or arp",
        "udp-src-net": "udp and src net 10.0.0.0/8",
        "syn": "tcp[tcpflags] & tcp-syn != 0",
        "vlan-tcp": "vlan and tcp",
        "ip6-tcp": "ip6 and tcp",
        "len-gt": "greater 100",
        "ip-len": "ip[2:2] > 100 and ether[0] & 1 = 0",
        "host-port-range": "host 10.0.0.2 and portrange 1000-2000",
        "modulo": "ip[2:2] % 3 = 0",
        "not-broadcast": "not ether broadcast and not ether multicast",
    }
    packets = [ipv4_tcp(), ipv4_icmp(), arp(), b""]
    out = {}
    for name, expr in exprs.items():
        insns = bpf.compile_filter(expr)
        prog = b"".join(struct.pack("=HBBI", i.code, i.jt, i.jf, i.k) for i in insns)
        for j, pkt in enumerate(packets):
            out[f"{name}.{j}"] = bytes([len(insns), 0 if j else 8]) + prog + pkt
    return out


def vhost_proto_seeds() -> dict[str, bytes]:
    """Front-end sessions behind the harness's flags byte (fuzz/vhost_proto.c's layout:
    control byte, 12-byte header, payload; the harness gives the descriptors)."""
    memfd, efd, raw = 0x00, 0x08, 0x10

    def msg(request: int, payload: bytes = b"", fds: int = 0, kind: int = memfd, flags: int = 1) -> bytes:
        return bytes([fds | kind]) + struct.pack("<III", request, flags, len(payload)) + payload

    uva = 0x7F00_0000_0000
    features = (1 << 3) | (1 << 5) | (1 << 15) | (1 << 28) | (1 << 30) | (1 << 32)
    offload = (1 << 0) | (1 << 1) | (1 << 7) | (1 << 8) | (1 << 11) | (1 << 12)

    def table(regions: list[tuple[int, int, int, int]]) -> bytes:
        return msg(5, struct.pack("<II", len(regions), 0)
                   + b"".join(struct.pack("<QQQQ", *r) for r in regions), fds=len(regions))

    def queues(ack: int) -> bytes:
        out = b""
        for q in (0, 1):
            base = uva + q * 0x4000
            out += msg(8, struct.pack("<II", q, 256), flags=ack)
            out += msg(10, struct.pack("<II", q, 0), flags=ack)
            out += msg(9, struct.pack("<IIQQQQ", q, 0, base, base + 0x2000, base + 0x1000, 0), flags=ack)
            out += msg(12, struct.pack("<Q", q), fds=1, kind=efd, flags=ack)
            out += msg(13, struct.pack("<Q", q), fds=1, kind=efd, flags=ack)
            out += msg(18, struct.pack("<II", q, 1), flags=ack)
        return out

    def session(ack: int, feats: int, mem: bytes) -> bytes:
        return (msg(1) + msg(15) + msg(16, struct.pack("<Q", (1 << 3) | (1 << 5) | (1 << 9)))
                + msg(3) + msg(21, fds=1, kind=efd, flags=ack) + msg(2, struct.pack("<Q", feats), flags=ack)
                + msg(24, struct.pack("<III", 0, 12, 0) + bytes(12)) + mem + queues(ack))

    one = table([(0, 65536, uva, 0)])
    queries = msg(24, struct.pack("<III", 0, 10, 0) + bytes(10)) + msg(17) + msg(1) + msg(15)
    stop = msg(11, struct.pack("<II", 0, 0)) + msg(11, struct.pack("<II", 1, 0)) + msg(4)
    seeds = {
        "uml": b"\x00" + session(1, features, one) + queries,
        "uml-ack-offload": b"\x01" + session(9, features | offload, one) + queries + stop,
        "two-regions": b"\x01" + session(9, features, table([(0, 32768, uva, 0), (32768, 32768, uva + 32768, 32768)])),
        "past-the-file": b"\x00" + session(9, features, table([(0, 1 << 20, uva, 0)])),
        "offset-past-the-file": b"\x00" + session(9, features, table([(0, 4096, uva, 65536)])),
        "ring-outside": b"\x00" + session(9, features, table([(0, 8192, uva, 0)])),
        "unknown-request": b"\x00" + session(1, features, one) + msg(99, flags=9) + msg(24, bytes(12)),
        "raw-tail": b"\x00" + session(1, features, one) + bytes([raw]) + struct.pack("<III", 24, 9, 40)
        + struct.pack("<III", 0, 12, 0) + bytes(40),
        "raw-oversized": b"\x00" + msg(1) + bytes([raw]) + struct.pack("<III", 2, 1, 600) + bytes(64),
    }
    return seeds


def main() -> None:
    for harness, seeds in (("pcap_stream", pcap_seeds()), ("bpf", bpf_seeds()),
                           ("pcap_rx", pcap_rx_seeds()), ("vhost_proto", vhost_proto_seeds())):
        d = CORPUS / harness
        d.mkdir(parents=True, exist_ok=True)
        for old in d.iterdir():
            old.unlink()
        for name, data in seeds.items():
            (d / name).write_bytes(data)
        print(f"{d.relative_to(ROOT)}: {len(seeds)} seeds, {sum(map(len, seeds.values()))} bytes")


if __name__ == "__main__":
    main()
