"""The fast boot path: the C guest init (lkl/init.c) against lkl/init.sh, the boot profile,
and ports on a caller's socket (two kernels joined with no relay).

Tests marked ``uml`` boot real kernels, at most two at a time.
"""

from __future__ import annotations

import ipaddress
import os
import re
import select
import socket
import time
from pathlib import Path

import pytest

from stdpkt_lab.engine import bootprofile
from stdpkt_lab.engine.instance import Instance, guest_init
from stdpkt_lab.engine.paths import lkl_dir
from stdpkt_lab.engine.spec import InstanceSpec, PortSpec
from stdpkt_lab.errors import ConfigError, EnvironmentProblem, InstanceDied, StateError

#: Everything a script can observe of what init did, printed on the console.
PROBE = r"""#!/bin/sh
echo "== env"; env | sort
echo "== cwd"; pwd
echo "== signals"; grep -E "^Sig(Ign|Blk)" /proc/self/status
for p in /proc/[0-9]*; do
    case "$(tr '\0' ' ' < $p/cmdline 2>/dev/null)" in
        *stdpkt-agent*) echo "== agent"; grep -E "^Sig(Ign|Blk)" $p/status; readlink $p/fd/0;;
    esac
done
echo "== stdin"; readlink /proc/self/fd/0
echo "== mounts"; cat /proc/mounts
echo "== addresses"; ip -o addr show | awk '{$1=""; print}'
echo "== links"; ip -o link show | sed 's/link\/ether [0-9a-f:]*//'
echo "== routes"; ip route; ip route show table local
echo "== sysctl"
for f in kernel/hostname kernel/modprobe kernel/ctrl-alt-del net/ipv4/ip_forward \
         net/ipv4/conf/all/arp_notify net/ipv4/conf/eth0/arp_notify net/ipv4/conf/eth1/arp_notify; do
    echo "$f=$(cat /proc/sys/$f)"
done
echo "== commands"; command -v iptables iptables-save iptables-restore ip6tables modprobe
readlink /run/stdpkt/bin/iptables /run/stdpkt/mod/lib/modules/*
cat /run/stdpkt/bin/modprobe; ls -l /run/stdpkt/bin/modprobe | cut -c1-10
echo "== hosts"; cat /etc/hosts
echo "== umask"; umask
echo "== iptables"; iptables -t nat -L POSTROUTING -n >/dev/null && echo nat-ok
lsmod | awk 'NR > 1 {print $1}' | sort
exit 7
"""


def _spec(tmp_path: Path, name: str) -> InstanceSpec:
    script = tmp_path / "probe.sh"
    script.write_text(PROBE)
    return InstanceSpec(
        name,
        ports=(PortSpec(0, ipaddress.IPv4Interface("10.0.0.1/24")),
               PortSpec(1, ipaddress.IPv4Interface("10.1.0.1/16"), mtu=9000)),
        gateway=ipaddress.IPv4Address("10.0.0.254"),
        routes=("10.5.0.0/24 via 10.1.0.9", "10.6.0.0/24 dev eth1",
                "10.7.0.0/24 via 10.1.0.9 metric 5", "10.8.0.0/24 via 10.1.0.9"),
        hosts="127.0.0.1 localhost\n10.0.0.2 peer\n",
        setup="echo setup-ran $IP0 $FOO; exit 3",
        script=script,
        oneshot=True,
        env={"FOO": "a b'c\"d $HOME `x`\nsecond line", "EMPTY": ""},
        cwd="/usr/share",  # not tmp_path: the guest's own /tmp hides it (init then stays in /)
    )


