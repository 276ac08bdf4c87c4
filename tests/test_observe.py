"""Counters, traces, injection and packet following on a live chain."""

from __future__ import annotations

import threading
import time

import pytest
from scapy.all import ICMP, IP, TCP, Ether, rdpcap  # type: ignore[attr-defined]

import stdpkt_lab as sl

from .test_lab import paper_graph

pytestmark = pytest.mark.uml


@pytest.fixture(scope="module")
def lab():
    # module-scoped: one chain for all observation tests (each test leaves it idle)
    from .conftest import uml_pids

    before = uml_pids()
    with sl.Lab(paper_graph(), progress=False) as running:
        assert running.exec("client", "ping -c 2 -W 2 server").returncode == 0  # warm ARP
        running.exec("nat", "ping -c 1 -W 2 server")
        yield running
    deadline = time.monotonic() + 10
    while uml_pids() - before and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not uml_pids() - before


@pytest.fixture(autouse=True)
def no_leaked_kernels():  # the module fixture checks instead (the lab outlives each test)
    yield


def mac(lab: sl.Lab, node: str, dev: str) -> str:
    return lab[node].read_file(f"/sys/class/net/{dev}/address").decode().strip()


def addr(lab: sl.Lab, node: str, neighbour: str) -> str:
    plan = lab.plan[node]
    return str(plan.spec.ports[plan.port_of(neighbour)].address.ip)


def test_injected_packets_are_counted_exactly(lab: sl.Lab) -> None:
    link_in, link_next = lab.link("nat", "fw"), lab.link("fw", "server")
    lab.set_trace_filter(("fw", "server"), "icmp and icmp[icmptype] == icmp-echo")
    link_next.pump("fw", "server").clear_trace()
    before = link_in.pump("nat", "fw").stats
    pkt = (Ether(dst=mac(lab, "fw", "eth0")) /
           IP(src=addr(lab, "nat", "fw"), dst=str(lab.plan.address("server"))) /
           ICMP(id=4242, seq=1) / b"stdpkt-count")
    lab.inject(("nat", "fw"), pkt, count=25, interval=0.005)

    def forwarded() -> list:
        return [p for p in lab.trace(("fw", "server"), None, direction="forward")
                if ICMP in p and p[ICMP].id == 4242]

    # wait for the firewall to forward them all (a loaded machine delays it past 1 s)
    deadline = time.monotonic() + 15
    while len(forwarded()) < 25 and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(0.3)  # and no more than 25 follow
    after = link_in.pump("nat", "fw").stats
    assert after.injected - before.injected == 25
    assert len(forwarded()) == 25
    rows = lab.counters()
    rows = rows.to_dict("records") if hasattr(rows, "to_dict") else rows
    row = next(r for r in rows if r["src"] == "nat" and r["dst"] == "fw")
    assert row["injected"] >= 25 and {"frames", "bytes", "drops", "malformed", "pps", "bps"} <= set(row)
    lab.set_trace_filter(("fw", "server"), None)


def test_dropped_packet_hits_the_rule_counter_not_the_next_link(lab: sl.Lab) -> None:
    def forward_drops() -> int:
        rules = lab.nf_counters("fw")["rules"]
        return next(r["packets"] for r in rules
                    if r["chain"] == "FORWARD" and r["rule"] == "policy DROP")

    lab.set_trace_filter(("fw", "server"), "tcp port 22")
    lab.link("fw", "server").pump("fw", "server").clear_trace()
    drops = forward_drops()
    syn = (Ether(dst=mac(lab, "fw", "eth0")) /
           IP(src=addr(lab, "nat", "fw"), dst=str(lab.plan.address("server"))) /
           TCP(sport=40000, dport=22, flags="S"))
    lab.inject(("nat", "fw"), syn)
    time.sleep(1.0)
    assert forward_drops() == drops + 1
    assert len(lab.trace(("fw", "server"), None, direction="forward")) == 0
    lab.set_trace_filter(("fw", "server"), None)


