"""What one instance is, as plain data: its ports, addresses, script. Nothing here starts."""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import VariableError

__all__ = ["PortSpec", "InstanceSpec", "MAX_PORTS", "MAX_MTU", "PORT_KINDS", "DEFAULT_PORT_KIND",
           "default_port_kind", "pool_mismatch", "port_kind", "port_kind_name"]

MAX_PORTS = 8
#: Largest MTU the UML vector driver accepts (65535 is silently ignored: uml-facts.md).
MAX_MTU = 65534
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,39}$")
_MAC = re.compile(r"^[0-9A-Fa-f]{2}(:[0-9A-Fa-f]{2}){5}$")


#: Port kinds: (vhost, offload).  ``vector``: UML's vector driver on a socketpair;
#: ``vhost``: virtio-net over vhost-user with checksum offload and TSO; ``vhost-plain``:
#: virtio-net without offload (plain frames everywhere).
PORT_KINDS: dict[str, tuple[bool, bool]] = {
    "vector": (False, True), "vhost": (True, True), "vhost-plain": (True, False)}
#: The variable that sets the kind of every port, for ``stdpkt run`` and a Lab alike.
PORTS_VARIABLE = "STDPKT_PORTS"
#: The kind when nothing sets one: virtio-net with offload (3.5x UML's vector driver
#: at MTU 1500 through a Lab link; README, "vhost-user ports").
DEFAULT_PORT_KIND = "vhost"


#: TCP buffer maxima in the guest: ``host`` (default) gives every guest what Linux gives a
#: host with 1 GiB or more (tcp_rmem 6 MiB, tcp_wmem 4 MiB); ``kernel`` keeps what the
#: kernel scales to the guest's memory (0.9 MB at 128 MB, which caps a flow's window);
#: ``RMEM,WMEM`` sets the two maxima in bytes.
TCP_BUFFERS_VARIABLE = "STDPKT_TCP_BUFFERS"
TCP_BUFFERS = ("host", "kernel")
_TCP_LIMITS = (65536, 1 << 28)


def tcp_buffers() -> str:
    """``$STDPKT_TCP_BUFFERS``, checked (VariableError naming it otherwise)."""
    value = (os.environ.get(TCP_BUFFERS_VARIABLE) or "host").strip()
    if value in TCP_BUFFERS:
        return value
    parts = value.split(",")
    lo, hi = _TCP_LIMITS
    if len(parts) == 2 and all(p.strip().isdigit() and lo <= int(p) <= hi for p in parts):
        return ",".join(str(int(p)) for p in parts)
    raise VariableError(TCP_BUFFERS_VARIABLE, f"unknown value {value!r} (one of {', '.join(TCP_BUFFERS)}, "
                                              f"or RMEM,WMEM in bytes, each {lo}..{hi})")


def default_port_kind() -> str:
    """The kind of a port nothing else names: ``$STDPKT_PORTS``, else :data:`DEFAULT_PORT_KIND`."""
    return os.environ.get(PORTS_VARIABLE) or DEFAULT_PORT_KIND


def port_kind(value: object | None, where: str = PORTS_VARIABLE) -> tuple[bool, bool]:
    """``(vhost, offload)`` for a port kind name; None: ``$STDPKT_PORTS``, else
    :data:`DEFAULT_PORT_KIND`."""
    if value is None:
        value = default_port_kind()
    if not isinstance(value, str) or value not in PORT_KINDS:
        raise ValueError(f"{where}: unknown port kind {value!r} (one of {', '.join(PORT_KINDS)})")
    return PORT_KINDS[value]


