"""Shared fixtures: every test that boots kernels must leave none behind."""

from __future__ import annotations

import os
import shutil
import signal
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


#: Every run directory of this test session lives here (STDPKT_RUNDIR, inherited by
#: the `stdpkt` processes tests start), so "ours" is exact even on a shared machine.
#: Made when pytest configures (not at import: a script importing a test module must not
#: leave one), removed when the session ends; the session dirs of test runs that were
#: killed (their pid is gone) are swept when the next session starts.
SESSION_RUNDIR = Path(f"/dev/shm/stdpkt-tests-{os.getpid()}")
os.environ["STDPKT_RUNDIR"] = str(SESSION_RUNDIR)
#: Names of `stdpkt run --name` instances (engine/control.py) stay out of the user's own list.
CONTROL_DIR = Path(f"/dev/shm/stdpkt-tests-{os.getpid()}-control")
os.environ["STDPKT_CONTROL_DIR"] = str(CONTROL_DIR)


def pytest_configure(config: pytest.Config) -> None:
    for stale in Path("/dev/shm").glob("stdpkt-tests-*"):
        # stdpkt-tests-PID and stdpkt-tests-PID-control (the latter was never swept)
        pid = stale.name.removeprefix("stdpkt-tests-").removesuffix("-control")
        if pid.isdigit() and not os.path.exists(f"/proc/{pid}") and stale.owner() == _me():
            shutil.rmtree(stale, ignore_errors=True)
    SESSION_RUNDIR.mkdir(exist_ok=True)
    SESSION_RUNDIR.chmod(0o1777)  # unprivileged test users make their run dirs here too


def _me() -> str:
    import pwd

    return pwd.getpwuid(os.geteuid()).pw_name


def _ours(pid: str) -> bool:
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            env = f.read().split(b"\0")
    except OSError:
        return False
    return any(e.startswith(b"TMPDIR=" + str(SESSION_RUNDIR).encode()) for e in env)


def uml_pids() -> set[int]:
    """Pids of running User-Mode Linux kernel processes started by this test session."""
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
        if (exe.endswith("/linux.uml") or exe.endswith("linux.uml (deleted)")) and _ours(entry):
            pids.add(int(entry))
    return pids


def files_under(base: Path) -> list[Path]:
    """Everything below ``base``, sorted; what is removed while it walks is skipped
    (a launcher may be removing its run directory right then)."""
    found: list[Path] = []
    for root, dirs, files in os.walk(base, onerror=lambda _err: None):
        found += [Path(root) / name for name in dirs + files]
    return sorted(found)


def run_dirs() -> set[str]:
    return {str(p) for p in SESSION_RUNDIR.iterdir()}


def _describe(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            umid = [a for a in f.read().split(b"\0") if a.startswith(b"umid=")]
        return f"pid {pid} state {fields[0]} ppid {fields[1]} pgid {fields[2]} {umid}"
    except OSError:
        return f"pid {pid} (gone)"


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    shutil.rmtree(SESSION_RUNDIR, ignore_errors=True)
    shutil.rmtree(CONTROL_DIR, ignore_errors=True)


@pytest.fixture(autouse=True)
def no_leaked_kernels(request: pytest.FixtureRequest):
    """Fail a test that leaves a UML process or a run directory of its own behind."""
    if request.node.get_closest_marker("uml") is None:
        yield
        return
    before, dirs_before = uml_pids(), run_dirs()
    yield
    # a killed stdpkt's launcher finishes the clean-up on its own: give it time on a busy machine
    deadline = time.monotonic() + 20
    leaked = uml_pids() - before
    leaked_dirs = run_dirs() - dirs_before
    while (leaked or leaked_dirs) and time.monotonic() < deadline:
        time.sleep(0.2)
        leaked = uml_pids() - before
        leaked_dirs = run_dirs() - dirs_before
    described = [_describe(pid) for pid in sorted(leaked)]
    for pid in leaked:  # clean up what this test started, by pid, then fail it
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    for d in leaked_dirs:
        shutil.rmtree(d, ignore_errors=True)
    assert not leaked, "test left UML kernel processes running:\n" + "\n".join(described)
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
