"""`Lab`: chains from networkx graphs, booted for real, with real traffic."""

from __future__ import annotations

import re
import threading
import time
from collections import Counter

import networkx as nx
import pytest

import stdpkt_lab as sl
from stdpkt_lab.errors import BootError, ChainError, StateError, VariableError

from .conftest import uml_pids


def paper_graph() -> nx.Graph:
    g = nx.Graph()
    g.add_node("client", kind="host")
    g.add_node("nat", kind="nat", outside="fw")
    g.add_node("fw", kind="firewall", allow=["tcp/80", "icmp"])
    g.add_node("server", kind="host", serve="http")
    g.add_edges_from([("client", "nat"), ("nat", "fw"), ("fw", "server")])
    return g


@pytest.mark.uml
def test_issue_example_http_nat_firewall_conntrack() -> None:
    with sl.Lab(paper_graph(), progress=False) as lab:
        r = lab.exec("client", "wget -qO- -T 5 http://server/")
        assert r.returncode == 0, r
        assert "hello from server" in r.stdout
        # the server saw the NAT's outside address, not the client's
        seen = lab.exec("client", "wget -qO- -T 5 http://server/cgi-bin/whoami").check().stdout
        nat_outside = str(lab.plan["nat"].spec.ports[lab.plan["nat"].port_of("fw")].address.ip)
        assert seen.strip() == nat_outside
        # conntrack inside the NAT lists the translated flow
        track = lab.exec("nat", "conntrack -L -p tcp --dport 80").stdout
        client_ip = str(lab.plan.address("client"))
        assert re.search(rf"src={client_ip} dst=\S+ sport=\d+ dport=80 .*dst={nat_outside}", track), track
        # a port the firewall does not allow fails; ping (allowed icmp) passes
        denied = lab.exec("client", "nc -z -w 2 server 22", timeout=20)
        assert denied.returncode != 0
        assert lab.exec("client", "ping -c 2 -W 2 server").returncode == 0
        assert "stdpkt run" in lab.shell()
        assert lab["server"].state.value == "running"
    assert lab.state is sl.LabState.STOPPED


LB_RESPONSE = re.compile(r"hello from (b\d)")


@pytest.mark.uml
def test_load_balancer_spreads_new_connections_and_keeps_one_connection() -> None:
    g = nx.Graph()
    g.add_node("client", kind="host")
    g.add_node("lb", kind="lb", backends=["b1", "b2", "b3"], scheduler="rr")
    g.add_node("sw", kind="bridge")
    for b in ("b1", "b2", "b3"):
        g.add_node(b, kind="host", serve="http")
    g.add_edges_from([("client", "lb"), ("lb", "sw"), ("sw", "b1"), ("sw", "b2"), ("sw", "b3")])
    with sl.Lab(g, progress=False) as lab:
        script = "for i in $(seq 30); do wget -qO- -T 5 http://lb/; done"
        out = lab.exec("client", script, timeout=120).check().stdout
        spread = Counter(LB_RESPONSE.findall(out))
        assert sum(spread.values()) == 30, out
        assert set(spread) == {"b1", "b2", "b3"}, spread
        # one long connection: its IPVS entry keeps one real server while it lasts
        long = threading.Thread(target=lambda: holder.append(lab.exec(
            "client", "(printf 'GET / HTTP/1.0\\r\\n'; sleep 3; printf '\\r\\n') | nc -w 10 lb 80",
            timeout=30)))
        holder: list = []
        long.start()
        seen_backends = set()
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            table = lab.exec("lb", "ipvsadm -L -n -c").stdout
            seen_backends |= set(re.findall(r"ESTABLISHED\s+\S+\s+\S+\s+(\S+):80", table))
            time.sleep(0.3)
        long.join(30)
        reply = holder[0].stdout
        backend = LB_RESPONSE.search(reply)
        assert backend, reply
        addr = str(lab.plan.address(backend.group(1)))
        assert seen_backends == {addr}, (seen_backends, addr)


