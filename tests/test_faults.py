"""Fault injection: whatever is killed, interrupted or broken, nothing of ours is left.

Real kernels throughout. Each test gets a private base directory for its run
directories (``STDPKT_RUNDIR``), so "ours" is exact on a shared machine:

* processes: any process whose environment has ``TMPDIR`` beneath that base
  (launchers, kernels, UML helpers and guest processes all carry it);
* files: any entry in the base (run directories and their ``.owner`` /
  ``.created`` siblings), and the FIFOs ``stdpkt run`` created for ``IFn``.

What must hold, and within what time (``CLEAN_WITHIN`` seconds after the fault):
no process, no FIFO, no run directory. One case is allowed a second step: a
``stdpkt`` killed between creating its run directory and starting the
launcher leaves the directory (with its owner file naming the dead process);
the next start (here ``stdpkt check``) must sweep it — the test counts how
often that happened.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from stdpkt_lab.engine.ownership import marked_processes

from .conftest import SESSION_RUNDIR, files_under

#: Seconds within which everything of a killed run must be gone (the launcher stops
#: the kernel with SIGTERM, SIGKILLs what is left after 3 s, then removes files).
CLEAN_WITHIN = 20.0
SEED = int(os.environ.get("STDPKT_FAULT_SEED", "20261201"))
PARALLEL = 3  # stdpkt runs killed at once (2 shared cores)

pytestmark = pytest.mark.uml


# ---------------------------------------------------------------- helpers


@pytest.fixture
def base(request: pytest.FixtureRequest) -> Iterator[Path]:
    """A private base for this test's run directories; must be empty at the end."""
    path = SESSION_RUNDIR / f"faults-{request.node.name[:40]}-{os.getpid()}"
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


def leftovers(base: Path, fifos: list[Path] = ()) -> list[str]:  # type: ignore[assignment]
    found = [f"process {pid} {_comm(pid)}" for pid in marked_processes(base)]
    found += [f"file {p}" for p in files_under(base)]
    found += [f"fifo {f}" for f in fifos if f.exists()]
    return found


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return "(gone)"