def _run_probe(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, init: str) -> tuple[int | None, str, float]:
    monkeypatch.setenv("STDPKT_INIT", init)
    lines: list[str] = []
    inst = Instance(_spec(tmp_path, f"probe-{init}"), on_console=lines.append)
    try:
        inst.start()
        sock = inst.port(0)
        assert select.select([sock], [], [], 60)[0], "no frame from the guest: no gratuitous ARP"
        assert inst.boot_started is not None
        first_frame = time.monotonic() - inst.boot_started
        frame = sock.recv(65536)
        assert frame[12:14] == b"\x08\x06", "the first frame is an ARP"
        status = inst.wait(60)
        tail = inst.console_tail(80)
    finally:
        inst.stop()
    text = "\n".join(lines)
    assert "== env" in text, tail
    return status, _normalise(text, tmp_path), first_frame


def _normalise(text: str, tmp_path: Path) -> str:
    text = re.sub(r"/(dev/shm|tmp)/[^ \n:]*stdpkt-[^/ \n]*", "RUNDIR", text)
    text = text.replace(str(tmp_path), "TMP")
    text = re.sub(r"probe-(shell|c)", "probe-NAME", text)
    text = re.sub(r"STDPKT_AGENT=.*", "STDPKT_AGENT=AGENT", text)
    # lkl/init.sh's `mount` (util-linux) leaves /run/mount/utab; nothing else differs there
    return text


