"""Ending what an instance started, by pid: its launcher, kernel and helpers."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Sequence
from pathlib import Path

from .ownership import kill_marked

__all__ = ["close_quietly", "descendants", "end_processes"]


def close_quietly(fd: int) -> None:
    try:
        os.close(fd)
    except OSError:
        pass


def _children(pid: int) -> list[int]:
    """Direct children of ``pid`` (its threads' ``children`` lists in /proc)."""
    found: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return found
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                found += [int(c) for c in f.read().split()]
        except (OSError, ValueError):
            pass
    return found


def descendants(pid: int) -> list[int]:
    """Every process below ``pid``, children before their parents' siblings' children."""
    found: list[int] = []
    todo = _children(pid)
    while todo:
        child = todo.pop()
        found.append(child)
        todo += _children(child)
    return found


def _signal(pids: Sequence[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except OSError:
            pass


def end_processes(proc: subprocess.Popen[bytes], run_dir: Path | None, timeout: float) -> None:
    """End everything the instance started: the launcher, the kernel (which lives in a
    session of its own, so no process-group signal reaches it) and its helpers.

    SIGUSR1 to the launcher (the owner's stop; SIGTERM would make it wait to see
    whether we are dying, see lkl/launch.c): it stops the kernel (SIGTERM, then SIGKILL of every
    process below it after 3 s) and exits only once it has no descendant left (it
    is their subreaper). If it has not exited after ``timeout``, everything below
    it is SIGKILLed by pid, then the launcher. If the launcher itself was killed
    by a signal (someone SIGKILLed it), its kernel may have been orphaned: every
    process still marked with the run directory (``TMPDIR``) is SIGKILLed.
    """
    if proc.poll() is None:
        _signal([proc.pid], signal.SIGUSR1)  # the owner's stop: we remove the run dir
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            _signal(descendants(proc.pid), signal.SIGKILL)
            try:
                proc.wait(max(timeout, 2.0))  # it reaps them, then exits
            except subprocess.TimeoutExpired:
                _signal(descendants(proc.pid), signal.SIGKILL)
                proc.kill()
                proc.wait()
    if (proc.returncode or 0) < 0 and run_dir is not None:
        kill_marked(run_dir, timeout)
