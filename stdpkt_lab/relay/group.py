"""Several pumps in one thread: one event loop (C ``relay_run_group``, relay/group.c).

The pumps keep everything of their own (counters, trace, steering, ``stop()``,
``on_exit``); only the thread and its ``poll()`` are shared.
"""

from __future__ import annotations

import threading

from stdpkt_lab.errors import ConfigError, LinkError
from stdpkt_lab.relay.pump import Pump, PumpResult, ffi, lib

__all__ = ["start_together"]


def start_together(pumps: list[Pump], *, name: str = "") -> threading.Thread:
    """Starts ``pumps`` with one thread for all of them: one event loop (C
    ``relay_run_group``) takes a batch from each ready source in turn and sleeps in one
    ``poll()`` over all sources when none is ready, instead of one thread and one
    wake-up per pump.  Each pump keeps its own counters, trace, steering, ``stop()``
    and ``on_exit`` (called in the group's thread).  A failed start stops the pumps
    already opened and re-raises.

    The price: a write to a full destination blocks the whole group until its reader
    makes room (or that pump is stopped), so a stalled reader (a paused instance) stalls
    every pump of the group, where separate threads stall only its own direction."""
    if not 1 <= len(pumps) <= lib.RELAY_GROUP_MAX:
        raise ConfigError(f"start_together takes 1..{lib.RELAY_GROUP_MAX} pumps, not {len(pumps)}")
    opened: list[Pump] = []
    try:
        for p in pumps:
            with p._lock:
                p._open()
                p._solo = False
            opened.append(p)
    except BaseException:
        for p in opened:
            lib.relay_stop(p._r)
        if opened:
            _run_group(opened)  # ends each at once (stopped), closing what it owns
        raise
    thread = threading.Thread(target=_run_group, args=(list(pumps),), daemon=True,
                              name=f"pumps {name or ', '.join(p.name for p in pumps)}")
    for p in pumps:
        p._thread = thread
    thread.start()
    return thread


def _run_group(pumps: list[Pump]) -> None:
    live = list(pumps)
    try:
        while live:
            arr = ffi.new("relay *[]", [p._r for p in live])
            idx = lib.relay_run_group(arr, len(live))  # blocks; cffi releases the GIL
            if idx < 0:
                raise LinkError("relay_run_group refused its relays")
            p = live.pop(idx)
            p._finish(lib.relay_result(p._r))
    finally:
        for p in live:  # only after an unexpected error: never leave a pump unfinished
            lib.relay_stop(p._r)
            p._finish(PumpResult.ERROR.value)