@pytest.mark.uml
def test_c_init_does_what_the_shell_init_does(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    shell_status, shell_out, shell_frame = _run_probe(tmp_path, monkeypatch, "shell")
    c_status, c_out, c_frame = _run_probe(tmp_path, monkeypatch, "c")
    assert shell_status == c_status == 7  # the script's status ends a oneshot instance
    assert c_out == shell_out
    # what both must show, not only agree on
    for expected in (
        "setup-ran 10.0.0.1 a b'c\"d $HOME `x`", "second line", "EMPTY=\n",
        "PATH=/run/stdpkt/bin:/usr/local/sbin:", "HOME=/root", "TERM=dumb", "PWD=/usr/share", "OLDPWD=/",
        "IP1=10.1.0.1", "NETMASK1=16", "MTU1=9000", "GATEWAY=10.0.0.254",
        "eth0 inet 10.0.0.1/24 scope global eth0", "eth1 inet 10.1.0.1/16 scope global eth1",
        "default via 10.0.0.254 dev eth0", "10.5.0.0/24 via 10.1.0.9 dev eth1",
        "10.6.0.0/24 dev eth1 scope link", "10.7.0.0/24 via 10.1.0.9 dev eth1 metric 5",
        "10.8.0.0/24 via 10.1.0.9 dev eth1", "mtu 9000",
        "kernel/hostname=probe-NAME", "kernel/modprobe=/run/stdpkt/bin/modprobe",
        "kernel/ctrl-alt-del=0", "net/ipv4/ip_forward=1", "net/ipv4/conf/eth1/arp_notify=1",
        "/run/stdpkt/bin/iptables", "/usr/sbin/iptables-legacy", "10.0.0.2 peer", "nat-ok",
        "hostfs /run/stdpkt/host hostfs", "tmp /tmp tmpfs rw,relatime 0 0", "hostfs /etc/hosts",
        "iptable_nat",
    ):
        assert expected in c_out, expected
    assert "SigIgn:\t0000000000000000" in c_out.split("== signals")[1].split("==")[0]
    # a shell's `&`: the agent ignores SIGINT and SIGQUIT, reads /dev/null
    agent = c_out.split("== agent")[1].split("==")[0]
    ignored = int(re.search(r"SigIgn:\t([0-9a-f]+)", agent).group(1), 16)  # type: ignore[union-attr]
    assert "/dev/null" in agent and ignored & 0b110 == 0b110
    assert c_frame < shell_frame


@pytest.mark.uml
def test_c_init_reports_setup_failures_like_the_shell(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """A bad route: a WARN marker (the console tail says why), the script still runs."""
    for init in ("shell", "c"):
        monkeypatch.setenv("STDPKT_INIT", init)
        lines: list[str] = []
        inst = Instance(InstanceSpec(
            f"warn-{init}", ports=(PortSpec(0, ipaddress.IPv4Interface("10.0.0.1/24")),),
            routes=("10.9.0.0/24 via 192.0.2.1",), setup="exit 4", oneshot=True,
        ), on_console=lines.append)
        try:
            inst.start()
            assert inst.wait(60) == 0
            tail = inst.console_tail(40)
        finally:
            inst.stop()
        assert "guest init: interface set-up failed (see above)" in tail, (init, tail)
        assert "guest init: setup script exited with status 4" in tail, (init, tail)


@pytest.mark.uml
def test_ports_on_a_callers_socketpair_join_two_kernels_directly() -> None:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    one = Instance(InstanceSpec("direct-a", ports=(
        PortSpec(0, ipaddress.IPv4Interface("10.3.0.1/24"), 65500, fd=a.fileno()),)))
    two = Instance(InstanceSpec("direct-b", ports=(
        PortSpec(0, ipaddress.IPv4Interface("10.3.0.2/24"), 65500, fd=b.fileno()),)))
    try:
        one.start()
        two.start()
        assert a.fileno() >= 0 and b.fileno() >= 0  # the caller's ends stay the caller's
        a.close()
        b.close()
        one.wait_ready()
        two.wait_ready()
        with pytest.raises(StateError, match="no host end"):
            one.port(0)
        assert one.exec("ping -c 2 -W 2 -s 30000 10.3.0.2").returncode == 0
        assert "mtu 65500" in two.exec("ip link show eth0").stdout
    finally:
        a.close()
        b.close()
        one.stop()
        two.stop()


def test_port_spec_fd_excludes_tap() -> None:
    with pytest.raises(ValueError, match="exclude"):
        PortSpec(0, tap="tap0", fd=3)


def test_guest_init_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STDPKT_INIT", "shell")
    assert guest_init() == str(lkl_dir() / "init.sh")
    monkeypatch.setenv("STDPKT_INIT", "c")
    assert guest_init().endswith("/stdpkt-init")
    monkeypatch.delenv("STDPKT_INIT")
    assert guest_init().endswith("/stdpkt-init")  # built by the set-up: the default
    monkeypatch.setenv("STDPKT_INIT", "busybox")
    with pytest.raises(EnvironmentProblem, match="STDPKT_INIT"):
        guest_init()


def test_boot_profile_skips_the_slow_initcalls() -> None:
    args = bootprofile.profile_args()
    blacklist = next(a for a in args if a.startswith("initcall_blacklist=")).split("=", 1)[1].split(",")
    for initcall in ("raid6_select_algo", "crypto_algapi_init", "init_jfs_fs", "ssl_init"):
        assert initcall in blacklist
    assert any(a.startswith("lpj=") for a in args)  # no delay-loop calibration


# ---------------------------------------------------------------- the warm pool


@pytest.mark.uml
def test_a_pooled_instance_takes_its_configuration(tmp_path: Path) -> None:
    from stdpkt_lab.engine.pool import InstancePool

    script = tmp_path / "nf.sh"
    script.write_text("echo script-ran $STDPKT_NAME $IP1\nhostname\n")
    with InstancePool(2, ports=(1500, 9000)) as pool:
        pool.wait_filled(120)
        assert pool.available == 2
        bad = InstanceSpec("bad", ports=(PortSpec(0), PortSpec(1)))  # MTU 1500 on eth1
        with pytest.raises(ConfigError, match="MTU"):
            pool.take(bad)
        lines: list[str] = []
        spec = InstanceSpec(
            "router7",
            ports=(PortSpec(0, ipaddress.IPv4Interface("10.4.0.1/24")),
                   PortSpec(1, ipaddress.IPv4Interface("10.5.0.1/24"), mtu=9000)),
            routes=("10.6.0.0/24 via 10.5.0.2",), hosts="10.5.0.2 next\n",
            setup="echo setup-ran $IP0", script=script,
        )
        inst = pool.take(spec, on_console=lines.append)
        try:
            t0 = time.monotonic()
            sock = inst.port(0)
            assert select.select([sock], [], [], 10)[0]
            up_ms = (time.monotonic() - t0) * 1000
            inst.wait_ready(30)
            assert inst.name == "router7"
            out = inst.exec("hostname; ip -o addr show eth1; ip route; cat /etc/hosts").stdout
            assert "router7" in out and "10.5.0.1/24" in out and "10.6.0.0/24 via 10.5.0.2" in out
            assert "10.5.0.2 next" in out
            deadline = time.monotonic() + 10
            while not any("script-ran router7 10.5.0.1" in line for line in lines):
                assert time.monotonic() < deadline, lines
                time.sleep(0.05)
            assert inst.mconsole.proc("sys/kernel/hostname").strip() == "router7"
            assert up_ms < 1000  # milliseconds in practice (bench/boot.py --pool)
            pool.wait_filled(120)  # a replacement was booted
        finally:
            inst.stop()
    assert pool.available == 0


def test_pool_mismatch_messages() -> None:
    from stdpkt_lab.engine.spec import pool_mismatch

    blank = InstanceSpec("p", ports=(PortSpec(0),), mem_mb=128)
    assert pool_mismatch(blank, InstanceSpec("a", ports=(PortSpec(0, mtu=1500),))) == ""
    assert "ports" in pool_mismatch(blank, InstanceSpec("a"))
    assert "mem_mb" in pool_mismatch(blank, InstanceSpec("a", ports=(PortSpec(0),), mem_mb=64))
    assert "tap" in pool_mismatch(blank, InstanceSpec("a", ports=(PortSpec(0, tap="t0"),)))


def test_a_file_copied_again_into_the_run_directory_is_replaced_not_rewritten(tmp_path) -> None:
    # A pooled instance's agent runs from its copy in the run directory (a checkout under
    # /tmp is hidden from the guest); configuring the instance copies it again.  Rewriting
    # the copy in place changed the program under an agent still loading it (CI: "agent
    # did not say hello", the console showing a garbled glibc assertion).  The copy must
    # be a new file: whoever has the old one open keeps reading the old bytes.
    from stdpkt_lab.engine.guest_files import copy_into

    source, run_dir = tmp_path / "stdpkt-agent", tmp_path / "run"
    run_dir.mkdir()
    source.write_bytes(b"old program")
    guest = copy_into(str(source), run_dir)
    copy = run_dir / "guest-stdpkt-agent"
    assert guest.endswith("/guest-stdpkt-agent") and copy.read_bytes() == b"old program"
    inode = copy.stat().st_ino
    assert copy_into(str(source), run_dir) == guest and copy.stat().st_ino == inode  # unchanged: kept
    with copy.open("rb") as running:
        source.write_bytes(b"new program, longer")
        os.utime(source, ns=(1, 2))  # a new modification time, as any rewrite gives
        copy_into(str(source), run_dir)
        assert running.read() == b"old program"
    assert copy.read_bytes() == b"new program, longer"
    assert sorted(p.name for p in run_dir.iterdir()) == ["guest-stdpkt-agent"]  # no temporary left


@pytest.mark.uml
def test_an_agent_that_dies_fails_its_calls_at_once_naming_how() -> None:
    # The guest init reaps the agent and says so on the console: a call waiting on it,
    # and every later one, fails now with how it ended instead of waiting out its timeout.
    inst = Instance(InstanceSpec("agentdies"))
    try:
        inst.boot()
        assert inst.exec("true").returncode == 0
        with pytest.raises(InstanceDied, match=r"exec agent in the guest exited \(killed by signal 9"):
            inst.exec("kill -KILL $PPID; sleep 100", timeout=100)
        with pytest.raises(InstanceDied, match="exec agent in the guest exited"):
            inst.exec("true", timeout=100)
        assert "guest init: the exec agent exited (killed by signal 9 (Killed))" in inst.console_tail()
        assert inst.state.value == "running"  # the kernel itself lives on
    finally:
        inst.stop()