def wait_clean(base: Path, fifos: list[Path] = (), within: float = CLEAN_WITHIN) -> list[str]:  # type: ignore[assignment]
    """Poll until nothing of ours is left; return what is left after ``within`` s."""
    deadline = time.monotonic() + within
    while (left := leftovers(base, fifos)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return left


def next_start_sweeps(stdpkt_bin: str, base: Path) -> None:
    """Any later start sweeps run directories whose owners are gone: `stdpkt check`."""
    env = {**os.environ, "STDPKT_RUNDIR": str(base)}
    subprocess.run([stdpkt_bin, "check"], env=env, capture_output=True, timeout=60, check=True)


def _wait_for(path: Path, text: str, timeout: float, proc: subprocess.Popen[bytes] | None = None) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if text in path.read_text(errors="replace"):
                return True
        except OSError:
            pass
        if proc is not None and proc.poll() is not None:
            return text in path.read_text(errors="replace")
        time.sleep(0.05)
    return False


# ---------------------------------------------------------------- stdpkt run, SIGKILL

RUN_SCRIPT = """\
echo RUNNING
sleep 30
"""


def _one_kill(stdpkt_bin: str, base: Path, work: Path, phase: str, delay: float) -> tuple[str, list[str]]:
    """Start `stdpkt run` on FIFOs it creates, SIGKILL it at (phase, delay), check what is left.

    Returns (how it was cleaned, leftovers after the sweep)."""
    work.mkdir()
    fifos = [work / "rx", work / "tx"]
    script = work / "nf.sh"
    script.write_text(RUN_SCRIPT)
    env = {**os.environ, "STDPKT_RUNDIR": str(base), "IF0": f"{fifos[0]}|{fifos[1]}",
           "IP0": "10.9.0.1"}
    err = work / "stderr"
    with open(err, "wb") as f:
        proc = subprocess.Popen([stdpkt_bin, "run", "--name", work.name, str(script)], env=env,
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=f)
    try:
        if phase == "running":
            assert _wait_for(err, "RUNNING", 90, proc), err.read_text(errors="replace")
        elif phase == "teardown":
            assert _wait_for(err, "RUNNING", 90, proc), err.read_text(errors="replace")
            proc.send_signal(signal.SIGTERM)  # it is stopping: kill it mid-teardown
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    # only this run's files count here (others run in parallel in the same base)
    mine = [p for p in base.iterdir() if p.name.startswith(f"stdpkt-{work.name}-")]
    procs = [pid for pid in marked_processes(base) if _run_of(pid, base) == work.name]
    deadline = time.monotonic() + CLEAN_WITHIN
    while time.monotonic() < deadline:
        mine = [p for p in base.iterdir() if p.name.startswith(f"stdpkt-{work.name}-")]
        procs = [pid for pid in marked_processes(base) if _run_of(pid, base) == work.name]
        if not procs and not mine and not any(f.exists() for f in fifos):
            return "launcher", []
        time.sleep(0.1)
    assert not procs, f"{phase} +{delay:.2f}s: processes left: {procs}"
    assert not any(f.exists() for f in fifos), f"{phase} +{delay:.2f}s: FIFOs left"
    return "sweep", [str(p) for p in mine]


def _run_of(pid: int, base: Path) -> str:
    """The run name (instance name) a marked process belongs to."""
    try:
        env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return ""
    for item in env:
        if item.startswith(b"TMPDIR=" + os.fsencode(str(base)) + b"/stdpkt-"):
            name = item.split(b"/stdpkt-", 1)[1].decode(errors="replace")
            return name.rsplit("-", 1)[0]
    return ""


def test_sigkill_of_stdpkt_run_at_random_moments(stdpkt_bin: str, base: Path, tmp_path: Path) -> None:
    """24 seeded moments: 8 during boot, 8 while running, 8 during teardown (after SIGTERM)."""
    rng = random.Random(SEED)
    moments = ([("boot", rng.uniform(0.0, 1.5)) for _ in range(8)]
               + [("running", rng.uniform(0.0, 1.0)) for _ in range(8)]
               + [("teardown", rng.uniform(0.0, 0.6)) for _ in range(8)])
    with ThreadPoolExecutor(PARALLEL) as pool:
        results = list(pool.map(
            lambda im: _one_kill(stdpkt_bin, base, tmp_path / f"k{im[0]:02d}", *im[1]),
            enumerate(moments)))
    swept = [(m, r) for m, r in zip(moments, results, strict=True) if r[0] == "sweep"]
    # what the launcher could not remove (killed before it existed) goes at the next start
    next_start_sweeps(stdpkt_bin, base)
    left = wait_clean(base, within=5)
    assert not left, f"left after the next start's sweep: {left}"
    # every kill after boot is cleaned by the launcher alone; a sweep is only needed
    # when stdpkt died before its launcher started
    assert all(m[0] == "boot" for m, _ in swept), f"needed a sweep after boot: {swept}"
    print(f"seed {SEED}: {len(moments)} kills, {len(swept)} needed the next start's sweep")


# ---------------------------------------------------------------- a Python process holding a Lab

LAB_CHILD = textwrap.dedent("""\
    import faulthandler, signal, sys
    import networkx as nx
    import stdpkt_lab as sl

    faulthandler.register(signal.SIGUSR2, all_threads=True)  # the test asks when we hang
    # what a notebook or a terminal has; started from a shell's `&` (no job control), Python
    # inherits SIGINT ignored and would never see the KeyboardInterrupt this test sends
    signal.signal(signal.SIGINT, signal.default_int_handler)

    g = nx.Graph()
    g.add_node("client", kind="host")
    g.add_node("server", kind="host", serve="http")
    g.add_edge("client", "server")
    print("STARTING", flush=True)
    with sl.Lab(g, progress=False) as lab:
        print("BOOTED", flush=True)
        while True:
            lab.exec("client", "wget -qO- -T 5 http://server/ >/dev/null; ping -c 1 -W 1 server").check()
            print("TRAFFIC", flush=True)
""")


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT], ids=["SIGKILL", "SIGINT"])
@pytest.mark.parametrize("phase", ["boot", "traffic"])
def test_python_process_holding_a_lab_killed(base: Path, tmp_path: Path, sig: int, phase: str) -> None:
    out = tmp_path / "out"
    env = {**os.environ, "STDPKT_RUNDIR": str(base)}
    with open(out, "wb") as f:
        proc = subprocess.Popen([sys.executable, "-c", LAB_CHILD], env=env, stdout=f,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        if phase == "boot":
            assert _wait_for(out, "STARTING", 60, proc), out.read_text()
            time.sleep(random.Random(SEED + sig).uniform(0.2, 1.0))
        else:
            assert _wait_for(out, "TRAFFIC", 120, proc), out.read_text()
        proc.send_signal(sig)
        try:
            proc.wait(60)  # SIGINT: KeyboardInterrupt, the with-block stops the lab
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGUSR2)  # every thread's stack into `out`
            time.sleep(1)
            raise AssertionError(f"still running 60 s after {signal.Signals(sig).name} during "
                                 f"{phase}:\n{out.read_text(errors='replace')[-6000:]}") from None
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if sig == signal.SIGINT:
        assert "KeyboardInterrupt" in out.read_text(errors="replace"), out.read_text()
    left = wait_clean(base)
    if left and sig == signal.SIGKILL and phase == "boot":
        next_start_sweeps(str(Path(sys.executable).parent / "stdpkt"), base)
        left = wait_clean(base, within=5)
    assert not left, f"left {CLEAN_WITHIN:.0f} s after {signal.Signals(sig).name} during {phase}: {left}"


