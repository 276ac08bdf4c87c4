"""The two ends of an instance's ports, made before its kernel starts.

Each port of a spec becomes what the kernel is told at boot (a
:class:`~stdpkt_lab.engine.bootprofile.VectorPort`) and the host's end of it:

* a tap: the kernel opens it itself; no host end;
* the caller's socket with ``vhost``: our vhost-user thread serves the guest on it;
* the caller's socket: the kernel gets a duplicate;
* otherwise a SOCK_SEQPACKET socketpair whose host end relays connect; with ``vhost``
  our thread serves the guest's virtio-net on the other end (engine/vhost.py).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Sequence
from pathlib import Path

from . import bootprofile
from .spec import PortSpec
from .vhost import VhostPort, random_mac

__all__ = ["PORT_SOCKET_BUFFER", "grow_socket_buffers", "open_port_ends"]


def open_port_ends(
    specs: Sequence[PortSpec],
    run_dir: Path,
    *,
    host_ends: list[socket.socket | None],
    vhost: dict[int, VhostPort],
    guest_fds: list[int],
) -> list[bootprofile.VectorPort]:
    """What the kernel is told of each port.  Each end goes into the caller's containers
    the moment it exists (``host_ends``: ours, None where there is none; ``vhost``: the
    ports our threads serve; ``guest_fds``: descriptors for the kernel to inherit), so
    the caller's teardown closes it if a later port fails."""
    ports: list[bootprofile.VectorPort] = []
    for port in specs:
        if port.tap is not None:
            ports.append(bootprofile.VectorPort(mtu=port.mtu, tap=port.tap, mac=port.mac))
            host_ends.append(None)
            continue
        if port.fd is not None and port.vhost:  # our thread serves the caller's socket
            path = run_dir / f"vhost{port.index}.sock"
            vhost[port.index] = VhostPort(path, port.fd, mtu=port.mtu, mac=port.mac or random_mac(),
                                          offload=port.offload)
            ports.append(bootprofile.VectorPort(mtu=port.mtu, vhost=path.name))
            host_ends.append(None)
            continue
        if port.fd is not None:  # the caller's socket: the kernel gets a duplicate
            guest_fds.append(os.dup(port.fd))
            ports.append(bootprofile.VectorPort(fd=guest_fds[-1], mtu=port.mtu, mac=port.mac))
            host_ends.append(None)
            continue
        host_end, guest_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        grow_socket_buffers(host_end)
        grow_socket_buffers(guest_end)
        host_ends.append(host_end)
        if port.vhost:  # our thread serves the guest's virtio-net on guest_end
            path = run_dir / f"vhost{port.index}.sock"
            try:
                vhost[port.index] = VhostPort(path, guest_end, mtu=port.mtu,
                                              mac=port.mac or random_mac(), offload=port.offload,
                                              host_end=host_end)
            finally:
                guest_end.close()
            ports.append(bootprofile.VectorPort(mtu=port.mtu, vhost=path.name))
            continue
        guest_fds.append(guest_end.detach())
        ports.append(bootprofile.VectorPort(fd=guest_fds[-1], mtu=port.mtu, mac=port.mac))
    return ports


#: Send/receive buffer asked for on each end of a port's socketpair. The kernel's default
#: (212992 bytes) holds ~90 frames of MTU 1500: a guest or a relay writing a burst finds
#: it full and waits for a write-ready signal. 4 MiB: MTU-1500 goodput through a 4-instance
#: NAT/firewall chain ~0.3 -> ~0.6 Gbit/s (relays), ~0.5 -> ~0.9 (direct); see bench/.
PORT_SOCKET_BUFFER = 4 << 20
_SO_SNDBUFFORCE = getattr(socket, "SO_SNDBUFFORCE", 32)
_SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)


def grow_socket_buffers(sock: socket.socket, size: int = PORT_SOCKET_BUFFER) -> None:
    """Raise a port socket's buffers to ``size``: beyond net.core.[rw]mem_max when allowed
    (CAP_NET_ADMIN), else as far as those limits go (stock Debian: 212992, no gain)."""
    for force, plain in ((_SO_SNDBUFFORCE, socket.SO_SNDBUF), (_SO_RCVBUFFORCE, socket.SO_RCVBUF)):
        try:
            sock.setsockopt(socket.SOL_SOCKET, force, size)
        except OSError:
            sock.setsockopt(socket.SOL_SOCKET, plain, size)
