"""Each instance on one core (stdpkt_lab.engine.cpus): $STDPKT_CPUS, the machine-wide
count in /proc/locks, and real kernels whose every process runs on its core."""

from __future__ import annotations

import os
import time
from pathlib import Path

import networkx as nx
import pytest

import stdpkt_lab as sl
from stdpkt_lab.engine import cpus
from stdpkt_lab.errors import VariableError

from .pipeline import Pipeline, Stage

TWO_CORES = len(os.sched_getaffinity(0)) >= 2


def _tree(pid: int) -> list[int]:
    """``pid`` and its descendants (every thread's children)."""
    found = [pid]
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            for child in Path(f"/proc/{pid}/task/{tid}/children").read_text().split():
                found += _tree(int(child))
    except OSError:
        pass
    return found


def _affinities(pid: int) -> dict[int, set[int]]:
    """Every thread of the kernel processes under ``pid`` (linux.uml: the kernel, its
    helpers, the guest's processes; not the launcher): its allowed cores."""
    out: dict[int, set[int]] = {}
    for p in _tree(pid):
        try:
            if Path(f"/proc/{p}/comm").read_text().strip() != "linux.uml":
                continue
        except OSError:
            continue
        for tid in os.listdir(f"/proc/{p}/task") if os.path.isdir(f"/proc/{p}/task") else []:
            try:
                out[int(tid)] = os.sched_getaffinity(int(tid))
            except OSError:
                pass
    return out


@pytest.mark.parametrize("value, expected", [(None, [0, 1]), ("auto", [0, 1]), ("off", []),
                                             ("0-1", [0, 1]), ("1,0", [0, 1]), ("0", [])])
def test_the_variable_chooses_the_cores(monkeypatch: pytest.MonkeyPatch, value: str | None,
                                        expected: list[int]) -> None:
    if not TWO_CORES:
        pytest.skip("needs two cores")
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    if value is None:  # unset: the default, auto
        monkeypatch.delenv(cpus.CPUS_VARIABLE, raising=False)
    else:
        monkeypatch.setenv(cpus.CPUS_VARIABLE, value)
    assert cpus.allowed_cores() == expected  # one core: nothing to choose, nothing pinned


@pytest.mark.parametrize("value, said", [("two", "'two' is not a core"), ("0-", "is not a core"),
                                         ("3-1", "bad range"), ("0,9", "core(s) 9 are not among")])
def test_a_bad_list_names_the_variable(monkeypatch: pytest.MonkeyPatch, value: str, said: str) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    monkeypatch.setenv(cpus.CPUS_VARIABLE, value)
    with pytest.raises(VariableError, match="STDPKT_CPUS") as err:
        cpus.allowed_cores()
    assert said in str(err.value)


def test_claims_are_counted_machine_wide_and_spread(monkeypatch: pytest.MonkeyPatch) -> None:
    if not TWO_CORES:
        pytest.skip("needs two cores")
    monkeypatch.setenv(cpus.CPUS_VARIABLE, "auto")
    before = cpus.cores_in_use()
    claims = [cpus.claim_core() for _ in range(4)]
    try:
        assert all(c is not None and c.fd >= 0 for c in claims)
        during = cpus.cores_in_use()
        assert sum(during.values()) - sum(before.values()) == 4
        # least used first: the four land as evenly as the cores already in use allow
        spread = [during[c] for c in sorted(cpus.allowed_cores())]
        assert max(spread) - min(spread) <= max(1, max(before.values(), default=0))
    finally:
        for c in claims:
            if c is not None:
                c.close()
    assert cpus.cores_in_use() == before  # the host kernel drops a lock with its descriptor