# ---------------------------------------------------------------- a Jupyter kernel restarted


def test_jupyter_kernel_restarted_while_its_lab_runs(base: Path) -> None:
    jupyter_client = pytest.importorskip("jupyter_client")
    km = jupyter_client.KernelManager(kernel_name="python3")
    km.start_kernel(env={**os.environ, "STDPKT_RUNDIR": str(base)}, extra_arguments=[])
    kc = km.client()
    kc.start_channels()
    try:
        kc.wait_for_ready(timeout=120)
        code = textwrap.dedent("""\
            import networkx as nx, stdpkt_lab as sl
            g = nx.Graph(); g.add_node("a", kind="host"); g.add_node("b", kind="host")
            g.add_edge("a", "b")
            lab = sl.Lab(g, progress=False).start()
            print(lab.exec("a", "ping -c 1 -W 2 b").returncode)
        """)
        reply = kc.execute_interactive(code, timeout=180)
        assert reply["content"]["status"] == "ok", reply["content"]
        assert marked_processes(base), "the lab should be running now"
        km.restart_kernel(now=True)  # what Jupyter's "restart kernel" does: SIGKILL
        left = wait_clean(base)
        assert not left, f"left {CLEAN_WITHIN:.0f} s after the kernel restart: {left}"
        kc.wait_for_ready(timeout=120)
        reply = kc.execute_interactive(code + "lab.stop()\n", timeout=180)  # the new kernel works
        assert reply["content"]["status"] == "ok", reply["content"]
        assert not wait_clean(base)
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)


# ---------------------------------------------------------------- a guest that panics


