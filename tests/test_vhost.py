"""vhost-user ports (stdpkt_lab/engine/vhost.py, relay/vhost.c): real guests with virtio-net
devices served by our back end pass ping and TCP, their TSO super-frames cross a Lab link
whole and are readable in a pcap, a vector peer gets finished (plain) frames, and a stop
leaves no panic and nothing behind."""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import networkx as nx
import pytest

import stdpkt_lab as sl
from stdpkt_lab.engine.instance import Instance
from stdpkt_lab.engine.spec import InstanceSpec, PortSpec, port_kind
from stdpkt_lab.engine.variables import parse_variables
from stdpkt_lab.errors import ChainError, VariableError


def test_port_kinds_and_bad_names() -> None:
    assert port_kind("vector") == (False, True)
    assert port_kind("vhost") == (True, True)
    assert port_kind("vhost-plain") == (True, False)
    with pytest.raises(ValueError, match="unknown port kind 'virtio'"):
        port_kind("virtio")
    with pytest.raises(VariableError, match="STDPKT_PORTS: unknown port kind 'fast'"):
        parse_variables({"IF0": "a|b", "STDPKT_PORTS": "fast"}, name="x", script=None)
    cfg = parse_variables({"IF0": "a|b", "STDPKT_PORTS": "vhost"}, name="x", script=None)
    assert cfg.spec.ports[0].vhost and cfg.spec.ports[0].offload
    g = sl.chain("a", "b")
    g.graph["ports"] = "turbo"
    with pytest.raises(ChainError, match="unknown port kind 'turbo'"):
        sl.Lab(g, progress=False).plan  # noqa: B018 - planning raises


def _iperf(lab: sl.Lab, client: str, server: str, seconds: int = 2) -> float:
    lab.exec(server, "iperf3 -s -D -1 >/dev/null 2>&1").check()
    addr = str(lab.plan.address(server))
    for _ in range(50):  # the daemon is listening once a connect succeeds
        r = lab.exec(client, f"iperf3 -c {addr} -t {seconds} -J", timeout=60)
        report = json.loads(r.stdout or "{}")
        if r.returncode == 0 and "error" not in report:
            break
        time.sleep(0.1)
    assert r.returncode == 0 and "error" not in report, r
    return float(report["end"]["sum_received"]["bits_per_second"])


