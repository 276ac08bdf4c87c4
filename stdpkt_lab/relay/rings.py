"""Which port sockets are the host ends of vhost-user ports, so that a pump reading
or writing one uses the guest's queues itself (C: ``relay/vhost_ring.c``).

A vhost-user port's thread moves the guest's frames between its virtqueues and a
socketpair; a pump on the other end copies them again.  A pump whose source is such a
host end instead borrows the port's transmit queue (one copy from guest memory), and
one whose destination is one writes straight into the guest's receive buffers: a Lab
link between two vhost ports then copies a frame twice and crosses one thread, as a
direct socketpair does (docs/links.md, "Performance").  Nothing else changes: the
socket stays the way whenever the queue is not lent (finishing, a pump already
reading it, the guest not ready yet or out of buffers) and carries the end of the
stream.

The engine registers each port's host end (:func:`register`); :class:`~.pump.Pump`
calls :func:`lend` when it starts.  ``STDPKT_VHOST_RING=0`` turns the borrowing off
(the socket path, for comparison in ``bench/goodput.py``).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable

__all__ = ["VARIABLE", "lend", "register", "unregister"]

#: ``0``: pumps never read a vhost-user port's queue themselves
VARIABLE = "STDPKT_VHOST_RING"

_lock = threading.Lock()
# (st_dev, st_ino) of a host end -> the port's lender: (relay pointer, as source) -> lent
_lenders: dict[tuple[int, int], Callable[[object, bool], bool]] = {}


def _key(fd: int) -> tuple[int, int] | None:
    try:
        st = os.fstat(fd)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def register(host_end_fd: int, lender: Callable[[object, bool], bool]) -> tuple[int, int] | None:
    """``host_end_fd`` is a vhost port's host end; returns the key for :func:`unregister`."""
    key = _key(host_end_fd)
    if key is not None:
        with _lock:
            _lenders[key] = lender
    return key


def unregister(key: tuple[int, int] | None) -> None:
    if key is not None:
        with _lock:
            _lenders.pop(key, None)


def lend(relay: object, fd: int, *, source: bool) -> bool:
    """If ``fd`` is a registered host end, lend its port's transmit queue (``source``:
    ``relay``, opened and not yet run, reads from ``fd``) or receive queue (``relay``'s
    default destination is ``fd``).  True when lent."""
    if os.environ.get(VARIABLE, "1") == "0":
        return False
    key = _key(fd)
    with _lock:
        lender = _lenders.get(key) if key is not None else None
    return lender is not None and lender(relay, source)
