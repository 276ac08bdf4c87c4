"""vhost-user ports: a guest's virtio-net device served by a thread of ours.

A port given ``PortSpec(vhost=True)`` is booted as ``virtio_uml.device=PATH:1:INDEX``:
the guest kernel connects to ``PATH`` (a socket in the instance's run directory)
at boot, and :class:`VhostPort` — C in ``stdpkt_lab/relay/vhost.c`` — answers the
vhost-user protocol, maps the guest's memory and moves frames between its two
virtqueues and a SOCK_SEQPACKET socket.  The other end of that socket is the
port's host end, exactly as for a vector port, so relays, links, traces,
steering and re-wiring need not know which kind a port is.

What it changes: no host system call per frame inside the guest (the vector
driver makes one ``sendmmsg``/``recvmmsg`` per batch from the kernel; virtio
writes descriptors into its own memory and kicks an eventfd), and with
``offload`` (the default) checksum offload and TSO: at MTU 1500 the guest's
TCP hands over 64 KiB super-frames, which cross relays and pipes whole.  On a
pipe such a frame is a pcap record larger than the MTU whose TCP checksum
holds only the pseudo-header sum (``tcpdump -v`` says "incorrect", as it does
on a host with offload; tshark and scapy read it).  The receiving port
re-creates the virtio-net header from the frame (so it does not check a
TCP/UDP checksum on the way in: like a NIC between two VMs on one host).
A peer that cannot take such frames — a vector port — needs
:meth:`VhostPort.set_finish`: the port then completes checksums and cuts
super-frames before they leave.

A pump on the port's host end (a Lab link, `stdpkt run`'s pipes) uses the queues
itself when it can: it reads the guest's transmit queue and writes into its receive
buffers, so the port's thread and the socketpair drop out of the way
(``relay/rings.py``, C in ``relay/vhost_ring.c``; ``STDPKT_VHOST_RING=0`` turns it off;
:attr:`VhostStats.tx_relayed` / ``rx_relayed`` count the frames that went so).
"""

from __future__ import annotations

import os
import secrets
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from ..errors import InstanceError
from ..relay import rings

__all__ = ["VhostPort", "VhostStats", "random_mac"]

#: virtio feature bits reported in :attr:`VhostStats.features`
FEATURE_NAMES = {0: "csum", 1: "guest_csum", 3: "mtu", 5: "mac", 7: "guest_tso4", 8: "guest_tso6",
                 9: "guest_ecn", 11: "host_tso4", 12: "host_tso6", 15: "mrg_rxbuf",
                 28: "indirect_desc", 30: "protocol_features", 32: "version_1"}


#: a unix socket's path holds fewer bytes (struct sockaddr_un's sun_path)
_SUN_PATH = 108

#: ``1``: every vhost port finishes its frames (plain frames on every pipe).
FINISH_VARIABLE = "STDPKT_VHOST_FINISH"


def random_mac() -> str:
    """A locally administered unicast MAC address."""
    b = bytearray(secrets.token_bytes(6))
    b[0] = (b[0] & 0xFC) | 0x02
    return ":".join(f"{x:02x}" for x in b)


@dataclass(frozen=True)
class VhostStats:
    """Counters of one vhost-user port (``tx``: guest to host, ``rx``: host to guest)."""

    tx_frames: int
    tx_bytes: int
    tx_drops: int
    tx_gso: int
    rx_frames: int
    rx_bytes: int
    rx_drops: int
    rx_gso: int
    features: frozenset[str]
    connected: bool
    ready: bool
    #: of ``tx_frames``: read from the transmit queue by a pump itself (relay/rings.py)
    tx_relayed: int = 0
    #: of ``rx_frames``: written into the receive queue by a pump itself
    rx_relayed: int = 0
    #: of ``tx_relayed``: spliced into a pipe whose reader copies (relay/vhost_splice.c)
    tx_spliced: int = 0


