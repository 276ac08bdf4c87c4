"""Tests of the C packet relay (stdpkt_lab.relay): no UML needed, a few seconds in all."""

from __future__ import annotations

import errno
import io
import os
import random
import select
import shutil
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Callable, Iterator

import pytest

try:
    from stdpkt_lab.relay import _relay  # noqa: F401
except ImportError:  # a checkout that was never built: build the extension in place
    import importlib.util
    from pathlib import Path

    _spec = importlib.util.spec_from_file_location(
        "_build_relay",
        Path(__file__).resolve().parent.parent / "stdpkt_lab" / "relay" / "_build_relay.py",
    )
    assert _spec and _spec.loader
    _builder = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(_builder)
    _builder.build_in_place()

from scapy.layers.inet import ICMP, IP, TCP, UDP  # noqa: E402
from scapy.layers.inet6 import IPv6  # noqa: E402
from scapy.layers.l2 import ARP, Ether  # noqa: E402
from scapy.packet import Raw  # noqa: E402
from scapy.utils import PcapReader  # noqa: E402

import stdpkt_lab.relay as relay_pkg  # noqa: E402
from stdpkt_lab.errors import ConfigError, LinkError, PcapError, StateError  # noqa: E402
from stdpkt_lab.relay import Endpoint, Pump, PumpResult, PumpStats, TracedFrame, bpf  # noqa: E402
from stdpkt_lab.relay import pcap as pcapf  # noqa: E402
from stdpkt_lab.relay.pump import ffi, lib  # noqa: E402

TS = 1_700_000_000 * 10**9
MAC_A = "02:00:00:00:00:01"
MAC_B = "02:00:00:00:00:02"


# ---------------------------------------------------------------- helpers


def seqpacket() -> tuple[socket.socket, socket.socket]:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    for s in (a, b):
        s.settimeout(5)
    return a, b


