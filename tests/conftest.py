"""Shared fixtures: every test that boots kernels must leave none behind."""

from __future__ import annotations

import os
import shutil
import signal
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def uml_pids() -> set[int]:
    """Pids of running User-Mode Linux kernel processes (any owner)."""
    pids = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            exe = os.readlink(f"/proc/{entry}/exe")
        except OSError:
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    exe = f.read().split(b"\0", 1)[0].decode(errors="replace")
            except OSError:
                continue
        if exe.endswith("/linux.uml") or exe.endswith("linux.uml (deleted)"):
            pids.add(int(entry))
    return pids


def run_dirs() -> set[str]:
    found = set()
    for base in ("/dev/shm", "/tmp"):
        try:
            found |= {os.path.join(base, n) for n in os.listdir(base) if n.startswith("stdpkt-")}
        except OSError:
            pass
    return found


@pytest.fixture(autouse=True)
def no_leaked_kernels(request: pytest.FixtureRequest):
    """Fail a test that leaves a UML process or a run directory of its own behind."""
    if request.node.get_closest_marker("uml") is None:
        yield
        return
    before, dirs_before = uml_pids(), run_dirs()
    yield
    deadline = time.monotonic() + 10
    leaked = uml_pids() - before
    while leaked and time.monotonic() < deadline:
        time.sleep(0.2)
        leaked = uml_pids() - before
    leaked_dirs = run_dirs() - dirs_before
    for pid in leaked:  # clean up what this test started, by pid, then fail it
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    for d in leaked_dirs:
        shutil.rmtree(d, ignore_errors=True)
    assert not leaked, f"test left UML kernel processes running: {sorted(leaked)}"
    assert not leaked_dirs, f"test left run directories: {sorted(leaked_dirs)}"


@pytest.fixture
def stdpkt_bin() -> str:
    """The installed ``stdpkt`` console script next to the running interpreter."""
    import sys

    candidate = Path(sys.executable).parent / "stdpkt"
    if candidate.exists():
        return str(candidate)
    found = shutil.which("stdpkt")
    if not found:
        pytest.fail("the stdpkt command is not installed (run make setup)")
    return found
