"""A killed Dask scheduler: the workers of a distributed lab stop everything they started.

The scheduler and two workers are real processes (the ``dask`` command, each in a
process group of its own, on 127.0.0.1), as on a cluster.  The lab's lease is long
(60 s), so what cleans up within the bound is the worker side noticing that its
worker lost the scheduler, not the lease.  "Ours" is exact: the workers' run
directories live in a private base under /dev/shm (``STDPKT_RUNDIR``) and their
``TMPDIR`` is a private directory; every process of an instance (launcher, kernel,
UML helpers) carries ``TMPDIR`` beneath the base, re-parented or not.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import networkx as nx
import pytest

import stdpkt_lab as sl
from stdpkt_lab.engine.ownership import marked_processes
from stdpkt_lab.errors import StateError

from .conftest import REPO, SESSION_RUNDIR, files_under

pytestmark = pytest.mark.uml

#: seconds within which nothing of the lab may be left after the scheduler's SIGKILL
CLEAN_WITHIN = 30.0


@pytest.fixture
def base() -> Iterator[Path]:
    path = SESSION_RUNDIR / f"sched-kill-{os.getpid()}"
    path.mkdir()
    try:
        yield path
    finally:
        for pid in marked_processes(path):  # a failed test's leftovers, by pid
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        subprocess.run(["rm", "-rf", str(path)], check=False)


def leftovers(base: Path, tmpdir: Path) -> list[str]:
    found = [f"process {pid}" for pid in marked_processes(base)]
    found += [f"file {p}" for p in files_under(base)]
    found += [f"tmp {p}" for p in sorted(tmpdir.glob("stdpkt-*"))]
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_a_killed_scheduler_leaves_nothing_on_its_workers(base: Path, tmp_path: Path) -> None:
    distributed = pytest.importorskip("distributed")
    dask = Path(sys.executable).with_name("dask")
    if not dask.exists():
        pytest.skip("no dask command next to this Python")
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    env = {**os.environ, "STDPKT_RUNDIR": str(base), "TMPDIR": str(tmpdir),
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    sched_file = tmp_path / "scheduler.json"
    procs: list[subprocess.Popen[bytes]] = []
    logs = [tmp_path / name for name in ("scheduler.log", "w0.log", "w1.log")]

    def spawn(argv: list[str], log: Path) -> subprocess.Popen[bytes]:
        with open(log, "wb") as out:
            proc = subprocess.Popen(argv, env=env, cwd=tmp_path, stdin=subprocess.DEVNULL,
                                    stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        procs.append(proc)
        return proc

    client = None
    try:
        scheduler = spawn([str(dask), "scheduler", "--host", "127.0.0.1", "--port", "0",
                           "--no-dashboard", "--scheduler-file", str(sched_file)], logs[0])
        deadline = time.monotonic() + 60
        while not sched_file.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert sched_file.exists(), logs[0].read_text()
        for i in range(2):
            spawn([str(dask), "worker", "--scheduler-file", str(sched_file), "--name", f"w{i}",
                   "--nthreads", "2", "--host", "127.0.0.1", "--no-dashboard", "--death-timeout", "5",
                   "--local-directory", str(tmp_path / f"dask-w{i}")], logs[i + 1])
        client = distributed.Client(scheduler_file=str(sched_file), timeout=30)
        client.wait_for_workers(2, timeout=60)
        g = nx.Graph()
        g.add_node("a", kind="host", host="w0")
        g.add_node("b", kind="router", host="w1")
        g.add_node("c", kind="host", host="w1")
        g.add_edges_from([("a", "b"), ("b", "c")])  # a–b crosses the workers, b–c is local
        lab = sl.Lab(g, cluster=client, progress=False, lease=60.0).start()
        assert lab.exec("a", "ping -c 2 -W 3 c", timeout=30).returncode == 0
        kernels = {p for p in lab.pids().values() if p is not None}
        assert len(kernels) == 3 and kernels <= set(marked_processes(base))
        assert any(base.iterdir())  # the workers' run directories

        killed = time.monotonic()
        os.killpg(scheduler.pid, signal.SIGKILL)
        scheduler.wait(10)
        left = leftovers(base, tmpdir)
        while left and time.monotonic() - killed < CLEAN_WITHIN:
            time.sleep(0.25)
            left = leftovers(base, tmpdir)
        took = time.monotonic() - killed
        assert not left, left
        assert not any(_alive(p) for p in kernels)
        print(f"scheduler SIGKILLed: nothing of the lab left after {took:.1f} s")
        # the notebook side says what happened, and stopping does not wait for the dead
        with pytest.raises(StateError, match="lost its Dask scheduler"):
            lab.exec("a", "true")
        t0 = time.monotonic()
        lab.stop()
        assert time.monotonic() - t0 < 10
        said = "".join(log.read_text(errors="replace") for log in logs[1:])
        assert "stopping its instances" in said, said[-3000:]  # the worker side did it, not the lease
    finally:
        if client is not None:
            try:
                client.close(timeout=5)
            except Exception:  # noqa: BLE001 - the scheduler is gone
                pass
        # SIGTERM first: a nanny SIGKILLed with its resource tracker leaves its
        # multiprocessing semaphores (/dev/shm/sem.mp-*) behind
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