@dataclass(frozen=True)
class PortSpec:
    """Interface ``eth<index>`` of an instance.

    By default the port is a socketpair whose host end a relay serves; with
    ``tap`` the kernel attaches straight to that host tap device (root only);
    with ``fd`` it attaches to a socket the caller made (one end of a
    SOCK_SEQPACKET socketpair, say, whose other end is another instance's
    ``fd`` port: two kernels joined with no relay). The instance passes a
    duplicate of ``fd`` to the kernel; the caller keeps and closes its own.
    Neither kind has a host end: :meth:`Instance.port` refuses them.
    """

    index: int
    address: ipaddress.IPv4Interface | None = None
    mtu: int = 1500
    tap: str | None = None
    fd: int | None = None
    #: Fixed MAC address (``"02:00:00:00:00:01"``); None lets the kernel choose one.
    mac: str | None = None
    #: A virtio-net device served over vhost-user (:mod:`stdpkt_lab.engine.vhost`)
    #: instead of UML's vector driver; its host end is the same kind of socket.
    vhost: bool = False
    #: With ``vhost``: offer checksum offload and TSO (TCP super-frames of up to 64 KiB
    #: cross links and pipes whole; README, "The data path").
    offload: bool = True

    def __post_init__(self) -> None:
        if not 0 <= self.index < MAX_PORTS:
            raise ValueError(f"port index {self.index} outside 0..{MAX_PORTS - 1}")
        if not 68 <= self.mtu <= MAX_MTU:
            raise ValueError(f"MTU {self.mtu} outside 68..{MAX_MTU}")
        if self.tap is not None and self.fd is not None:
            raise ValueError(f"port {self.index}: tap and fd exclude each other")
        if self.vhost and self.tap is not None:
            raise ValueError(f"port {self.index}: a vhost port is not a tap device")
        if self.mac is not None and not _MAC.match(self.mac):
            raise ValueError(f"port {self.index}: MAC {self.mac!r} is not six hex bytes a:b:c:d:e:f")

    @property
    def device(self) -> str:
        return f"eth{self.index}"


@dataclass(frozen=True)
class InstanceSpec:
    """Everything needed to boot one network-function instance.

    ``script`` is a host path run with ``/bin/sh`` inside the guest after the
    interfaces are up; ``setup`` is shell text run before it (what an NF kind
    configures); ``env`` is exported to both. ``routes`` are ``ip route``
    arguments (``"10.1.0.0/24 via 10.0.0.1"``); ``hosts`` the guest's /etc/hosts.
    ``ipv6`` (off by default) gives the interfaces IPv6 (link-local addresses, neighbour
    discovery); off, an IPv4 chain's links carry only its own traffic.
    """

    name: str
    ports: tuple[PortSpec, ...] = ()
    gateway: ipaddress.IPv4Address | None = None
    routes: tuple[str, ...] = ()
    script: Path | None = None
    setup: str | None = None
    oneshot: bool = False
    env: Mapping[str, str] = field(default_factory=dict)
    hosts: str | None = None
    cwd: str | None = None
    mem_mb: int = 128
    agent: bool = True
    ipv6: bool = False

    def __post_init__(self) -> None:
        if not _NAME.match(self.name):
            raise ValueError(
                f"instance name {self.name!r}: use letters, digits, '_', '.', '-' (at most 40)"
            )
        if [p.index for p in self.ports] != list(range(len(self.ports))):
            raise ValueError(f"instance {self.name!r}: ports must be numbered 0..n-1 in order")
        if not 24 <= self.mem_mb <= 4096:
            raise ValueError(f"instance {self.name!r}: mem_mb {self.mem_mb} outside 24..4096")


def pool_mismatch(blank: InstanceSpec, spec: InstanceSpec) -> str:
    """Why ``spec`` cannot take a pooled instance booted as ``blank`` ('' when it can)."""
    if len(spec.ports) != len(blank.ports):
        return f"{len(spec.ports)} ports, the pool's instances have {len(blank.ports)}"
    for mine, theirs in zip(spec.ports, blank.ports, strict=True):
        if mine.tap is not None or mine.fd is not None:
            return f"{mine.device} is a tap or a caller's socket (pooled ports are socketpairs)"
        if mine.mac is not None:
            return f"{mine.device} has a fixed MAC (pooled ports got theirs at boot)"
        if mine.mtu != theirs.mtu:
            return f"{mine.device} MTU {mine.mtu}, the pool's is {theirs.mtu}"
        kind, pooled = port_kind_name(mine), port_kind_name(theirs)
        if kind != pooled:
            return f"{mine.device} is a {kind} port, the pool's are {pooled}"
    if spec.mem_mb != blank.mem_mb:
        return f"mem_mb {spec.mem_mb}, the pool's is {blank.mem_mb}"
    if spec.agent != blank.agent:
        return "agent setting differs from the pool's"
    return ""


def port_kind_name(port: PortSpec) -> str:
    """The :data:`PORT_KINDS` name of ``port`` (a vector port is one whatever its offload)."""
    if not port.vhost:
        return "vector"
    return next(name for name, kind in PORT_KINDS.items() if kind == (True, port.offload))
