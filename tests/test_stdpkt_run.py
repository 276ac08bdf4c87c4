"""`stdpkt run` end to end: real kernels, real traffic, real pcap pipes."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from .conftest import REPO, uml_pids
from .pipeline import Pipeline, Stage

PAPER = REPO / "examples" / "paper"
HELPERS = Path(__file__).parent / "helpers"


def paper_stages(stdpkt: str, *, client: Path, nat: Path, firewall: Path, server: Path,
                 fw_rx_back: str = "p2", nat_verbose: bool = False) -> list[Stage]:
    """The paper's section 2.3 pipeline: client | nat | firewall | server."""
    return [
        Stage("client", [stdpkt, "run", "--oneshot", "--name", "client", str(client)],
              {"IF0": "p1|/dev/stdout", "IP0": "10.0.0.2", "NETMASK0": "24", "GATEWAY": "10.0.0.1"}),
        Stage("nat", [stdpkt, "run", "--name", "nat", *(["-v"] if nat_verbose else []), str(nat)],
              {"IF0": "/dev/stdin|p1", "IP0": "10.0.0.1", "NETMASK0": "24",
               "IF1": "p2|/dev/stdout", "IP1": "192.168.0.1", "NETMASK1": "24"}),
        Stage("firewall", [stdpkt, "run", "--name", "firewall", str(firewall)],
              {"IF0": f"/dev/stdin|{fw_rx_back}", "IP0": "192.168.0.2", "NETMASK0": "24",
               "IF1": "p3|/dev/stdout", "IP1": "192.168.1.1", "NETMASK1": "24"}),
        Stage("server", [stdpkt, "run", "--name", "server", str(server)],
              {"IF0": "/dev/stdin|p3", "IP0": "192.168.1.2", "NETMASK0": "24",
               "GATEWAY": "192.168.1.1"}),
    ]


