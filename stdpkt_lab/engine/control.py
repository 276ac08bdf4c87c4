"""New channels for a running ``stdpkt run`` (the paper's future work): a control socket.

An instance started with ``stdpkt run --name NAME`` listens on a unix stream
socket ``control.sock`` in its run directory, registered by name in the
user's control directory (``$STDPKT_CONTROL_DIR``, else
``$XDG_RUNTIME_DIR/stdpkt``, else ``$TMPDIR/stdpkt-<uid>``; mode 0700) as a
symlink ``NAME.sock``.  Other ``stdpkt`` commands talk to it:

* ``stdpkt attach NAME IF2="p4|p5" IP2=10.0.2.1 NETMASK2=24 [MTU2=1500]`` —
  hot-plugs ``eth2`` (:mod:`.hotplug`), addresses it, relays it to the pipes;
* ``stdpkt detach NAME 2`` — stops those relays and unplugs ``eth2``;
* ``stdpkt ls`` — every running instance of this user with its interfaces.

Protocol: one JSON object per line each way (``{"op": "info"|"attach"|"detach",
...}`` → ``{"ok": true, ...}`` or ``{"ok": false, "error": "..."}``).  An
attached channel whose pipe ends is detached (the instance goes on); the
instance's boot-time channels keep the pipeline rule (an EOF ends it).
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import socket
import tempfile
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from ..errors import ConfigError, StateError, StdpktError, VariableError
from . import hotplug
from .instance import Instance
from .pipes import PipePort, StdStreams
from .spec import MAX_MTU, MAX_PORTS
from .streams import StreamEnds, StreamPort
from .variables import PipeEnds

__all__ = ["ControlServer", "start_control", "control_dir", "request", "call", "list_instances",
           "parse_attach"]

_MAX_LINE = 1 << 16


def control_dir(create: bool = False) -> Path:
    """This user's directory of named instances."""
    explicit = os.environ.get("STDPKT_CONTROL_DIR")
    if explicit:
        path = Path(explicit)
    elif os.environ.get("XDG_RUNTIME_DIR"):
        path = Path(os.environ["XDG_RUNTIME_DIR"]) / "stdpkt"
    else:
        path = Path(tempfile.gettempdir()) / f"stdpkt-{os.getuid()}"
    if create:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        st = path.stat()
        if st.st_uid != os.getuid() or st.st_mode & 0o077:
            raise StateError(f"control directory {path} must be yours and mode 0700")
    return path


def _alive(sock_path: Path) -> bool:
    try:
        reply = request(sock_path, {"op": "info"}, timeout=2.0)
    except (OSError, StdpktError):
        return False
    return bool(reply.get("ok"))