@pytest.mark.uml
def test_tree_graph_is_routed_automatically() -> None:
    g = nx.Graph()
    for h in ("h1", "h2", "h3", "h4"):
        g.add_node(h, kind="host")
    g.add_node("r1", kind="router")
    g.add_node("r2", kind="router")
    g.add_edges_from([("h1", "r1"), ("h2", "r1"), ("r1", "r2"), ("r2", "h3"), ("r2", "h4")])
    with sl.Lab(g, progress=False) as lab:
        for src, dst in [("h1", "h2"), ("h1", "h3"), ("h1", "h4"), ("h3", "h4"), ("h4", "h2")]:
            r = lab.exec(src, f"ping -c 1 -W 3 {dst}")
            assert r.returncode == 0, (src, dst, r.stdout, r.stderr)


def test_bad_graph_is_rejected_before_anything_boots() -> None:
    before = uml_pids()
    g = paper_graph()
    g.nodes["fw"]["kind"] = "firewal"
    with pytest.raises(ChainError, match="fw.*firewal"):
        sl.Lab(g)
    g = paper_graph()
    g.add_edge("client", "server")
    g.add_edge("client", "fw")
    with pytest.raises(ChainError, match="client"):
        sl.Lab(g)
    assert uml_pids() == before


@pytest.mark.uml
def test_failed_boot_rolls_back_everything_and_reports_console() -> None:
    broken = sl.chain("a", "mid", "b", kinds={"mid": "script"},
                      params={"mid": {"text": "echo about to fail; busybox poweroff -f\n"}})
    lab = sl.Lab(broken, progress=False)
    with pytest.raises(BootError) as info:
        lab.start()
    assert info.value.name == "mid"
    assert "about to fail" in info.value.console_tail
    assert lab.state is sl.LabState.FAILED
    assert all(i.exited for i in lab.instances.values())
    with pytest.raises(StateError):
        lab.start()
    lab.stop()  # idempotent after a failed start


@pytest.mark.uml
def test_exec_timeout_and_stopped_lab_refuses_exec() -> None:
    from stdpkt_lab.errors import ExecTimeout

    with sl.Lab(sl.chain("a", "b"), progress=False) as lab:
        t0 = time.monotonic()
        with pytest.raises(ExecTimeout):
            lab.exec("a", "sleep 30", timeout=1)
        assert time.monotonic() - t0 < 10
        assert lab.exec("a", "echo still here").stdout == "still here\n"
    with pytest.raises(StateError):
        lab.exec("a", "true")


@pytest.mark.uml
def test_guests_get_a_hosts_tcp_buffers_unless_told_to_keep_the_kernels(
        monkeypatch: pytest.MonkeyPatch) -> None:
    g = nx.Graph()
    g.add_node("a", kind="host")
    g.add_node("b", kind="host")
    g.add_edge("a", "b")
    maxima, pressure = {}, {}
    for value, init in (("host", "c"), ("host", "shell"), ("kernel", "c"), ("2097152,1048576", "c")):
        monkeypatch.setenv("STDPKT_TCP_BUFFERS", value)
        monkeypatch.setenv("STDPKT_INIT", init)
        with sl.Lab(g, progress=False) as lab:
            rmem = lab.exec("a", "cat /proc/sys/net/ipv4/tcp_rmem").check().stdout.split()
            wmem = lab.exec("b", "cat /proc/sys/net/ipv4/tcp_wmem").check().stdout.split()
            maxima[value] = (int(rmem[2]), int(wmem[2]))
            tcp_mem = lab.exec("a", "cat /proc/sys/net/ipv4/tcp_mem").check().stdout.split()
            pressure[value, init] = int(tcp_mem[1]) * 4096
    assert maxima["host"] == (6291456, 4194304)
    # the guest's TCP total is raised with the windows: a flow's full receive window and
    # more fit under memory pressure (the kernel's own 7 MB at 128 MB pruned and dropped
    # segments as soon as two flows came into one guest: tests/test_live.py's steering)
    assert pressure["host", "c"] == pressure["host", "shell"] >= 4 * 6291456, pressure
    assert pressure["kernel", "c"] < 2 * 6291456, pressure
    assert maxima["2097152,1048576"] == (2097152, 1048576)
    # the kernel scales them to the guest's 128 MB: a window well under a megabyte
    assert maxima["kernel"][0] < 2 << 20 and maxima["kernel"][1] < 2 << 20, maxima
    for bad in ("huge", "1,2", "2097152"):
        monkeypatch.setenv("STDPKT_TCP_BUFFERS", bad)
        with pytest.raises(VariableError, match=rf"STDPKT_TCP_BUFFERS: unknown value '{bad}'.*host, kernel"):
            sl.Lab(g, progress=False).start()
