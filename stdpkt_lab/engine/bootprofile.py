"""The kernel command line of an instance: the documented profile in ``lkl/boot-profile``
plus the per-instance arguments."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from .paths import lkl_dir

__all__ = ["VectorPort", "profile_args", "module_args", "kernel_args"]


@dataclass(frozen=True)
class VectorPort:
    """One guest interface: an inherited SOCK_SEQPACKET socket, or a host tap device."""

    fd: int = -1
    mtu: int = 1500
    tap: str | None = None
    depth: int = 512  # TX queue depth: 64 (the default) drops frames at MTU 1500
    mac: str | None = None  # fixed MAC (the vector driver's mac= option); None: random
    vhost: str | None = None  # a vhost-user socket path: virtio_uml.device=PATH:1:INDEX instead


@lru_cache(maxsize=4)
def _read_profile(path: Path) -> tuple[str, ...]:
    args: list[str] = []
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            args.append(line)
    return tuple(args)


def profile_args(profile: Path | None = None) -> tuple[str, ...]:
    """Arguments every instance boots with (comments stripped)."""
    return _read_profile(profile or lkl_dir() / "boot-profile")


def module_args(*, ipv6: bool) -> list[str]:
    """Options for modules loaded on demand (modprobe reads them from /proc/cmdline)."""
    return ["nf_conntrack.acct=1", *(() if ipv6 else ("ipv6.disable_ipv6=1",))]


def kernel_args(
    *,
    mem_mb: int,
    init: str,
    console: tuple[int, int],
    agent: tuple[int, int] | None,
    ports: Sequence[VectorPort],
    uml_dir: str,
    umid: str,
    extra: Sequence[str] = (),
    profile: Path | None = None,
    ipv6: bool = False,
) -> list[str]:
    """The full kernel argument list (without the kernel binary itself).

    ``ipv6=False`` boots with ``ipv6.disable_ipv6=1``: IPv6 is a module in Debian's UML
    kernel and modprobe applies ``module.param`` options from the command line when it
    loads, so interfaces get no IPv6 addresses (no MLD or neighbour discovery on the
    links) while AF_INET6 sockets still open (a server listening on ``[::]`` works).
    ``sysctl net.ipv6.conf.all.disable_ipv6=0`` turns it back on.  Connection-tracking
    accounting (``nf_conntrack.acct=1``: packets/bytes per connection) is always on.
    """
    args = [f"mem={mem_mb}M", *profile_args(profile), f"init={init}", *module_args(ipv6=ipv6)]
    args.append(f"con0=fd:{console[0]},fd:{console[1]}")
    if agent is not None:
        args.append(f"con1=fd:{agent[0]},fd:{agent[1]}")
    for index, port in enumerate(ports):
        if port.vhost is not None:  # virtio-net over vhost-user (engine/vhost.py)
            args.append(f"virtio_uml.device={port.vhost}:1:{index}")
            continue
        if port.tap is not None:
            opts = f"transport=tap,ifname={port.tap},depth={port.depth}"
        else:
            opts = f"transport=fd,fd={port.fd},depth={port.depth}"
        if port.mtu != 1500:
            opts += f",mtu={port.mtu}"
        if port.mac is not None:
            opts += f",mac={port.mac}"
        args.append(f"vec{index}:{opts}")
    args += [f"uml_dir={uml_dir}", f"umid={umid}", *extra]
    return args
