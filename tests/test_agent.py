"""The command channel into a guest: ``lkl/agent.c`` and ``stdpkt_lab.engine.agent``.

Tests marked ``uml`` boot real User-Mode Linux guests with a minimal init of
their own (the project's launcher and init are not used here), at most three
at a time; every guest is started in its own process group and the fixtures
kill those groups and assert that no process of theirs is left.
The others run the agent on a host pseudo-terminal or talk to plain pipes.
"""

from __future__ import annotations

import hashlib
import os
import pty
import shutil
import signal
import statistics
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from stdpkt_lab.engine.agent import AgentClient, ExecResult
from stdpkt_lab.engine.paths import helper
from stdpkt_lab.errors import ExecError, ExecTimeout, InstanceDied, StateError

REPO = Path(__file__).resolve().parents[1]
LINUX_UML = "/usr/bin/linux.uml"
MAX_GUESTS = 3  # 2 shared cores: never more at once
BOOT_TIMEOUT = 60.0

needs_uml = pytest.mark.skipif(
    not os.access(LINUX_UML, os.X_OK),
    reason=f"{LINUX_UML} missing (apt-get install user-mode-linux)",
)

# Minimal guest init. The kernel (CONFIG_DEVTMPFS_MOUNT) has already put a
# devtmpfs on /dev; mounting another would fail, and a tmpfs fallback would
# hide /dev/tty1.
INIT_SH = """#!/bin/sh
PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export PATH
mount -t proc proc /proc
mount -t sysfs sys /sys
grep -q '^[^ ]* /dev devtmpfs' /proc/mounts || mount -t devtmpfs dev /dev
mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /tmp
"$AGENT_TEST_BIN" /dev/tty1 &
exec sleep 1000000
"""


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def agent_dir() -> Iterator[Path]:
    """The agent built from source, and the test init, where a guest can see them.

    Not under /tmp or /dev/shm: the guest mounts its own tmpfs/devtmpfs there.
    """
    if shutil.which("gcc") is None:
        pytest.fail("gcc is needed to build lkl/agent.c")
    path = Path(tempfile.mkdtemp(prefix="stdpkt-agent-test-", dir="/var/tmp"))
    try:
        build = subprocess.run(
            ["gcc", "-static", "-O2", "-Wall", "-Wextra", "-Werror", "-o",
             str(path / "stdpkt-agent"), str(REPO / "lkl" / "agent.c")],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        assert build.returncode == 0, build.stderr
        init = path / "init.sh"
        init.write_text(INIT_SH)
        init.chmod(0o755)
        path.chmod(0o755)
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


class Guest:
    """One UML guest with the agent on its con1, in its own process group."""

    live = 0  # guests booted and not yet stopped, across all sets

    def __init__(self, name: str, agent_dir: Path) -> None:
        self.name = name
        self.run_dir = Path(tempfile.mkdtemp(prefix=f"stdpkt-agent-{name}-", dir="/dev/shm"))
        assert Guest.live < MAX_GUESTS, "test would boot more than 3 guests at once"
        Guest.live += 1
        self.stopped = False
        guest_r, host_w = os.pipe()  # host -> guest (con1 input)
        host_r, guest_w = os.pipe()  # guest -> host (con1 output)
        argv = [
            # the launcher (unconfined here) applies the host-specific kernel fixes
            # every instance gets, e.g. the FPU register fallback (lkl/launch.c)
            helper("stdpkt-launch"), "--",
            LINUX_UML, "mem=64M", "root=/dev/root", "rootfstype=hostfs", "rootflags=/", "ro",
            f"init={agent_dir / 'init.sh'}", "con=null", "con0=fd:0,fd:1",
            f"con1=fd:{guest_r},fd:{guest_w}", "ssl=null", f"uml_dir={self.run_dir}",
            f"umid={name}", "quiet", "initcall_blacklist=raid6_select_algo,init_zswap",
            "pty.legacy_count=0", f"AGENT_TEST_BIN={agent_dir / 'stdpkt-agent'}",
        ]  # fmt: skip
        self.console = self.run_dir / "console.log"
        try:
            with open(self.console, "wb") as console:
                self.proc = subprocess.Popen(
                    argv,
                    env={**os.environ, "TMPDIR": str(self.run_dir)},
                    stdin=subprocess.DEVNULL,
                    stdout=console,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                    pass_fds=(guest_r, guest_w),
                )
        finally:
            os.close(guest_r)
            os.close(guest_w)
        self.pgid = self.proc.pid
        self.agent = AgentClient(host_w, host_r, name=name)

    def boot(self) -> Guest:
        try:
            self.agent.wait_ready(BOOT_TIMEOUT)
        except ExecError as exc:
            raise AssertionError(f"{exc}\n--- console ---\n{self.console_tail()}") from exc
        return self

    def console_tail(self) -> str:
        try:
            return self.console.read_text(errors="replace")[-3000:]
        except OSError:
            return ""

    def stop(self) -> None:
        if self.stopped:
            return
        self.stopped = True
        Guest.live -= 1
        self.agent.close()
        try:
            os.killpg(self.pgid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(self.pgid, signal.SIGKILL)  # UML helpers survive their main process
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=10)
        shutil.rmtree(self.run_dir, ignore_errors=True)


def _live_members(pgids: set[int]) -> list[str]:
    """Processes (not zombies) in the given process groups, as "pid comm" strings."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path("/proc", entry, "stat").read_text()
        except OSError:
            continue
        comm_end = stat.rindex(")")
        fields = stat[comm_end + 2 :].split()
        state, pgrp = fields[0], int(fields[2])
        if pgrp in pgids and state != "Z":
            found.append(f"{entry} {stat[stat.index('(') + 1 : comm_end]}")
    return found


class GuestSet:
    """Boots guests on demand; stop_all() kills their process groups and checks."""

    def __init__(self, agent_dir: Path) -> None:
        self.agent_dir = agent_dir
        self.guests: list[Guest] = []

    def boot(self, name: str) -> Guest:
        guest = Guest(name, self.agent_dir)
        self.guests.append(guest)
        return guest.boot()

    def stop_all(self) -> None:
        for guest in self.guests:
            guest.stop()
        pgids = {guest.pgid for guest in self.guests}
        deadline = time.monotonic() + 10
        while (left := _live_members(pgids)) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not left, f"processes of stopped guests remain: {left}"


@pytest.fixture(scope="module")
def guest(agent_dir: Path) -> Iterator[Guest]:
    """One guest shared by the tests that leave it usable."""
    if not os.access(LINUX_UML, os.X_OK):
        pytest.skip(f"{LINUX_UML} missing")
    guests = GuestSet(agent_dir)
    try:
        yield guests.boot(f"agent-shared-{os.getpid()}")
    finally:
        guests.stop_all()


@pytest.fixture
def guests(agent_dir: Path) -> Iterator[GuestSet]:
    """Guests of one test (for tests that kill or close them)."""
    guests = GuestSet(agent_dir)
    try:
        yield guests
    finally:
        guests.stop_all()


# ---------------------------------------------------------------- exec


@needs_uml
@pytest.mark.uml
def test_exec_shell_string(guest: Guest) -> None:
    result = guest.agent.exec("echo out; echo err >&2; printf 'x y'; exit 3")
    assert result.returncode == 3
    assert result.stdout == "out\nx y"
    assert result.stderr == "err\n"
    assert result.stdout_bytes == b"out\nx y"
    assert 0 < result.duration_s < 10


@needs_uml
@pytest.mark.uml
def test_exec_argv_is_not_split_by_a_shell(guest: Guest) -> None:
    result = guest.agent.exec(["printf", "%s|", "a b", "$HOME", "it's", "*"])
    assert result.returncode == 0
    assert result.stdout == "a b|$HOME|it's|*|"
    assert guest.agent.exec(["false"]).returncode == 1


@needs_uml
@pytest.mark.uml
def test_exec_reports_killing_signal_as_negative(guest: Guest) -> None:
    assert guest.agent.exec("kill -TERM $$").returncode == -signal.SIGTERM


@needs_uml
@pytest.mark.uml
def test_exec_stdin_env_cwd(guest: Guest) -> None:
    assert guest.agent.exec(["cat"], input=b"fed via stdin\n").stdout == "fed via stdin\n"
    assert guest.agent.exec(["cat"], input=b"").stdout == ""
    assert guest.agent.exec(["cat"]).stdout == ""  # no input: /dev/null, never the console
    result = guest.agent.exec('echo "$GREETING $HOME"; pwd', env={"GREETING": "hi"}, cwd="/proc")
    assert result.stdout == "hi /\n/proc\n"


@needs_uml
@pytest.mark.uml
def test_exec_large_stdin_passes_flow_control(guest: Guest) -> None:
    # More than n_tty's 4 KiB buffer by far: without the agent's acks UML's
    # console throttles and never delivers input again.
    data = os.urandom(1 << 20)
    result = guest.agent.exec(["md5sum"], input=data, timeout=60)
    assert result.stdout.split()[0] == hashlib.md5(data).hexdigest()
    assert guest.agent.ping() < 1.0


#: memcpy() into fresh anonymous pages, compared byte for byte: every first touch of a
#: page is a fault that runs UML's stub signal handler in the guest process.
FRESH_PAGES_C = r"""
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
int main(void) {
    size_t n = 1 << 16;
    unsigned char *src = malloc(n);
    int bad = 0;
    for (size_t i = 0; i < n; i++) src[i] = (unsigned char)(i * 131 + 7) | 1;
    for (int it = 0; it < 50; it++) {
        unsigned char *dst = mmap(NULL, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        memcpy(dst, src, n);
        for (size_t i = 0; i < n; i++)
            if (dst[i] != src[i]) { if (!bad++) printf("copy %d differs at byte %zu\n", it, i); break; }
        munmap(dst, n);
    }
    printf("%d of 50 copies corrupted\n", bad);
    return bad != 0;
}
"""


@needs_uml
@pytest.mark.uml
def test_guest_memcpy_into_fresh_pages(guest: Guest, agent_dir: Path) -> None:
    # On hosts whose XSAVE area is not UML's 832 bytes the launcher makes UML switch
    # only FXSAVE state; glibc's AVX memmove (chosen through AVX_Fast_Unaligned_Load
    # even with AVX2 masked) then lost the upper half of each YMM register at every
    # page fault: 64 KiB of agent stdin arrived with bytes 16-31 and 48-63 zeroed.
    source = agent_dir / "fresh-pages.c"
    source.write_text(FRESH_PAGES_C)
    binary = agent_dir / "fresh-pages"
    subprocess.run(["gcc", "-static", "-O2", "-o", str(binary), str(source)], check=True)
    binary.chmod(0o755)
    result = guest.agent.exec([str(binary)], timeout=60)
    assert (result.returncode, result.stdout) == (0, "0 of 50 copies corrupted\n")
    # without the guest's GLIBC_TUNABLES glibc picks its AVX-512 (EVEX) memmove, whose
    # registers UML's 832-byte view lacks: the xstate shim (lkl/xstate-shim.c) keeps them
    bare = guest.agent.exec(["env", "-i", str(binary)], timeout=60)
    assert (bare.returncode, bare.stdout) == (0, "0 of 50 copies corrupted\n")


@needs_uml
@pytest.mark.uml
def test_exec_large_stdin_random_sizes(guest: Guest) -> None:
    # Random bytes of several sizes through the agent's flow control and back (cat):
    # any byte lost, reordered or zeroed on the way shows up here, with its offset.
    import random

    rng = random.Random(9)
    for size in (4095, 4096, 65536, 100_000, 1 << 20):
        data = rng.randbytes(size)
        out = guest.agent.exec(["cat"], input=data, timeout=60).stdout_bytes
        pairs = enumerate(zip(data, out, strict=False))
        first = next((i for i, (a, b) in pairs if a != b), min(len(data), len(out)))
        assert out == data, f"{size} bytes: {len(out)} came back, first difference at {first}"


@needs_uml
@pytest.mark.uml
def test_exec_missing_program_or_cwd_raises(guest: Guest) -> None:
    with pytest.raises(ExecError, match=r"no-such-program.*ENOENT"):
        guest.agent.exec(["no-such-program", "x"])
    with pytest.raises(ExecError, match=r"/no/such/dir.*ENOENT"):
        guest.agent.exec(["true"], cwd="/no/such/dir")


@needs_uml
@pytest.mark.uml
def test_check_raises_with_command_status_and_stderr(guest: Guest) -> None:
    assert guest.agent.exec("true").check().returncode == 0
    with pytest.raises(ExecError, match=r"ls /nonexistent.*exit status 2.*nonexistent"):
        guest.agent.exec("ls /nonexistent").check()


@needs_uml
@pytest.mark.uml
def test_binary_output_round_trips(guest: Guest) -> None:
    data = bytes(range(256)) * 64 + b"\r\n\n\r\x00\xff\x11\x13\x03\x04"
    guest.agent.exec("cat > /tmp/all-bytes.bin", input=data).check()
    assert guest.agent.exec(["cat", "/tmp/all-bytes.bin"]).stdout_bytes == data
    assert guest.agent.read_file("/tmp/all-bytes.bin") == data
    assert guest.agent.exec(["cat", "/tmp/all-bytes.bin"]).stderr_bytes == b""


@needs_uml
@pytest.mark.uml
def test_output_cap_truncates_and_background_children_do_not_hang(guest: Guest) -> None:
    result = guest.agent.exec(["head", "-c", str(17 << 20), "/dev/zero"], timeout=120)
    assert result.truncated and len(result.stdout_bytes) == 16 << 20
    assert result.returncode == 0
    # The background sleep keeps stdout open: the reply still comes (after a grace period).
    result = guest.agent.exec("sleep 30 & echo started", timeout=5)
    assert result.stdout == "started\n"
    assert result.duration_s < 3
    # Each guest process is a host process: leave none behind for conftest's check.
    guest.agent.exec(["pkill", "-f", "^sleep 30$"]).check()


@needs_uml
@pytest.mark.uml
def test_twenty_concurrent_execs_get_their_own_output(guest: Guest) -> None:
    results: dict[int, ExecResult] = {}
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            results[i] = guest.agent.exec(f"echo out-{i}; sleep 0.3; echo err-{i} >&2; exit {i}")
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(20)]
    start = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors
    assert sorted(results) == list(range(20))
    for i, result in results.items():
        assert (result.stdout, result.stderr, result.returncode) == (f"out-{i}\n", f"err-{i}\n", i)
    # They ran side by side, not one after another (20 x 0.3 s = 6 s).
    assert time.monotonic() - start < 5.5


@needs_uml
@pytest.mark.uml
def test_timeout_kills_the_process_group_and_agent_keeps_serving(guest: Guest) -> None:
    start = time.monotonic()
    with pytest.raises(ExecTimeout, match=r"sleep 97.*1\.5 s"):
        guest.agent.exec("sleep 97; echo never", timeout=1.5)
    assert time.monotonic() - start < 3
    # The shell and its sleep child are gone (KILL went to the process group).
    for _ in range(50):
        left = guest.agent.exec(["pgrep", "-f", "sleep 97"])
        if left.returncode == 1:
            break
        time.sleep(0.1)
    assert left.returncode == 1, left.stdout
    assert guest.agent.exec(["echo", "still here"]).stdout == "still here\n"
    assert guest.agent.ping() < 1.0


@needs_uml
@pytest.mark.uml
def test_a_slow_reply_nudges_the_channel_and_still_arrives(guest: Guest) -> None:
    """Every 2 s of silence a ping goes out (a missed epoll edge in UML's line driver
    would otherwise leave a request unread); the reply and the channel are unaffected."""
    before = guest.agent.nudges
    result = guest.agent.exec("sleep 4.5; echo done", timeout=20)
    assert (result.stdout, result.returncode) == ("done\n", 0)
    assert guest.agent.nudges - before >= 2
    assert guest.agent.exec(["echo", "next"]).stdout == "next\n"
    assert guest.agent.ping() < 1.0


# ---------------------------------------------------------------- files


@needs_uml
@pytest.mark.uml
def test_read_file_of_missing_path_names_path_and_errno(guest: Guest) -> None:
    with pytest.raises(ExecError, match=r"/no/such/file.*ENOENT"):
        guest.agent.read_file("/no/such/file")
    with pytest.raises(ExecError, match=r"/proc.*EISDIR"):
        guest.agent.read_file("/proc")


@needs_uml
@pytest.mark.uml
def test_read_files_reads_counters_in_one_round_trip(guest: Guest) -> None:
    paths = ["/proc/net/dev", "/sys/class/net/lo/statistics/rx_bytes", "/no/such/counter"]
    result = guest.agent.read_files(paths)
    assert list(result) == paths
    net_dev = result["/proc/net/dev"]
    assert net_dev is not None and b"lo:" in net_dev
    rx_bytes = result["/sys/class/net/lo/statistics/rx_bytes"]
    assert rx_bytes is not None and rx_bytes.strip().isdigit()
    assert result["/no/such/counter"] is None
    assert guest.agent.read_files([]) == {}


# ---------------------------------------------------------------- failure


@needs_uml
@pytest.mark.uml
def test_guest_killed_pending_call_raises_instance_died(guests: GuestSet) -> None:
    doomed = guests.boot(f"agent-doomed-{os.getpid()}")
    outcome: list[BaseException | ExecResult] = []

    def run() -> None:
        try:
            outcome.append(doomed.agent.exec("sleep 100", timeout=60))
        except BaseException as exc:  # noqa: BLE001 - inspected below
            outcome.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    time.sleep(0.5)
    killed_at = time.monotonic()
    os.killpg(doomed.pgid, signal.SIGKILL)
    thread.join(10)
    assert not thread.is_alive(), "pending exec hangs after the guest died"
    assert time.monotonic() - killed_at < 5
    assert len(outcome) == 1 and isinstance(outcome[0], InstanceDied), outcome
    with pytest.raises(InstanceDied):
        doomed.agent.ping()
    with pytest.raises(InstanceDied):
        doomed.agent.read_file("/proc/net/dev")


@needs_uml
@pytest.mark.uml
def test_close_fails_pending_calls_and_is_idempotent(guests: GuestSet) -> None:
    closing = guests.boot(f"agent-closing-{os.getpid()}")
    outcome: list[BaseException | ExecResult] = []

    def run() -> None:
        try:
            outcome.append(closing.agent.exec("sleep 100", timeout=None))
        except BaseException as exc:  # noqa: BLE001 - inspected below
            outcome.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    time.sleep(0.3)
    closing.agent.close()
    closing.agent.close()
    thread.join(5)
    assert not thread.is_alive()
    assert len(outcome) == 1 and isinstance(outcome[0], InstanceDied), outcome
    assert closing.agent.closed


# ---------------------------------------------------------------- latency


@needs_uml
@pytest.mark.uml
def test_latency_medians(guest: Guest, capsys: pytest.CaptureFixture[str]) -> None:
    agent = guest.agent

    def median_ms(call: Callable[[], object], n: int = 50) -> float:
        times = []
        for _ in range(n):
            start = time.perf_counter()
            call()
            times.append(time.perf_counter() - start)
        return statistics.median(times) * 1000

    ping = median_ms(agent.ping)
    read = median_ms(lambda: agent.read_file("/proc/net/dev"))
    many = median_ms(
        lambda: agent.read_files(
            ["/proc/net/dev"]
            + [f"/sys/class/net/lo/statistics/{c}" for c in ("rx_bytes", "tx_bytes")]
        )
    )
    true_argv = median_ms(lambda: agent.exec(["true"]).check())
    true_shell = median_ms(lambda: agent.exec("true").check())
    with capsys.disabled():
        print(
            f"\nagent latency, median of 50 (ms): ping {ping:.2f}, read_file /proc/net/dev "
            f"{read:.2f}, read_files x3 {many:.2f}, exec ['true'] {true_argv:.1f}, "
            f"exec 'true' (sh -c) {true_shell:.1f}"
        )
    assert ping < 20 and read < 20 and many < 20
    assert true_argv < 1000 and true_shell < 1000


# ---------------------------------------------------------------- no guest


def _pipe_client() -> tuple[AgentClient, int]:
    """A client whose "guest" is the returned write end of a plain pipe."""
    guest_r, host_w = os.pipe()
    host_r, guest_w = os.pipe()
    os.close(guest_r)
    return AgentClient(host_w, host_r, name="pipe"), guest_w


def test_wait_ready_raises_exec_error_on_eof_and_timeout() -> None:
    client, guest_w = _pipe_client()
    os.write(guest_w, b"kernel noise\n")
    os.close(guest_w)
    with pytest.raises(ExecError, match="closed before the hello"):
        client.wait_ready(5)
    client.close()

    client, guest_w = _pipe_client()
    start = time.monotonic()
    with pytest.raises(ExecError, match="hello within 0.3 s"):
        client.wait_ready(0.3)
    assert time.monotonic() - start < 2
    client.close()
    os.close(guest_w)


def test_calls_before_ready_or_after_close_are_refused() -> None:
    client, guest_w = _pipe_client()
    with pytest.raises(StateError):
        client.ping()
    client.close()
    client.close()
    with pytest.raises((StateError, InstanceDied)):
        client.exec("true")
    os.close(guest_w)


def test_exec_result_check() -> None:
    ok = ExecResult(0, "", "", b"", b"", 0.1, command="'true'")
    assert ok.check() is ok
    killed = ExecResult(-9, "", "boom\n", b"", b"boom\n", 0.1, command="'x'")
    with pytest.raises(ExecError, match=r"'x' failed: killed by signal 9; stderr: boom"):
        killed.check()


@pytest.fixture
def pty_agent(agent_dir: Path) -> Iterator[tuple[AgentClient, subprocess.Popen[bytes]]]:
    """The agent on a host pseudo-terminal: the protocol without a guest."""
    master, slave = pty.openpty()
    slave_name = os.ttyname(slave)
    proc = subprocess.Popen(
        [str(agent_dir / "stdpkt-agent"), slave_name],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        start_new_session=True,
    )
    client = AgentClient(os.dup(master), master, name="pty")
    try:
        # Hold the slave open until the agent has it: a master with no slave open reads EIO.
        client.wait_ready(10)
        os.close(slave)
        slave = -1
        yield client, proc
    finally:
        if slave >= 0:
            os.close(slave)
        client.close()
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(5)


def test_agent_protocol_on_a_host_pty(
    pty_agent: tuple[AgentClient, subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    client, proc = pty_agent
    data = bytes(range(256)) * 40
    (tmp_path / "all.bin").write_bytes(data)
    assert client.read_file(str(tmp_path / "all.bin")) == data
    assert client.exec(["cat", str(tmp_path / "all.bin")]).stdout_bytes == data
    assert client.exec(["cat"], input=data).stdout_bytes == data
    assert client.exec("echo $X; exit 4", env={"X": "y"}).returncode == 4
    with pytest.raises(ExecTimeout):
        client.exec(["sleep", "30"], timeout=0.5)
    assert client.ping() < 1
    client.close()
    assert proc.wait(5) == 0  # the agent exits when the host end goes away
