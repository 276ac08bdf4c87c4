"""UML's management console: requests to a running kernel that start nothing in the guest.

Each kernel listens on ``<uml_dir>/<umid>/mconsole`` (SOCK_DGRAM).  A request
is ``{u32 magic=0xcafebabe, u32 version=2, u32 len, char data[512]}``; the
kernel answers with one or more ``{u32 err, u32 more, u32 len, char data[512]}``
until ``more`` is 0.  Useful commands: ``proc sys/net/netfilter/nf_conntrack_count``
(read a guest /proc file; the per-namespace /proc/net files fail), ``config
vecN:...`` (hot-plug an interface), ``stop``/``go``, ``halt``, ``version``.
"""

from __future__ import annotations

import socket
import struct
import threading
from pathlib import Path

from ..errors import InstanceError

__all__ = ["MConsole", "MConsoleError"]

_MAGIC = 0xCAFEBABE
_VERSION = 2
_MAX_DATA = 512
_REQUEST = struct.Struct(f"=III{_MAX_DATA}s")
_REPLY = struct.Struct(f"=III{_MAX_DATA}s")


class MConsoleError(InstanceError):
    """The kernel refused an mconsole request (its message says why)."""


class MConsole:
    """A client for one kernel's mconsole socket (thread-safe, one socket kept open)."""

    def __init__(self, path: str | Path, *, name: str = "") -> None:
        self.path = str(path)
        self.name = name
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()

    def _socket(self) -> socket.socket:
        if self._sock is None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            sock.bind("")  # autobind: an abstract address the kernel can reply to
            self._sock = sock
        return self._sock

    def request(self, command: str, *, timeout: float = 2.0) -> str:
        """Send ``command``; return the kernel's answer (raise MConsoleError if it failed)."""
        data = command.encode()
        if len(data) >= _MAX_DATA:
            raise ValueError(f"mconsole command longer than {_MAX_DATA - 1} bytes")
        with self._lock:
            sock = self._socket()
            sock.settimeout(timeout)
            try:
                sock.sendto(_REQUEST.pack(_MAGIC, _VERSION, len(data), data), self.path)
                parts, err, more = [], 0, 1
                while more:
                    reply = sock.recv(_REPLY.size)
                    err, more, length, body = _REPLY.unpack(reply.ljust(_REPLY.size, b"\0"))
                    parts.append(body[:length].replace(b"\0", b"").decode(errors="replace"))
            except OSError as exc:
                raise MConsoleError(f"mconsole {command!r}: {exc}", name=self.name) from exc
        text = "".join(parts)
        if err:
            raise MConsoleError(f"mconsole {command!r}: {text.strip()}", name=self.name)
        return text

    def proc(self, path: str, *, timeout: float = 2.0) -> str:
        """Read guest ``/proc/<path>`` (``sys/...`` files; not the per-namespace /proc/net)."""
        return self.request(f"proc {path.removeprefix('/proc/')}", timeout=timeout)

    def close(self) -> None:
        with self._lock:
            if self._sock is not None:
                self._sock.close()
                self._sock = None
