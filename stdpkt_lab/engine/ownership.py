"""Who owns a run directory, and sweeping the ones whose owners are gone.

Every run directory ``D`` (``/dev/shm/stdpkt-NAME-xxxx``, a Lab's
``stdpkt-lab-xxxx`` and each instance directory inside it) has two sibling
files that the guest cannot reach (Landlock lets a kernel write only beneath
its own ``D``; the ``uid`` mode hands ``D`` alone to ``nobody``):

* ``D.owner`` — one line per owner, ``PID STARTTIME`` (field 22 of
  ``/proc/PID/stat``, so a recycled pid is not mistaken for the owner). It is
  created *before* ``D`` (``O_EXCL``), so no instant exists where ``D`` has no
  owner. The creating process is the first owner; an instance adds its
  launcher (``stdpkt-launch``), which removes ``D`` itself when the creator dies.
* ``D.created`` — paths we created outside ``D`` (the FIFOs of ``IFn``),
  one ``DEV INO PATH`` line each (``- - PATH`` for a temporary name recorded
  before it is made), so only the very file we made is ever removed.

Every process that runs guests has the environment variable ``TMPDIR=D`` (the
kernel keeps its memory file there), which is how processes left by a
SIGKILLed launcher are found again.

:func:`sweep` (run by :func:`stdpkt_lab.engine.paths.make_run_root`, so by
every ``stdpkt run``, ``Lab.start`` and stand-alone ``Instance.start``)
removes, for directories of this user whose owners are all gone, the
processes still marked with them, the paths in their ``.created`` ledger, the
directory and its sibling files, as stale lock files are swept.
"""

from __future__ import annotations

import os
import shutil
import signal
import stat
import time
from collections.abc import Iterable
from pathlib import Path

__all__ = [
    "ORPHAN_GRACE_S",
    "add_owner",
    "create_owned_dir",
    "kill_marked",
    "make_fifo",
    "marked_processes",
    "owners_alive",
    "process_identity",
    "record_created",
    "remove_created",
    "remove_run_dir",
    "sweep",
]

#: Run-directory names we create (and so may sweep) in a base directory.
_PREFIX = "stdpkt-"
#: An owner file without its directory is left for this long (it is being created).
ORPHAN_GRACE_S = 30.0
#: Each process sweeps one base directory at most this often.
_SWEEP_EVERY_S = 30.0
_last_sweep: dict[str, float] = {}


def owner_file(run_dir: Path) -> Path:
    return run_dir.with_name(run_dir.name + ".owner")


def created_file(run_dir: Path) -> Path:
    return run_dir.with_name(run_dir.name + ".created")


