"""Host side of the command channel into a running guest.

The guest runs ``stdpkt-agent /dev/tty1`` (``lkl/agent.c``); its ``/dev/tty1`` is
the second UML console, ``con1=fd:R,fd:W``, wired to two host pipes. This module
speaks the agent's framed protocol over those pipes:

* after the hello line ``STDPKT-AGENT 1``, both directions carry frames: a 12-byte
  header (``"SP"``, type, flags, u32 id, u32 length, little-endian) and a payload;
* requests: ``E`` exec, ``K`` kill the exec of that id, ``R`` read a file,
  ``M`` read several files, ``P`` ping; replies carry their request's id:
  ``e`` exit status + stdout + stderr, ``r``/``m`` errno + bytes, ``p`` pong,
  ``x`` errno + message (the request could not be carried out).

Reading a file costs one open/read in the agent (no fork): use :meth:`AgentClient.read_file`
and :meth:`AgentClient.read_files` for counters, :meth:`AgentClient.exec` for programs.
Any number of threads may call at once: one reader thread hands each reply to
the caller waiting for its id, and a lock keeps request frames whole.
"""

from __future__ import annotations

import contextlib
import enum
import errno as errno_mod
import itertools
import os
import select
import shlex
import struct
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

from stdpkt_lab.errors import ExecError, ExecTimeout, InstanceDied, InstanceError, StateError, StdpktError

__all__ = ["AGENT_HELLO", "AgentClient", "ExecResult"]

AGENT_HELLO = b"STDPKT-AGENT 1\n"

_HEADER = struct.Struct("<2sBBII")
_MAGIC = b"SP"
_U32 = struct.Struct("<I")
_I32 = struct.Struct("<i")
_MAX_FRAME = 64 << 20  # the agent refuses larger requests
_CHUNK = 1 << 16
# Bytes sent but not yet acknowledged by the agent. UML's console never resumes
# input once n_tty's 4 KiB buffer has throttled it: stay well below that.
_WINDOW = 3072
_NUDGE_AFTER = 2.0  # seconds without a reply before a ping nudges the channel (AgentClient._await)
_STDERR_TAIL = 800


@dataclass(frozen=True)
class ExecResult:
    """What a command run in a guest returned."""

    returncode: int  # exit status; negative = killed by that signal
    stdout: str  # decoded utf-8 with errors="replace"
    stderr: str
    stdout_bytes: bytes
    stderr_bytes: bytes
    duration_s: float
    command: str = ""  # the command as shown in error messages
    truncated: bool = False  # the agent dropped output past its cap (16 MiB a stream)

    def check(self) -> ExecResult:
        """Return self if the command succeeded, else raise :class:`ExecError`."""
        if self.returncode == 0:
            return self
        status = (
            f"killed by signal {-self.returncode}"
            if self.returncode < 0
            else f"exit status {self.returncode}"
        )
        tail = self.stderr[-_STDERR_TAIL:].rstrip("\n")
        message = f"command {self.command} failed: {status}"
        if tail:
            message += f"; stderr: {tail}"
        raise ExecError(message)


class _State(enum.Enum):
    UNOPENED = "unopened"  # hello not seen yet
    READY = "ready"
    CLOSED = "closed"  # closed by us, or the channel broke (see _failure)


class _Call:
    """One request waiting for its reply."""

    __slots__ = ("event", "frame_type", "payload", "failure")

    def __init__(self) -> None:
        self.event = threading.Event()
        self.frame_type = 0
        self.payload = b""
        self.failure: _Failure | None = None


@dataclass(frozen=True)
class _Failure:
    """Why a channel became unusable; each caller gets its own exception."""

    kind: type[InstanceError]
    message: str

    def error(self, name: str) -> InstanceError:
        return self.kind(self.message, name=name or None)


class _ProtocolError(ExecError):
    """The byte stream from the agent is not what the protocol allows (internal)."""


def _blob(data: bytes) -> bytes:
    return _U32.pack(len(data)) + data


def _describe(cmd: str | Sequence[str]) -> str:
    if isinstance(cmd, str):
        return repr(cmd)
    return repr(shlex.join(cmd))