class VhostPort:
    """The back end of one guest's virtio-net device (one thread, started at once).

    ``data`` is the port's side of its socketpair (the port keeps a duplicate; the
    caller closes its own).  :meth:`close` stops the thread and releases the guest's
    memory; the listening socket at ``path`` is removed when the guest connects.
    """

    def __init__(self, path: Path, data: socket.socket | int, *, mtu: int, mac: str,
                 offload: bool = True, host_end: socket.socket | None = None) -> None:
        """``host_end``: the other end of ``data``'s socketpair, if known: a pump reading
        it then reads the guest's transmit queue itself (relay/rings.py)."""
        from ..relay._relay import ffi, lib

        self._ffi, self._lib = ffi, lib
        self.path = Path(path)
        self.mtu = mtu
        self.mac = mac
        self.offload = offload
        self._lock = threading.Lock()
        self._ring_key: tuple[int, int] | None = None
        macb = bytes(int(x, 16) for x in mac.split(":"))
        fd = data if isinstance(data, int) else data.fileno()
        self._dirfd: int | None = None
        bind_path = os.fsencode(str(self.path))
        if len(bind_path) >= _SUN_PATH:  # bind through a descriptor of its directory
            self._dirfd = os.open(self.path.parent, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
            bind_path = os.fsencode(f"/proc/self/fd/{self._dirfd}/{self.path.name}")
        v = lib.relay_vhost_new(bind_path, fd, mtu, macb, int(offload))
        if v == ffi.NULL:
            err = ffi.errno
            self._close_dir()
            raise InstanceError(f"vhost-user port at {self.path}: {os.strerror(err) if err else 'bad arguments'}")
        self._v = v
        rc = lib.relay_vhost_start(v)
        if rc < 0:
            lib.relay_vhost_free(v)
            self._v = None
            self._close_dir()
            raise InstanceError(f"vhost-user port at {self.path}: cannot start its thread ({os.strerror(-rc)})")
        if os.environ.get(FINISH_VARIABLE) == "1":  # e.g. `stdpkt run` feeding a vector port
            self.set_finish(True)
        if host_end is not None:
            self._ring_key = rings.register(host_end.fileno(), self._lend)

    def _lend(self, relay: object, source: bool) -> bool:
        """Lets ``relay`` (an opened C relay on the host end) read the transmit queue
        (``source``) or write into the receive queue; it holds a reference on the
        port's memory until it ends."""
        with self._lock:
            if self._v is None:
                return False
            lend = self._lib.relay_set_vhost_src if source else self._lib.relay_set_vhost_dst
            return lend(relay, self._v) == 0

    def set_finish(self, on: bool) -> None:
        """Complete checksums and cut TCP super-frames before they leave the port."""
        with self._lock:
            if self._v is not None:
                self._lib.relay_vhost_set_finish(self._v, int(on))

    def detach(self, timeout: float = 1.0) -> bool:
        """Make the guest remove its device (before its kernel is stopped: UML 6.1
        panics removing a connected virtio_uml device on its way out).  True once the
        guest has let go of the port within ``timeout``."""
        with self._lock:
            if self._v is None:
                return True
            self._lib.relay_vhost_detach(self._v)
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if not self.stats.connected:
                return True
            time.sleep(0.005)
        return False

    @property
    def stats(self) -> VhostStats:
        with self._lock:
            if self._v is None:
                raise InstanceError(f"vhost-user port at {self.path} is closed")
            s = self._ffi.new("relay_vhost_stats *")
            self._lib.relay_vhost_get_stats(self._v, s)
        names = frozenset(n for bit, n in FEATURE_NAMES.items() if s.features >> bit & 1)
        return VhostStats(s.tx_frames, s.tx_bytes, s.tx_drops, s.tx_gso, s.rx_frames, s.rx_bytes,
                          s.rx_drops, s.rx_gso, names, bool(s.connected), bool(s.ready),
                          s.tx_relayed, s.rx_relayed, s.tx_spliced)

    @property
    def last_error(self) -> str:
        with self._lock:
            if self._v is None:
                return ""
            buf = self._ffi.new("char[]", 512)
            n = self._lib.relay_vhost_last_error(self._v, buf, 512)
            return self._ffi.string(buf, n).decode(errors="replace")

    def close(self) -> None:
        rings.unregister(self._ring_key)
        with self._lock:
            v, self._v = self._v, None
        if v is not None:
            self._lib.relay_vhost_free(v)
        self._close_dir()

    def _close_dir(self) -> None:
        dirfd, self._dirfd = self._dirfd, None
        if dirfd is not None:
            os.close(dirfd)

    def __repr__(self) -> str:
        return f"VhostPort({str(self.path)!r}, mtu={self.mtu}, offload={self.offload})"