@pytest.mark.uml
def test_vhost_link_passes_tcp_with_super_frames_a_pcap_reader_reads(tmp_path: Path) -> None:
    g = sl.chain("a", "b")
    g.graph["ports"] = "vhost"
    with sl.Lab(g, progress=False) as lab:
        va = lab["a"].vhost(0)
        assert {"host_tso4", "guest_tso4", "csum", "guest_csum", "mrg_rxbuf"} <= va.stats.features
        assert lab.exec("a", f"ping -c 3 -W 2 {lab.plan.address('b')}").returncode == 0
        bps = _iperf(lab, "a", "b")
        assert bps > 1e8
        sa, sb = va.stats, lab["b"].vhost(0).stats
        assert sa.tx_gso > 100 and sb.rx_gso > 100     # TSO in a, handed on whole to b
        assert sa.tx_drops == 0 and sb.rx_drops == 0
        fwd = lab.link("a", "b").pump("a", "b")
        assert fwd.stats.frames <= sa.tx_frames and fwd.stats.frames > sa.tx_frames - 10
        # the pump read the guest's transmit queue itself (relay/vhost_ring.c), all but
        # what the port's thread sent before the pump started or while the queue changed
        assert sa.tx_relayed > 0.9 * sa.tx_frames, sa
        assert sb.rx_relayed > 0.5 * sb.rx_frames, sb   # and wrote into b's receive queue
        path = tmp_path / "ab.pcap"
        assert lab.save_pcap(("a", "b"), path) > 0
    r = subprocess.run(["tcpdump", "-nn", "-r", str(path)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    lengths = [int(line.rsplit("length ", 1)[1].split()[0]) for line in r.stdout.splitlines()
               if "length " in line and "Flags" in line]
    assert max(lengths) > 1500, "no TCP super-frame in the trace"
    t = subprocess.run(["tshark", "-r", str(path), "-c", "50"], capture_output=True, text=True, timeout=120)
    assert t.returncode == 0, t.stderr


def test_vhost_is_the_default_kind_and_a_pool_names_a_kind_mismatch(monkeypatch: pytest.MonkeyPatch) -> None:
    from stdpkt_lab.engine.pool import InstancePool
    from stdpkt_lab.engine.spec import DEFAULT_PORT_KIND, default_port_kind
    from stdpkt_lab.errors import ConfigError

    monkeypatch.delenv("STDPKT_PORTS", raising=False)
    assert DEFAULT_PORT_KIND == default_port_kind() == "vhost"
    assert port_kind(None) == (True, True)
    cfg = parse_variables({"IF0": "a|b"}, name="x", script=None)  # stdpkt run's ports
    assert cfg.spec.ports[0].vhost and cfg.spec.ports[0].offload
    plan = sl.Lab(sl.chain("a", "b"), progress=False).plan  # a Lab's ports
    assert all(p.vhost and p.offload for n in ("a", "b") for p in plan[n].spec.ports)
    monkeypatch.setenv("STDPKT_PORTS", "vector")
    assert default_port_kind() == "vector" and port_kind(None) == (False, True)
    assert not parse_variables({"IF0": "a|b", "STDPKT_PORTS": "vector"}, name="x", script=None).spec.ports[0].vhost
    assert not any(p.vhost for p in sl.Lab(sl.chain("a", "b"), progress=False).plan["a"].spec.ports)
    assert not PortSpec(0).vhost  # a hand-made spec says what it is
    # a pool's blank instances have one kind; a spec of another does not fit (nothing boots)
    vector_spec = InstanceSpec("v", ports=(PortSpec(0),))
    with pytest.raises(ConfigError, match="eth0 is a vector port, the pool's are vhost"):
        InstancePool(1, port_kind="vhost").take(vector_spec)
    plain_spec = InstanceSpec("p", ports=(PortSpec(0, vhost=True, offload=False),))
    with pytest.raises(ConfigError, match="eth0 is a vhost-plain port, the pool's are vector"):
        InstancePool(1).take(plain_spec)
    with pytest.raises(ValueError, match="port_kind: unknown port kind 'fast'"):
        InstancePool(1, port_kind="fast")


@pytest.mark.uml
def test_vhost_port_finishes_frames_for_a_vector_peer() -> None:
    g = sl.chain("a", "b")
    g.nodes["a"]["ports"] = "vhost"
    g.nodes["b"]["ports"] = "vector"                     # b keeps UML's vector driver
    with sl.Lab(g, progress=False, trace_snap=64) as lab:
        assert lab["a"].vhost_ports() and not lab["b"].vhost_ports()
        bps = _iperf(lab, "a", "b")                     # the vector guest checks every checksum
        assert bps > 1e7
        assert _iperf(lab, "b", "a", 1) > 1e7             # and the other way
        sa = lab["a"].vhost(0).stats
        assert sa.tx_gso > 10                            # the guest still used TSO...
        assert sa.tx_relayed == 0                        # finishing stays in the port's thread
        frames = lab.link("a", "b").pump("a", "b").trace()
        assert frames and max(f.orig_len for f in frames) <= 1514   # ...cut before the link


@pytest.mark.uml
def test_vhost_instance_stops_cleanly_and_keeps_no_socket() -> None:
    lines: list[str] = []
    inst = Instance(InstanceSpec("vhstop", ports=(PortSpec(0, ipaddress.IPv4Interface("10.7.0.1/24"),
                                                           vhost=True),)), on_console=lines.append)
    inst.start()
    try:
        inst.wait_ready(60)
        vport = inst.vhost(0)
        assert vport.stats.ready and not vport.path.exists()   # removed once the guest connected
        r = inst.exec("ip -o link show eth0")
        assert "eth0" in r.stdout and "virtio" not in vport.last_error
    finally:
        inst.stop()
    assert not any("Kernel panic" in line or "bad: scheduling" in line for line in lines), lines[-20:]


def test_vhost_port_refuses_a_bad_socket_path(tmp_path: Path) -> None:
    import socket

    from stdpkt_lab.engine.vhost import VhostPort
    from stdpkt_lab.errors import InstanceError

    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        with pytest.raises(InstanceError, match="vhost-user port at"):
            VhostPort(tmp_path / "missing" / "x.sock", a, mtu=1500, mac="02:00:00:00:00:01")
        with pytest.raises(InstanceError):
            VhostPort(tmp_path / ("y" * 120), a, mtu=1500, mac="02:00:00:00:00:01")
    finally:
        a.close()
        b.close()


@pytest.mark.uml
def test_live_chain_on_vhost_ports_insert_and_steer() -> None:
    g = nx.Graph(ports="vhost")
    g.add_node("client", kind="host")
    g.add_node("fw", kind="firewall", allow=["tcp/80", "tcp/5201", "icmp"])
    g.add_node("server", kind="host", serve=["http", "iperf3"])
    g.add_edges_from([("client", "fw"), ("fw", "server")])
    with sl.Lab(g, progress=False) as lab:
        assert all(lab[n].vhost_ports() for n in ("client", "fw", "server"))
        assert "hello from server" in lab.exec("client", "wget -qO- -T 5 http://server/").stdout
        mon = lab.insert(("fw", "server"), "mon", kind="filter")
        assert mon.vhost_ports(), "the inserted NF boots with the lab's kind of port"
        assert _iperf(lab, "client", "server", 1) > 1e7     # TSO frames through fw and mon
        assert lab["client"].vhost(0).stats.tx_gso > 10
        # the re-wired pumps write into the inserted NF's queues and read from them
        ms = [mon.vhost(i).stats for i in (0, 1)]
        assert sum(m.rx_relayed for m in ms) > 1000 and sum(m.tx_relayed for m in ms) > 1000, ms
        lab.add("ids", kind="filter")
        rule = lab.steer(("client", "fw"), "tcp port 80", via=["ids"])
        assert "hello from server" in lab.exec("client", "wget -qO- -T 5 http://server/").stdout
        assert lab.live.steering.stats(rule)["bytes"] > 0
        assert _iperf(lab, "client", "server", 1) > 1e7     # other flows keep the default path
        lab.remove("mon")
        assert lab.exec("client", "ping -c 1 -W 3 server").returncode == 0


@pytest.mark.uml
def test_paper_pipeline_on_vhost_ports_carries_super_frames_tcpdump_reads(stdpkt_bin: str,
                                                                         tmp_path: Path) -> None:
    from scapy.all import TCP, rdpcap

    from .pipeline import Pipeline, Stage
    from .test_stdpkt_run import PAPER, paper_stages

    stages = paper_stages(stdpkt_bin, client=PAPER / "client.sh", nat=PAPER / "nat-config.sh",
                          firewall=PAPER / "firewall-config.sh", server=PAPER / "server.sh")
    for stage in stages:
        stage.env["STDPKT_PORTS"] = "vhost"
    stages.insert(2, Stage("tee", ["tee", str(tmp_path / "forward.pcap")]))  # nat | tee | firewall
    with Pipeline(stages, tmp_path) as pipe:
        codes = pipe.wait(240)
        log = pipe.all_stderr()
    assert codes[0] == 0, log                       # ping, HTTP through NAT, iperf3, 8080 blocked
    client = pipe.stderr("client")
    assert "coming from 192.168.0.1" in client and "port 8080 blocked" in client, client
    out = subprocess.run(["tcpdump", "-nn", "-r", str(tmp_path / "forward.pcap"), "tcp port 5201"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    lengths = [int(line.rsplit("length ", 1)[1].split()[0]) for line in out.stdout.splitlines()
               if "length " in line]
    assert lengths and max(lengths) > 1500, "no TCP super-frame on the pipe"
    big = [p for p in rdpcap(str(tmp_path / "forward.pcap")) if TCP in p and len(p) > 1514]
    assert big and big[0][TCP].dport == 5201      # scapy reads them too


@pytest.mark.uml
def test_vhost_ring_off_keeps_the_socket_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STDPKT_VHOST_RING", "0")      # relay/rings.py: pumps use the socket
    g = sl.chain("a", "b")
    g.graph["ports"] = "vhost"
    with sl.Lab(g, progress=False) as lab:
        assert _iperf(lab, "a", "b", 1) > 1e8
        sa, sb = lab["a"].vhost(0).stats, lab["b"].vhost(0).stats
        assert sa.tx_frames > 1000 and sa.tx_relayed == 0 and sb.rx_relayed == 0


@pytest.mark.uml
def test_vhost_queues_change_hands_when_a_guest_is_killed_and_restarted() -> None:
    g = sl.chain("a", "b")
    g.graph["ports"] = "vhost"
    with sl.Lab(g, progress=False) as lab:
        addr = lab.plan.address("b")
        assert lab.exec("a", f"ping -c 2 -W 2 {addr}").returncode == 0
        pid = lab["b"].pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)                   # b's kernel dies under a's pumps
        end = time.monotonic() + 20
        while time.monotonic() < end and not any("link" in why for _, why in lab.events):
            time.sleep(0.05)
        assert any("link" in why for _, why in lab.events), lab.events
        before = lab["a"].vhost(0).stats
        lab.restart("b")                               # new pumps borrow a's queues again
        assert lab.exec("a", f"ping -c 3 -W 2 {addr}").returncode == 0
        assert _iperf(lab, "a", "b", 1) > 1e8
        after, vb = lab["a"].vhost(0).stats, lab["b"].vhost(0).stats
        assert after.tx_relayed > before.tx_relayed + 1000 and vb.rx_relayed > 1000
        assert after.tx_drops == 0, lab["a"].vhost(0).last_error


@pytest.mark.uml
def test_vhost_port_in_a_run_directory_longer_than_a_socket_path() -> None:
    # a unix socket's path holds 107 bytes: the port binds through a descriptor of its
    # directory and the kernel, started in its run directory, connects to a relative name
    root = Path(f"/dev/shm/stdpkt-longpath-{os.getpid()}") / ("d" * 90)
    root.mkdir(parents=True)
    inst = Instance(InstanceSpec("vhlong", ports=(PortSpec(0, ipaddress.IPv4Interface("10.7.1.1/24"),
                                                           vhost=True),)), run_root=root)
    try:
        assert len(str(root / "vhlong" / "vhost0.sock")) > 108
        inst.start()
        inst.wait_ready(60)
        assert inst.vhost(0).stats.ready
        assert "eth0" in inst.exec("ip -o link show eth0").stdout
    finally:
        inst.stop()
        shutil.rmtree(root.parent)
    assert not (root / "vhlong").exists()
