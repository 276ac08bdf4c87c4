"""Hot-plugged ports: add an interface ``eth<N>`` to a *running* instance, or take it away.

The host listens on a SOCK_SEQPACKET unix socket in the instance's run
directory; the mconsole command ``config vecN:transport=bess,dst=PATH``
makes the guest kernel create ``vecN`` (UML's vector driver), which connects
to it when the interface comes up; the agent renames ``vecN`` to ``ethN``,
addresses it and brings it up.  The accepted connection becomes the port's
host end (``instance.port(N)``), owned by the instance like a boot-time port
(closed when it stops).  ``unplug`` removes the device (mconsole ``remove``)
and closes the host end.  uml-facts.md: virtio devices cannot be hot-plugged,
the vector driver can; never set an ``fd``/``bess`` port down in the guest.
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

from ..errors import InstanceError, StateError
from .instance import Instance
from .port_ends import grow_socket_buffers
from .spec import MAX_MTU, MAX_PORTS

__all__ = ["plug", "unplug", "is_plugged", "plugged_ports"]

_ATTR = "_stdpkt_hotplugged"


def plugged_ports(inst: Instance) -> set[int]:
    return set(getattr(inst, _ATTR, set()))


def is_plugged(inst: Instance, index: int) -> bool:
    return index in plugged_ports(inst)


def _listener_path(inst: Instance, index: int) -> Path:
    assert inst.run_dir is not None
    return inst.run_dir / f"hotplug-eth{index}.sock"


def plug(inst: Instance, index: int, *, mtu: int = 1500, address: str | None = None,
         timeout: float = 20.0) -> socket.socket:
    """Add ``eth<index>`` to running ``inst`` (addressed ``address`` = "a.b.c.d/len" if
    given); returns its host end.  Gaps are allowed (eth2 on an instance with only eth0)."""
    if inst.state.value != "running":
        raise StateError(f"instance {inst.name!r} is {inst.state.value}: hot-plug needs a running one")
    ports = inst._host_ports  # noqa: SLF001 - the instance owns its ports; we add one
    if not 0 <= index < MAX_PORTS:
        raise StateError(f"instance {inst.name!r}: port index {index} outside 0..{MAX_PORTS - 1}")
    if index < len(ports) and ports[index] is not None:
        raise StateError(f"instance {inst.name!r} already has eth{index}")
    if not 68 <= mtu <= MAX_MTU:
        raise StateError(f"MTU {mtu} outside 68..{MAX_MTU}")
    path = _listener_path(inst, index)
    if len(str(path)) > 107:
        raise StateError(f"hot-plug socket path too long for a unix socket: {path}")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    conn: socket.socket | None = None
    try:
        if path.exists():
            path.unlink()
        listener.bind(str(path))
        os.chmod(path, 0o777)  # the kernel may run as another user (confinement 'uid')
        listener.listen(1)
        listener.settimeout(timeout)
        reply = inst.mconsole.request(
            f"config vec{index}:transport=bess,dst={path},mtu={mtu},depth=512", timeout=5.0)
        if reply.strip() and "ok" not in reply.lower() and reply.strip() != "":
            raise InstanceError(f"mconsole config vec{index}: {reply.strip()}")
        vec, eth = f"vec{index}", f"eth{index}"
        cmds = [f"i=0; while ! ip link show {vec} >/dev/null 2>&1; do i=$((i+1)); "
                f"[ $i -gt 200 ] && {{ echo no {vec} >&2; exit 1; }}; sleep 0.05; done",
                f"ip link set {vec} name {eth}",
                f"echo 1 > /proc/sys/net/ipv4/conf/{eth}/arp_notify 2>/dev/null || true"]
        if address:
            cmds.append(f"ip addr add {address} dev {eth}")
        cmds.append(f"ip link set {eth} up")
        result = inst.exec(" && ".join(cmds), timeout=timeout)
        if result.returncode != 0:
            raise InstanceError(f"{inst.name}: configuring hot-plugged {eth} failed: "
                                f"{(result.stderr or result.stdout).strip()}")
        deadline = time.monotonic() + timeout
        while conn is None:
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                if time.monotonic() > deadline:
                    raise InstanceError(f"{inst.name}: {vec} did not connect to {path} "
                                        f"within {timeout:.0f} s") from None
        conn.setblocking(True)
        grow_socket_buffers(conn)
    except BaseException:
        if conn is not None:
            conn.close()
        _remove_device(inst, index)
        raise
    finally:
        listener.close()
        path.unlink(missing_ok=True)
    while len(ports) <= index:
        ports.append(None)
    ports[index] = conn
    setattr(inst, _ATTR, plugged_ports(inst) | {index})
    return conn


def _remove_device(inst: Instance, index: int) -> None:
    try:
        inst.mconsole.request(f"remove vec{index}", timeout=5.0)
    except Exception:  # noqa: BLE001 - best effort on a failing path
        pass


def unplug(inst: Instance, index: int) -> None:
    """Remove hot-plugged ``eth<index>`` from ``inst`` and close its host end."""
    if not is_plugged(inst, index):
        raise StateError(f"instance {inst.name!r}: eth{index} was not hot-plugged "
                         "(boot-time ports stay until the instance stops)")
    ports = inst._host_ports  # noqa: SLF001
    sock = ports[index]
    if inst.state.value == "running":
        try:
            inst.exec(f"ip link set eth{index} down 2>/dev/null; true", timeout=10)
        except Exception:  # noqa: BLE001 - the device goes anyway
            pass
        _remove_device(inst, index)
    if sock is not None:
        sock.close()
    ports[index] = None
    while ports and ports[-1] is None and len(ports) > len(inst.spec.ports):
        ports.pop()
    setattr(inst, _ATTR, plugged_ports(inst) - {index})