def _start_time(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    if fields[0] in ("Z", "X"):  # a zombie owns nothing any more
        return None
    return fields[19]  # field 22 of the whole line: starttime in clock ticks


def process_identity(pid: int | None = None) -> str:
    """``"PID STARTTIME"`` of a live process (default: this one)."""
    pid = os.getpid() if pid is None else pid
    start = _start_time(pid)
    if start is None:
        raise ProcessLookupError(pid)
    return f"{pid} {start}"


def _alive(line: str) -> bool:
    pid, _, start = line.strip().partition(" ")
    return pid.isdigit() and _start_time(int(pid)) == start


def owners_alive(run_dir: Path) -> bool:
    """True while any owner named in ``run_dir``'s owner file (or a nested one) lives."""
    try:
        lines = owner_file(run_dir).read_text().splitlines()
    except FileNotFoundError:
        lines = []
    except OSError:
        return True  # unreadable: not ours to judge
    if any(_alive(line) for line in lines if line.strip()):
        return True
    try:
        nested = [p for p in run_dir.iterdir() if p.name.endswith(".owner")]
    except OSError:
        nested = []
    return any(_alive(line) for p in nested for line in _read_lines(p))


def _read_lines(path: Path) -> list[str]:
    try:
        return [line for line in path.read_text().splitlines() if line.strip()]
    except OSError:
        return []


def create_owned_dir(base: str | Path, prefix: str) -> Path:
    """A new directory ``base/prefixXXXXXXXX`` whose owner file exists before it does."""
    base = Path(base)
    me = process_identity() + "\n"
    for _ in range(100):
        candidate = base / f"{prefix}{os.urandom(5).hex()}"
        try:
            fd = os.open(owner_file(candidate), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            continue
        with os.fdopen(fd, "w") as f:
            f.write(me)
        try:
            candidate.mkdir(mode=0o700)
        except FileExistsError:
            owner_file(candidate).unlink()
            continue
        except BaseException:
            owner_file(candidate).unlink()
            raise
        return candidate
    raise FileExistsError(f"no free run directory name under {base}")


def create_owned_subdir(parent: Path, name: str) -> Path:
    """``parent/name`` (an instance directory inside a Lab's root), owner file first."""
    path = parent / name
    fd = os.open(owner_file(path), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(process_identity() + "\n")
    try:
        path.mkdir(mode=0o700)
    except BaseException:
        owner_file(path).unlink()
        raise
    return path


def add_owner(run_dir: Path, pid: int) -> None:
    """Name one more owner (an instance's launcher) of ``run_dir``."""
    try:
        line = process_identity(pid) + "\n"
    except ProcessLookupError:
        return  # already gone: it cleaned up after itself or the teardown will
    with open(owner_file(run_dir), "a") as f:
        f.write(line)


def record_created(
    run_dir: Path, path: str | Path, *, provisional: bool = False, same_as: str | None = None
) -> None:
    """Note in ``run_dir``'s ledger that we made ``path``.

    ``provisional``: ``path`` is a name of our own random choosing, recorded before it
    exists (removed by name); otherwise the device and inode of ``path`` (or of
    ``same_as``, the file about to be linked there) are recorded, and only that very
    file is removed later.
    """
    path = os.path.abspath(path)
    if "\n" in path:
        raise ValueError(f"path with a newline: {path!r}")
    if provisional:
        line = f"- - {path}\n"
    else:
        st = os.lstat(same_as or path)
        line = f"{st.st_dev} {st.st_ino} {path}\n"
    with open(created_file(run_dir), "a") as f:
        f.write(line)
        f.flush()


def remove_created(run_dir: Path) -> None:
    """Remove the FIFOs named in ``run_dir``'s ledger (only the very files we made)."""
    for line in _read_lines(created_file(run_dir)):
        dev, _, rest = line.partition(" ")
        ino, _, path = rest.partition(" ")
        try:
            st = os.lstat(path)
        except OSError:
            continue
        if not stat.S_ISFIFO(st.st_mode):
            continue
        if dev == "-" or (str(st.st_dev), str(st.st_ino)) == (dev, ino):
            try:
                os.unlink(path)
            except OSError:
                pass
    try:
        created_file(run_dir).unlink()
    except OSError:
        pass


def make_fifo(path: str, ledger: Path | None) -> bool:
    """Create FIFO ``path`` unless it exists; True if we made it.

    With a ``ledger`` (a run directory) no instant exists where the FIFO is ours
    but unrecorded: a temporary name is recorded, made, recorded with its inode
    under the final name, hard-linked there (atomic, fails if a neighbour made
    it first) and unlinked.
    """
    if ledger is None:
        try:
            os.mkfifo(path, 0o600)
        except FileExistsError:
            return False
        return True
    head, tail = os.path.split(os.path.abspath(path))
    tmp = os.path.join(head, f".{tail}.stdpkt-{os.urandom(4).hex()}")
    record_created(ledger, tmp, provisional=True)
    os.mkfifo(tmp, 0o600)
    try:
        record_created(ledger, path, same_as=tmp)
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        except OSError:  # a file system without hard links: plain mkfifo, then record
            try:
                os.mkfifo(path, 0o600)
            except FileExistsError:
                return False
            record_created(ledger, path)
        return True
    finally:
        os.unlink(tmp)


def remove_run_dir(run_dir: Path) -> None:
    """Remove ``run_dir``, what its ledger names, and its sibling files (idempotent)."""
    if run_dir.is_dir():
        for nested in run_dir.iterdir():
            if nested.name.endswith(".created"):
                remove_created(nested.with_name(nested.name[: -len(".created")]))
    remove_created(run_dir)
    shutil.rmtree(run_dir, ignore_errors=True)
    try:
        owner_file(run_dir).unlink()
    except OSError:
        pass


def marked_processes(run_dir: Path) -> list[int]:
    """Pids of this user's processes whose environment has ``TMPDIR`` = ``run_dir`` or a
    directory beneath it (every process of a guest: launcher, kernel, helpers)."""
    mark = b"TMPDIR=" + os.fsencode(str(run_dir))
    found = []
    me = os.getpid()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                env = f.read()
        except OSError:
            continue
        for item in env.split(b"\0"):
            if item == mark or item.startswith(mark + b"/"):
                found.append(int(entry))
                break
    return found


def kill_marked(run_dir: Path, timeout: float = 5.0) -> list[int]:
    """SIGKILL every process marked with ``run_dir``; wait up to ``timeout`` for them to
    go. Returns the pids that were found."""
    pids = marked_processes(run_dir)
    deadline = time.monotonic() + timeout
    while pids:
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        time.sleep(0.02)
        left = [p for p in pids if _start_time(p) is not None]
        if not left or time.monotonic() > deadline:
            break
        pids = left
    return pids


def sweep(bases: Iterable[str], *, force: bool = False) -> list[Path]:
    """Remove this user's run directories (and processes, FIFOs) whose owners are gone.

    Each base is swept at most every 30 s per process unless ``force``. Returns what
    was removed.
    """
    removed: list[Path] = []
    uid = os.geteuid()
    now = time.monotonic()
    for base in dict.fromkeys(b for b in bases if b):
        if not force and now - _last_sweep.get(base, -1e9) < _SWEEP_EVERY_S:
            continue
        _last_sweep[base] = now
        try:
            entries = list(os.scandir(base))
        except OSError:
            continue
        for entry in entries:
            if not entry.name.startswith(_PREFIX) or not entry.name.endswith(".owner"):
                continue
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            if st.st_uid != uid or not stat.S_ISREG(st.st_mode):
                continue
            run_dir = Path(base) / entry.name[: -len(".owner")]
            if not run_dir.exists() and time.time() - st.st_mtime < ORPHAN_GRACE_S:
                continue  # its creator is between the owner file and mkdir
            if owners_alive(run_dir):
                continue
            if run_dir.exists():
                kill_marked(run_dir)
            remove_run_dir(run_dir)
            removed.append(run_dir)
    return removed