def frame(size: int, tag: int = 0) -> bytes:
    """A UDP/IPv4 Ethernet frame of exactly ``size`` bytes (>= 42) with a tag in the payload
    (above an IP packet's 64 KiB limit: an experimental ethertype)."""
    if size > 60000:
        return (
            bytes(Ether(src=MAC_A, dst=MAC_B, type=0x88B5))
            + struct.pack("!I", tag) * ((size - 14) // 4)
            + bytes((size - 14) % 4)
        )
    base = (
        Ether(src=MAC_A, dst=MAC_B)
        / IP(src="10.0.0.1", dst="10.0.0.2")
        / UDP(sport=1000 + tag % 5000, dport=2000)
    )
    head = bytes(base)
    pad = size - len(head)
    assert pad >= 0
    payload = (struct.pack("!I", tag) * (pad // 4 + 1))[:pad]
    data = bytes(base / Raw(payload))
    assert len(data) == size
    return data


def mixed_frames(n: int, seed: int = 1) -> list[bytes]:
    rng = random.Random(seed)
    sizes = [42, 60, 1514, 9014, 65550] + [rng.randint(42, 20000) for _ in range(n - 5)]
    return [frame(s, i) for i, s in enumerate(sizes[:n])]


def wait_for(cond: Callable[[], bool], timeout: float = 5.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.005)


def read_until_eof(fd: int, timeout: float = 5.0) -> bytes:
    chunks = []
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError("no EOF on the pipe")
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)


def recv_n(sock: socket.socket, n: int) -> list[bytes]:
    return [sock.recv(70000) for _ in range(n)]


def writer_thread(fd: int, data: bytes, *, chunk: int | None = None, close: bool = True):
    """Writes data to a pipe in a thread (optionally in small random chunks), then closes it."""

    def run() -> None:
        rng = random.Random(7)
        view = memoryview(data)
        try:
            while view:
                n = rng.randint(1, chunk) if chunk else len(view)
                k = os.write(fd, view[:n])
                view = view[k:]
        except OSError:
            pass
        finally:
            if close:
                os.close(fd)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def plausible(buf: bytes, pos: int, last_sec: int | None) -> bool:
    """The relay's rule for a plausible record header (µs, native order) at pos."""
    if len(buf) - pos < 16:
        return False
    magic, major = struct.unpack_from("<IH", buf, pos)
    if magic in (pcapf.MAGIC_USEC, pcapf.MAGIC_NSEC) and major == 2:
        return True
    sec, frac, incl, orig = struct.unpack_from("<IIII", buf, pos)
    near = last_sec is None or abs(sec - last_sec) <= 86400
    return frac < 10**6 and 14 <= incl <= 65550 and incl <= orig <= 262144 and near


def resync_point(buf: bytes, pos: int, last_sec: int | None) -> int:
    """Where the relay resynchronises when scanning a whole stream from pos: a plausible
    header near last_sec or, with no last_sec, followed by another plausible header or by
    the exact end of the stream."""
    while pos + 16 <= len(buf):
        if plausible(buf, pos, last_sec):
            if last_sec is not None or buf[pos : pos + 4] == pcapf.global_header()[:4]:
                return pos
            nxt = pos + 16 + struct.unpack_from("<I", buf, pos + 8)[0]
            if nxt + 16 <= len(buf) and plausible(buf, nxt, last_sec) or nxt == len(buf):
                return pos
        pos += 1
    return len(buf)


@pytest.fixture
def pumps() -> Iterator[list[Pump]]:
    """Pumps registered here are stopped at teardown, whatever happened."""
    made: list[Pump] = []
    yield made
    for p in made:
        p.stop(timeout=3)


@pytest.fixture
def socks() -> Iterator[list[socket.socket]]:
    made: list[socket.socket] = []
    yield made
    for s in made:
        s.close()


def pair(socks: list[socket.socket]) -> tuple[socket.socket, socket.socket]:
    a, b = seqpacket()
    socks.extend((a, b))
    return a, b


# ---------------------------------------------------------------- API surface


def test_public_names():
    assert relay_pkg.__all__ == [
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
    for name in relay_pkg.__all__:
        assert hasattr(relay_pkg, name)
    assert {r.name for r in PumpResult} == {"STOPPED", "EOF", "PEER_CLOSED", "BAD_STREAM", "ERROR"}
    assert PumpStats().frames == 0 and PumpStats().last_error == ""
    assert TracedFrame(1, 2, b"x", 3).injected is False


def test_lifecycle_errors(socks, pumps):
    a0, a1 = pair(socks)
    r, w = os.pipe()
    try:
        p = Pump(Endpoint.socket(a1), Endpoint.pcap(w))
        with pytest.raises(StateError):
            p.inject(frame(60))
        assert p.stats == PumpStats() and p.trace() == [] and p.result is None
        pumps.append(p.start())
        with pytest.raises(StateError):
            p.start()
        assert p.running
        assert p.stop() is PumpResult.STOPPED
        assert p.stop() is PumpResult.STOPPED  # idempotent
        assert not p.running
        with pytest.raises(StateError):
            p.inject(frame(60))
        q = Pump(Endpoint.socket(a1), Endpoint.pcap(w))
        q.stop()
        with pytest.raises(StateError):
            q.start()
    finally:
        os.close(r)
        os.close(w)
    with pytest.raises(ConfigError):
        Pump(Endpoint.socket(a1), Endpoint.socket(a0), trace_slots=1000)


def test_socket_endpoint_refuses_a_pipe(socks):
    a0, a1 = pair(socks)
    r, w = os.pipe()
    try:
        with pytest.raises(LinkError, match="not a socket"):
            Pump(Endpoint.socket(r), Endpoint.socket(a1)).start()
        with pytest.raises(LinkError, match="not open for writing"):
            Pump(Endpoint.socket(a0), Endpoint.pcap(r)).start()
    finally:
        os.close(r)
        os.close(w)


# ---------------------------------------------------------------- relaying


def chain(socks, pumps, **kw) -> tuple[socket.socket, socket.socket, Pump, Pump]:
    """guest A -> tx pump -> pipe -> rx pump -> guest B; returns (a0, b1, tx, rx)."""
    a0, a1 = pair(socks)
    b0, b1 = pair(socks)
    r, w = os.pipe()
    tx = Pump(Endpoint.socket(a1), Endpoint.pcap(w, close=True), name="tx", **kw)
    rx = Pump(Endpoint.pcap(r, close=True), Endpoint.socket(b0), name="rx", **kw)
    pumps.extend((tx.start(), rx.start()))
    return a0, b1, tx, rx


def test_chain_exact_counts(socks, pumps):
    a0, b1, tx, rx = chain(socks, pumps)
    frames = mixed_frames(300)
    sender = threading.Thread(target=lambda: [a0.send(f) for f in frames], daemon=True)
    sender.start()
    got = recv_n(b1, len(frames))
    sender.join(5)
    assert got == frames
    total = sum(map(len, frames))
    wait_for(lambda: rx.stats.frames == len(frames), what="rx counters")
    for p in (tx, rx):
        s = p.stats
        assert (s.frames, s.bytes, s.drops, s.malformed, s.skipped_bytes) == (
            len(frames),
            total,
            0,
            0,
            0,
        ), p.name
    assert tx.running and rx.running


def test_eof_propagates_through_the_chain(socks, pumps):
    a0, b1, tx, rx = chain(socks, pumps)
    exits = []
    tx.on_exit = lambda p, res: exits.append((p.name, res))
    a0.send(frame(100))
    assert b1.recv(1000) == frame(100)
    a0.close()  # the guest goes away
    assert tx.wait(3) is PumpResult.EOF
    assert rx.wait(3) is PumpResult.EOF  # tx closed the pipe's write end (close=True)
    assert exits == [("tx", PumpResult.EOF)]
    assert tx.stats.frames == rx.stats.frames == 1


def test_pcap_output_read_by_scapy_and_tcpdump(socks, pumps):
    a0, a1 = pair(socks)
    r, w = os.pipe()
    tx = Pump(Endpoint.socket(a1), Endpoint.pcap(w, close=True), name="tx")
    pumps.append(tx.start())
    frames = mixed_frames(60, seed=3)
    reader = {}
    t = threading.Thread(target=lambda: reader.setdefault("data", read_until_eof(r)), daemon=True)
    t.start()
    for f in frames:
        a0.send(f)
    wait_for(lambda: tx.stats.frames == len(frames), what="relay")
    assert tx.stop() is PumpResult.STOPPED
    t.join(5)
    os.close(r)
    data = reader["data"]
    assert data[:24] == pcapf.global_header()
    assert len(data) == 24 + sum(16 + len(f) for f in frames)
    with PcapReader(io.BytesIO(data)) as rd:
        # scapy's readers cut a record at 65535 bytes (its MTU); the 65550-byte frame is whole
        # in the stream, as pcap.decode below shows
        assert [bytes(p) for p in rd] == [f[:65535] for f in frames]
    recs = pcapf.decode(data)
    assert [x.data for x in recs] == frames
    assert all(abs(x.ts_ns - time.time_ns()) < 60 * 10**9 for x in recs)
    tcpdump = shutil.which("tcpdump")
    if tcpdump is None:
        pytest.skip("tcpdump not installed")
    out = subprocess.run(
        [tcpdump, "-r", "-", "-n", "--count"], input=data, capture_output=True, timeout=20
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.decode().strip() == f"{len(frames)} packets"


def test_global_header_written_at_start(socks, pumps):
    a0, a1 = pair(socks)
    r, w = os.pipe()
    try:
        p = Pump(Endpoint.socket(a1), Endpoint.pcap(w)).start()
        pumps.append(p)
        # start() itself writes it: no frame, no waiting for the thread
        assert os.read(r, 100) == pcapf.global_header()
        p.stop()
        q = Pump(Endpoint.socket(a1), Endpoint.pcap(w), write_header=False).start()
        pumps.append(q)
        a0.send(frame(60))
        wait_for(lambda: q.stats.frames == 1)
        assert len(os.read(r, 1000)) == 16 + 60  # record only
    finally:
        os.close(r)
        os.close(w)


def test_pcap_source_from_file_and_other_magics(socks, pumps, tmp_path):
    frames = mixed_frames(10, seed=5)
    b0, b1 = pair(socks)
    for order, magic in (
        ("<", 0xA1B2C3D4),
        (">", 0xA1B2C3D4),
        ("<", 0xA1B23C4D),
        (">", 0xA1B23C4D),
    ):
        head = struct.pack(order + "IHHiIII", magic, 2, 4, 0, 0, 262144, 1)
        body = b"".join(struct.pack(order + "IIII", 1, 999, len(f), len(f)) + f for f in frames)
        path = tmp_path / f"in-{order}-{magic:x}.pcap"
        path.write_bytes(head + body)
        with open(path, "rb") as fh:
            p = Pump(Endpoint.pcap(fh), Endpoint.socket(b0)).start()
            pumps.append(p)
            assert recv_n(b1, len(frames)) == frames
            assert p.wait(3) is PumpResult.EOF
            assert p.stats.malformed == 0 and p.stats.frames == len(frames)


def test_fifo_and_socket_descriptions_are_left_alone(socks, pumps, tmp_path):
    """Pipes/FIFOs are reopened through /proc/self/fd, sockets use MSG_DONTWAIT: the
    caller's open file descriptions never get O_NONBLOCK."""
    fifo = tmp_path / "link"
    os.mkfifo(fifo)
    rfd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    wfd = os.open(fifo, os.O_WRONLY)
    os.set_blocking(rfd, True)
    a0, a1 = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)  # no timeout: blocking
    b0, b1 = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    socks.extend((a0, a1, b0, b1))
    b1.settimeout(5)
    tx = Pump(Endpoint.socket(a1), Endpoint.pcap(wfd, close=True)).start()
    rx = Pump(Endpoint.pcap(rfd, close=True), Endpoint.socket(b0)).start()
    pumps.extend((tx, rx))
    for fd in (rfd, wfd, a1.fileno(), b0.fileno()):
        assert os.get_blocking(fd), fd
    a0.send(frame(300))
    assert b1.recv(1000) == frame(300)
    a0.close()
    assert tx.wait(3) is PumpResult.EOF and rx.wait(3) is PumpResult.EOF


def test_pcap_over_stream_sockets(socks, pumps):
    s0, s1 = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    socks.extend((s0, s1))
    a0, a1 = pair(socks)
    b0, b1 = pair(socks)
    tx = Pump(Endpoint.socket(a1), Endpoint.pcap(s0)).start()
    rx = Pump(Endpoint.pcap(s1), Endpoint.socket(b0)).start()
    pumps.extend((tx, rx))
    frames = mixed_frames(20, seed=9)
    sender = threading.Thread(target=lambda: [a0.send(f) for f in frames], daemon=True)
    sender.start()
    assert recv_n(b1, len(frames)) == frames
    assert rx.stop() is PumpResult.STOPPED
    s1.close()
    a0.send(frame(100))
    assert tx.wait(3) is PumpResult.PEER_CLOSED


# ---------------------------------------------------------------- malformed input


def malformed_stream() -> tuple[bytes, list[bytes], int, int]:
    """A stream with one malformed record of each kind.

    Returns (stream, good frames, malformed count, skipped bytes)."""
    good = [frame(60 + 7 * i, i) for i in range(7)]
    rec = pcapf.record_header
    parts: list[bytes] = [pcapf.global_header()]
    skipped = 0

    def add(part: bytes, skip: int = 0) -> None:
        nonlocal skipped
        parts.append(part)
        skipped += skip

    add(pcapf.record(good[0], ts_ns=TS))
    bad = rec(5, ts_ns=TS) + b"\x11" * 5  # incl_len < 14
    add(bad, len(bad))
    add(pcapf.record(good[1], ts_ns=TS))
    bad = rec(100, ts_ns=TS, orig_len=50) + b"\x22" * 100  # orig_len < incl_len
    add(bad, len(bad))
    add(pcapf.record(good[2], ts_ns=TS))
    bad = rec(70000, ts_ns=TS) + b"\x33" * 70000  # too large for a frame, but trusted
    add(bad, len(bad))
    add(pcapf.record(good[3], ts_ns=TS))
    bad = struct.pack("<IIII", 0xFFFFFFFF, 0xFFFFFFFF, 300000, 300000) + b"\xff" * 37  # > snaplen
    add(bad, len(bad))
    add(pcapf.record(good[4], ts_ns=TS))
    bad = struct.pack("<IIII", 0xFFFFFFFF, 2_000_000, 100, 100) + b"\xff" * 100  # ts_usec >= 1e6
    add(bad, len(bad))
    add(pcapf.record(good[5], ts_ns=TS))
    add(pcapf.global_header())  # a writer restarted on the same FIFO: not malformed
    add(pcapf.record(good[6], ts_ns=TS))
    bad = rec(200, ts_ns=TS) + b"\x44" * 50  # truncated by the end of the stream
    add(bad, len(bad))
    stream = b"".join(parts)
    # precondition: after each corrupt header the first plausible one is the next good record
    for marker, following in (
        (struct.pack("<III", 0xFFFFFFFF, 0xFFFFFFFF, 300000), good[4]),
        (struct.pack("<II", 0xFFFFFFFF, 2_000_000), good[5]),
    ):
        pos = resync_point(stream, stream.index(marker) + 1, TS // 10**9)
        assert pos == stream.index(pcapf.record(following, ts_ns=TS))
    return stream, good, 6, skipped


@pytest.mark.parametrize("how", ["pipe", "dribble", "file"])
def test_malformed_records_counted_and_skipped(socks, pumps, tmp_path, how):
    stream, good, n_bad, skipped = malformed_stream()
    b0, b1 = pair(socks)
    if how == "file":
        path = tmp_path / "bad.pcap"
        path.write_bytes(stream)
        src = os.open(path, os.O_RDONLY)
    else:
        src, w = os.pipe()
        writer_thread(w, stream, chunk=13 if how == "dribble" else None)
    p = Pump(Endpoint.pcap(src, close=True), Endpoint.socket(b0), name=how).start()
    pumps.append(p)
    assert recv_n(b1, len(good)) == good
    assert p.wait(5) is PumpResult.EOF
    s = p.stats
    assert s.frames == len(good)
    assert s.malformed == n_bad
    assert s.skipped_bytes == skipped
    assert "truncated pcap record" in s.last_error
    b1.settimeout(0.2)
    with pytest.raises(TimeoutError):
        b1.recv(70000)


@pytest.mark.parametrize("tail", [2, 1], ids=["verified-by-next-header", "last-record"])
def test_resync_before_any_good_record(socks, pumps, tail):
    # with no good record yet there is no timestamp to compare: the relay checks that the
    # header after a candidate record is plausible too (or that the stream ends right there)
    good = [frame(60 + i, i) for i in range(tail)]
    bad = struct.pack("<IIII", 0xFFFFFFFF, 0xFFFFFFFF, 300000, 300000) + b"\xff" * 21
    stream = pcapf.global_header() + bad + b"".join(pcapf.record(f, ts_ns=TS) for f in good)
    assert resync_point(stream, 25, None) == 24 + len(bad)
    b0, b1 = pair(socks)
    r, w = os.pipe()
    writer_thread(w, stream)
    p = Pump(Endpoint.pcap(r, close=True), Endpoint.socket(b0)).start()
    pumps.append(p)
    assert recv_n(b1, tail) == good
    assert p.wait(3) is PumpResult.EOF
    assert (p.stats.malformed, p.stats.skipped_bytes) == (1, len(bad))
    assert "resynchronised at byte" in p.stats.last_error


def test_malformed_message_names_offset_and_field(socks, pumps):
    b0, b1 = pair(socks)
    stream = pcapf.global_header() + pcapf.record_header(5, ts_ns=TS) + b"x" * 5
    stream += pcapf.record(frame(60), ts_ns=TS)
    r, w = os.pipe()
    writer_thread(w, stream, close=False)
    p = Pump(Endpoint.pcap(r, close=True), Endpoint.socket(b0)).start()
    pumps.append(p)
    assert b1.recv(1000) == frame(60)
    assert p.stats.last_error == "malformed pcap record at byte 24: incl_len=5 < 14; skipped"
    assert p.running  # writer still open: the pump waits for more
    os.close(w)
    assert p.wait(3) is PumpResult.EOF


@pytest.mark.parametrize(
    ("head", "message"),
    [
        (b"\xde\xad\xbe\xef" + bytes(20), "bad pcap magic 0xefbeadde (bytes de ad be ef)"),
        (pcapf.global_header(linktype=101), "link type 101, not Ethernet"),
        (pcapf.global_header()[:10], "truncated pcap global header"),
    ],
)
def test_bad_global_header(socks, pumps, head, message):
    b0, b1 = pair(socks)
    r, w = os.pipe()
    writer_thread(w, head + (pcapf.record(frame(60)) if len(head) == 24 else b""))
    p = Pump(Endpoint.pcap(r, close=True), Endpoint.socket(b0)).start()
    pumps.append(p)
    assert p.wait(3) is PumpResult.BAD_STREAM
    assert message in p.stats.last_error
    assert p.stats.frames == 0


def test_empty_stream_is_eof(socks, pumps):
    b0, b1 = pair(socks)
    r, w = os.pipe()
    os.close(w)
    p = Pump(Endpoint.pcap(r, close=True), Endpoint.socket(b0)).start()
    pumps.append(p)
    assert p.wait(3) is PumpResult.EOF
    assert p.stats.last_error == ""


def test_drops_oversize_and_runt_frames(socks, pumps):
    # socket source: a message longer than 65550 bytes, a runt
    a0, a1 = pair(socks)
    a0.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
    b0, b1 = pair(socks)
    p = Pump(Endpoint.socket(a1), Endpoint.socket(b0)).start()
    pumps.append(p)
    a0.send(b"\x01" * 70000)
    a0.send(b"\x02" * 10)
    a0.send(frame(100))
    assert b1.recv(70000) == frame(100)
    wait_for(lambda: p.stats.drops == 2)
    # the counter is written after the send returns: the reader may see the frame first
    wait_for(lambda: p.stats.frames == 1)
    # socket destination refusing a frame (EMSGSIZE: larger than its send buffer)
    c0, c1 = pair(socks)
    c0.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    r, w = os.pipe()
    writer_thread(w, pcapf.encode([frame(30000), frame(100)]), close=False)
    q = Pump(Endpoint.pcap(r, close=True), Endpoint.socket(c0)).start()
    pumps.append(q)
    assert c1.recv(70000) == frame(100)
    wait_for(lambda: q.stats.frames == 1)
    assert q.stats.drops == 1
    assert "dropped" in q.stats.last_error
    os.close(w)


# ---------------------------------------------------------------- ends of a link


def test_peer_closed_when_pipe_reader_closes(socks, pumps):
    a0, a1 = pair(socks)
    r, w = os.pipe()
    p = Pump(Endpoint.socket(a1), Endpoint.pcap(w, close=True)).start()
    pumps.append(p)
    os.close(r)
    assert p.wait(3) is PumpResult.PEER_CLOSED  # noticed while idle
    assert "closed" in p.stats.last_error


def test_peer_closed_while_relaying(socks, pumps):
    stream = pcapf.global_header() + b"".join(pcapf.record(frame(1000, i)) for i in range(50))
    b0, b1 = pair(socks)
    r, w = os.pipe()
    writer_thread(w, stream, close=False)
    p = Pump(Endpoint.pcap(r, close=True), Endpoint.socket(b0)).start()
    pumps.append(p)
    assert b1.recv(2000) == frame(1000, 0)
    b1.close()
    assert p.wait(3) is PumpResult.PEER_CLOSED
    os.close(w)


def fill_until_stalled(p: Pump, push: Callable[[], bool]) -> None:
    """Pushes frames until neither the pusher nor the pump makes progress."""
    last, quiet = -1, 0
    deadline = time.monotonic() + 10
    while quiet < 20:
        assert time.monotonic() < deadline, "the pump never stalled"
        while push():
            pass
        n = p.stats.frames
        quiet = quiet + 1 if n == last else 0
        last = n
        time.sleep(0.01)


def test_stop_while_blocked_on_full_pipe(socks, pumps):
    a0, a1 = pair(socks)
    r, w = os.pipe()
    p = Pump(Endpoint.socket(a1), Endpoint.pcap(w, close=True)).start()
    pumps.append(p)
    a0.setblocking(False)
    big = frame(65000)

    def push() -> bool:
        try:
            a0.send(big)
            return True
        except BlockingIOError:
            return False

    fill_until_stalled(p, push)
    assert p.running and p.stats.frames * len(big) >= 60000  # it moved frames, then blocked
    t0 = time.monotonic()
    assert p.stop(timeout=2.0) is PumpResult.STOPPED
    assert time.monotonic() - t0 < 2.0
    os.close(r)


def test_stop_while_blocked_on_full_socket_and_in_inject(socks, pumps):
    b0, b1 = pair(socks)
    r, w = os.pipe()
    os.set_blocking(w, False)
    p = Pump(Endpoint.pcap(r, close=True), Endpoint.socket(b0)).start()
    pumps.append(p)
    pending = memoryview(pcapf.global_header())
    rec = pcapf.record(frame(30000))

    def push() -> bool:
        nonlocal pending
        if not pending:
            pending = memoryview(rec)
        try:
            pending = pending[os.write(w, pending) :]
            return True
        except BlockingIOError:
            return False

    fill_until_stalled(p, push)
    errors: list[BaseException] = []

    def inject() -> None:
        try:
            p.inject(frame(500))
        except BaseException as exc:  # noqa: B036 - recorded for the assertion below
            errors.append(exc)

    injector = threading.Thread(target=inject, daemon=True)
    injector.start()
    time.sleep(0.1)
    assert injector.is_alive()  # blocked: the socket is full
    t0 = time.monotonic()
    assert p.stop(timeout=2.0) is PumpResult.STOPPED
    assert time.monotonic() - t0 < 2.0
    injector.join(2)
    assert not injector.is_alive()
    assert len(errors) == 1 and isinstance(errors[0], StateError)
    os.close(w)


# ---------------------------------------------------------------- injection


def test_inject_into_pcap_destination(socks, pumps):
    a0, a1 = pair(socks)
    r, w = os.pipe()
    p = Pump(Endpoint.socket(a1), Endpoint.pcap(w, close=True)).start()
    pumps.append(p)
    f = frame(200, 42)
    p.inject(f)
    head = os.read(r, 24)
    assert head == pcapf.global_header()
    rec = os.read(r, 1000)
    sec, usec, incl, orig = struct.unpack_from("<IIII", rec)
    assert (incl, orig, rec[16:]) == (200, 200, f)
    assert usec < 10**6 and abs(sec - time.time()) < 60
    s = p.stats
    assert (s.injected, s.frames) == (1, 0)
    with pytest.raises(LinkError, match="13 bytes"):
        p.inject(b"x" * 13)
    p.stop()
    os.close(r)


def test_inject_into_socket_destination(socks, pumps):
    b0, b1 = pair(socks)
    r, w = os.pipe()
    p = Pump(Endpoint.pcap(r, close=True), Endpoint.socket(b0)).start()
    pumps.append(p)
    f = frame(1514, 7)
    p.inject(f)
    assert b1.recv(70000) == f
    assert p.stats.injected == 1
    t = p.trace()
    assert len(t) == 1 and t[0].injected and t[0].data == f[:256]
    os.close(w)


def test_inject_never_interleaves_with_relayed_records(socks, pumps):
    a0, a1 = pair(socks)
    r, w = os.pipe()
    p = Pump(Endpoint.socket(a1), Endpoint.pcap(w, close=True)).start()
    pumps.append(p)
    out: dict[str, bytes] = {}
    reader = threading.Thread(
        target=lambda: out.setdefault("d", read_until_eof(r, 20)), daemon=True
    )
    reader.start()
    relayed = [frame(3000 + i, i) for i in range(300)]
    injected = [frame(5000 + i, 10000 + i) for i in range(300)]
    sender = threading.Thread(target=lambda: [a0.send(f) for f in relayed], daemon=True)
    sender.start()
    for f in injected:
        p.inject(f)
    sender.join(10)
    wait_for(lambda: p.stats.frames == len(relayed))
    p.stop()
    reader.join(20)
    os.close(r)
    recs = [x.data for x in pcapf.decode(out["d"])]
    assert sorted(recs) == sorted(relayed + injected)
    assert [x for x in recs if x in set(relayed)] == relayed  # order kept per source
    assert p.stats.injected == len(injected)


# ---------------------------------------------------------------- trace ring


def test_trace_ring_keeps_the_most_recent_in_order(socks, pumps):
    a0, a1 = pair(socks)
    b0, b1 = pair(socks)
    p = Pump(Endpoint.socket(a1), Endpoint.socket(b0), trace_slots=8, trace_snap=64).start()
    pumps.append(p)
    frames = [frame(100 + i, i) for i in range(20)]
    for f in frames:
        a0.send(f)
    recv_n(b1, 20)
    wait_for(lambda: p.stats.frames == 20)
    t = p.trace()
    assert [x.seq for x in t] == list(range(12, 20))
    assert [x.data for x in t] == [f[:64] for f in frames[12:]]
    assert [x.orig_len for x in t] == [len(f) for f in frames[12:]]
    assert all(a.ts_ns <= b.ts_ns for a, b in zip(t, t[1:], strict=False))
    assert [x.seq for x in p.trace(limit=3)] == [17, 18, 19]
    p.trace_enabled = False
    assert p.trace_enabled is False
    for f in frames[:5]:
        a0.send(f)
    recv_n(b1, 5)
    wait_for(lambda: p.stats.frames == 25)
    assert [x.seq for x in p.trace()] == list(range(12, 20))
    p.trace_enabled = True
    a0.send(frames[0])
    b1.recv(1000)
    wait_for(lambda: p.stats.frames == 26)
    assert p.trace(limit=1)[0].seq == 25  # seq counts every frame, traced or not
    p.clear_trace()
    assert p.trace() == []


def test_filter_keeps_only_matching_frames_in_the_ring(socks, pumps):
    a0, a1 = pair(socks)
    b0, b1 = pair(socks)
    p = Pump(Endpoint.socket(a1), Endpoint.socket(b0), trace_slots=64).start()
    pumps.append(p)
    eth = Ether(src=MAC_A, dst=MAC_B)
    ip = IP(src="10.0.0.1", dst="10.0.0.2")
    cases = [
        (eth / ip / TCP(sport=40000, dport=80), True),
        (eth / ip / TCP(sport=80, dport=40000) / Raw(b"HTTP/1.1 200 OK"), True),
        (eth / ip / TCP(sport=40000, dport=22), False),
        (eth / ip / UDP(sport=40000, dport=80), False),
        (eth / ip / ICMP(), False),
        (eth / ARP(pdst="10.0.0.2"), False),
        (eth / IPv6(src="fd00::1", dst="fd00::2") / TCP(dport=80), True),
        (eth / ip / TCP(sport=40000, dport=8080), False),
    ]
    frames = [bytes(pkt) for pkt, _ in cases]
    p.set_filter("tcp port 80")
    assert p.filter == "tcp port 80"
    for f in frames:
        a0.send(f)
    assert recv_n(b1, len(frames)) == frames  # relaying is unaffected
    wait_for(lambda: p.stats.frames == len(frames))
    want = [f for f, (_, keep) in zip(frames, cases, strict=True) if keep]
    assert [x.data for x in p.trace()] == want
    assert [x.seq for x in p.trace()] == [i for i, (_, keep) in enumerate(cases) if keep]
    p.set_filter(None)
    p.clear_trace()
    a0.send(frames[4])
    b1.recv(1000)
    wait_for(lambda: len(p.trace()) == 1)
    with pytest.raises(PcapError, match="tcp prot 80"):
        p.set_filter("tcp prot 80")


def test_filter_compilers_agree_and_c_validates():
    for expr in ("tcp port 80", "udp and dst host 10.0.0.2", "arp or icmp", "vlan and ip"):
        assert bpf.compile_with_tcpdump(expr) == bpf.compile_with_libpcap(expr)
    with pytest.raises(PcapError, match="'tcp port'"):
        bpf.compile_with_tcpdump("tcp port")
    prog = bpf.compile_filter("len >= 100")
    insns = ffi.new("relay_bpf_insn[]", len(prog))
    for i, x in enumerate(prog):
        insns[i].code, insns[i].jt, insns[i].jf, insns[i].k = x.code, x.jt, x.jf, x.k
    assert lib.relay_bpf_validate(insns, len(prog)) == 0
    pkt = bytes(200)
    assert lib.relay_bpf_run(insns, pkt, 200, 200) != 0
    assert lib.relay_bpf_run(insns, pkt, 50, 50) == 0
    bad = ffi.new("relay_bpf_insn[]", [(0x05, 0, 0, 5), (0x06, 0, 0, 1)])  # jump past the end
    assert lib.relay_bpf_validate(bad, 2) == -errno.EINVAL
    noret = ffi.new("relay_bpf_insn[]", [(0x00, 0, 0, 1)])
    assert lib.relay_bpf_validate(noret, 1) == -errno.EINVAL


# ---------------------------------------------------------------- fuzz


def fuzz_inputs() -> Iterator[tuple[str, bytes]]:
    rng = random.Random(1234)
    yield "random", rng.randbytes(200_000)
    yield "header+random", pcapf.global_header() + rng.randbytes(300_000)
    good = pcapf.encode([frame(rng.randint(42, 3000), i) for i in range(300)], ts_ns=TS)
    for n in range(4):
        data = bytearray(good)
        for _ in range(40):
            pos = rng.randrange(24, len(data))
            op = rng.randrange(3)
            if op == 0:
                data[pos] = rng.randrange(256)
            elif op == 1:
                del data[pos : pos + rng.randint(1, 40)]
            else:
                data[pos:pos] = rng.randbytes(rng.randint(1, 40))
        yield f"mutated-{n}", bytes(data[: rng.randrange(len(data) // 2, len(data))])
    # records whose headers are random small numbers: many malformed kinds at once
    recs = [pcapf.global_header()]
    for _ in range(2000):
        recs.append(
            struct.pack(
                "<IIII",
                *(rng.choice([0, 13, 14, 100, 65550, 65551, 262145, 10**6]) for _ in range(4)),
            )
        )
        recs.append(rng.randbytes(rng.randint(0, 200)))
    yield "random-headers", b"".join(recs)


@pytest.mark.parametrize(
    ("name", "data"), list(fuzz_inputs()), ids=lambda v: v if isinstance(v, str) else None
)
def test_fuzz_never_crashes_or_hangs(tmp_path, pumps, name, data):
    src, w = os.pipe()
    writer_thread(w, data, chunk=4096 if "mutated" in name else None)
    out = tmp_path / "out.pcap"
    dst = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    p = Pump(Endpoint.pcap(src, close=True), Endpoint.pcap(dst, close=True), name=name).start()
    pumps.append(p)
    res = p.wait(10)
    assert res in (PumpResult.EOF, PumpResult.BAD_STREAM), (res, p.stats)
    recs = pcapf.decode(out.read_bytes())  # whatever came in, what goes out is a valid stream
    assert len(recs) == p.stats.frames
    assert all(14 <= len(x.data) <= 65550 for x in recs)
    if res is PumpResult.EOF and name != "random":
        assert p.stats.malformed > 0 and p.stats.last_error
