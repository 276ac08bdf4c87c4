"""A port served over a pair of pcap-framed pipes: the paper's ``IFn="RX|TX"``.

A :class:`PipePort` opens the port's RX and TX paths (``/dev/stdin``,
``/dev/stdout``, a FIFO, created when missing, or a regular file: a pcap file
replays, a new regular path records) and runs two relay pumps between them
and the instance's socket.  FIFO opens block until the other side opens, so
each opens in its own thread: two instances can never deadlock on the order.

A FIFO this port creates is removed by :meth:`PipePort.stop`; with a ``ledger``
(the instance's run directory) it is also recorded there, so that the launcher
or a later sweep removes it when this process is SIGKILLed
(:mod:`stdpkt_lab.engine.ownership`).
"""

from __future__ import annotations

import os
import socket
import stat
import threading
from collections.abc import Callable
from pathlib import Path

from ..errors import LinkError
from ..relay import Endpoint, Pump, PumpResult, PumpStats
from .ownership import make_fifo
from .variables import PipeEnds

__all__ = ["PipePort", "StdStreams"]


class StdStreams:
    """The process's own stdin/stdout, taken over as packet channels.

    ``take()`` moves the packet descriptors aside and points fds 0/1 at
    /dev/null and stderr, so that nothing printed by mistake can corrupt the
    pcap stream on stdout.
    """

    def __init__(self) -> None:
        self.stdin_fd: int | None = None
        self.stdout_fd: int | None = None

    def take(self) -> None:
        self.stdin_fd = os.dup(0)
        self.stdout_fd = os.dup(1)
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.close(devnull)
        os.dup2(2, 1)

    def claim(self, path: str, *, for_reading: bool) -> int | None:
        """A dup of our stdin/stdout when ``path`` names it, else None."""
        if path == "/dev/stdin":
            if not for_reading:
                raise LinkError("/dev/stdin can only be read (RX side of IFn)")
            return os.dup(self.stdin_fd if self.stdin_fd is not None else 0)
        if path == "/dev/stdout":
            if for_reading:
                raise LinkError("/dev/stdout can only be written (TX side of IFn)")
            return os.dup(self.stdout_fd if self.stdout_fd is not None else 1)
        return None


class PipePort:
    """Port ``ends.index`` of an instance relayed to its RX/TX pipes."""

    def __init__(
        self,
        ends: PipeEnds,
        sock: socket.socket,
        *,
        streams: StdStreams,
        on_end: Callable[[PipePort, str], None],
        trace_slots: int = 256,
        ledger: Path | None = None,
    ) -> None:
        self.ends = ends
        self.device = f"eth{ends.index}"
        self._sock = sock
        self._streams = streams
        self._on_end = on_end
        self._trace_slots = trace_slots
        self._ledger = ledger  # run directory whose .created ledger lists our FIFOs
        self._created: list[Path] = []
        self._fds: list[int] = []
        self._lock = threading.Lock()
        self._stopped = False
        self.rx: Pump | None = None  # pipe → instance
        self.tx: Pump | None = None  # instance → pipe

    def start(self) -> None:
        """Create missing FIFOs now; open and relay each direction in the background."""
        for path in (self.ends.rx, self.ends.tx):
            if path in ("/dev/stdin", "/dev/stdout"):
                continue
            if make_fifo(path, self._ledger):  # False: already there, or the neighbour's
                self._created.append(Path(path))
        for path, reading in ((self.ends.rx, True), (self.ends.tx, False)):
            threading.Thread(
                target=self._open_and_pump, args=(path, reading),
                name=f"stdpkt-open-{self.device}-{'rx' if reading else 'tx'}", daemon=True,
            ).start()

    def _open(self, path: str, reading: bool) -> int:
        fd = self._streams.claim(path, for_reading=reading)
        if fd is not None:
            return fd
        if reading:
            return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        flags = os.O_WRONLY | os.O_CLOEXEC
        if os.path.exists(path) and stat.S_ISREG(os.stat(path).st_mode):
            flags |= os.O_TRUNC
        return os.open(path, flags)

    def _open_and_pump(self, path: str, reading: bool) -> None:
        try:
            fd = self._open(path, reading)
        except OSError as exc:
            self._on_end(self, f"{self.device}: cannot open {path!r}: {exc.strerror}")
            return
        with self._lock:
            if self._stopped:
                os.close(fd)
                return
            self._fds.append(fd)
            sock_ep = Endpoint.socket(self._sock.fileno())
            if reading:
                pump = Pump(Endpoint.pcap(fd), sock_ep, name=f"{self.device} rx",
                            trace_slots=self._trace_slots)
                self.rx = pump
            else:
                pump = Pump(sock_ep, Endpoint.pcap(fd), name=f"{self.device} tx",
                            trace_slots=self._trace_slots)
                self.tx = pump
            pump.on_exit = self._pump_ended
            pump.start()

    def _pump_ended(self, pump: Pump, result: PumpResult) -> None:
        if self._stopped or result is PumpResult.STOPPED:
            return
        reading = pump is self.rx
        path = self.ends.rx if reading else self.ends.tx
        if result is PumpResult.EOF:
            why = f"input {path!r} ended" if reading else "the instance closed its port"
        elif result is PumpResult.PEER_CLOSED:
            why = "the instance closed its port" if reading else f"output {path!r} was closed"
        elif result is PumpResult.BAD_STREAM:
            why = f"input {path!r} is not a pcap stream: {pump.stats.last_error}"
        else:
            why = f"relay error on {path!r}: {pump.stats.last_error}"
        self._on_end(self, f"{self.device}: {why}")

    def stats(self) -> dict[str, PumpStats | None]:
        return {
            "rx": self.rx.stats if self.rx else None,
            "tx": self.tx.stats if self.tx else None,
        }

    def stop(self, timeout: float = 2.0) -> None:
        with self._lock:
            self._stopped = True
            pumps = [p for p in (self.rx, self.tx) if p is not None]
        for pump in pumps:
            pump.stop(timeout)
        for fd in self._fds:
            try:
                os.close(fd)
            except OSError:
                pass
        self._fds.clear()
        for path in self._created:
            try:
                path.unlink()
            except OSError:
                pass
        self._created.clear()