def test_trace_holds_handshake_pcap_round_trips_and_follow_crosses_nat(lab: sl.Lab, tmp_path) -> None:
    lab.link("client", "nat").pump("client", "nat").clear_trace()
    assert lab.exec("client", "wget -qO /dev/null -T 5 http://server/").returncode == 0
    time.sleep(0.3)
    pkts = lab.trace(("client", "nat"), None)
    tcp80 = [p for p in pkts if TCP in p and 80 in (p[TCP].sport, p[TCP].dport)]
    syn = next(p for p in tcp80 if p[TCP].flags == "S")
    synack = next(p for p in tcp80 if p[TCP].flags == "SA" and p[TCP].ack == syn[TCP].seq + 1)
    assert any(p[TCP].flags == "A" and p[TCP].ack == synack[TCP].seq + 1 for p in tcp80)
    assert syn.link == ("client", "nat") and synack.link == ("nat", "client")

    n = lab.save_pcap(("client", "nat"), tmp_path / "c.pcap")
    back = rdpcap(str(tmp_path / "c.pcap"))
    assert len(back) == n == len(pkts)
    assert [bytes(p) for p in back] == [bytes(p) for p in pkts]

    journey = lab.follow(syn)
    assert journey.links == [("client", "nat"), ("nat", "fw"), ("fw", "server")]
    client_ip, nat_out = str(lab.plan.address("client")), addr(lab, "nat", "fw")
    assert journey[0].packet[IP].src == client_ip
    assert journey[1].packet[IP].src == nat_out
    assert journey[1].changed["IP.src"] == (client_ip, nat_out)


def test_filtered_trace_keeps_only_matching_frames(lab: sl.Lab) -> None:
    lab.set_trace_filter(("client", "nat"), "tcp port 80")
    for pump in lab._pumps(("client", "nat")):
        pump.clear_trace()
    lab.exec("client", "ping -c 2 -W 2 server; wget -qO /dev/null -T 5 http://server/")
    time.sleep(0.3)
    pkts = lab.trace(("client", "nat"), None)
    assert len(pkts) >= 6
    assert all(TCP in p and 80 in (p[TCP].sport, p[TCP].dport) for p in pkts)
    lab.set_trace_filter(("client", "nat"), None)


def test_sampler_delivers_samples_and_rates_move(lab: sl.Lab) -> None:
    got: list = []
    done = threading.Event()
    with lab.subscribe(lambda s: got.append(s)):
        lab.exec("client", "wget -qO /dev/null -T 5 http://server/; ping -c 5 -i 0.2 -W 1 server")
        time.sleep(0.5)
    n = len(got)
    time.sleep(0.5)
    assert len(got) == n  # cancelled
    assert n >= 5
    peak = max(ls.pps for s in got for ls in s.links if ls.src == "client")
    assert peak > 0
    fw = got[-1].nodes["fw"]
    assert fw.state == "running" and fw.interfaces["eth0"]["rx_packets"] > 0
    assert got[-1].nodes["nat"].conntrack_entries is not None
    done.set()


def test_mconsole_reads_guest_sysctl_without_the_guest(lab: sl.Lab) -> None:
    from stdpkt_lab.engine.mconsole import MConsoleError

    lab.exec("client", "wget -qO /dev/null -T 5 http://server/")
    mc = lab["nat"].mconsole
    by_mconsole = int(mc.proc("sys/net/netfilter/nf_conntrack_count").strip())
    by_agent = int(lab["nat"].read_file("/proc/sys/net/netfilter/nf_conntrack_count"))
    assert by_mconsole >= 1 and abs(by_mconsole - by_agent) <= 1
    assert "6.1" in mc.request("version")
    with pytest.raises(MConsoleError, match="net/dev"):
        mc.proc("net/dev")  # per-namespace /proc/net files: the agent reads those