class ControlServer:
    """Serves attach/detach/info for one running instance (owned by ``stdpkt run``)."""

    def __init__(self, instance: Instance, ports: Sequence[PipePort | StreamPort], *, streams: StdStreams,
                 say: Callable[[str], None]) -> None:
        self.instance = instance
        self.ports = ports  # boot-time channels (read only here)
        self.attached: dict[int, PipePort] = {}
        self._streams = streams
        self._say = say
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._link: Path | None = None
        self._path: Path | None = None
        self._closed = threading.Event()

    def start(self) -> None:
        run_dir = self.instance.run_dir
        if run_dir is None:
            raise StateError(f"instance {self.instance.name!r} has no run directory")
        name = self.instance.name
        link = control_dir(create=True) / f"{name}.sock"
        if link.is_symlink() or link.exists():
            if _alive(link):
                raise ConfigError(f"an instance named {name!r} is already running "
                                  f"({link}); choose another --name")
            link.unlink(missing_ok=True)  # left by an instance that was killed
        self._path = run_dir / "control.sock"
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(str(self._path))
        os.chmod(self._path, 0o600)
        sock.listen(4)
        sock.settimeout(0.2)
        self._sock = sock
        try:
            os.symlink(self._path, link)
        except FileNotFoundError:  # the last other instance removed the empty directory just now
            os.symlink(self._path, control_dir(create=True) / link.name)
        self._link = link
        self._thread = threading.Thread(target=self._serve, name=f"stdpkt-control-{name}", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        assert self._sock is not None
        while not self._closed.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with conn:
                conn.settimeout(60.0)
                try:
                    line = _read_line(conn)
                    reply = self._handle(json.loads(line))
                except StdpktError as exc:
                    reply = {"ok": False, "error": str(exc)}
                except (ValueError, OSError) as exc:
                    reply = {"ok": False, "error": f"bad request: {exc}"}
                except Exception as exc:  # noqa: BLE001 - a request must not kill the server
                    reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
                with contextlib.suppress(OSError):
                    conn.sendall(json.dumps(reply).encode() + b"\n")

    def _handle(self, req: dict[str, Any]) -> dict[str, Any]:
        op = req.get("op")
        if op == "info":
            return {"ok": True, **self.info()}
        if op == "attach":
            return {"ok": True, **self.attach(req)}
        if op == "detach":
            index = req.get("index")
            if not isinstance(index, int):
                raise ConfigError(f"detach: interface index must be a number, got {index!r}")
            self.detach(index)
            return {"ok": True}
        raise ConfigError(f"unknown operation {op!r} (info, attach, detach)")

    def info(self) -> dict[str, Any]:
        inst = self.instance
        ifs = []
        for port in inst.spec.ports:
            ends = next((p.ends for p in self.ports if p.ends.index == port.index), None)
            ifs.append({"index": port.index, "address": str(port.address) if port.address else None,
                        "mtu": port.mtu, "rx": _end(ends, "rx"), "tx": _end(ends, "tx"),
                        "attached": False})
        with self._lock:
            for index, pp in sorted(self.attached.items()):
                ifs.append({"index": index, "address": getattr(pp, "address", None),
                            "mtu": getattr(pp, "mtu", 1500), "rx": pp.ends.rx, "tx": pp.ends.tx,
                            "attached": True})
        state = inst.state.value
        if state == "booting" and inst.ready:
            state = "running"  # stdpkt run watches `ready` and never waits in wait_ready()
        return {"name": inst.name, "pid": os.getpid(), "kernel_pid": inst.pid,
                "state": state, "interfaces": ifs}

    def attach(self, req: dict[str, Any]) -> dict[str, Any]:
        index, rx, tx = req.get("index"), req.get("rx"), req.get("tx")
        address, mtu = req.get("address"), int(req.get("mtu") or 1500)
        if not isinstance(index, int) or not 0 <= index < MAX_PORTS:
            raise ConfigError(f"attach: interface index {index!r} outside 0..{MAX_PORTS - 1}")
        for what, path in (("RX", rx), ("TX", tx)):
            if not isinstance(path, str) or not path.startswith("/"):
                raise ConfigError(f"attach: IF{index} {what} must be an absolute path, got {path!r}")
            if path in ("/dev/stdin", "/dev/stdout"):
                raise ConfigError(f"attach: IF{index} cannot use {path}: the instance's standard "
                                  "streams belong to its pipeline; use named pipes")
        with self._lock:
            if index in self.attached or index < len(self.instance.spec.ports):
                raise ConfigError(f"attach: {self.instance.name} already has eth{index}")
            if not self.instance.ready:
                raise StateError(f"attach: {self.instance.name} is still booting; try again")
            self.instance.wait_ready(30.0)  # ready already: makes the exec channel usable
            sock = hotplug.plug(self.instance, index, mtu=mtu, address=address)
            port = PipePort(PipeEnds(index, str(rx), str(tx)), sock, streams=self._streams,
                            on_end=self._attached_ended)
            port.address = address  # type: ignore[attr-defined]
            port.mtu = mtu  # type: ignore[attr-defined]
            try:
                port.start()
            except BaseException:
                hotplug.unplug(self.instance, index)
                raise
            self.attached[index] = port
        self._say(f"stdpkt: {self.instance.name}: attached eth{index} ({rx} | {tx})")
        return {"index": index, "device": f"eth{index}"}

    def _attached_ended(self, port: PipePort, why: str) -> None:
        self._say(f"stdpkt: {self.instance.name}: {why}; detaching it")
        index = port.ends.index
        threading.Thread(target=self._detach_quietly, args=(index,), daemon=True).start()

    def _detach_quietly(self, index: int) -> None:
        with contextlib.suppress(StdpktError, OSError):
            self.detach(index)

    def detach(self, index: int) -> None:
        with self._lock:
            port = self.attached.pop(index, None)
            if port is None:
                boot = index < len(self.instance.spec.ports)
                raise ConfigError(f"detach: eth{index} of {self.instance.name} "
                                  + ("is a boot-time channel (it ends with the instance)" if boot
                                     else "is not attached"))
            port.stop()
            if self.instance.state.value == "running":
                hotplug.unplug(self.instance, index)
        self._say(f"stdpkt: {self.instance.name}: detached eth{index}")

    def stop(self) -> None:
        """Stop serving, detach every attached channel, remove the socket and its name."""
        self._closed.set()
        if self._sock is not None:
            self._sock.close()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(2.0)
        with self._lock:
            ports = list(self.attached.values())
            self.attached.clear()
        for port in ports:
            port.stop()
        if self._link is not None:
            with contextlib.suppress(OSError):
                if self._link.is_symlink() and os.readlink(self._link) == str(self._path):
                    self._link.unlink()
            if not os.environ.get("STDPKT_CONTROL_DIR"):  # ours, not one the user named
                with contextlib.suppress(OSError):  # the per-user directory goes with its last name
                    self._link.parent.rmdir()
        if self._path is not None:
            self._path.unlink(missing_ok=True)


def _end(ends: PipeEnds | StreamEnds | None, side: str) -> str | None:
    """Where one direction of a boot-time port goes: a pipe path, or a stream's label."""
    if ends is None:
        return None
    if isinstance(ends, StreamEnds):
        return ends.label
    return str(getattr(ends, side))


def start_control(instance: Instance, ports: Sequence[PipePort | StreamPort], *, streams: StdStreams,
                  say: Callable[[str], None]) -> ControlServer | None:
    """The control server of a named ``stdpkt run`` instance, started.  A name another live
    instance holds, or a control directory we cannot use, only costs this instance its new
    channels (said on stderr; it runs on as before: ``--name`` also names the hostname)."""
    server = ControlServer(instance, ports, streams=streams, say=say)
    try:
        server.start()
    except (ConfigError, OSError, StateError) as exc:
        server.stop()
        say(f"stdpkt: {instance.name}: no control socket (stdpkt attach will not find it): {exc}")
        return None
    return server


def _read_line(conn: socket.socket) -> bytes:
    buf = b""
    while not buf.endswith(b"\n"):
        chunk = conn.recv(4096)
        if not chunk:
            break
        buf += chunk
        if len(buf) > _MAX_LINE:
            raise ValueError("request too long")
    return buf


def request(path: str | Path, req: dict[str, Any], *, timeout: float = 60.0) -> dict[str, Any]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(str(path))
        sock.sendall(json.dumps(req).encode() + b"\n")
        line = _read_line(sock)
    if not line:
        raise StateError(f"{path}: no reply")
    return dict(json.loads(line))


def _socket_of(name: str) -> Path:
    path = control_dir() / f"{name}.sock"
    if not (path.is_symlink() or path.exists()):
        known = [i["name"] for i in list_instances()]
        raise ConfigError(f"no running instance named {name!r} (running: "
                          f"{', '.join(known) or 'none'}; start one with stdpkt run --name {name})")
    return path


def call(name: str, req: dict[str, Any]) -> dict[str, Any]:
    """Send ``req`` to instance ``name``; raises StdpktError with its error message."""
    path = _socket_of(name)
    try:
        reply = request(path, req)
    except OSError as exc:
        raise StateError(f"instance {name!r} does not answer on {path}: {exc.strerror or exc}") from None
    if not reply.get("ok"):
        raise ConfigError(f"{name}: {reply.get('error', 'failed')}")
    return reply


def list_instances() -> list[dict[str, Any]]:
    """Every live named instance of this user (stale names are skipped)."""
    out = []
    directory = control_dir()
    for path in sorted(_entries(directory)):
        try:
            reply = request(path, {"op": "info"}, timeout=2.0)
        except (OSError, ValueError):
            continue
        if reply.get("ok"):
            out.append(reply)
    return out


def _entries(directory: Path) -> Iterator[Path]:
    """The names in the control directory; a name whose instance was killed (its run
    directory, and so the symlink's target, is gone) is removed on the way."""
    try:
        found = [p for p in directory.iterdir() if p.name.endswith(".sock")]
    except OSError:
        return
    for path in found:
        if path.is_symlink() and not path.exists():
            path.unlink(missing_ok=True)
            continue
        yield path


def parse_attach(words: list[str], cwd: str | None = None) -> dict[str, Any]:
    """``IF2="p4|p5" IP2=... NETMASK2=... [MTU2=...]`` → an attach request (paths made absolute)."""
    values: dict[str, str] = {}
    for word in words:
        key, eq, value = word.partition("=")
        if not eq:
            raise VariableError(word, "expected VARIABLE=VALUE (IFn, IPn, NETMASKn, MTUn)")
        values[key] = value
    ifs = [k for k in values if k.startswith("IF") and k[2:].isdigit()]
    if len(ifs) != 1:
        raise VariableError("IFn", f"attach takes exactly one IFn=\"RX|TX\", got {ifs or 'none'}")
    n = ifs[0][2:]
    index = int(n)
    for key in values:
        if key not in (f"IF{n}", f"IP{n}", f"NETMASK{n}", f"MTU{n}"):
            raise VariableError(key, f"not an attach variable for interface {n} "
                                f"(IF{n}, IP{n}, NETMASK{n}, MTU{n})")
    parts = values[f"IF{n}"].split("|")
    if len(parts) != 2 or not all(p.strip() for p in parts):
        raise VariableError(f"IF{n}", f"expected 'RX|TX', got {values[f'IF{n}']!r}")
    base = cwd or os.getcwd()
    rx, tx = (p.strip() if p.strip().startswith("/") else os.path.join(base, p.strip()) for p in parts)
    address = None
    if f"IP{n}" in values:
        try:
            ip = ipaddress.IPv4Address(values[f"IP{n}"])
        except ValueError:
            raise VariableError(f"IP{n}", f"{values[f'IP{n}']!r} is not an IPv4 address") from None
        mask = values.get(f"NETMASK{n}", "24")
        try:
            prefix = int(mask) if mask.isdigit() else ipaddress.IPv4Network(f"0.0.0.0/{mask}").prefixlen
            if not 0 <= prefix <= 32:
                raise ValueError
        except ValueError:
            raise VariableError(f"NETMASK{n}", f"{mask!r} is not a prefix length or mask") from None
        address = f"{ip}/{prefix}"
    elif f"NETMASK{n}" in values:
        raise VariableError(f"NETMASK{n}", f"given without IP{n}")
    mtu = 1500
    if f"MTU{n}" in values:
        try:
            mtu = int(values[f"MTU{n}"])
            if not 68 <= mtu <= MAX_MTU:
                raise ValueError
        except ValueError:
            raise VariableError(f"MTU{n}", f"{values[f'MTU{n}']!r} is not an MTU in 68..{MAX_MTU}") from None
    return {"op": "attach", "index": index, "rx": rx, "tx": tx, "address": address, "mtu": mtu}
