"""Pump: one C relay loop moving frames from an :class:`Endpoint` to another.

Division of labour: an :class:`Endpoint` only says what a descriptor carries
(one frame per socket message, or a pcap byte stream); a :class:`Pump` moves
frames between two endpoints in a daemon thread that runs the C loop with the
GIL released, counts them and keeps a ring of recent frames.

Life cycle: ``Pump(...)`` allocates memory only; ``start()`` takes private
descriptions of the descriptors and starts the thread; the loop ends when asked
(``stop()``), at the end of the source, when the destination's peer goes away,
on a bad pcap stream or an I/O error; ``result`` says which.  A pump runs once.

Re-wiring while running (docs/links.md): ``retarget(endpoint)`` changes the
destination between two batches; ``add_steer`` / ``remove_steer`` / ``steer_stats``
steer new flows matching a pcap filter elsewhere, with a :class:`FlowTable` shared by
the two pumps of a link so replies take their own detour (:mod:`.steer`).  A vhost
port's host end lends the pump the guest's queues (:mod:`.rings`).
"""

from __future__ import annotations

import contextlib
import enum
import errno
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from stdpkt_lab.errors import ConfigError, LinkError, PcapError, StateError

try:
    from stdpkt_lab.relay._relay import ffi, lib
except ImportError as exc:  # pragma: no cover - depends on the build
    raise ImportError(
        "stdpkt_lab.relay._relay is not built: pip install the package, or run "
        "`python stdpkt_lab/relay/_build_relay.py`"
    ) from exc

from stdpkt_lab.relay import rings  # noqa: E402
from stdpkt_lab.relay.steer import FlowTable, SteerStats, bpf_program  # noqa: E402

__all__ = ["Endpoint", "Pump", "PumpResult", "PumpStats", "TracedFrame"]

log = logging.getLogger(__name__)

FRAME_MIN = lib.RELAY_FRAME_MIN
FRAME_MAX = lib.RELAY_FRAME_MAX


class _HasFileno(Protocol):
    def fileno(self) -> int: ...


class PumpResult(enum.Enum):
    """Why a pump's loop ended."""

    STOPPED = lib.RELAY_STOPPED  # stop() was called
    EOF = lib.RELAY_EOF  # the source reached its end (pipe closed, peer closed)
    PEER_CLOSED = lib.RELAY_PEER_CLOSED  # the destination's reader went away
    BAD_STREAM = lib.RELAY_BAD_STREAM  # the pcap source has an invalid global header
    ERROR = lib.RELAY_ERROR  # any other I/O error; see PumpStats.last_error


@dataclass(frozen=True)
class PumpStats:
    """A snapshot of a pump's counters (the same names on every link)."""

    frames: int = 0
    bytes: int = 0
    drops: int = 0
    malformed: int = 0
    skipped_bytes: int = 0
    injected: int = 0
    last_error: str = ""


@dataclass(frozen=True)
class TracedFrame:
    """A frame kept in the trace ring: raw bytes (at most ``trace_snap``) and metadata."""

    ts_ns: int
    orig_len: int
    data: bytes
    seq: int
    injected: bool = False


@dataclass(frozen=True)
class Endpoint:
    """What a file descriptor carries.

    At start() a pump takes a description of its own (pipes and FIFOs are reopened
    through /proc/self/fd, so the caller's never becomes non-blocking; sockets and files
    are dup'ed) and closes it when its loop ends.  The caller's descriptor stays the
    caller's, unless ``close=True``: then the pump closes it too when its loop ends, so
    that a pipe's reader sees EOF.  A failed start() closes nothing."""

    fd: int
    kind: str  # "socket" or "pcap"
    close: bool = False

    @classmethod
    def socket(cls, fd: int | _HasFileno, *, close: bool = False) -> Endpoint:
        """A SOCK_SEQPACKET or SOCK_DGRAM socket: one Ethernet frame per message."""
        return cls(_fileno(fd), "socket", close)

    @classmethod
    def pcap(cls, fd: int | _HasFileno, *, close: bool = False) -> Endpoint:
        """A byte stream carrying pcap (pipe, FIFO, file, stream socket)."""
        return cls(_fileno(fd), "pcap", close)

    @property
    def _ckind(self) -> int:
        return lib.RELAY_KIND_SOCKET if self.kind == "socket" else lib.RELAY_KIND_PCAP


