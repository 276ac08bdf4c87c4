"""Which core an instance runs on.

A UML instance is one kernel process plus one host process per guest process;
every guest system call is a ptrace stop that hands the instance's one virtual
CPU from the guest process to the kernel and back.  When the host scheduler
puts the two on different cores, each hand-over is a cross-core wake-up, and
which way it goes is decided anew at every boot: that was the "bimodal" 64 KiB
figure of issue 10 (1.6–6.4 Gbit/s between two instances left to the
scheduler, 8.4–8.7 with each instance on a core of its own, same run).

By default (``STDPKT_CPUS=auto``) every instance is pinned, its kernel and all
the processes it starts, to one core: the least used of the cores this process
may run on, counted over the whole machine (every Lab, ``stdpkt run`` and Dask
worker of every user).  It was opt-in while a guest's agent channel sometimes
went silent in CI with it on; that was a pooled agent whose program was
rewritten under it (guest_files.py, ``copy_into``), seen unpinned as well.

Counting needs no files: the launcher of each pinned instance holds a shared
``flock`` on the core's sysfs directory (``/sys/devices/system/cpu/cpuN``), and
``/proc/locks`` lists those locks.  The host kernel drops a lock when its
holder ends, however it ends, so a killed instance is never counted.  A choice
is made under an exclusive ``flock`` of ``/sys/devices/system/cpu``, held until
the new instance's lock is taken, so two ``stdpkt run`` of one pipeline that
start together get different cores.

``$STDPKT_CPUS``: ``auto`` (the default: every core this process may use),
``off`` (the host scheduler places everything), or a list of cores such as ``0,2-3``.
With one usable core nothing is pinned.
"""

from __future__ import annotations

import fcntl
import os
import threading
import time
from dataclasses import dataclass

from ..errors import VariableError

__all__ = ["CPUS_VARIABLE", "CoreClaim", "allowed_cores", "claim_core", "cores_in_use", "join_core"]

CPUS_VARIABLE = "STDPKT_CPUS"
DEFAULT = "auto"  # see the module's doc
_SYSFS = "/sys/devices/system/cpu"
_LOCKS = "/proc/locks"
_EXCLUSIVE_WAIT = 1.0  # seconds
_local_lock = threading.Lock()
_local_counts: dict[int, int] = {}  # when flock or /proc/locks is unavailable


@dataclass
class CoreClaim:
    """A core chosen for one instance; ``fd`` (or -1) holds its shared lock until passed on."""

    cpu: int
    fd: int = -1

    def close(self) -> None:
        """Drop this process's copy of the lock (the launcher keeps its own)."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _parse_list(value: str) -> set[int]:
    cores: set[int] = set()
    for part in value.split(","):
        part = part.strip()
        lo, sep, hi = part.partition("-")
        if not lo.isdigit() or (sep and not hi.isdigit()):
            raise VariableError(CPUS_VARIABLE, f"{value!r}: {part!r} is not a core or a range "
                                               "(auto, off, or a list like 0,2-3)")
        first, last = int(lo), int(hi) if sep else int(lo)
        if last < first or last - first > 4096:
            raise VariableError(CPUS_VARIABLE, f"{value!r}: bad range {part!r}")
        cores.update(range(first, last + 1))
    return cores


def allowed_cores() -> list[int]:
    """The cores instances may be pinned to; empty: do not pin (``off``, or only one core)."""
    value = (os.environ.get(CPUS_VARIABLE) or DEFAULT).strip().lower()
    if value == "off":
        return []
    mine = os.sched_getaffinity(0)
    if value == "auto":
        cores = set(mine)
    else:
        cores = _parse_list(value)
        outside = sorted(cores - mine)
        if outside:
            raise VariableError(CPUS_VARIABLE, f"{value!r}: core(s) {', '.join(map(str, outside))} "
                                               f"are not among this process's ({_ranges(mine)})")
    return sorted(cores) if len(cores) > 1 else []


def _ranges(cores: set[int]) -> str:
    return ",".join(map(str, sorted(cores)))


def _lock_key(fd: int) -> str:
    st = os.fstat(fd)
    return f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"


def cores_in_use() -> dict[int, int]:
    """Pinned instances per core, machine-wide (read from ``/proc/locks``)."""
    keys: dict[str, int] = {}
    for cpu in range(os.cpu_count() or 1):
        try:
            fd = os.open(f"{_SYSFS}/cpu{cpu}", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            keys[_lock_key(fd)] = cpu
        finally:
            os.close(fd)
    counts = {cpu: 0 for cpu in keys.values()}
    with open(_LOCKS, encoding="ascii", errors="replace") as f:
        for line in f:
            fields = line.split()
            # "1: FLOCK  ADVISORY  READ 2760 00:16:3591 0 EOF" (a blocked waiter has "->")
            if len(fields) >= 6 and fields[1] == "FLOCK" and fields[3] == "READ" and "->" not in fields:
                holder = keys.get(fields[5])
                if holder is not None:
                    counts[holder] += 1
    return counts


def claim_core() -> CoreClaim | None:
    """The least used allowed core, its shared lock taken; None when instances are not pinned.

    Pass ``claim.fd`` to the instance's launcher (``--cpu N --cpu-lock FD``), then
    ``claim.close()``.
    """
    cores = allowed_cores()
    if not cores:
        return None
    try:
        return _claim_machine_wide(cores)
    except OSError:  # no sysfs, no flock there, no /proc/locks: count this process's only
        with _local_lock:
            cpu = min(cores, key=lambda c: (_local_counts.get(c, 0), c))
            _local_counts[cpu] = _local_counts.get(cpu, 0) + 1
        return CoreClaim(cpu)


def _claim_machine_wide(cores: list[int]) -> CoreClaim:
    top = os.open(_SYSFS, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        # Never wait long: any user of the machine can take these locks, and one who
        # holds them must not hang everybody's boots. Past the deadline the choice is
        # made without the exclusive lock (two concurrent starts may then share a core).
        deadline = time.monotonic() + _EXCLUSIVE_WAIT
        while True:
            try:
                fcntl.flock(top, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    break
                time.sleep(0.002)
        used = cores_in_use()
        cpu = min(cores, key=lambda c: (used.get(c, 0), c))
        fd = os.open(f"{_SYSFS}/cpu{cpu}", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)  # held exclusively by someone: fall back
        except OSError:
            os.close(fd)
            raise
        return CoreClaim(cpu, fd)
    finally:
        os.close(top)  # releases the exclusive lock


def join_core(cpu: int | None) -> None:
    """Run every thread of this process (and those it starts later) on ``cpu`` too.

    ``stdpkt run`` does this with its instance's core: its relays then hand frames
    to and from their kernel without a cross-core wake-up (bench/goodput.py
    ``pipe+vhost+pin``: 6.99 / 10.88 Gbit/s against 6.36 / 9.99 with the relays left
    to the scheduler, 64 KiB / 1 MiB writes).  A Lab's pumps serve many instances
    and stay where the scheduler puts them.
    """
    if cpu is None:
        return
    for tid in os.listdir("/proc/self/task"):
        try:
            os.sched_setaffinity(int(tid), {cpu})
        except OSError:  # a thread that just ended
            pass
