"""Property tests (hypothesis) of the pure-Python pcap reader (stdpkt_lab.relay.pcap).

Property: for ANY bytes, decode() returns records or raises PcapError (its documented
error); never another exception, never a hang; what encode() writes decodes to the same
frames; a stream cut anywhere decodes to a prefix of its frames or raises PcapError.
"""

from __future__ import annotations

import struct

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from stdpkt_lab.errors import PcapError
from stdpkt_lab.relay import pcap

from .hangs import no_hang

SETTINGS = settings(max_examples=800, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def decode(data: bytes) -> list[pcap.Record] | PcapError:
    with no_hang("decode", 5):
        try:
            return pcap.decode(data)
        except PcapError as exc:
            assert str(exc)
            return exc


frames = st.lists(st.binary(min_size=pcap.FRAME_MIN, max_size=300), max_size=8)
headers = st.sampled_from([
    pcap.global_header(),
    pcap.global_header(nanosecond=True),
    struct.pack(">IHHiIII", pcap.MAGIC_USEC, 2, 4, 0, 0, pcap.SNAPLEN, 1),
    struct.pack(">IHHiIII", pcap.MAGIC_NSEC, 2, 4, 0, 0, pcap.SNAPLEN, 1),
    pcap.global_header(linktype=101),
    b"\xde\xad\xbe\xef" + bytes(20),
])
record_headers = st.tuples(st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1),
                           st.integers(0, 2**32 - 1)).map(lambda t: struct.pack("<IIII", *t))


@SETTINGS
@given(st.binary(max_size=400))
@example(b"")
@example(pcap.global_header())
@example(pcap.global_header() + struct.pack("<IIII", 0, 0, 2**32 - 1, 2**32 - 1))
def test_any_bytes_decode_or_raise_pcap_error(data: bytes) -> None:
    out = decode(data)
    if not isinstance(out, PcapError):
        assert all(isinstance(r, pcap.Record) and len(r.data) <= r.orig_len for r in out)


@SETTINGS
@given(headers, st.lists(st.one_of(record_headers, st.binary(max_size=40)), max_size=6))
def test_headers_and_garbage_decode_or_raise_pcap_error(head: bytes, parts: list[bytes]) -> None:
    decode(head + b"".join(parts))


@SETTINGS
@given(frames, st.integers(0, 2**62))
def test_encode_then_decode_gives_the_frames_back(fs: list[bytes], ts: int) -> None:
    out = decode(pcap.encode(fs, ts_ns=ts))
    assert not isinstance(out, PcapError)
    assert [r.data for r in out] == fs
    assert all(r.orig_len == len(r.data) for r in out)


@SETTINGS
@given(frames, st.data())
def test_a_cut_stream_gives_a_prefix_or_pcap_error(fs: list[bytes], data: st.DataObject) -> None:
    stream = pcap.encode(fs, ts_ns=10**18)
    cut = data.draw(st.integers(0, len(stream)))
    out = decode(stream[:cut])
    if not isinstance(out, PcapError):
        assert [r.data for r in out] == fs[: len(out)]