def _close(fd: int) -> None:
    with contextlib.suppress(OSError):
        os.close(fd)


def _fileno(fd: int | _HasFileno) -> int:
    n = fd if isinstance(fd, int) else fd.fileno()
    if n < 0:
        raise ConfigError(f"endpoint file descriptor {n} is not valid")
    return n


def _check_kind(ep: Endpoint) -> None:
    if ep.kind not in ("socket", "pcap"):
        raise ConfigError(f"unknown endpoint kind {ep.kind!r}")


class _State(enum.Enum):
    NEW = "new"
    RUNNING = "running"
    FINISHED = "finished"


class Pump:
    """Moves frames from ``src`` to ``dst`` in a daemon thread running the C loop."""

    def __init__(
        self,
        src: Endpoint,
        dst: Endpoint,
        *,
        name: str = "",
        trace_slots: int = 1024,
        trace_snap: int = 256,
        write_header: bool = True,
        flow_table: FlowTable | None = None,
    ) -> None:
        if trace_slots < 0 or trace_slots & (trace_slots - 1):
            raise ConfigError(f"trace_slots must be 0 or a power of two, not {trace_slots}")
        if trace_slots and not 1 <= trace_snap <= FRAME_MAX:
            raise ConfigError(f"trace_snap must be in 1..{FRAME_MAX}, not {trace_snap}")
        for ep in (src, dst):
            _check_kind(ep)
        self.src = src
        self.dst = dst
        self.name = name
        self.write_header = write_header
        self.on_exit: Callable[[Pump, PumpResult], object] | None = None
        self._trace_slots = trace_slots
        self._trace_snap = trace_snap if trace_slots else 0
        self._filter: str | None = None
        self._stats = ffi.new("relay_stats *")
        r = lib.relay_new(self._stats, trace_slots, self._trace_snap)
        if r == ffi.NULL:
            raise MemoryError(f"pump {name!r}: cannot allocate the relay")
        self._r = ffi.gc(r, lib.relay_free)
        self._flow_table: FlowTable | None = None
        self._steer: dict[int, Endpoint] = {}
        # guards dst and the steering endpoints; never taken by stop(), so a C call that
        # waits for the loop (a full destination) under it cannot block stop()
        self._wire_lock = threading.Lock()
        if flow_table is not None:
            self.flow_table = flow_table
        self._lock = threading.Lock()
        self._state = _State.NEW
        self._thread: threading.Thread | None = None
        self._result: PumpResult | None = None
        self._steer_closed = False
        self._done = threading.Event()  # set once the loop ended and on_exit returned
        self._solo = True  # False: the loop runs in a group thread (start_together)

    # ---------------------------------------------------------------- life cycle

    def start(self) -> Pump:
        """Opens private descriptions of both descriptors, writes the pcap global header
        (when the destination is pcap and ``write_header``) and starts the loop in a
        thread of its own (:func:`stdpkt_lab.relay.group.start_together` runs several
        pumps in one thread)."""
        with self._lock:
            self._open()
            for ep, source in ((self.src, True), (self.dst, False)):
                if ep.kind == "socket":  # a vhost port's host end: use its queue (rings.py)
                    rings.lend(self._r, ep.fd, source=source)
            self._thread = threading.Thread(target=self._run, name=f"pump {self.name}", daemon=True)
            self._thread.start()
        return self

    def _open(self) -> None:
        """relay_open() and the RUNNING state (self._lock held)."""
        if self._state is not _State.NEW:
            raise StateError(f"pump {self.name!r} was already started ({self._state.value})")
        rc = lib.relay_open(
            self._r,
            self.src.fd,
            self.src._ckind,
            self.dst.fd,
            self.dst._ckind,
            1 if self.write_header else 0,
        )
        if rc < 0:
            raise LinkError(f"pump {self.name!r}: {self._last_error()}")
        self._state = _State.RUNNING

    def _run(self) -> None:
        code = PumpResult.ERROR.value
        try:
            code = lib.relay_run(self._r)  # blocks; cffi releases the GIL
        finally:
            self._finish(code)

    def _finish(self, code: int) -> None:
        """The loop ended with ``code``: close what the pump owns, publish the result,
        call on_exit (in the thread that ran the loop)."""
        try:
            with self._wire_lock:
                owned = [self.src, self.dst, *self._steer.values()]
                self._steer_closed = True
            for ep in owned:
                if ep.close:
                    _close(ep.fd)
            self._result = PumpResult(code)
            with self._lock:
                self._state = _State.FINISHED
            callback = self.on_exit
            if callback is not None:
                try:
                    callback(self, self._result)
                except Exception:
                    log.exception("on_exit callback of pump %r failed", self.name)
        finally:
            self._done.set()

    def stop(self, timeout: float | None = 2.0) -> PumpResult | None:
        """Ends the loop and waits for it; idempotent. Works while the loop is blocked on
        a full destination. Raises LinkError if the loop outlives timeout."""
        with self._lock:
            if self._state is _State.NEW:
                self._state = _State.FINISHED  # never ran; refuses start() from now on
                self._done.set()
                return None
            thread = self._thread
        lib.relay_stop(self._r)
        if thread is None or thread is threading.current_thread():
            return self._result  # called from on_exit of this loop's thread: cannot wait
        if not self._done.wait(timeout):
            raise LinkError(f"pump {self.name!r} did not stop within {timeout} s")
        if self._solo:
            thread.join(timeout)
        return self._result

    def wait(self, timeout: float | None = None) -> PumpResult | None:
        """Waits for the loop to end (and on_exit to return); None on timeout."""
        thread = self._thread
        if thread is None:
            return self._result
        if thread is not threading.current_thread():
            self._done.wait(timeout)
        return self._result

    @property
    def result(self) -> PumpResult | None:
        """Why the loop ended, or None while it runs (or before start)."""
        return self._result

    @property
    def running(self) -> bool:
        return self._state is _State.RUNNING and self._result is None

    def __enter__(self) -> Pump:
        if self._state is _State.NEW:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        what = self._result.name if self._result else self._state.value
        src, dst = self.src, self.dst
        return f"<Pump {self.name!r} {src.kind}:{src.fd}->{dst.kind}:{dst.fd} {what}>"

    # ---------------------------------------------------------------- counters

    def _last_error(self) -> str:
        buf = ffi.new("char[]", 512)
        n = lib.relay_last_error(self._r, buf, 512)
        return ffi.string(buf, n).decode(errors="replace")

    @property
    def stats(self) -> PumpStats:
        s = self._stats
        return PumpStats(
            frames=s.frames,
            bytes=s.bytes,
            drops=s.drops,
            malformed=s.malformed,
            skipped_bytes=s.skipped_bytes,
            injected=s.injected,
            last_error=self._last_error(),
        )

    # ---------------------------------------------------------------- injection

    def inject(self, frame: bytes) -> None:
        """Writes one frame into the destination (a pcap record or a socket message),
        never interleaved with the loop's own writes. Blocks while the destination is full."""
        if not self.running:
            raise StateError(f"pump {self.name!r} is not running; cannot inject")
        data = bytes(frame)
        if not FRAME_MIN <= len(data) <= FRAME_MAX:
            raise LinkError(
                f"pump {self.name!r}: cannot inject a frame of {len(data)} bytes "
                f"(an Ethernet frame has {FRAME_MIN}..{FRAME_MAX})"
            )
        rc = lib.relay_inject(self._r, ffi.from_buffer(data), len(data))
        if rc == 0:
            return
        if rc in (-errno.EBADF, -errno.ECANCELED):
            raise StateError(f"pump {self.name!r} stopped before the frame could be injected")
        if rc == -errno.EPIPE:
            raise LinkError(f"pump {self.name!r}: cannot inject, destination closed by its peer")
        if rc == -errno.EMSGSIZE:
            raise LinkError(f"pump {self.name!r}: destination refused a frame of {len(data)} bytes")
        raise LinkError(f"pump {self.name!r}: inject failed: {self._last_error()}")

    # ---------------------------------------------------------------- re-wiring

    def retarget(self, endpoint: Endpoint, *, write_header: bool = True) -> None:
        """Sends every frame after the current batch to ``endpoint`` instead of ``dst``
        (thread-safe; counters, trace ring and steering rules stay).  The pump takes a
        private description of the descriptor, as start() does, and closes its old one
        (and the old descriptor itself if given with ``close=True``).  A pcap destination
        first gets a global header unless ``write_header`` is False.  A write blocked on a
        full old socket gives way at once (the batch's unsent frames go to the new one),
        on a pcap stream at the next record boundary.  Before start() it only replaces
        ``dst``."""
        _check_kind(endpoint)
        with self._lock:
            state = self._state
            if state is _State.NEW:
                old, self.dst, self.write_header = self.dst, endpoint, write_header
                if old.close and old.fd != endpoint.fd:
                    _close(old.fd)
                return
        if state is not _State.RUNNING or self._result is not None:
            raise StateError(f"pump {self.name!r} has ended; cannot retarget it")
        with self._wire_lock:
            if self._steer_closed:
                raise StateError(f"pump {self.name!r} has ended; cannot retarget it")
            rc = lib.relay_set_dst(self._r, endpoint.fd, endpoint._ckind,
                                   1 if write_header else 0)
            if rc == -errno.EBADF:
                raise StateError(f"pump {self.name!r} ended before it could be retargeted")
            if rc < 0:
                raise LinkError(f"pump {self.name!r}: cannot retarget: {self._last_error()}")
            old, self.dst = self.dst, endpoint
            if endpoint.kind == "socket":
                rings.lend(self._r, endpoint.fd, source=False)
        if old.close and old.fd != endpoint.fd:
            _close(old.fd)

    @property
    def flow_table(self) -> FlowTable | None:
        """The flow table steering uses (shared with the reverse pump), or None."""
        return self._flow_table

    @flow_table.setter
    def flow_table(self, table: FlowTable | None) -> None:
        lib.relay_set_flowtab(self._r, ffi.NULL if table is None else table._ptr)
        self._flow_table = table  # keeps the table alive while the relay points at it

    def add_steer(
        self, rule_id: int, filter_expr: str | None, endpoint: Endpoint, *, write_header: bool = True
    ) -> None:
        """New flows whose first frame matches the pcap filter ``filter_expr`` (None: none;
        the rule then only carries flows the reverse pump classified with the same id) go
        to ``endpoint``, and so do their later frames on this pump.  Gives the pump a flow
        table of its own when it has none (a link shares one between its pumps).
        ``endpoint`` with ``close=True`` is closed when the rule is removed or the loop ends."""
        _check_kind(endpoint)
        if not isinstance(rule_id, int) or not 1 <= rule_id < 2**32:
            raise ConfigError(f"steering rule id must be an integer in 1..2**32-1, not {rule_id!r}")
        if rule_id in self._steer:
            raise ConfigError(f"pump {self.name!r} already has steering rule {rule_id}")
        if filter_expr is not None and not filter_expr.strip():
            raise ConfigError(f"steering rule {rule_id}: empty filter (use None for no filter)")
        insns, n = bpf_program(filter_expr) if filter_expr is not None else (ffi.NULL, 0)
        with self._wire_lock:
            if self._steer_closed or self._state is _State.FINISHED:
                raise StateError(f"pump {self.name!r} has ended; cannot add steering rule {rule_id}")
            if self._flow_table is None:
                self.flow_table = FlowTable()
            rc = lib.relay_add_steer(self._r, rule_id, insns, n, endpoint.fd, endpoint._ckind,
                                     1 if write_header else 0)
            if rc == -errno.EBADF and self._state is not _State.NEW:
                raise StateError(f"pump {self.name!r} ended before steering rule {rule_id} was added")
            if rc < 0:
                raise LinkError(f"pump {self.name!r}: steering rule {rule_id}: {self._last_error()}")
            self._steer[rule_id] = endpoint

    def remove_steer(self, rule_id: int) -> None:
        """Removes a rule: its flows take the default path on this pump from the next batch
        (their flow-table entries stay until they expire)."""
        with self._wire_lock:
            endpoint = self._steer.pop(rule_id, None)
            if endpoint is None:
                raise ConfigError(f"pump {self.name!r} has no steering rule {rule_id}")
            lib.relay_remove_steer(self._r, rule_id)
            closed = self._steer_closed
        if endpoint.close and not closed:
            _close(endpoint.fd)

    def steer_stats(self) -> dict[int, SteerStats]:
        """Counters of every rule of this pump: {rule_id: SteerStats(flows, frames, bytes, drops)}."""
        out = {}
        st = ffi.new("relay_steer_stats *")
        with self._wire_lock:
            ids = list(self._steer)
        for rule_id in ids:
            if lib.relay_get_steer_stats(self._r, rule_id, st) == 0:
                out[rule_id] = SteerStats(st.flows, st.frames, st.bytes, st.drops)
        return out

    @property
    def steer_rules(self) -> dict[int, Endpoint]:
        with self._wire_lock:
            return dict(self._steer)

    # ---------------------------------------------------------------- trace ring

    @property
    def trace_enabled(self) -> bool:
        return bool(lib.relay_get_trace(self._r))

    @trace_enabled.setter
    def trace_enabled(self, on: bool) -> None:
        lib.relay_set_trace(self._r, 1 if on else 0)

    @property
    def filter(self) -> str | None:
        """The trace filter expression in force, or None."""
        return self._filter

    def set_filter(self, expr: str | None) -> None:
        """Keeps only frames matching a pcap filter expression in the trace ring
        (relaying is unaffected). None or "" keeps every frame."""
        if expr is None or not expr.strip():
            lib.relay_set_filter(self._r, ffi.NULL, 0)
            self._filter = None
            return
        insns, n = bpf_program(expr)
        if lib.relay_set_filter(self._r, insns, n) != 0:
            raise PcapError(f"capture filter {expr!r} compiled to an invalid BPF program")
        self._filter = expr

    def trace(self, limit: int | None = None) -> list[TracedFrame]:
        """A copy of the ring, oldest first; the most recent ``limit`` frames if given."""
        n = self._trace_slots if limit is None else max(0, min(limit, self._trace_slots))
        if n == 0:
            return []
        snap = self._trace_snap
        entries = ffi.new("relay_trace_entry[]", n)
        data = ffi.new("uint8_t[]", n * snap)
        got = lib.relay_trace_copy(self._r, entries, data, n)
        raw = ffi.buffer(data)
        out = []
        for i in range(got):
            e = entries[i]
            out.append(
                TracedFrame(
                    ts_ns=e.ts_ns,
                    orig_len=e.orig_len,
                    data=raw[i * snap : i * snap + e.cap_len],
                    seq=e.seq,
                    injected=bool(e.flags & lib.RELAY_TRACE_INJECTED),
                )
            )
        return out

    def clear_trace(self) -> None:
        lib.relay_clear_trace(self._r)

