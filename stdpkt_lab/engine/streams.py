"""Ports served over a TCP connection: pcap streams between machines.

``IFn="tcp:HOST:PORT"`` connects (retrying until a timeout),
``IFn="tcp-listen:[ADDR:]PORT"`` accepts one peer (default address 127.0.0.1);
``tls:``/``tls-listen:`` do the same inside TLS.  One connection carries both
directions, each a pcap stream exactly as on a pipe, so the relay counts,
traces and resynchronises as it does there; the end of the connection is the
end of the stream (a pipe EOF).

Before any frame flows both ends prove that they know the same secret token
(``STDPKT_LINK_TOKEN``, or the one a Lab hands its workers), so a stray or
hostile connection cannot inject frames::

    listener  -> connector   MAGIC nonce_l                         (24 bytes)
    connector -> listener    MAGIC nonce_c HMAC(token, "C" nonce_l nonce_c)
    listener  -> connector   HMAC(token, "L" nonce_c nonce_l)      (32 bytes)

A listener that receives a wrong answer closes that connection and keeps
waiting for the right peer until its timeout; a connector that receives a
wrong answer gives up (a listener that does not know the token).  The token
authenticates; it does not encrypt: use ``tls:`` for that.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from ..errors import LinkError, VariableError
from ..relay import Endpoint, Pump, PumpResult, PumpStats

__all__ = ["StreamEnds", "StreamPort", "parse_stream", "connect_stream", "accept_stream",
           "handshake", "TOKEN_VARIABLE"]

TOKEN_VARIABLE = "STDPKT_LINK_TOKEN"
MAGIC = b"STDPKTL1"
_NONCE = 16
_MAC = 32
HANDSHAKE_TIMEOUT = 5.0
_STREAM = re.compile(r"^(tcp|tls)(-listen)?:(.+)$")


@dataclass(frozen=True)
class StreamEnds:
    """Port ``index`` carried by one TCP (or TLS) connection, both directions."""

    index: int
    listen: bool
    host: str
    port: int
    tls: bool = False

    @property
    def label(self) -> str:
        kind = ("tls" if self.tls else "tcp") + ("-listen" if self.listen else "")
        return f"{kind}:{self.host}:{self.port}"


def parse_stream(name: str, value: str) -> StreamEnds | None:
    """``tcp:HOST:PORT``, ``tcp-listen:[ADDR:]PORT`` (and ``tls...``) → ends; other values → None."""
    match = _STREAM.match(value.strip())
    if not match:
        return None
    kind, listen, rest = match.group(1), bool(match.group(2)), match.group(3)
    host, sep, port_text = rest.rpartition(":")
    if not sep:
        host, port_text = "", rest
    host = host.strip("[]")
    if not listen and not host:
        raise VariableError(name, f"{value!r}: expected {kind}:HOST:PORT")
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise VariableError(name, f"{value!r}: {port_text!r} is not a TCP port (1-65535)")
    return StreamEnds(int(name[2:]) if name[2:].isdigit() else 0, listen,
                      host or "127.0.0.1", int(port_text), tls=kind == "tls")


def _mac(token: bytes, role: bytes, first: bytes, second: bytes) -> bytes:
    return hmac.new(token, role + first + second, hashlib.sha256).digest()


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise LinkError("the peer closed the connection during the link handshake")
        data += chunk
    return data


def handshake(sock: socket.socket, token: bytes, *, listener: bool,
              timeout: float = HANDSHAKE_TIMEOUT) -> None:
    """Mutual proof of ``token``; raises :class:`LinkError` if the peer does not know it."""
    sock.settimeout(timeout)
    try:
        if listener:
            nonce_l = secrets.token_bytes(_NONCE)
            sock.sendall(MAGIC + nonce_l)
            reply = _recv_exact(sock, len(MAGIC) + _NONCE + _MAC)
            if reply[: len(MAGIC)] != MAGIC:
                raise LinkError("the peer does not speak the stdpkt link protocol")
            nonce_c = reply[len(MAGIC): len(MAGIC) + _NONCE]
            if not hmac.compare_digest(reply[-_MAC:], _mac(token, b"C", nonce_l, nonce_c)):
                raise LinkError("the peer does not know the link token")
            sock.sendall(_mac(token, b"L", nonce_c, nonce_l))
        else:
            hello = _recv_exact(sock, len(MAGIC) + _NONCE)
            if hello[: len(MAGIC)] != MAGIC:
                raise LinkError("the listener does not speak the stdpkt link protocol")
            nonce_l, nonce_c = hello[len(MAGIC):], secrets.token_bytes(_NONCE)
            sock.sendall(MAGIC + nonce_c + _mac(token, b"C", nonce_l, nonce_c))
            try:
                answer = _recv_exact(sock, _MAC)
            except LinkError:
                raise LinkError("the listener refused the link handshake: it does not know this "
                                f"link token (is {TOKEN_VARIABLE} the same on both ends?)") from None
            if not hmac.compare_digest(answer, _mac(token, b"L", nonce_c, nonce_l)):
                raise LinkError("the listener does not know the link token")
    except TimeoutError:
        raise LinkError("the link handshake timed out") from None
    except OSError as exc:
        raise LinkError(f"link handshake failed: {exc.strerror or exc}") from None
    finally:
        sock.settimeout(None)


def connect_stream(host: str, port: int, token: bytes, *, timeout: float = 30.0,
                   cancelled: Callable[[], bool] = lambda: False) -> socket.socket:
    """Connect to a listening port, retrying until ``timeout``; handshake; return the socket."""
    deadline = time.monotonic() + timeout
    last = "no attempt"
    while not cancelled():
        try:
            sock = socket.create_connection((host, port), timeout=min(2.0, timeout))
        except OSError as exc:
            last = exc.strerror or str(exc)
            if time.monotonic() > deadline:
                raise LinkError(f"cannot connect to {host}:{port} within {timeout:g} s: {last}") from None
            time.sleep(0.1)
            continue
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            handshake(sock, token, listener=False)
        except LinkError:
            sock.close()
            raise
        return sock
    raise LinkError(f"connecting to {host}:{port} was cancelled ({last})")


def listen_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    srv = socket.socket(family, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        srv.bind((host, port))
    except OSError as exc:
        srv.close()
        raise LinkError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    srv.listen(4)
    return srv


def accept_stream(srv: socket.socket, token: bytes, *, timeout: float = 300.0,
                  cancelled: Callable[[], bool] = lambda: False,
                  refused: Callable[[str], None] | None = None) -> socket.socket:
    """Accept peers on ``srv`` until one passes the handshake; close the others."""
    deadline = time.monotonic() + timeout
    srv.settimeout(0.2)
    while not cancelled():
        if time.monotonic() > deadline:
            raise LinkError(f"no peer connected to {srv.getsockname()} within {timeout:g} s")
        try:
            sock, peer = srv.accept()
        except TimeoutError:
            continue
        except OSError as exc:
            raise LinkError(f"accept failed: {exc.strerror or exc}") from None
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            handshake(sock, token, listener=True)
        except LinkError as exc:
            sock.close()
            if refused is not None:
                refused(f"refused a connection from {peer[0]}:{peer[1]}: {exc}")
            continue
        return sock
    raise LinkError("waiting for a peer was cancelled")


def _tls_context(listen: bool) -> ssl.SSLContext:
    cert, key, ca = (os.environ.get(v) for v in ("STDPKT_TLS_CERT", "STDPKT_TLS_KEY", "STDPKT_TLS_CA"))
    if listen and not (cert and key):
        raise LinkError("tls-listen: needs STDPKT_TLS_CERT and STDPKT_TLS_KEY (PEM files)")
    if not ca:
        raise LinkError("tls: needs STDPKT_TLS_CA (the PEM file that signed the peer's certificate)")
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH if listen else ssl.Purpose.SERVER_AUTH,
                                     cafile=ca)
    if cert and key:
        ctx.load_cert_chain(cert, key)
    if not listen:
        ctx.check_hostname = False  # the link token authenticates the peer; the CA signs it
    return ctx


class _TlsBridge:
    """Plain bytes on a local stream socketpair ⟷ the TLS connection (two threads)."""

    def __init__(self, tls: ssl.SSLSocket) -> None:
        self.tls = tls
        self.local, self._inner = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self._threads = [threading.Thread(target=self._copy, args=(src, dst), daemon=True,
                                          name="stdpkt-tls")
                         for src, dst in ((tls, self._inner), (self._inner, tls))]
        for t in self._threads:
            t.start()

    def _copy(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(1 << 16):
                dst.sendall(data)
        except OSError:
            pass
        for s in (dst, src):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def close(self) -> None:
        for s in (self.tls, self._inner, self.local):
            try:
                s.close()
            except OSError:
                pass


class StreamPort:
    """Port ``ends.index`` of an instance relayed over one TCP/TLS connection.

    The connection is made in a background thread (a listener waits for its
    peer while the instance boots); then two pumps run, as on a pipe port:
    connection → instance (``rx``) and instance → connection (``tx``).
    ``on_end`` is called once with the reason when either direction ends.
    """

    def __init__(self, ends: StreamEnds, sock: socket.socket, *, token: bytes,
                 on_end: Callable[[StreamPort, str], None], trace_slots: int = 256,
                 connect_timeout: float = 30.0, accept_timeout: float = 300.0,
                 on_refused: Callable[[str], None] | None = None,
                 listener: socket.socket | None = None) -> None:
        if not token:
            raise LinkError(f"eth{ends.index} {ends.label}: a stream link needs a token "
                            f"(set {TOKEN_VARIABLE} to the same secret on both ends)")
        self.ends = ends
        self.device = f"eth{ends.index}"
        self._sock = sock
        self._token = token
        self._on_end = on_end
        self._trace_slots = trace_slots
        self._timeouts = (connect_timeout, accept_timeout)
        self._on_refused = on_refused
        self._lock = threading.Lock()
        self._stopped = False
        self._ended = False
        self._conn: socket.socket | None = None
        self._bridge: _TlsBridge | None = None
        self._fds: list[int] = []
        self.rx: Pump | None = None
        self.tx: Pump | None = None
        self.peer: str | None = None
        #: True when the connection could not be made (refused, timed out, wrong token)
        self.failed = False
        # Listen at once, so the port is bound (and a bind error raised) before we return.
        self._srv = listener or (listen_socket(ends.host, ends.port) if ends.listen else None)

    @property
    def address(self) -> tuple[str, int] | None:
        """Where a listening port listens (useful with port 0)."""
        return self._srv.getsockname()[:2] if self._srv is not None else None

    def start(self) -> None:
        threading.Thread(target=self._connect_and_pump, daemon=True,
                         name=f"stdpkt-stream-{self.device}").start()

    def _connect_and_pump(self) -> None:
        cancelled = lambda: self._stopped  # noqa: E731
        try:
            if self._srv is not None:
                conn = accept_stream(self._srv, self._token, timeout=self._timeouts[1],
                                     cancelled=cancelled, refused=self._on_refused)
            else:
                conn = connect_stream(self.ends.host, self.ends.port, self._token,
                                      timeout=self._timeouts[0], cancelled=cancelled)
            if self.ends.tls:
                ctx = _tls_context(self.ends.listen)
                tls = ctx.wrap_socket(conn, server_side=self.ends.listen)
                self._bridge = _TlsBridge(tls)
                conn = self._bridge.local
        except (LinkError, ssl.SSLError, OSError) as exc:
            self.failed = True
            self._end(f"{self.device} {self.ends.label}: {exc}")
            return
        finally:
            if self._srv is not None:
                self._srv.close()
                self._srv = None
        with self._lock:
            if self._stopped:
                conn.close()
                return
            self._conn = conn
            try:
                host, port = conn.getpeername()[:2]
                self.peer = self.ends.label if self.ends.tls else f"{host}:{port}"
            except (OSError, TypeError):
                self.peer = self.ends.label
            rfd, wfd = os.dup(conn.fileno()), os.dup(conn.fileno())
            self._fds += [rfd, wfd]
            sock_ep = Endpoint.socket(self._sock.fileno())
            self.rx = Pump(Endpoint.pcap(rfd), sock_ep, name=f"{self.device} rx",
                           trace_slots=self._trace_slots)
            self.tx = Pump(sock_ep, Endpoint.pcap(wfd), name=f"{self.device} tx",
                           trace_slots=self._trace_slots)
            for pump in (self.rx, self.tx):
                pump.on_exit = self._pump_ended
                pump.start()

    def _pump_ended(self, pump: Pump, result: PumpResult) -> None:
        if self._stopped or result is PumpResult.STOPPED:
            return
        reading = pump is self.rx
        if result in (PumpResult.EOF, PumpResult.PEER_CLOSED):
            why = (f"the connection {self.ends.label} ended" if reading == (result is PumpResult.EOF)
                   else "the instance closed its port")
        elif result is PumpResult.BAD_STREAM:
            why = f"{self.ends.label} does not carry a pcap stream: {pump.stats.last_error}"
        else:
            why = f"relay error on {self.ends.label}: {pump.stats.last_error}"
        self._end(f"{self.device}: {why}")

    def _end(self, why: str) -> None:
        with self._lock:
            if self._ended or self._stopped:
                return
            self._ended = True
        self._on_end(self, why)

    def stats(self) -> dict[str, PumpStats | None]:
        return {"rx": self.rx.stats if self.rx else None, "tx": self.tx.stats if self.tx else None}

    def stop(self, timeout: float = 2.0) -> None:
        with self._lock:
            self._stopped = True
            pumps = [p for p in (self.rx, self.tx) if p is not None]
            conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.shutdown(socket.SHUT_RDWR)  # wakes a pump blocked on the connection
            except OSError:
                pass
        for pump in pumps:
            pump.stop(timeout)
        for fd in self._fds:
            try:
                os.close(fd)
            except OSError:
                pass
        self._fds.clear()
        if conn is not None:
            conn.close()
        if self._bridge is not None:
            self._bridge.close()
        if self._srv is not None:
            self._srv.close()
            self._srv = None


def link_token(env: dict[str, str] | None = None) -> bytes:
    """The shared link token from the environment (empty when unset)."""
    return (env if env is not None else os.environ).get(TOKEN_VARIABLE, "").encode()
