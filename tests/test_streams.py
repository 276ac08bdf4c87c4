"""Pcap streams over TCP: `IFn=tcp:` / `tcp-listen:` between two `stdpkt run` instances."""

from __future__ import annotations

import os
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from stdpkt_lab.engine.streams import (
    MAGIC,
    StreamEnds,
    accept_stream,
    connect_stream,
    handshake,
    listen_socket,
    parse_stream,
)
from stdpkt_lab.engine.variables import parse_variables
from stdpkt_lab.errors import LinkError, VariableError
from stdpkt_lab.relay.pcap import decode


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _recv_all(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n and (chunk := sock.recv(n - len(data))):
        data += chunk
    return data


def _closed_on(sock: socket.socket) -> bool:
    """The peer closed the connection (an orderly close, or a reset: it left bytes unread)."""
    try:
        return sock.recv(100) == b""
    except ConnectionResetError:
        return True


def test_parse_stream_forms() -> None:
    assert parse_stream("IF1", "tcp-listen:9000") == StreamEnds(1, True, "127.0.0.1", 9000)
    assert parse_stream("IF0", "tcp:host-a:9000") == StreamEnds(0, False, "host-a", 9000)
    assert parse_stream("IF2", "tcp-listen:0.0.0.0:80") == StreamEnds(2, True, "0.0.0.0", 80)
    assert parse_stream("IF0", "tls:[::1]:443") == StreamEnds(0, False, "::1", 443, tls=True)
    assert parse_stream("IF0", "p1|p2") is None
    for bad in ("tcp:9000", "tcp:h:0", "tcp:h:70000", "tcp-listen:x:port"):
        with pytest.raises(VariableError, match="IF0"):
            parse_stream("IF0", bad)


def test_stream_variables_need_a_token(tmp_path: Path) -> None:
    script = tmp_path / "s.sh"
    script.write_text("true\n")
    with pytest.raises(VariableError, match=r"IF0.*STDPKT_LINK_TOKEN"):
        parse_variables({"IF0": "tcp:127.0.0.1:9"}, name="x", script=script)
    config = parse_variables({"IF0": "tcp:127.0.0.1:9", "STDPKT_LINK_TOKEN": "s3cret"},
                             name="x", script=script)
    assert config.streams == (StreamEnds(0, False, "127.0.0.1", 9),) and config.pipes == ()


def _pair(token_l: bytes, token_c: bytes) -> tuple[BaseException | socket.socket, BaseException | socket.socket]:
    srv = listen_socket("127.0.0.1", 0)
    port = srv.getsockname()[1]
    out: dict[str, BaseException | socket.socket] = {}

    def accept() -> None:
        try:
            out["l"] = accept_stream(srv, token_l, timeout=3)
        except BaseException as exc:  # noqa: BLE001 - reported to the test
            out["l"] = exc

    t = threading.Thread(target=accept)
    t.start()
    try:
        out["c"] = connect_stream("127.0.0.1", port, token_c, timeout=3)
    except LinkError as exc:
        out["c"] = exc
    t.join(10)
    srv.close()
    return out["l"], out["c"]


def test_handshake_accepts_the_token_and_refuses_others() -> None:
    listener, connector = _pair(b"k1", b"k1")
    assert isinstance(listener, socket.socket) and isinstance(connector, socket.socket)
    connector.sendall(b"x")
    assert listener.recv(1) == b"x"
    listener.close(), connector.close()
    listener, connector = _pair(b"k1", b"wrong")
    assert isinstance(connector, LinkError)  # the listener closed on it
    assert isinstance(listener, LinkError) and "within" in str(listener)  # kept waiting, timed out


def test_a_stray_connection_is_refused_and_the_real_peer_still_gets_in() -> None:
    srv = listen_socket("127.0.0.1", 0)
    port = srv.getsockname()[1]
    refused: list[str] = []
    result: list[socket.socket] = []
    t = threading.Thread(target=lambda: result.append(
        accept_stream(srv, b"tok", timeout=10, refused=refused.append)))
    t.start()
    with socket.create_connection(("127.0.0.1", port)) as stray:  # speaks garbage
        stray.settimeout(10)
        assert _recv_all(stray, len(MAGIC) + 16)[: len(MAGIC)] == MAGIC
        stray.sendall(b"GET / HTTP/1.0\r\n\r\n" + b"\0" * 40)
        assert _closed_on(stray)
    good = connect_stream("127.0.0.1", port, b"tok", timeout=5)
    t.join(10)
    srv.close()
    assert result and refused and "does not speak" in refused[0]
    good.close(), result[0].close()


def test_handshake_times_out_on_a_silent_peer() -> None:
    a, b = socket.socketpair()
    with a, b, pytest.raises(LinkError, match="timed out"):
        handshake(a, b"t", listener=False, timeout=0.3)


SERVER = """\
ip -o -4 addr show dev eth0 >&2
sleep 600
"""
CLIENT = """\
ping -c 3 -W 5 10.7.0.1 && echo PING-OK
wget -q -T 10 -O - http://10.7.0.1:8080/ 2>&1 | head -c 200; echo
"""


@pytest.mark.uml
def test_two_instances_over_tcp_ping_and_http(stdpkt_bin: str, tmp_path: Path) -> None:
    port = free_port()
    (tmp_path / "server.sh").write_text(SERVER.replace(
        "sleep 600", "mkdir -p /tmp/www && echo STREAM-HTTP-OK > /tmp/www/index.html && "
                     "busybox httpd -p 8080 -h /tmp/www && sleep 600"))
    (tmp_path / "client.sh").write_text(CLIENT)
    token = {"STDPKT_LINK_TOKEN": "classroom-secret"}
    server = subprocess.Popen(
        [stdpkt_bin, "run", "-v", "--name", "srv", str(tmp_path / "server.sh")],
        env={**os.environ, **token, "IF0": f"tcp-listen:127.0.0.1:{port}", "IP0": "10.7.0.1"},
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        # a stray peer first: refused, and it must not end the listener
        deadline = time.monotonic() + 60
        while True:
            try:
                stray = socket.create_connection(("127.0.0.1", port), timeout=1)
                break
            except OSError:
                assert time.monotonic() < deadline and server.poll() is None, "listener never came up"
                time.sleep(0.2)
        with stray:
            stray.settimeout(30)
            _recv_all(stray, len(MAGIC) + 16)
            stray.sendall(b"\xd4\xc3\xb2\xa1" + b"\0" * 60)  # a pcap header, no token
            stray.settimeout(10)
            assert _closed_on(stray)
        client = subprocess.run(
            [stdpkt_bin, "run", "--oneshot", "--name", "cli", str(tmp_path / "client.sh")],
            env={**os.environ, **token, "IF0": f"tcp:127.0.0.1:{port}", "IP0": "10.7.0.2"},
            stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=180)
        assert "PING-OK" in client.stderr, client.stderr
        assert "STREAM-HTTP-OK" in client.stderr, client.stderr
        assert client.returncode == 0
        # the client's end closed the connection: the listener sees it as an EOF and exits
        _, err = server.communicate(timeout=60)
    finally:
        if server.poll() is None:
            server.terminate()
            server.communicate(timeout=30)
    assert "refused a connection" in err, err
    assert "connection tcp-listen" in err and "ended" in err, err
    assert server.returncode == 0, err


@pytest.mark.uml
def test_wrong_token_cannot_join(stdpkt_bin: str, tmp_path: Path) -> None:
    port = free_port()
    (tmp_path / "s.sh").write_text("sleep 600\n")
    server = subprocess.Popen(
        [stdpkt_bin, "run", "--name", "srv2", str(tmp_path / "s.sh")],
        env={**os.environ, "STDPKT_LINK_TOKEN": "right", "IF0": f"tcp-listen:{port}"},
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        client = subprocess.run(
            [stdpkt_bin, "run", "--oneshot", "--connect-timeout", "20", str(tmp_path / "s.sh")],
            env={**os.environ, "STDPKT_LINK_TOKEN": "wrong", "IF0": f"tcp:127.0.0.1:{port}"},
            stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120)
        assert client.returncode == 1
        assert "does not know this link token" in client.stderr, client.stderr
        assert server.poll() is None  # still waiting for the right peer
    finally:
        server.terminate()
        _, err = server.communicate(timeout=30)
    assert "refused a connection" in err, err


def test_a_pcap_reader_reads_what_a_stream_port_sends(tmp_path: Path) -> None:
    """Unit level: the bytes on the connection are a pcap stream (one direction)."""
    from stdpkt_lab.engine.streams import StreamPort

    guest, host = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    srv = listen_socket("127.0.0.1", 0)
    port = srv.getsockname()[1]
    ends: list[str] = []
    sp = StreamPort(StreamEnds(0, True, "127.0.0.1", port), host, token=b"t",
                    on_end=lambda _p, why: ends.append(why), listener=srv)
    sp.start()
    peer = connect_stream("127.0.0.1", port, b"t", timeout=5)
    try:
        frame = bytes(range(60))
        deadline = time.monotonic() + 10
        while sp.tx is None and time.monotonic() < deadline:
            time.sleep(0.05)
        guest.send(frame)
        guest.send(frame[::-1])
        peer.settimeout(10)
        data = b""
        while len(data) < 24 + 2 * (16 + 60):
            data += peer.recv(4096)
        assert [rec.data for rec in decode(data)] == [frame, frame[::-1]]
    finally:
        peer.close()
        deadline = time.monotonic() + 10
        while not ends and time.monotonic() < deadline:
            time.sleep(0.05)
        sp.stop()
        guest.close(), host.close()
    assert ends and "ended" in ends[0]
