"""The pcap stream format of stdpkt-lab links, in pure Python.

A link carries one global header, then one record per Ethernet frame::

    global header  magic 0xa1b2c3d4 (native little-endian), version 2.4, thiszone 0,
                   sigfigs 0, snaplen 262144, network 1 (LINKTYPE_ETHERNET)
    record         ts_sec, ts_usec, incl_len, orig_len (4 x u32), then incl_len bytes

These helpers build and read such streams for tests, tools and injection; the
relay itself (C) is lenient and resynchronises, :func:`decode` is strict.
"""

from __future__ import annotations

import io
import struct
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import BinaryIO

from stdpkt_lab.errors import PcapError

__all__ = [
    "MAGIC_USEC",
    "MAGIC_NSEC",
    "LINKTYPE_ETHERNET",
    "SNAPLEN",
    "FRAME_MIN",
    "FRAME_MAX",
    "GLOBAL_HEADER_LEN",
    "RECORD_HEADER_LEN",
    "Record",
    "global_header",
    "record_header",
    "record",
    "encode",
    "decode",
    "iter_records",
]

MAGIC_USEC = 0xA1B2C3D4
MAGIC_NSEC = 0xA1B23C4D
LINKTYPE_ETHERNET = 1
SNAPLEN = 262144
FRAME_MIN = 14
FRAME_MAX = 65550
GLOBAL_HEADER_LEN = 24
RECORD_HEADER_LEN = 16

_GHDR = struct.Struct("<IHHiIII")
_REC = struct.Struct("<IIII")


@dataclass(frozen=True)
class Record:
    """One frame read from a pcap stream."""

    ts_ns: int
    orig_len: int
    data: bytes


def global_header(
    *, nanosecond: bool = False, snaplen: int = SNAPLEN, linktype: int = LINKTYPE_ETHERNET
) -> bytes:
    """The 24-byte global header (native little-endian)."""
    magic = MAGIC_NSEC if nanosecond else MAGIC_USEC
    return _GHDR.pack(magic, 2, 4, 0, 0, snaplen, linktype)


def record_header(
    length: int,
    *,
    ts_ns: int | None = None,
    orig_len: int | None = None,
    nanosecond: bool = False,
) -> bytes:
    """The 16-byte header of a record holding ``length`` bytes."""
    if ts_ns is None:
        ts_ns = time.time_ns()
    sec, frac = divmod(ts_ns, 1_000_000_000)
    if not nanosecond:
        frac //= 1000
    return _REC.pack(sec & 0xFFFFFFFF, frac, length, length if orig_len is None else orig_len)


def record(
    frame: bytes,
    *,
    ts_ns: int | None = None,
    orig_len: int | None = None,
    nanosecond: bool = False,
) -> bytes:
    """A whole record (header + frame)."""
    return record_header(len(frame), ts_ns=ts_ns, orig_len=orig_len, nanosecond=nanosecond) + bytes(
        frame
    )


def encode(frames: Iterable[bytes], *, ts_ns: int | None = None, header: bool = True) -> bytes:
    """A stream of ``frames`` (with the global header unless ``header=False``)."""
    parts = [global_header()] if header else []
    parts.extend(record(f, ts_ns=ts_ns) for f in frames)
    return b"".join(parts)


def _parse_global(head: bytes, offset: int = 0) -> tuple[str, bool]:
    if len(head) < GLOBAL_HEADER_LEN:
        raise PcapError(
            f"truncated pcap global header at byte {offset}: {len(head)} of "
            f"{GLOBAL_HEADER_LEN} bytes"
        )
    (magic,) = struct.unpack_from("<I", head)
    for order in ("<", ">"):
        for value, nano in ((MAGIC_USEC, False), (MAGIC_NSEC, True)):
            if struct.unpack_from(order + "I", head)[0] == value:
                linktype = struct.unpack_from(order + "I", head, 20)[0] & 0xFFFF
                if linktype != LINKTYPE_ETHERNET:
                    raise PcapError(f"pcap link type {linktype} is not Ethernet (1)")
                return order, nano
    raise PcapError(f"bad pcap magic 0x{magic:08x} at byte {offset}")


def iter_records(stream: BinaryIO) -> Iterator[Record]:
    """Reads records from a binary file object until its end (strict: malformed → PcapError)."""
    order, nano = _parse_global(stream.read(GLOBAL_HEADER_LEN))
    offset = GLOBAL_HEADER_LEN
    rec = struct.Struct(order + "IIII")
    while True:
        head = stream.read(RECORD_HEADER_LEN)
        if not head:
            return
        if len(head) < RECORD_HEADER_LEN:
            raise PcapError(f"truncated pcap record header at byte {offset}")
        sec, frac, incl, orig = rec.unpack(head)
        if incl > SNAPLEN or incl > orig:
            raise PcapError(
                f"malformed pcap record at byte {offset}: incl_len={incl}, orig_len={orig}"
            )
        data = stream.read(incl)
        if len(data) < incl:
            raise PcapError(f"truncated pcap record at byte {offset}: {len(data)} of {incl} bytes")
        yield Record(sec * 1_000_000_000 + (frac if nano else frac * 1000), orig, data)
        offset += RECORD_HEADER_LEN + incl


def decode(data: bytes) -> list[Record]:
    """All records of a complete stream held in memory."""
    return list(iter_records(io.BytesIO(data)))
