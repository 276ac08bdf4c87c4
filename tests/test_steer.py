"""Re-wiring primitives of the relay (docs/links.md): Pump.retarget, steering with a
shared FlowTable.  Unit tests over socketpairs and pipes, and one test with real kernels."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.l2 import ARP, Ether
from scapy.packet import Raw
from scapy.utils import PcapReader

import stdpkt_lab as sl
from stdpkt_lab.errors import ConfigError, PcapError, StateError
from stdpkt_lab.relay import Endpoint, FlowTable, Pump, PumpResult, start_together

A, B = "10.0.0.1", "10.0.0.2"
MA, MB = "02:00:00:00:00:01", "02:00:00:00:00:02"


def sp() -> tuple[socket.socket, socket.socket]:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    a.settimeout(5)
    b.settimeout(5)
    return a, b


@pytest.fixture
def socks() -> Iterator[list[socket.socket]]:
    made: list[socket.socket] = []
    yield made
    for s in made:
        s.close()


@pytest.fixture
def pumps() -> Iterator[list[Pump]]:
    made: list[Pump] = []
    yield made
    for p in made:
        p.stop(timeout=3)


def pair(socks: list[socket.socket]) -> tuple[socket.socket, socket.socket]:
    a, b = sp()
    socks.extend((a, b))
    return a, b


def tcp(sport: int, dport: int, flags: str, tag: int = 0, *, reply: bool = False) -> bytes:
    src, dst, ms, md = (B, A, MB, MA) if reply else (A, B, MA, MB)
    return bytes(Ether(src=ms, dst=md) / IP(src=src, dst=dst)
                 / TCP(sport=sport, dport=dport, flags=flags) / Raw(tag.to_bytes(4, "big")))


def udp(sport: int, dport: int, tag: int = 0, *, reply: bool = False) -> bytes:
    src, dst, ms, md = (B, A, MB, MA) if reply else (A, B, MA, MB)
    return bytes(Ether(src=ms, dst=md) / IP(src=src, dst=dst) / UDP(sport=sport, dport=dport)
                 / Raw(tag.to_bytes(4, "big")))


def nothing_on(s: socket.socket, wait: float = 0.2) -> bool:
    s.settimeout(wait)
    try:
        s.recv(70000)
        return False
    except TimeoutError:
        return True
    finally:
        s.settimeout(5)


class LinkRig:
    """a -> [fwd pump] -> b and b -> [rev pump] -> a, one flow table; X and Y detours."""

    def __init__(self, socks: list[socket.socket], pumps: list[Pump], table: FlowTable) -> None:
        self.a_in, self.a_pump_src = pair(socks)  # test writes a_in; fwd pump reads
        self.b_out_pump, self.b_out = pair(socks)  # fwd pump writes; test reads b_out
        self.b_in, self.b_pump_src = pair(socks)
        self.a_out_pump, self.a_out = pair(socks)
        self.x_pump, self.x = pair(socks)  # detour of a->b
        self.y_pump, self.y = pair(socks)  # detour of b->a
        self.table = table
        self.fwd = Pump(Endpoint.socket(self.a_pump_src), Endpoint.socket(self.b_out_pump),
                        name="a->b", flow_table=table)
        self.rev = Pump(Endpoint.socket(self.b_pump_src), Endpoint.socket(self.a_out_pump),
                        name="b->a", flow_table=table)
        pumps.extend((self.fwd, self.rev))
        self.fwd.start()
        self.rev.start()


@pytest.fixture
def rig(socks, pumps) -> LinkRig:
    return LinkRig(socks, pumps, FlowTable())


# ---------------------------------------------------------------- retarget


def test_retarget_between_frames_keeps_counters_and_trace(socks, pumps):
    src_w, src_r = pair(socks)
    d1_w, d1_r = pair(socks)
    d2_w, d2_r = pair(socks)
    p = Pump(Endpoint.socket(src_r), Endpoint.socket(d1_w), name="rt").start()
    pumps.append(p)
    first = [udp(1000, 2000, i) for i in range(5)]
    second = [udp(1000, 2000, 100 + i) for i in range(5)]
    for f in first:
        src_w.send(f)
    assert [d1_r.recv(70000) for _ in first] == first
    p.retarget(Endpoint.socket(d2_w))
    assert p.dst.fd == d2_w.fileno()
    for f in second:
        src_w.send(f)
    assert [d2_r.recv(70000) for _ in second] == second
    assert nothing_on(d1_r)
    st = p.stats
    assert (st.frames, st.bytes, st.drops) == (10, sum(map(len, first + second)), 0)
    trace = p.trace()
    assert [t.data[-4:] for t in trace] == [f[-4:] for f in first + second]
    assert [t.seq for t in trace] == list(range(10))


def test_retarget_under_load_loses_and_duplicates_nothing(socks, pumps):
    """A sender streams numbered frames while the pump is retargeted 20 times among three
    destinations: every frame arrives exactly once, in order within each destination."""
    src_w, src_r = pair(socks)
    dests = [pair(socks) for _ in range(3)]
    p = Pump(Endpoint.socket(src_r), Endpoint.socket(dests[0][0]), name="load").start()
    pumps.append(p)
    n = 6000
    got: list[list[int]] = [[] for _ in dests]
    done = threading.Event()

    def reader(i: int) -> None:
        s = dests[i][1]
        s.settimeout(0.2)
        while True:
            try:
                data = s.recv(70000)
            except TimeoutError:
                if done.is_set():
                    return
                continue
            got[i].append(int.from_bytes(data[-4:], "big"))

    readers = [threading.Thread(target=reader, args=(i,), daemon=True) for i in range(3)]
    for t in readers:
        t.start()

    def sender() -> None:
        for i in range(n):
            src_w.send(udp(1, 2, i))

    st = threading.Thread(target=sender, daemon=True)
    st.start()
    k = 0
    while st.is_alive() and k < 20:
        k += 1
        p.retarget(Endpoint.socket(dests[k % 3][0]))
        time.sleep(0.01)
    st.join(30)
    deadline = time.monotonic() + 20
    while p.stats.frames < n and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)
    done.set()
    for t in readers:
        t.join(5)
    assert p.stats.frames == n and p.stats.drops == 0
    assert sorted(x for g in got for x in g) == list(range(n))
    for g in got:
        assert g == sorted(g)
    assert k > 1


def test_retarget_socket_to_pcap_pipe_gives_a_valid_stream(socks, pumps, tmp_path):
    src_w, src_r = pair(socks)
    d_w, d_r = pair(socks)
    r, w = os.pipe()
    p = Pump(Endpoint.socket(src_r), Endpoint.socket(d_w), name="to-pcap").start()
    pumps.append(p)
    src_w.send(udp(1, 2, 1))
    assert d_r.recv(70000)
    p.retarget(Endpoint.pcap(w, close=True))
    frames = [udp(1, 2, 10 + i) for i in range(4)]
    for f in frames:
        src_w.send(f)
    deadline = time.monotonic() + 5
    while p.stats.frames < 5 and time.monotonic() < deadline:
        time.sleep(0.01)
    p.stop()  # closes its description and w (close=True): the reader sees EOF
    data = b""
    while chunk := os.read(r, 65536):
        data += chunk
    os.close(r)
    path = tmp_path / "out.pcap"
    path.write_bytes(data)
    assert [bytes(pkt) for pkt in PcapReader(str(path))] == frames
    if shutil.which("tcpdump"):
        out = subprocess.run(["tcpdump", "-nn", "-r", "-"], input=data, capture_output=True,
                             timeout=30)
        assert out.returncode == 0, out.stderr
        assert len(out.stdout.decode().splitlines()) == 4


def stall(p: Pump, sock: socket.socket, frames: list[bytes]) -> int:
    """Sends frames until the pump stops making progress (its destination is full)."""
    sock.settimeout(0.05)
    sent = 0
    last, since = -1, time.monotonic()
    while time.monotonic() - since < 1.0:
        try:
            sock.send(frames[sent])
            sent += 1
        except (TimeoutError, BlockingIOError):
            pass
        if p.stats.frames != last:
            last, since = p.stats.frames, time.monotonic()
    sock.settimeout(5)
    return sent


def drain(sock: socket.socket, wait: float = 0.3) -> list[bytes]:
    out = []
    sock.settimeout(wait)
    try:
        while True:
            out.append(sock.recv(70000))
    except TimeoutError:
        pass
    sock.settimeout(5)
    return out


@pytest.mark.parametrize("how", ["retarget", "add_steer"])
def test_rewiring_a_pump_blocked_on_a_full_destination(socks, pumps, how):
    """A pump stuck on a destination nobody reads (a paused instance) is re-wired at
    once: the frames not yet written go to the new path, none lost or duplicated."""
    src_w, src_r = pair(socks)
    old_w, old_r = pair(socks)
    new_w, new_r = pair(socks)
    p = Pump(Endpoint.socket(src_r), Endpoint.socket(old_w), name="stuck").start()
    pumps.append(p)
    frames = [udp(1, 9, i) + bytes(1000) for i in range(2000)]
    sent = stall(p, src_w, frames)
    assert sent < len(frames)
    done = threading.Event()

    def rewire() -> None:
        if how == "retarget":
            p.retarget(Endpoint.socket(new_w))
        else:
            p.add_steer(1, "udp", Endpoint.socket(new_w))
        done.set()

    threading.Thread(target=rewire, daemon=True).start()
    assert done.wait(5), f"{how} blocked behind the full destination"
    if how == "add_steer":
        p.flow_table.clear()  # the stalled flow was recorded on the default path
    def more() -> None:
        for f in frames[sent : sent + 200]:
            src_w.send(f)

    threading.Thread(target=more, daemon=True).start()
    total = sent + 200
    got_old: list[bytes] = []
    got_new: list[bytes] = []
    deadline = time.monotonic() + 20
    while len(got_old) + len(got_new) < total and time.monotonic() < deadline:
        got_old += drain(old_r, 0.05)  # add_steer: the stalled flow keeps the old path
        got_new += drain(new_r, 0.05)
    assert got_old + got_new == frames[:total]
    assert got_new, "nothing took the new path"
    assert p.stats.frames == total and p.stats.drops == 0


def test_retarget_refused_after_the_pump_ended(socks, pumps):
    src_w, src_r = pair(socks)
    d_w, d_r = pair(socks)
    p = Pump(Endpoint.socket(src_r), Endpoint.socket(d_w)).start()
    pumps.append(p)
    p.stop()
    with pytest.raises(StateError):
        p.retarget(Endpoint.socket(d_r))
    q = Pump(Endpoint.socket(src_r), Endpoint.socket(d_w))
    q.retarget(Endpoint.socket(d_r))  # before start: only replaces dst
    assert q.dst.fd == d_r.fileno()


# ---------------------------------------------------------------- steering


def test_steered_flow_and_its_replies_take_their_detours(rig):
    rig.fwd.add_steer(7, "tcp port 80", Endpoint.socket(rig.x_pump))
    rig.rev.add_steer(7, None, Endpoint.socket(rig.y_pump))
    syn, synack, ack = tcp(4000, 80, "S", 1), tcp(80, 4000, "SA", 2, reply=True), tcp(4000, 80, "A", 3)
    rig.a_in.send(syn)
    assert rig.x.recv(70000) == syn
    rig.b_in.send(synack)
    assert rig.y.recv(70000) == synack
    rig.a_in.send(ack)
    assert rig.x.recv(70000) == ack
    # another TCP port, a UDP flow to port 80 and ARP: the default path
    other = [tcp(4001, 22, "S", 4), udp(5000, 80, 5),
             bytes(Ether(src=MA, dst="ff:ff:ff:ff:ff:ff") / ARP(psrc=A, pdst=B))]
    for f in other:
        rig.a_in.send(f)
    assert [rig.b_out.recv(70000) for _ in other] == other
    assert nothing_on(rig.b_out) and nothing_on(rig.a_out)
    fs, rs = rig.fwd.steer_stats(), rig.rev.steer_stats()
    assert (fs[7].flows, fs[7].frames, fs[7].bytes) == (1, 2, len(syn) + len(ack))
    assert (rs[7].flows, rs[7].frames, rs[7].bytes) == (0, 1, len(synack))
    assert rig.fwd.stats.frames == 5 and rig.rev.stats.frames == 1  # steered frames included
    flows = {(f.proto, f.port_lo, f.port_hi): f.rule for f in rig.table.flows()}
    assert flows == {(6, 4000, 80): 7, (6, 4001, 22): 0, (17, 5000, 80): 0}


def test_flows_established_before_a_rule_keep_their_path(rig):
    old_tcp = tcp(4000, 80, "A", 1)  # mid-connection: no SYN
    old_udp = udp(6000, 53, 2)
    for f in (old_tcp, old_udp):
        rig.a_in.send(f)
        assert rig.b_out.recv(70000) == f
    rig.fwd.add_steer(1, "tcp port 80 or udp port 53", Endpoint.socket(rig.x_pump))
    for f in (tcp(4000, 80, "PA", 3), udp(6000, 53, 4), udp(53, 6000, 5, reply=True)):
        (rig.b_in if f[30:34] == socket.inet_aton(A) else rig.a_in).send(f)
    assert rig.b_out.recv(70000)[-4:] == (3).to_bytes(4, "big")
    assert rig.b_out.recv(70000)[-4:] == (4).to_bytes(4, "big")
    assert rig.a_out.recv(70000)[-4:] == (5).to_bytes(4, "big")
    assert nothing_on(rig.x)
    new = udp(6001, 53, 6)
    rig.a_in.send(new)
    assert rig.x.recv(70000) == new
    assert rig.fwd.steer_stats()[1].flows == 1


def test_rst_and_idle_timeout_end_a_flow(socks, pumps):
    rig = LinkRig(socks, pumps, FlowTable(idle_timeout=2.0, closed_timeout=0.05))
    rig.fwd.add_steer(3, "tcp port 80 or udp", Endpoint.socket(rig.x_pump))
    rig.a_in.send(tcp(4000, 80, "S"))
    assert rig.x.recv(70000)
    rig.a_in.send(tcp(4000, 80, "R"))
    assert rig.x.recv(70000)  # the RST itself still follows the flow
    rig.fwd.remove_steer(3)
    rig.fwd.add_steer(4, "tcp port 81", Endpoint.socket(rig.x_pump))
    time.sleep(0.2)
    syn = tcp(4000, 80, "S", 9)  # same key, after close: a new flow, now on the default path
    rig.a_in.send(syn)
    assert rig.b_out.recv(70000) == syn
    assert nothing_on(rig.x, 0.1)
    # idle timeout: a UDP flow recorded on the default path becomes new after 2 s idle
    rig.fwd.add_steer(5, "udp", Endpoint.socket(rig.x_pump))
    rig.table.clear()
    rig.fwd.remove_steer(5)
    u = udp(7000, 7001, 1)
    rig.a_in.send(u)
    assert rig.b_out.recv(70000) == u
    rig.fwd.add_steer(5, "udp", Endpoint.socket(rig.x_pump))
    rig.a_in.send(u)
    assert rig.b_out.recv(70000) == u  # still the old flow
    time.sleep(2.5)
    rig.a_in.send(u)
    assert rig.x.recv(70000) == u  # expired: new, steered
    assert rig.fwd.steer_stats()[5].flows == 1


def test_removed_rule_sends_its_flows_back_to_the_default_path(rig):
    rig.fwd.add_steer(2, "udp port 9", Endpoint.socket(rig.x_pump))
    f = udp(1, 9, 1)
    rig.a_in.send(f)
    assert rig.x.recv(70000) == f
    rig.fwd.remove_steer(2)
    assert 2 not in rig.fwd.steer_stats()
    rig.a_in.send(f)
    assert rig.b_out.recv(70000) == f
    with pytest.raises(ConfigError):
        rig.fwd.remove_steer(2)


def test_first_matching_rule_wins_and_pcap_detour_is_valid(rig, tmp_path):
    r, w = os.pipe()
    rig.fwd.add_steer(10, "udp port 53", Endpoint.pcap(w, close=True))
    rig.fwd.add_steer(11, "udp", Endpoint.socket(rig.x_pump))
    dns, other = udp(1, 53, 1), udp(1, 54, 2)
    rig.a_in.send(dns)
    rig.a_in.send(other)
    assert rig.x.recv(70000) == other
    deadline = time.monotonic() + 5
    while rig.fwd.steer_stats()[10].frames < 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    rig.fwd.remove_steer(10)  # closes w (close=True): EOF for the reader
    data = b""
    while chunk := os.read(r, 65536):
        data += chunk
    os.close(r)
    (tmp_path / "d.pcap").write_bytes(data)
    assert [bytes(p) for p in PcapReader(str(tmp_path / "d.pcap"))] == [dns]


def test_failed_detour_drops_and_counts_its_frames_only(rig):
    rig.fwd.add_steer(5, "udp port 9", Endpoint.socket(rig.x_pump))
    rig.x.close()  # the detour goes away
    for i in range(3):
        rig.a_in.send(udp(1, 9, i))
    ok = udp(1, 10, 7)
    rig.a_in.send(ok)
    assert rig.b_out.recv(70000) == ok
    st = rig.fwd.steer_stats()[5]
    assert (st.frames, st.drops) == (0, 3)
    assert rig.fwd.stats.drops == 3 and rig.fwd.running
    assert "steering rule 5" in rig.fwd.stats.last_error


def test_steer_errors(rig, socks, pumps):
    x = Endpoint.socket(rig.x_pump)
    with pytest.raises(ConfigError):
        rig.fwd.add_steer(0, "udp", x)
    with pytest.raises(PcapError):
        rig.fwd.add_steer(1, "udp porrt 9", x)
    with pytest.raises(ConfigError):
        rig.fwd.add_steer(1, "  ", x)
    rig.fwd.add_steer(1, "udp", x)
    with pytest.raises(ConfigError):
        rig.fwd.add_steer(1, "tcp", x)
    rig.fwd.stop()
    assert rig.fwd.result is PumpResult.STOPPED
    with pytest.raises(StateError):
        rig.fwd.add_steer(2, "tcp", x)
    with pytest.raises(ConfigError):
        FlowTable(capacity=100)
    with pytest.raises(ConfigError):
        FlowTable(idle_timeout=0)


def test_flow_table_is_symmetric_and_shared(rig):
    rig.a_in.send(udp(1111, 2222, 1))
    rig.b_out.recv(70000)
    rig.b_in.send(udp(2222, 1111, 2, reply=True))
    rig.a_out.recv(70000)
    flows = rig.table.flows()
    assert len(flows) == 1 and len(rig.table) == 1
    f = flows[0]
    assert (str(f.addr_lo), f.port_lo, str(f.addr_hi), f.port_hi, f.rule) == (A, 1111, B, 2222, 0)
    assert rig.table.stats().flows == 1


def test_icmp_echo_keyed_by_identifier(rig):
    def ping(ident: int, seq: int, *, reply: bool = False) -> bytes:
        src, dst = (B, A) if reply else (A, B)
        return bytes(Ether(src=MA, dst=MB) / IP(src=src, dst=dst)
                     / ICMP(type=0 if reply else 8, id=ident, seq=seq))

    rig.a_in.send(ping(1, 1))
    rig.b_out.recv(70000)
    rig.fwd.add_steer(2, "icmp", Endpoint.socket(rig.x_pump))
    rig.rev.add_steer(2, None, Endpoint.socket(rig.y_pump))
    rig.a_in.send(ping(1, 2))  # the ping run that started before the rule
    assert rig.b_out.recv(70000) == ping(1, 2)
    rig.a_in.send(ping(2, 1))  # a new run: a new flow
    assert rig.x.recv(70000) == ping(2, 1)
    rig.b_in.send(ping(2, 1, reply=True))
    assert rig.y.recv(70000) == ping(2, 1, reply=True)
    assert sorted((f.port_lo, f.rule) for f in rig.table.flows()) == [(1, 0), (2, 2)]


@pytest.mark.parametrize("env", [{"STDPKT_RELAY_SPIN_US": "50"}, {"STDPKT_RELAY_SOCK_BATCH": "64"},
                                 {"STDPKT_RELAY_SOCK_BATCH": "junk"}])
def test_tuning_knobs_keep_every_frame_in_order(socks, pumps, monkeypatch, env):
    """The performance knobs (read at start) change batching and waiting, never the frames."""
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    src_w, src_r = pair(socks)
    dst_w, dst_r = pair(socks)
    r, w = os.pipe()
    tx = Pump(Endpoint.socket(src_r), Endpoint.pcap(w, close=True), name="tx")
    rx = Pump(Endpoint.pcap(r, close=True), Endpoint.socket(dst_w), name="rx")
    pumps.extend((tx, rx))
    tx.start()
    rx.start()
    n = 1000
    frames = [udp(1, 2, i) + bytes(i % 700) for i in range(n)]

    def send() -> None:
        for f in frames:
            src_w.send(f)

    t = threading.Thread(target=send, daemon=True)
    t.start()
    got = [dst_r.recv(70000) for _ in range(n)]
    t.join(10)
    assert got == frames
    # a pump counts a batch once its write returned, a moment after the reader may have it
    deadline = time.monotonic() + 5
    while (tx.stats.frames, rx.stats.frames) != (n, n) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert tx.stats.frames == rx.stats.frames == n
    assert rx.stats.malformed == rx.stats.skipped_bytes == 0


def test_start_together_runs_both_directions_in_one_thread(socks, pumps):
    a_w, a_r = pair(socks)
    b_w, b_r = pair(socks)
    c_w, c_r = pair(socks)
    d_w, d_r = pair(socks)
    ab = Pump(Endpoint.socket(a_r), Endpoint.socket(b_w), name="a->b")
    ba = Pump(Endpoint.socket(c_r), Endpoint.socket(d_w), name="b->a")
    ended: list[tuple[str, PumpResult]] = []
    ab.on_exit = ba.on_exit = lambda p, r: ended.append((p.name, r))
    pumps.extend((ab, ba))
    thread = start_together([ab, ba])
    assert ab._thread is ba._thread is thread and thread.is_alive()
    fwd = [udp(1, 2, i) for i in range(500)]
    back = [udp(2, 1, i, reply=True) for i in range(500)]

    def send(sock: socket.socket, frames: list[bytes]) -> None:
        for f in frames:
            sock.send(f)

    got_f: list[bytes] = []
    got_b: list[bytes] = []

    def recv(sock: socket.socket, into: list[bytes], n: int) -> None:
        into.extend(sock.recv(70000) for _ in range(n))

    # both readers run: a destination nobody reads would stall the whole group (one thread)
    ts = [threading.Thread(target=send, args=(a_w, fwd)), threading.Thread(target=send, args=(c_w, back)),
          threading.Thread(target=recv, args=(b_r, got_f, len(fwd))),
          threading.Thread(target=recv, args=(d_r, got_b, len(back)))]
    for t in ts:
        t.start()
    for t in ts:
        t.join(20)
    assert got_f == fwd and got_b == back
    assert ab.stats.frames == ba.stats.frames == 500
    a_w.close()  # a->b ends (EOF); b->a goes on in the same thread
    assert ab.wait(5) is PumpResult.EOF
    c_w.send(back[0])
    assert d_r.recv(70000) == back[0]
    assert ba.running and thread.is_alive()
    assert ba.stop() is PumpResult.STOPPED
    thread.join(5)
    assert not thread.is_alive()
    assert sorted(ended) == [("a->b", PumpResult.EOF), ("b->a", PumpResult.STOPPED)]
    with pytest.raises(StateError):
        start_together([ab])


# ---------------------------------------------------------------- real kernels


@pytest.mark.uml
def test_real_kernels_retarget_and_steer_icmp_through_detour_pumps():
    """Two instances on a Lab link: the a->b pump is retargeted through a counting
    relay (ping keeps working, counters continue), then ICMP is steered both ways through
    two detour pumps and ping's requests and replies are counted there exactly."""
    lab = sl.Lab(sl.chain("a", "b"), progress=False)
    made: list[Pump] = []
    socks: list[socket.socket] = []
    with lab:
        link = lab.link("a", "b")
        fwd = link.pump(link.a.name, link.b.name)
        b_sock, a_sock = link.b.port(link.b_port), link.a.port(link.a_port)
        assert lab.exec("a", "ping -c 1 -W 5 b").returncode == 0
        before = fwd.stats.frames
        # retarget a->b into a relay that forwards to b's socket
        r_in, r_out = sp()
        socks += [r_in, r_out]
        hop = Pump(Endpoint.socket(r_out), Endpoint.socket(b_sock), name="hop").start()
        made.append(hop)
        fwd.retarget(Endpoint.socket(r_in))
        r = lab.exec("a", "ping -c 3 -i 0.2 -W 5 b")
        assert r.returncode == 0, r
        assert hop.stats.frames >= 3 and fwd.stats.frames >= before + 3
        fwd.retarget(Endpoint.socket(b_sock))  # back to the direct path
        # steer ICMP both ways through detour pumps
        x_in, x_out = sp()
        y_in, y_out = sp()
        socks += [x_in, x_out, y_in, y_out]
        dx = Pump(Endpoint.socket(x_out), Endpoint.socket(b_sock), name="detour x").start()
        dy = Pump(Endpoint.socket(y_out), Endpoint.socket(a_sock), name="detour y").start()
        made += [dx, dy]
        link.add_steer(9, "icmp", forward=Endpoint.socket(x_in), reverse=Endpoint.socket(y_in))
        hop_frames = hop.stats.frames
        r = lab.exec("a", "ping -c 4 -i 0.2 -W 5 b")
        assert r.returncode == 0, r
        st = link.steer_stats()
        assert st[(link.a.name, link.b.name)][9].flows == 1
        assert st[(link.a.name, link.b.name)][9].frames == 4 == dx.stats.frames
        assert st[(link.b.name, link.a.name)][9].frames == 4 == dy.stats.frames
        assert hop.stats.frames == hop_frames  # the old path is no longer used
        link.remove_steer(9)
        assert lab.exec("a", "ping -c 1 -W 5 b").returncode == 0
        assert dx.stats.frames == 4
        for p in made:
            p.stop()
    for s in socks:
        s.close()