def write_script(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(0o755)
    return path


NAT_WITH_CONNTRACK = """\
{nat_config}
# report the first tracked iperf3 flow, as conntrack lists it inside this NAT
( for i in $(seq 600); do
    out=$(conntrack -L -p tcp --dport 5201 2>/dev/null)
    [ -n "$out" ] && {{ echo "CONNTRACK: $out"; break; }}
    sleep 0.2
  done ) &
"""


@pytest.mark.uml
def test_paper_chain_ping_http_iperf_nat_firewall(stdpkt_bin: str, tmp_path: Path) -> None:
    # the script is copied into the instance; a path it sources might be hidden there
    # (a checkout under /tmp), so the NAT configuration is inlined
    nat = write_script(tmp_path / "nat.sh", NAT_WITH_CONNTRACK.format(
        nat_config=(PAPER / "nat-config.sh").read_text()))
    stages = paper_stages(stdpkt_bin, client=PAPER / "client.sh", nat=nat,
                          firewall=PAPER / "firewall-config.sh", server=PAPER / "server.sh")
    with Pipeline(stages, tmp_path) as pipe:
        codes = pipe.wait(240)
        log = pipe.all_stderr()
    assert codes[0] == 0, log
    client = pipe.stderr("client")
    # ping and TCP crossed three kernels
    assert re.search(r"3 packets transmitted, 3 received", client), log
    assert re.search(r"\d+(\.\d+)? Mbits/sec.*receiver", client), log
    # NAT is real: the server saw the NAT's outside address
    assert "server saw the connection coming from 192.168.0.1" in client, log
    # and conntrack inside the NAT tracked the flow, translated to that address
    track = pipe.stderr("nat")
    assert re.search(r"CONNTRACK: .*src=10\.0\.0\.2 dst=192\.168\.1\.2 .*dport=5201 .*"
                     r"src=192\.168\.1\.2 dst=192\.168\.0\.1", track), log
    # firewall is real: 80 and 5201 passed (with their replies), 8080 was dropped
    assert "port 8080 blocked, as configured" in client, log
    # the whole pipeline ended after the oneshot client did
    assert all(c is not None for c in codes), codes


def _relay_fifo(src: Path, dst: Path, copy: Path, stop: threading.Event) -> threading.Thread:
    """Copy FIFO src → FIFO dst, keeping a copy of the bytes (a `tee` on a named pipe)."""
    def run() -> None:
        fds: dict[str, int] = {}
        openers = [
            threading.Thread(target=lambda: fds.__setitem__("r", os.open(src, os.O_RDONLY))),
            threading.Thread(target=lambda: fds.__setitem__("w", os.open(dst, os.O_WRONLY))),
        ]
        for t in openers:
            t.start()
        for t in openers:
            t.join()
        with open(copy, "wb") as out:
            while not stop.is_set():
                data = os.read(fds["r"], 65536)
                if not data:
                    break
                out.write(data)
                out.flush()
                try:
                    os.write(fds["w"], data)
                except OSError:
                    break
        os.close(fds["r"])
        os.close(fds["w"])

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


@pytest.mark.uml
def test_tee_in_the_middle_captures_tcp_handshake(stdpkt_bin: str, tmp_path: Path) -> None:
    from scapy.all import TCP, rdpcap  # type: ignore[attr-defined]

    for name in ("p1", "p2", "p2w", "p3"):
        os.mkfifo(tmp_path / name)
    stages = paper_stages(stdpkt_bin, client=PAPER / "client.sh", nat=PAPER / "nat-config.sh",
                          firewall=PAPER / "firewall-config.sh", server=PAPER / "server.sh",
                          fw_rx_back="p2w")
    # forward direction: a plain `tee` stage between nat and firewall
    stages.insert(2, Stage("tee", ["tee", str(tmp_path / "forward.pcap")]))
    stop = threading.Event()
    back = _relay_fifo(tmp_path / "p2w", tmp_path / "p2", tmp_path / "backward.pcap", stop)
    with Pipeline(stages, tmp_path) as pipe:
        codes = pipe.wait(240)
        log = pipe.all_stderr()
    stop.set()
    back.join(10)
    assert codes[0] == 0, log
    # tcpdump reads the tee'd stream as it is
    out = subprocess.run(["tcpdump", "-nn", "-r", str(tmp_path / "forward.pcap"), "tcp port 80"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "192.168.0.1" in out.stdout and "192.168.1.2.80" in out.stdout, out.stdout[:2000]
    fwd = [p for p in rdpcap(str(tmp_path / "forward.pcap")) if TCP in p and p[TCP].dport == 80]
    rev = [p for p in rdpcap(str(tmp_path / "backward.pcap")) if TCP in p and p[TCP].sport == 80]
    # the client retries until the server listens: find a SYN that was answered
    handshakes = []
    for syn in (p for p in fwd if p[TCP].flags == "S"):
        synack = next((p for p in rev if p[TCP].flags == "SA"
                       and p[TCP].ack == syn[TCP].seq + 1 and p[TCP].dport == syn[TCP].sport), None)
        if synack is None:
            continue
        ack = next((p for p in fwd if p[TCP].flags == "A" and p[TCP].seq == syn[TCP].seq + 1
                    and p[TCP].ack == synack[TCP].seq + 1), None)
        if ack is not None:
            handshakes.append((syn, synack, ack))
    assert handshakes, "no complete SYN / SYN-ACK / ACK in the captures"


@pytest.mark.uml
def test_malformed_records_are_counted_and_traffic_still_flows(stdpkt_bin: str,
                                                               tmp_path: Path) -> None:
    stages = paper_stages(stdpkt_bin, client=PAPER / "client.sh", nat=PAPER / "nat-config.sh",
                          firewall=PAPER / "firewall-config.sh", server=PAPER / "server.sh",
                          nat_verbose=True)
    stages.insert(1, Stage("mangle", [sys.executable, str(HELPERS / "mangle_pcap.py"), "2"]))
    with Pipeline(stages, tmp_path) as pipe:
        codes = pipe.wait(240)
        log = pipe.all_stderr()
    assert "INJECTED 3" in pipe.stderr("mangle"), log
    assert codes[0] == 0, log  # traffic after the bad records still flowed
    nat = pipe.stderr("nat")
    reported = [int(n) for n in re.findall(r"malformed records so far: (\d+)", nat)]
    assert reported and reported[-1] == 3, nat
    assert re.search(r"eth0 rx: .*malformed=3\b", nat), nat
    assert "pcap record" in nat, nat  # the message says what was wrong


@pytest.mark.parametrize(
    ("env", "needle"),
    [
        ({"IF0": "a|b|c"}, "IF0"),
        ({"IF0": "p1|p2", "IP0": "300.1.1.1"}, "IP0"),
        ({"IF0": "p1|p2", "NETMASK0": "24"}, "NETMASK0"),
        ({"IF0": "p1|p2", "MTU0": "70000"}, "MTU0"),
        ({"IF1": "p1|p2"}, "IF1"),
        ({"IF0": "p1|p2", "GATEWAY": "nowhere"}, "GATEWAY"),
        ({"IF9": "p1|p2"}, "IF9"),
    ],
)
def test_bad_variables_exit_2_with_one_line(stdpkt_bin: str, tmp_path: Path,
                                            env: dict[str, str], needle: str) -> None:
    script = write_script(tmp_path / "nf.sh", "true\n")
    before = uml_pids()
    result = subprocess.run([stdpkt_bin, "run", str(script)], env={**os.environ, **env},
                            capture_output=True, text=True, timeout=30, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("stdpkt: ") and needle in lines[0], lines
    assert result.stdout == ""
    assert uml_pids() <= before
    assert not (tmp_path / "p1").exists()  # nothing was created before the check


def test_missing_script_exit_2(stdpkt_bin: str, tmp_path: Path) -> None:
    result = subprocess.run([stdpkt_bin, "run", str(tmp_path / "nope.sh")],
                            env={**os.environ, "IF0": "p1|p2"}, capture_output=True, text=True,
                            timeout=30)
    assert result.returncode == 2
    assert "nope.sh" in result.stderr and "no such file" in result.stderr


@pytest.mark.uml
def test_killing_one_instance_ends_the_pipeline(stdpkt_bin: str, tmp_path: Path) -> None:
    client = write_script(tmp_path / "client.sh", """\
until ping -c1 -W1 192.168.1.2 >/dev/null 2>&1; do :; done
echo FLOWING
iperf3 -c 192.168.1.2 -t 60 >/dev/null
""")
    stages = paper_stages(stdpkt_bin, client=client, nat=PAPER / "nat-config.sh",
                          firewall=PAPER / "firewall-config.sh", server=PAPER / "server.sh")
    with Pipeline(stages, tmp_path) as pipe:
        deadline = time.monotonic() + 120
        while "FLOWING" not in pipe.stderr("client") and time.monotonic() < deadline:
            time.sleep(0.5)
        assert "FLOWING" in pipe.stderr("client"), pipe.all_stderr()
        time.sleep(2)  # mid-flow
        pipe.procs[2].send_signal(signal.SIGKILL)  # the firewall's stdpkt, no chance to clean up
        t0 = time.monotonic()
        codes = pipe.wait(30)
        ended = time.monotonic() - t0
    assert all(c is not None for c in codes), (codes, pipe.all_stderr())
    assert ended < 30
    # its kernel went with it (parent-death signal) and every neighbour exited:
    # the no_leaked_kernels fixture checks that no linux.uml process is left


CONTAIN = """\
mount -o remount,rw / && echo REMOUNTED-RW
echo pwned > {target}/direct 2>/dev/null && echo WROTE-DIRECT
mkdir -p /run/h && mount -t hostfs -o {target} hostfs /run/h && echo HOSTFS-AGAIN
echo pwned > /run/h/via-hostfs 2>/dev/null && echo WROTE-HOSTFS
mkdir /run/h/newdir 2>/dev/null && echo MADE-DIR
true
"""


@pytest.mark.uml
@pytest.mark.parametrize("mode", ["auto", "uid"])
def test_guest_cannot_write_the_host(stdpkt_bin: str, tmp_path: Path, mode: str) -> None:
    if mode == "uid" and os.geteuid() != 0:
        pytest.skip("the uid fallback drops from root to nobody: needs root")
    # /var/tmp: not hidden by the guest's own tmpfs mounts
    target = Path(f"/var/tmp/stdpkt-contain-{os.getpid()}-{mode}")
    target.mkdir()
    try:
        # auto (Landlock) must hold even where plain permissions would allow the write
        target.chmod(0o777 if mode == "auto" else 0o755)
        script = write_script(tmp_path / "escape.sh", CONTAIN.format(target=target))
        result = subprocess.run([stdpkt_bin, "run", "--oneshot", str(script)],
                                env={**os.environ, "STDPKT_CONFINE": mode},
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr
        assert "REMOUNTED-RW" in result.stderr, result.stderr  # the attempt was real
        assert "HOSTFS-AGAIN" in result.stderr, result.stderr
        assert "WROTE" not in result.stderr and "MADE-DIR" not in result.stderr, result.stderr
        assert list(target.iterdir()) == []
    finally:
        for child in target.iterdir():
            child.unlink() if child.is_file() else child.rmdir()
        target.rmdir()


@pytest.mark.uml
def test_oneshot_exit_status_and_script_environment(stdpkt_bin: str, tmp_path: Path) -> None:
    script = write_script(tmp_path / "s.sh", """\
echo "ip0=$IP0 mask=$NETMASK0 mtu=$MTU0"
ip -o -4 addr show dev eth0 | tr -s ' ' | cut -d' ' -f2,4
cat /sys/class/net/eth0/mtu
exit 7
""")
    result = subprocess.run([stdpkt_bin, "run", "--oneshot", str(script)],
                            env={**os.environ, "IF0": f"{tmp_path}/in|{tmp_path}/out",
                                 "IP0": "10.9.8.7", "NETMASK0": "255.255.0.0", "MTU0": "9000"},
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 7, result.stderr
    assert "ip0=10.9.8.7 mask=16 mtu=9000" in result.stderr
    assert "eth0 10.9.8.7/16" in result.stderr
    assert "\n9000\n" in result.stderr
    assert result.stdout == ""  # stdout is the packet channel only


@pytest.mark.uml
@pytest.mark.root
def test_paper_example_with_taps_at_both_ends(stdpkt_bin: str, tmp_path: Path) -> None:
    """The paper's own example: tap0 | NAT | firewall | tap1, the ends being hosts in
    network namespaces this test creates (root only)."""
    if os.geteuid() != 0:
        pytest.skip("tap devices and network namespaces need root")
    ns = [f"stdpkt-t{os.getpid()}-{i}" for i in (0, 1)]
    ip = ["ip"]
    for n in ns:
        subprocess.run([*ip, "netns", "add", n], check=True)
    server = None
    try:
        stages = [
            Stage("nat", ["ip", "netns", "exec", ns[0], stdpkt_bin, "run", "--name", "nat",
                          str(PAPER / "nat-config.sh")],
                  {"IF0": "tap:tap0", "IP0": "10.0.0.1", "NETMASK0": "24",
                   "IF1": "p2|/dev/stdout", "IP1": "192.168.0.1", "NETMASK1": "24"}),
            Stage("firewall", ["ip", "netns", "exec", ns[1], stdpkt_bin, "run", "--name", "fw",
                               str(PAPER / "firewall-config.sh")],
                  {"IF0": "/dev/stdin|p2", "IP0": "192.168.0.2", "NETMASK0": "24",
                   "IF1": "tap:tap1", "IP1": "192.168.1.1", "NETMASK1": "24"}),
        ]
        with Pipeline(stages, tmp_path) as pipe:
            # the kernels create the taps in their namespaces; the test's hosts sit behind them
            for n, tap, addr, gw in ((ns[0], "tap0", "10.0.0.2/24", "10.0.0.1"),
                                     (ns[1], "tap1", "192.168.1.2/24", "192.168.1.1")):
                deadline = time.monotonic() + 60
                while subprocess.run([*ip, "-n", n, "link", "show", tap],
                                     capture_output=True).returncode != 0:
                    assert time.monotonic() < deadline, pipe.all_stderr()
                    time.sleep(0.2)
                subprocess.run([*ip, "-n", n, "addr", "add", addr, "dev", tap], check=True)
                subprocess.run([*ip, "-n", n, "link", "set", tap, "up"], check=True)
                subprocess.run([*ip, "-n", n, "link", "set", "lo", "up"], check=True)
                subprocess.run([*ip, "-n", n, "route", "add", "default", "via", gw], check=True)
            www = tmp_path / "www"
            www.mkdir()
            (www / "index.html").write_text("hello through taps\n")
            server = subprocess.Popen(["ip", "netns", "exec", ns[1], "busybox", "httpd", "-f",
                                       "-p", "192.168.1.2:80", "-h", str(www)])
            deadline = time.monotonic() + 60
            while True:
                got = subprocess.run(["ip", "netns", "exec", ns[0], "curl", "-s", "-m", "3",
                                      "http://192.168.1.2/"], capture_output=True, text=True)
                if got.returncode == 0 or time.monotonic() > deadline:
                    break
                time.sleep(0.5)
            assert got.stdout == "hello through taps\n", (got.stderr, pipe.all_stderr())
    finally:
        if server is not None:
            server.terminate()
            server.wait(10)
        for n in ns:
            subprocess.run([*ip, "netns", "del", n])


def test_tap_without_privilege_is_refused(stdpkt_bin: str, tmp_path: Path) -> None:
    script = write_script(tmp_path / "nf.sh", "true\n")
    argv = [stdpkt_bin, "run", str(script)]
    if os.geteuid() == 0:  # drop every capability for this one process
        argv = ["setpriv", "--inh-caps=-all", "--bounding-set=-all", *argv]
    result = subprocess.run(argv, env={**os.environ, "IF0": "tap:tap9"},
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 2, result.stderr
    assert "IF0" in result.stderr and "root" in result.stderr


@pytest.mark.uml
def test_boot_failure_reports_the_console_tail(stdpkt_bin: str, tmp_path: Path) -> None:
    fake = write_script(tmp_path / "fake-kernel", "#!/bin/sh\necho 'fake kernel: out of cheese'\nexit 3\n")
    script = write_script(tmp_path / "nf.sh", "true\n")
    t0 = time.monotonic()
    result = subprocess.run([stdpkt_bin, "run", str(script)],
                            env={**os.environ, "STDPKT_KERNEL": str(fake), "IF0": "a|b"},
                            capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert result.returncode == 1, result.stderr
    assert "exited during boot" in result.stderr
    assert "fake kernel: out of cheese" in result.stderr  # the console tail
    assert time.monotonic() - t0 < 30  # no hang waiting for pipes or a boot timeout
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()  # FIFOs removed