def test_guest_panic_ends_the_instance_and_leaves_nothing(base: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import networkx as nx

    import stdpkt_lab as sl
    from stdpkt_lab.errors import InstanceDied

    monkeypatch.setenv("STDPKT_RUNDIR", str(base))
    g = nx.Graph()
    g.add_node("a", kind="host")
    g.add_node("b", kind="host")
    g.add_edge("a", "b")
    with sl.Lab(g, progress=False) as lab:
        with pytest.raises(InstanceDied):
            lab.exec("b", "echo 1 > /proc/sys/kernel/sysrq; echo c > /proc/sysrq-trigger", timeout=30)
        assert lab["b"].wait(15) is not None, "the panicked kernel did not end"
        assert lab.exec("a", "true").returncode == 0  # the neighbour is unharmed
    assert not wait_clean(base)


def test_guest_panic_in_stdpkt_run_exits_with_a_message(stdpkt_bin: str, base: Path, tmp_path: Path) -> None:
    script = tmp_path / "panic.sh"
    script.write_text("echo 1 > /proc/sys/kernel/sysrq\necho c > /proc/sysrq-trigger\nsleep 30\n")
    fifos = [tmp_path / "rx", tmp_path / "tx"]  # created by stdpkt, never opened by anyone
    env = {**os.environ, "STDPKT_RUNDIR": str(base), "IF0": f"{fifos[0]}|{fifos[1]}", "IP0": "10.9.0.1"}
    start = time.monotonic()
    result = subprocess.run([stdpkt_bin, "run", str(script)], env=env, stdin=subprocess.DEVNULL,
                            capture_output=True, timeout=120)
    assert time.monotonic() - start < 60
    err = result.stderr.decode(errors="replace")
    assert result.returncode == 1, err
    assert "Kernel panic" in err, err
    assert not wait_clean(base, fifos)


# ---------------------------------------------------------------- a full $TMPDIR

FULL_CHILD = textwrap.dedent("""\
    import os
    import networkx as nx
    import stdpkt_lab as sl
    from stdpkt_lab.errors import BootError, InstanceError
    g = nx.Graph()
    g.add_node("a", kind="host", mem_mb=128)
    try:
        with sl.Lab(g, progress=False) as lab:
            print("BOOTED", flush=True)
            # the guest's tmpfs lives in guest memory: a file in the (too small) run dir
            r = lab.exec("a", "mount -o remount,size=200m /tmp; dd if=/dev/zero of=/tmp/fill bs=1M count=110",
                         timeout=60)
            print("NO ERROR", r, flush=True)
    except (BootError, InstanceError) as exc:
        print("ERROR", type(exc).__name__, str(exc).splitlines()[0], flush=True)
    print("LEFT", os.listdir(os.environ["STDPKT_RUNDIR"]), flush=True)
""")


def test_full_run_dir_gives_a_clear_error_not_a_hang(base: Path, tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root: a small tmpfs is mounted in a private mount namespace (unshare -m)")
    small = tmp_path / "small"
    small.mkdir()
    # 80 MiB: room for the Lab's check (64 MiB a node), not for a guest filling 110 MiB
    argv = ["unshare", "-m", "--propagation", "private", "sh", "-c",
            'mount -t tmpfs -o size=80m,mode=1777 tmpfs "$1" && exec "$2" -c "$3"', "sh",
            str(small), sys.executable, FULL_CHILD]
    env = {**os.environ, "STDPKT_RUNDIR": str(small)}
    start = time.monotonic()
    result = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=180)
    took = time.monotonic() - start
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    assert "ERROR InstanceDied" in result.stdout, out
    assert "file system of its run directory" in result.stdout and "is full" in result.stdout, out
    assert "LEFT []" in result.stdout, out
    assert took < 150, f"took {took:.0f} s"
    # processes carry TMPDIR beneath the (now unmounted) small dir: none may be left
    deadline = time.monotonic() + CLEAN_WITHIN
    while (procs := marked_processes(small)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not procs, procs


def test_killed_before_its_launcher_started_is_swept_at_the_next_start(stdpkt_bin: str, base: Path) -> None:
    """The one window the launcher cannot cover: a process SIGKILLed between creating
    its run directory and starting the launcher (here: at once after creating it)."""
    child = ("import os, signal; from stdpkt_lab.engine.paths import make_run_root\n"
             "d = make_run_root(prefix='stdpkt-early-'); (d / 'guest.env').write_text('x')\n"
             "os.kill(os.getpid(), signal.SIGKILL)\n")
    env = {**os.environ, "STDPKT_RUNDIR": str(base)}
    result = subprocess.run([sys.executable, "-c", child], env=env, timeout=60, check=False)
    assert result.returncode == -signal.SIGKILL
    assert sorted(p.name for p in base.iterdir())[0].startswith("stdpkt-early-")  # dir + owner file
    next_start_sweeps(stdpkt_bin, base)
    assert not leftovers(base)


def test_a_start_that_fails_before_the_kernel_closes_each_descriptor_once(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # ci16/ci17: a start refused before the kernel was spawned (here a bad variable), then
    # stop() - what a Lab's rollback does - closed the console pipe's number a second time;
    # by then that number was someone else's descriptor (later: a pooled agent's pipe)
    from stdpkt_lab.engine.instance import Instance
    from stdpkt_lab.engine.spec import InstanceSpec, PortSpec
    from stdpkt_lab.errors import VariableError

    monkeypatch.setenv("STDPKT_TCP_BUFFERS", "huge")
    inst = Instance(InstanceSpec("dclose", ports=(PortSpec(0),)))
    with pytest.raises(VariableError, match="STDPKT_TCP_BUFFERS"):
        inst.start()
    taken = [os.pipe() for _ in range(4)]  # the lowest free numbers: those the start released
    try:
        inst.stop()
        for r, w in taken:
            os.fstat(r)  # EBADF if stop() closed one of them
            os.fstat(w)
    finally:
        for r, w in taken:
            for fd in (r, w):
                try:
                    os.close(fd)
                except OSError:
                    pass