@pytest.mark.skipif(not TWO_CORES, reason="needs two cores")
def test_every_process_of_an_instance_runs_on_its_core(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(cpus.CPUS_VARIABLE, raising=False)  # the default: auto
    before = cpus.cores_in_use()
    g = nx.Graph()
    g.add_node("a", kind="host")
    g.add_node("b", kind="host")
    g.add_edge("a", "b")
    with sl.Lab(g, progress=False) as lab:
        assert lab.exec("a", "ping -c 2 -W 3 b", timeout=30).returncode == 0
        got = {n: lab[n].cpu for n in ("a", "b")}
        assert None not in got.values() and got["a"] != got["b"], got  # two instances, two cores
        for n in ("a", "b"):
            threads = _affinities(lab[n].pid)
            assert len(threads) >= 3, threads  # the kernel, its helpers, the guest's processes
            assert all(a == {got[n]} for a in threads.values()), (n, threads)
        during = cpus.cores_in_use()
        assert sum(during.values()) - sum(before.values()) == 2
    assert cpus.cores_in_use() == before  # the launchers held the locks, and they are gone


def test_off_leaves_placement_to_the_host(monkeypatch: pytest.MonkeyPatch) -> None:
    """``off`` pins nothing."""
    monkeypatch.setenv(cpus.CPUS_VARIABLE, "off")
    g = nx.Graph()
    g.add_node("a", kind="host")
    with sl.Lab(g, progress=False) as lab:
        assert lab["a"].cpu is None
        mine = os.sched_getaffinity(0)
        assert all(a == mine for a in _affinities(lab["a"].pid).values())


@pytest.mark.skipif(not TWO_CORES, reason="needs two cores")
def test_the_stdpkt_runs_of_a_pipeline_take_different_cores(stdpkt_bin: str, tmp_path: Path) -> None:
    """`stdpkt run | stdpkt run` (FIFO back): each process and its kernel on a core of its own."""
    os.mkfifo(tmp_path / "back")
    (tmp_path / "tx.sh").write_text("ping -c 3 -W 3 10.0.0.2 && sleep 3\n")
    (tmp_path / "rx.sh").write_text("true\n")
    stages = [
        Stage("tx", [stdpkt_bin, "run", "--oneshot", "--name", "cpu-tx", str(tmp_path / "tx.sh")],
              {"IF0": "back|/dev/stdout", "IP0": "10.0.0.1", "STDPKT_CPUS": "auto"}),
        Stage("rx", [stdpkt_bin, "run", "--name", "cpu-rx", str(tmp_path / "rx.sh")],
              {"IF0": "/dev/stdin|back", "IP0": "10.0.0.2", "STDPKT_CPUS": "auto"}),
    ]
    with Pipeline(stages, tmp_path) as pipeline:
        deadline = time.monotonic() + 60
        cores: dict[str, set[int]] = {}
        while time.monotonic() < deadline and pipeline.procs[0].poll() is None:
            cores = {}
            for stage, proc in zip(stages, pipeline.procs, strict=True):
                # the stdpkt process's own threads (relays) and its kernel's
                threads = {int(t): os.sched_getaffinity(int(t))
                           for t in os.listdir(f"/proc/{proc.pid}/task")}
                kernel = _affinities(proc.pid)
                if len(kernel) >= 2:
                    cores[stage.name] = set().union(*threads.values(), *kernel.values())
            if len(cores) == 2 and all(len(c) == 1 for c in cores.values()):
                break
            time.sleep(0.1)
        assert len(cores) == 2 and all(len(c) == 1 for c in cores.values()), cores
        assert cores["tx"] != cores["rx"], cores
        assert pipeline.wait(60)[0] == 0, pipeline.all_stderr()  # the ping passed


@pytest.mark.skipif(not TWO_CORES, reason="needs two cores")
def test_locks_held_by_someone_else_never_hang_a_claim(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any user may flock these sysfs directories: a claim then goes on without them."""
    import fcntl

    monkeypatch.setattr(cpus, "_EXCLUSIVE_WAIT", 0.2)
    monkeypatch.setenv(cpus.CPUS_VARIABLE, "auto")
    paths = ["/sys/devices/system/cpu", *(f"/sys/devices/system/cpu/cpu{c}" for c in cpus.allowed_cores())]
    child = os.fork()
    if child == 0:  # another process holds everything exclusively
        for path in paths:
            fcntl.flock(os.open(path, os.O_RDONLY | os.O_DIRECTORY), fcntl.LOCK_EX)
        time.sleep(30)
        os._exit(0)
    try:
        deadline = time.monotonic() + 10
        while (Path("/proc/locks").read_text().count(f"WRITE {child} ") < len(paths)
               and time.monotonic() < deadline):
            time.sleep(0.01)
        t0 = time.monotonic()
        claim = cpus.claim_core()
        assert time.monotonic() - t0 < 2
        assert claim is not None and claim.fd == -1 and claim.cpu in cpus.allowed_cores()
    finally:
        os.kill(child, 9)
        os.waitpid(child, 0)