class _Reader:
    """Cursor over a reply payload."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def u32(self) -> int:
        (value,) = _U32.unpack_from(self.data, self.pos)
        self.pos += 4
        return int(value)

    def i32(self) -> int:
        (value,) = _I32.unpack_from(self.data, self.pos)
        self.pos += 4
        return int(value)

    def blob(self) -> bytes:
        n = self.u32()
        if self.pos + n > len(self.data):
            raise struct.error("blob runs past the end of the frame")
        value = self.data[self.pos : self.pos + n]
        self.pos += n
        return value


def _errno_text(err: int) -> str:
    name = errno_mod.errorcode.get(err, f"errno {err}")
    return f"{name} ({os.strerror(err)})"


class AgentClient:
    """Client of one guest's ``stdpkt-agent``; owns both pipe ends it is given.

    ``to_guest_fd`` is the write end of the pipe the guest reads (its ``con1``
    input), ``from_guest_fd`` the read end of the pipe the guest writes.
    The constructor does no I/O; :meth:`wait_ready` waits for the agent's hello
    and starts the reader thread. :meth:`close` is idempotent. Once the guest
    closes its end (it died), every waiting and later call raises
    :class:`InstanceDied`.
    """

    def __init__(self, to_guest_fd: int, from_guest_fd: int, *, name: str = "") -> None:
        self.name = name
        self._to_fd = to_guest_fd
        self._from_fd = from_guest_fd
        self._wake_r = self._wake_w = -1  # wakes the reader thread on close()
        self._state = _State.UNOPENED
        self._failure: _Failure | None = None  # why the channel is unusable
        self._lock = threading.Lock()  # guards _state, _failure, _calls, _sent, _acked
        self._acks = threading.Condition(self._lock)  # notified when _acked grows
        self._sent = 0  # bytes written to the guest
        self._acked = 0  # bytes the agent has read (its ACK frames)
        self.nudges = 0  # pings sent because a reply was slow (see _await)
        self._write_lock = threading.Lock()  # keeps request frames whole
        self._calls: dict[int, _Call] = {}
        self._ids = itertools.count()
        self._early = b""  # bytes that followed the hello, for the reader thread
        self._thread: threading.Thread | None = None
        self._fds_closed = False

    # ---- lifecycle ----

    def __enter__(self) -> AgentClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"AgentClient(name={self.name!r}, state={self._state.value})"

    @property
    def closed(self) -> bool:
        """True once :meth:`close` ran or the guest closed the channel."""
        return self._state is _State.CLOSED

    def wait_ready(self, timeout: float) -> None:
        """Wait for the agent's hello line; raise :class:`ExecError` on timeout or EOF."""
        with self._lock:
            if self._state is _State.READY:
                return
            if self._state is _State.CLOSED:
                raise StateError(f"agent channel of {self.name!r} is closed")
        deadline = time.monotonic() + timeout
        poller = select.poll()
        poller.register(self._from_fd, select.POLLIN)
        seen = b""
        while (index := seen.find(AGENT_HELLO)) < 0:
            left = deadline - time.monotonic()
            if left <= 0:
                raise ExecError(
                    f"agent did not say hello within {timeout:g} s (got {seen[-200:]!r})",
                    name=self.name,
                )
            with self._lock:
                failure = self._failure if self._state is _State.CLOSED else None
            if failure is not None:  # the agent exited (agent_exited) or close() ran
                raise ExecError(f"{failure.message}, before its hello (got {seen[-200:]!r})",
                                name=self.name)
            if not poller.poll(min(left, 0.25) * 1000 + 1):
                continue
            try:
                data = os.read(self._from_fd, _CHUNK)
            except OSError as exc:
                raise ExecError(f"agent channel read failed: {exc}", name=self.name) from exc
            if not data:
                raise ExecError(
                    f"agent channel closed before the hello (got {seen[-200:]!r})", name=self.name
                )
            seen = seen[-4096:] + data
        self._early = seen[index + len(AGENT_HELLO) :]
        os.set_blocking(self._to_fd, False)  # writes must never block past a deadline
        self._wake_r, self._wake_w = os.pipe()
        with self._lock:
            self._state = _State.READY
        self._thread = threading.Thread(
            target=self._read_loop, name=f"agent-reader-{self.name}", daemon=True
        )
        self._thread.start()

    def agent_exited(self, how: str) -> None:
        """The guest's init reaped the agent (``how``: "exit status 1", "killed by signal 7
        (Bus error)"): every call waiting and to come fails at once, naming it."""
        with self._lock:
            self._fail_locked(_Failure(InstanceDied, f"the exec agent in the guest exited ({how})"))

    def close(self) -> None:
        """Close the channel; calls still waiting raise :class:`InstanceDied`. Idempotent."""
        with self._lock:
            if self._fds_closed:
                return
            self._fail_locked(_Failure(InstanceDied, "agent channel closed"))
            thread = self._thread
            # under the lock: a concurrent close() (the console monitor when the kernel
            # ends, and stop()) must not close the pipe between the check and the write
            if self._wake_w >= 0:
                os.write(self._wake_w, b"x")
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5.0)
        with self._write_lock, self._lock:
            if self._fds_closed:
                return
            self._fds_closed = True
            for fd in (self._to_fd, self._from_fd, self._wake_r, self._wake_w):
                if fd >= 0:
                    os.close(fd)
            self._to_fd = self._from_fd = self._wake_r = self._wake_w = -1

    # ---- requests ----

    def exec(
        self,
        cmd: str | Sequence[str],
        *,
        timeout: float | None = 30.0,
        input: bytes | None = None,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
    ) -> ExecResult:
        """Run a command in the guest: a ``str`` through ``/bin/sh -c``, a sequence as argv.

        ``env`` adds to (or overrides) the agent's environment; ``cwd`` defaults
        to ``/``; without ``input`` the command's stdin is ``/dev/null``.
        A non-zero exit is a result, not an error (see :meth:`ExecResult.check`).
        Raises :class:`ExecTimeout` (after killing the command's process group),
        :class:`ExecError` if it could not be started, :class:`InstanceDied`.
        """
        argv = ["/bin/sh", "-c", cmd] if isinstance(cmd, str) else list(cmd)
        shown = _describe(cmd)
        if not argv:
            raise ExecError("cannot run an empty argv", name=self.name)
        env_items = [f"{key}={value}" for key, value in (env or {}).items()]
        if any(not key or "=" in key for key in (env or {})):
            raise ExecError(f"{shown}: bad environment variable name in {env!r}", name=self.name)
        payload = b"".join(
            [
                _U32.pack(0 if input is None else 1),
                _U32.pack(len(argv)),
                *(_blob(os.fsencode(arg)) for arg in argv),
                _U32.pack(len(env_items)),
                *(_blob(os.fsencode(item)) for item in env_items),
                _blob(os.fsencode(cwd or "")),
                _blob(input or b""),
            ]
        )
        start = time.monotonic()
        call_id, call = self._submit(ord("E"), payload, timeout, shown)
        if not self._await(call, timeout):
            self._abandon(call_id)
            self._send_kill(call_id)
            raise ExecTimeout(
                f"command {shown} did not finish within {timeout:g} s (killed; "
                f"{self.nudges} nudge(s) sent on this channel so far)", name=self.name
            )
        duration = time.monotonic() - start
        with self._parse(call, ord("e"), shown) as reply:
            status = reply.i32()
            flags = reply.u32()
            out = reply.blob()
            err = reply.blob()
        return ExecResult(
            returncode=status,
            stdout=out.decode("utf-8", errors="replace"),
            stderr=err.decode("utf-8", errors="replace"),
            stdout_bytes=out,
            stderr_bytes=err,
            duration_s=duration,
            command=shown,
            truncated=bool(flags & 3),
        )

    def read_file(self, path: str, *, timeout: float = 5.0) -> bytes:
        """A guest file's content, read by the agent without forking (up to 8 MiB).

        Raises :class:`ExecError` naming the path and errno if it cannot be read.
        """
        shown = f"read {path!r}"
        call = self._call(ord("R"), _blob(os.fsencode(path)), timeout, shown)
        with self._parse(call, ord("r"), shown) as reply:
            err = reply.i32()
            data = reply.blob()
        if err:
            raise ExecError(
                f"cannot read {path!r} in the guest: {_errno_text(err)}", name=self.name
            )
        return data

    def read_files(self, paths: Sequence[str], *, timeout: float = 5.0) -> dict[str, bytes | None]:
        """Several files in one round trip; ``None`` for each one that could not be read."""
        paths = list(paths)
        shown = f"read {len(paths)} files"
        payload = _U32.pack(len(paths)) + b"".join(_blob(os.fsencode(p)) for p in paths)
        call = self._call(ord("M"), payload, timeout, shown)
        result: dict[str, bytes | None] = {}
        with self._parse(call, ord("m"), shown) as reply:
            if reply.u32() != len(paths):
                raise struct.error("wrong number of entries")
            for path in paths:
                err = reply.i32()
                data = reply.blob()
                result[path] = None if err else data
        return result

    def ping(self, timeout: float = 5.0) -> float:
        """Round trip to the agent, in seconds."""
        start = time.monotonic()
        call = self._call(ord("P"), b"", timeout, "ping")
        with self._parse(call, ord("p"), "ping"):
            pass
        return time.monotonic() - start

    # ---- internals ----

    def _call(self, frame_type: int, payload: bytes, timeout: float | None, shown: str) -> _Call:
        """Send a request that has no side effects and wait for its reply."""
        call_id, call = self._submit(frame_type, payload, timeout, shown)
        if not self._await(call, timeout):
            self._abandon(call_id)
            raise ExecTimeout(f"{shown}: no answer within {timeout:g} s", name=self.name)
        return call

    def _await(self, call: _Call, timeout: float | None) -> bool:
        """Wait for ``call``'s reply; after each ``_NUDGE_AFTER`` s of silence send a ping.

        UML's line driver learns of input (and of room for output) from edge-triggered
        epoll events; should one edge be missed, a request would wait unread until the
        channel's next write.  The ping is that write; its reply is dropped.  ``nudges``
        counts them (an ExecTimeout message names how many were sent).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return call.event.is_set()
            if call.event.wait(_NUDGE_AFTER if left is None else min(_NUDGE_AFTER, left)):
                return True
            self._nudge()

    def _nudge(self) -> None:
        with self._lock:
            if self._failure is not None or _WINDOW - (self._sent - self._acked) < 64:
                return  # a full window is another matter: the agent is not reading at all
            self.nudges += 1
        try:
            call_id, _ = self._submit(ord("P"), b"", 0.5, "nudge")
        except StdpktError:
            return
        self._abandon(call_id)

    def _submit(
        self, frame_type: int, payload: bytes, timeout: float | None, shown: str
    ) -> tuple[int, _Call]:
        if len(payload) > _MAX_FRAME:
            raise ExecError(
                f"{shown}: request of {len(payload)} bytes is too large", name=self.name
            )
        call = _Call()
        with self._lock:
            self._raise_if_unusable_locked()
            call_id = next(self._ids) % 0xFFFFFFFF + 1  # 1 .. 2**32-1; 0 is the agent's own
            self._calls[call_id] = call
        try:
            self._send(frame_type, call_id, payload, timeout, shown)
        except BaseException:
            self._abandon(call_id)
            raise
        return call_id, call

    def _raise_if_unusable_locked(self) -> None:
        if self._state is _State.UNOPENED:
            raise StateError(f"agent of {self.name!r}: call wait_ready() first")
        if self._failure is not None:
            raise self._failure.error(self.name)

    def _send(
        self, frame_type: int, call_id: int, payload: bytes, timeout: float | None, shown: str
    ) -> None:
        frame = _HEADER.pack(_MAGIC, frame_type, 0, call_id, len(payload)) + payload
        deadline = None if timeout is None else time.monotonic() + timeout
        if not self._write_lock.acquire(timeout=-1 if timeout is None else timeout):
            raise ExecTimeout(f"{shown}: channel busy for {timeout:g} s", name=self.name)
        try:
            view = memoryview(frame)
            poller = select.poll()
            while view:
                with self._lock:
                    self._raise_if_unusable_locked()
                    left = None if deadline is None else deadline - time.monotonic()
                    if left is not None and left <= 0:
                        if len(view) < len(frame):
                            # Half a frame is in the stream: nothing can follow it.
                            self._fail_locked(
                                _Failure(ExecError, "agent stopped reading in mid-request")
                            )
                        raise ExecTimeout(
                            f"{shown}: the agent did not take the request within {timeout:g} s",
                            name=self.name,
                        )
                    room = _WINDOW - (self._sent - self._acked)
                    if room <= 0:
                        self._acks.wait(0.2 if left is None else min(0.2, left))
                        continue
                    fd = self._to_fd
                try:
                    written = os.write(fd, view[:room])
                except BlockingIOError:
                    poller.register(fd, select.POLLOUT)
                    poller.poll(200)
                    poller.unregister(fd)
                    continue
                except OSError as exc:  # EPIPE: the guest is gone
                    with self._lock:
                        self._fail_locked(_Failure(InstanceDied, f"agent channel write: {exc}"))
                    raise InstanceDied(f"agent channel write: {exc}", name=self.name) from exc
                with self._lock:
                    self._sent += written
                view = view[written:]
        finally:
            self._write_lock.release()

    @contextlib.contextmanager
    def _parse(self, call: _Call, expected: int, shown: str) -> Iterator[_Reader]:
        """Payload of a reply of type ``expected``; raise what the call failed with."""
        if call.failure is not None:
            raise call.failure.error(self.name)
        try:
            reply = _Reader(call.payload)
            if call.frame_type == ord("x"):
                err = reply.i32()
                message = reply.blob().decode("utf-8", errors="replace")
                raise ExecError(f"{shown}: {message} [{_errno_text(err)}]", name=self.name)
            if call.frame_type != expected:
                raise struct.error(f"reply type {chr(call.frame_type)!r}")
            yield reply
        except struct.error as exc:
            raise ExecError(
                f"{shown}: malformed reply from the agent: {exc}", name=self.name
            ) from exc

    def _abandon(self, call_id: int) -> None:
        with self._lock:
            self._calls.pop(call_id, None)

    def _send_kill(self, call_id: int) -> None:
        try:
            self._send(ord("K"), call_id, b"", 2.0, "kill")
        except (InstanceError, StateError):
            pass  # the guest is gone or wedged: nothing left to kill

    def _fail_locked(self, failure: _Failure) -> None:
        """Mark the channel unusable; wake every waiting call with ``failure``."""
        if self._failure is None:
            self._failure = failure
        self._state = _State.CLOSED
        self._acks.notify_all()
        for call in self._calls.values():
            call.failure = self._failure
            call.event.set()
        self._calls.clear()

    def _deliver(self, frame_type: int, call_id: int, payload: bytes) -> None:
        if call_id == 0:  # the agent's own frames
            if frame_type == ord("a") and len(payload) == 4:
                with self._lock:
                    (count,) = _U32.unpack(payload)
                    self._acked += (count - self._acked) & 0xFFFFFFFF
                    self._acks.notify_all()
                return
            message = payload[8:].decode("utf-8", errors="replace")
            raise _ProtocolError(f"agent reported: {message!r} (frame type {frame_type})")
        with self._lock:
            call = self._calls.pop(call_id, None)
        if call is None:
            return  # abandoned after a timeout
        call.frame_type = frame_type
        call.payload = payload
        call.event.set()

    def _read_loop(self) -> None:
        buf = bytearray(self._early)
        self._early = b""
        failure = _Failure(InstanceDied, "guest closed the agent channel (EOF)")
        poller = select.poll()
        poller.register(self._from_fd, select.POLLIN)
        poller.register(self._wake_r, select.POLLIN)
        try:
            while True:
                while len(buf) >= _HEADER.size:
                    magic, frame_type, _flags, call_id, length = _HEADER.unpack_from(buf)
                    if magic != _MAGIC:
                        raise _ProtocolError(f"bad frame header {bytes(buf[:16])!r}")
                    if len(buf) < _HEADER.size + length:
                        break
                    payload = bytes(buf[_HEADER.size : _HEADER.size + length])
                    del buf[: _HEADER.size + length]
                    self._deliver(frame_type, call_id, payload)
                events = dict(poller.poll())
                if self._wake_r in events:
                    return  # close() already failed every call
                data = os.read(self._from_fd, 1 << 20)
                if not data:
                    return
                buf += data
        except _ProtocolError as exc:
            failure = _Failure(ExecError, f"agent protocol error: {exc}")
        except OSError as exc:
            failure = _Failure(InstanceDied, f"agent channel read: {exc}")
        finally:
            with self._lock:
                self._fail_locked(failure)
