"""An instance's console, line by line: what the guest init says to the host, what
belongs in a console tail, what is worth showing a user.

The kernel's console is a pipe; ``stdpkt-init`` and ``lkl/init.sh`` speak to the host
on it with lines starting ``@@STDPKT `` (READY, POOLED, SCRIPT-EXIT, FAIL, WARN,
AGENT-EXIT); :class:`~stdpkt_lab.engine.instance.Instance` acts on them.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = ["MARKER", "Marker", "death_reason", "keep_in_tail", "read_console", "worth_showing"]

MARKER = "@@STDPKT "
#: Kernel stack dumps push the useful lines out of a console tail.
_STACK_DUMP = re.compile(r"^(\s*\[<[0-9a-f]+>\]|( [0-9a-f]{8})+\s*$|Stack:|Call Trace:)")
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
#: Console lines the kernel prints on every boot; shown only in the console tail.
_NOISE = re.compile(
    r"^(Warning: tempdir .* is not on tmpfs|SELinux: |mmapper_init|Failed to initialize ubd"
    r"|check_one_sigio|Failed to write utmp|Powering off|reboot: |Checking that ptrace"
    r"|Checking syscall emulation|Checking advanced syscall|Checking environment variables"
    r"|Checking if host processor|Core dump limits|Checking PROT_EXEC|Checking for tmpfs"
    r"|Adding \d+ bytes to physical memory|Linux version |uml-vector .* netif_napi_add_weight|$)"
)


@dataclass(frozen=True)
class Marker:
    """A line of the guest init to the host, without its ``@@STDPKT `` prefix."""

    text: str


def read_console(fd: int) -> Iterator[str | Marker]:
    """The lines of the console pipe ``fd`` (closed at its end), without colour codes or
    carriage returns; a guest init's line as a :class:`Marker`."""
    with os.fdopen(fd, "rb", buffering=65536) as stream:
        for raw in stream:
            line = _ANSI.sub("", raw.decode("utf-8", "replace")).rstrip("\r\n").replace("\r", "")
            yield Marker(line[len(MARKER):]) if line.startswith(MARKER) else line


def keep_in_tail(line: str) -> bool:
    """Not a line of a kernel stack dump."""
    return not _STACK_DUMP.match(line)


def worth_showing(line: str) -> bool:
    """Not a line the kernel prints on every boot (nor an empty one)."""
    return not _NOISE.match(line)


def death_reason(tail: Sequence[str], run_dir: Path | None) -> str | None:
    """Why a kernel ended, when its console ``tail`` says (full run directory, panic)."""
    if any("ran out of space" in line for line in tail):
        return (f"the kernel died: the file system of its run directory {run_dir} is full "
                "(guest memory is a file there): free space, or set STDPKT_RUNDIR")
    panic = next((line for line in tail if line.startswith("Kernel panic")), None)
    if panic:
        return f"the kernel panicked: {panic}"
    return None
