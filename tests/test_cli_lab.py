"""`stdpkt lab start/exec/status/check/stop`: a background owner that leaks nothing."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from .conftest import uml_pids

LABS = Path(__file__).resolve().parent / "labs"


def run(stdpkt: str, *args: str, env: dict[str, str], timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run([stdpkt, "lab", *args], capture_output=True, text=True, timeout=timeout, env=env)


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    e = dict(os.environ)
    e["XDG_RUNTIME_DIR"] = str(tmp_path)  # a private state directory for this test
    return e


def test_malformed_lab_exits_2_naming_the_line(stdpkt_bin: str, env: dict[str, str]) -> None:
    r = run(stdpkt_bin, "start", str(LABS / "malformed"), env=env)
    assert r.returncode == 2, r
    assert "lab.conf:3:" in r.stderr
    r = run(stdpkt_bin, "exec", "pc1", "--", "true", env=env)
    assert r.returncode == 2 and "no lab is running" in r.stderr


@pytest.mark.uml
def test_start_exec_check_stop(stdpkt_bin: str, env: dict[str, str], tmp_path: Path) -> None:
    r = run(stdpkt_bin, "start", str(LABS / "dep"), env=env)
    assert r.returncode == 0, r.stderr
    try:
        assert "lab 'dep' running" in r.stdout
        r = run(stdpkt_bin, "exec", "b", "--", "ping", "-c", "1", "-W", "3", "10.9.0.1", env=env)
        assert r.returncode == 0 and "1 received" in r.stdout, r
        r = run(stdpkt_bin, "exec", "a", "--", "sh -c 'exit 7'", env=env)
        assert r.returncode == 7
        r = run(stdpkt_bin, "exec", "zz", "--", "true", env=env)
        assert r.returncode == 2 and "no device 'zz'" in r.stderr
        r = run(stdpkt_bin, "status", env=env)
        assert "a" in r.stdout and "running" in r.stdout
        r = run(stdpkt_bin, "check", str(LABS / "dep"), env=env)
        assert r.returncode == 1, r  # the port_open check fails on purpose
        assert "b reaches 10.9.0.1" in r.stdout and "PASS" in r.stdout
        assert "FAIL: 2/3 checks passed" in r.stdout
        assert "nothing serves HTTP" in r.stdout  # the failing check's hint
    finally:
        r = run(stdpkt_bin, "stop", env=env)
    assert r.returncode == 0, r
    assert not list((tmp_path / f"stdpkt-labs-{os.getuid()}").iterdir())


@pytest.mark.uml
def test_killed_owner_takes_its_kernels_and_is_swept(stdpkt_bin: str, env: dict[str, str],
                                                      tmp_path: Path) -> None:
    before = uml_pids()
    r = run(stdpkt_bin, "start", str(LABS / "dep"), "--name", "victim", env=env)
    assert r.returncode == 0, r.stderr
    state = tmp_path / f"stdpkt-labs-{os.getuid()}" / "victim"
    info = json.loads((state / "owner.json").read_text())
    assert uml_pids() - before  # its kernels run
    os.kill(info["pid"], signal.SIGKILL)
    deadline = time.monotonic() + 30
    while uml_pids() - before and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not uml_pids() - before, "the owner's kernels outlived it"
    r = run(stdpkt_bin, "status", env=env)
    assert "removed stale lab 'victim'" in r.stderr and "no lab is running" in r.stdout
    assert not state.exists()
    assert not Path(info["run_root"]).exists()
