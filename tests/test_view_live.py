"""What a notebook shows, on real kernels: datetimes, state tables from /proc, HTML
reprs, IPv6 off by default and working when on."""

from __future__ import annotations

import json
import time

import networkx as nx
import pandas as pd
import pytest
from scapy.all import ICMP, IP, TCP  # type: ignore[attr-defined]  # noqa: F401  (binds layers)

import stdpkt_lab as sl
from stdpkt_lab.observe.state import parse_ip_json

from .test_lab import paper_graph

pytestmark = pytest.mark.uml


@pytest.fixture(scope="module")
def lab():
    from .conftest import uml_pids

    before = uml_pids()
    with sl.Lab(paper_graph(), progress=False) as running:
        assert running.exec("client", "ping -c 1 -W 2 server").returncode == 0
        yield running
    deadline = time.monotonic() + 10
    while uml_pids() - before and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not uml_pids() - before


@pytest.fixture(autouse=True)
def no_leaked_kernels():  # the module fixture checks instead (the lab outlives each test)
    yield


def _exec_clean(lab: sl.Lab, node: str, argv: list[str]) -> str:
    """stdout of ``argv``, retried while it holds NUL bytes: on this AVX-512 host, with the
    launcher's FXSAVE fallback, glibc programs in a guest now and then write 16-byte runs
    of zeros (lost SSE state; not the agent: its /proc reads are exact). Our tables come
    from the agent's reads; this only guards the cross-check against ip(8)."""
    for _ in range(6):
        out = lab.exec(node, argv).check().stdout
        if "\x00" not in out:
            return out
    raise AssertionError(f"{node}: {argv} kept returning corrupted output: {out!r}")


def test_counters_and_sampler_frames_have_datetime_time(lab: sl.Lab) -> None:
    deadline = time.monotonic() + 10
    while len(lab.sampler.history) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    for frame in (lab.counters(), lab.sampler.frame()):
        assert pd.api.types.is_datetime64_any_dtype(frame["time"])
        assert frame["timestamp"].dtype == "float64"
        assert list(frame.columns[:2]) == ["time", "link"]
        # the datetime is the float, read as local wall-clock time
        delta = frame["time"].iloc[-1] - pd.Timestamp.fromtimestamp(frame["timestamp"].iloc[-1])
        assert abs(delta.total_seconds()) < 1e-3
        assert abs(time.time() - frame["timestamp"].iloc[-1]) < 30


def test_conntrack_rows_match_a_flow_made_here(lab: sl.Lab) -> None:
    # a UDP flow from a port we choose, through the NAT toward the server
    lab.exec("client", "echo stdpkt | nc -u -w 1 -p 40123 server 9999; true")
    nat_out = str(lab.plan["nat"].spec.ports[lab.plan["nat"].port_of("fw")].address.ip)
    client, server = str(lab.plan.address("client")), str(lab.plan.address("server"))
    table = lab.conntrack("nat")
    assert list(table.columns[:4]) == ["protocol", "state", "original", "reply"]
    rows = table[(table.protocol == "udp") & (table.sport == 40123)]
    assert len(rows) == 1, table
    row = rows.iloc[0]
    assert (row.src, row.dst, row.dport) == (client, server, 9999)
    assert (row.reply_src, row.reply_dst, row.reply_sport) == (server, nat_out, 9999)
    assert row.original == f"{client}:40123 → {server}:9999"
    assert bool(row.nat) and "UNREPLIED" in row.status
    assert row.packets == 1 and row.bytes > 0 and row.reply_packets == 0  # accounting is on
    assert 0 < row.timeout <= 180 and row.mark == 0


def test_tcp_connection_has_state_and_counts(lab: sl.Lab) -> None:
    assert lab.exec("client", "wget -qO /dev/null -T 5 http://server/").returncode == 0
    table = lab.conntrack("nat")
    tcp = table[(table.protocol == "tcp") & (table.dport == 80)]
    assert len(tcp) >= 1
    row = tcp.iloc[-1]
    assert row.state in ("TIME_WAIT", "CLOSE", "FIN_WAIT", "CLOSE_WAIT", "LAST_ACK", "ESTABLISHED")
    assert "ASSURED" in row.status and row.packets >= 3 and row.reply_packets >= 3
    # the same connection in the firewall: from the NAT's outside address, not translated
    nat_out = str(lab.plan["nat"].spec.ports[1].address.ip)
    fw = lab.conntrack("fw")
    seen = fw[(fw.protocol == "tcp") & (fw.sport == row.reply_dport)]
    assert len(seen) == 1 and seen.iloc[0].src == nat_out and not bool(seen.iloc[0].nat)


def test_addresses_from_proc_match_ip_json(lab: sl.Lab) -> None:
    for node in ("nat", "client"):
        ours = lab.addresses(node)
        exact = parse_ip_json(_exec_clean(lab, node, ["ip", "-j", "addr"]))
        key = ["interface", "family", "cidr"]
        assert sorted(map(tuple, ours[key].values.tolist())) == sorted(
            tuple(r[k] for k in key) for r in exact)
        assert set(ours.family) == {"ipv4"}  # IPv6 is off by default
    nat = lab.addresses("nat")
    plan = lab.plan["nat"].spec
    assert set(nat[nat.interface == "eth1"].cidr) == {str(plan.ports[1].address)}


def test_routes_and_neighbours(lab: sl.Lab) -> None:
    routes = lab.routes("client")
    default = routes[routes.destination == "default"]
    assert len(default) == 1 and default.iloc[0].gateway == str(
        lab.plan["nat"].spec.ports[0].address.ip)
    text = _exec_clean(lab, "client", ["ip", "-4", "route"])
    for dest in routes[routes.destination != "default"].destination:
        assert dest in text
    lab.exec("client", "ping -c 1 -W 2 server")
    neighbours = lab.neighbours("client")
    gw = lab.plan["nat"].spec.ports[0].address.ip
    mac = lab["nat"].read_file("/sys/class/net/eth0/address").decode().strip()
    row = neighbours[neighbours.address == str(gw)].iloc[0]
    assert (row.lladdr, row.interface, row.state) == (mac, "eth0", "reachable")


def test_follow_shows_datetimes_and_milliseconds(lab: sl.Lab) -> None:
    lab.link("client", "nat").pump("client", "nat").clear_trace()
    assert lab.exec("client", "wget -qO /dev/null -T 5 http://server/").returncode == 0
    time.sleep(0.3)
    pkts = lab.trace(("client", "nat"), None)
    syn = next(p for p in pkts if TCP in p and p[TCP].flags == "S")
    assert isinstance(syn.time, float) or float(syn.time) > 1e9  # scapy keeps the float
    journey = lab.follow(syn)
    assert len(journey) == 3
    assert journey[0].offset_ms == 0.0
    assert 0 < journey[2].offset_ms < 1000 and journey[1].offset_ms <= journey[2].offset_ms
    assert journey[0].when.timestamp() == pytest.approx(journey[0].time, abs=1e-5)
    text = str(journey)
    assert "+0.000 ms" in text and journey[0].when.strftime("%H:%M:%S") in text
    assert "t=17" not in text  # no raw epoch floats
    frame = journey.to_frame()
    assert pd.api.types.is_datetime64_any_dtype(frame["time"]) and list(frame["ms"])[0] == 0
    html = journey._repr_html_()
    nat_out = str(lab.plan["nat"].spec.ports[1].address.ip)
    assert html.count("<tr>") == 1 + 3 and "background:#fff3b0" in html and nat_out in html
    trace_frame = pkts.to_frame()
    assert pd.api.types.is_datetime64_any_dtype(trace_frame["time"]) and len(trace_frame) == len(pkts)
    assert "<table" in pkts._repr_html_() and "client → nat" in pkts._repr_html_()


def test_html_reprs_of_lab_and_instance(lab: sl.Lab) -> None:
    html = lab._repr_html_()
    for node in lab:
        assert f">{node}<" in html
    assert html.count("running") >= len(lab) and "firewall" in html
    assert str(lab.plan["nat"].spec.ports[1].address) in html
    inst = lab["fw"]._repr_html_()
    assert "fw" in inst and "running" in inst and str(lab["fw"].pid) in inst


def test_ipv6_off_by_default_no_chatter(lab: sl.Lab) -> None:
    # no interface has an IPv6 address and no IPv6 frame (MLD, neighbour discovery)
    # crossed any link, even where a server's socket made the kernel load the ipv6 module
    for node in lab:
        files = lab[node].agent.read_files(["/proc/net/if_inet6"])
        assert not (files["/proc/net/if_inet6"] or b"").strip(), node
    for link in lab.links:
        for pump in (link.pump(link.a.name, link.b.name), link.pump(link.b.name, link.a.name)):
            ethertypes = {int.from_bytes(f.data[12:14], "big") for f in pump.trace(None)}
            assert 0x86DD not in ethertypes, link.name


def _two_hosts(**graph: object) -> nx.Graph:
    g = nx.Graph(**graph)
    g.add_node("a", kind="host")
    g.add_node("b", kind="host")
    g.add_edge("a", "b")
    return g


def test_ipv6_on_pings6_between_two_nodes() -> None:
    with sl.Lab(_two_hosts(ipv6=True), progress=False) as lab:
        assert lab.plan["a"].spec.ipv6 and lab.plan["b"].spec.ipv6
        def link_local(node: str) -> pd.DataFrame:
            addrs = lab.addresses(node)
            return addrs[(addrs.family == "ipv6") & (addrs.scope == "link")]

        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:  # duplicate address detection takes ~1 s on each end
            ready = [link_local(n) for n in ("a", "b")]
            if all(len(ll) and "tentative" not in ll.iloc[0].addr_flags for ll in ready):
                break
            time.sleep(0.3)
        target = link_local("b").iloc[0].address
        r = lab.exec("a", ["ping", "-6", "-c", "3", "-W", "3", f"{target}%eth0"], timeout=30)
        assert r.returncode == 0 and f"bytes from {target}" in r.stdout, r.stdout + r.stderr
        routes = lab.routes("a")
        assert "fe80::/64" in set(routes[routes.family == "ipv6"].destination)
        # the frames on the link were IPv6 (ethertype 0x86dd)
        pump = lab.link("a", "b").pump("a", "b")
        assert any(f.data[12:14] == b"\x86\xdd" for f in pump.trace(None))
        assert "on" in lab._repr_html_()


def test_ipv6_node_option_only_that_node() -> None:
    g = _two_hosts()
    g.nodes["a"]["ipv6"] = True
    with sl.Lab(g, progress=False) as lab:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not (lab["a"].agent.read_files(
                ["/proc/net/if_inet6"])["/proc/net/if_inet6"] or b"").strip():
            time.sleep(0.2)
        a = lab.addresses("a")
        assert "ipv6" in set(a.family)
        b = lab.addresses("b")
        assert set(b.family) == {"ipv4"}
        info = json.loads(_exec_clean(lab, "b", ["ip", "-j", "addr"]))
        assert not any(x["family"] == "inet6" for link in info for x in link["addr_info"])


def test_dashboard_state_tab_shows_live_tables(lab: sl.Lab) -> None:
    from stdpkt_lab.dashboard.state_tab import StateTab

    board = lab.dashboard()
    try:
        tab = board.state_tab
        assert isinstance(tab, StateTab) and "NF state" in board.controls.tabs.titles
        assert tab.node.value == "nat"  # NFs first, not the hosts
        board.controls.tabs.selected_index = list(board.controls.tabs.titles).index("NF state")
        lab.exec("client", "echo live | nc -u -w 1 -p 40777 server 9998; true")
        deadline = time.monotonic() + 15
        while "40777" not in tab.view.value and time.monotonic() < deadline:
            time.sleep(0.2)  # the dashboard's thread refreshes the visible tab once a second
        html = tab.view.value
        assert "40777" in html and "UNREPLIED" in html, html[:500]
        for section in ("connections", "routes", "addresses", "neighbours"):
            assert f"stdpkt-state-{section}" in html
        assert str(lab.plan["nat"].spec.ports[1].address) in html
        tab.node.value = "client"  # choosing another NF reads it at once
        assert "<b>client</b>" in tab.view.value and "default" in tab.view.value
    finally:
        board.close()


def test_pooled_instances_take_the_ipv6_setting_of_their_spec() -> None:
    import ipaddress

    from stdpkt_lab.engine.pool import InstancePool
    from stdpkt_lab.engine.spec import InstanceSpec, PortSpec

    def spec(name: str, ipv6: bool) -> InstanceSpec:
        return InstanceSpec(name, ports=(PortSpec(0, ipaddress.IPv4Interface("10.9.0.1/24")),),
                            ipv6=ipv6)

    with InstancePool(2, ports=1, refill=False) as pool:
        pool.wait_filled(120)
        on, off = pool.take(spec("six", True)), pool.take(spec("four", False))
        try:
            on.wait_ready(60)
            off.wait_ready(60)

            def inet6(inst) -> str:
                return (inst.agent.read_files(["/proc/net/if_inet6"])["/proc/net/if_inet6"] or b"").decode()

            assert " eth0" in inet6(on) and "fe80" in inet6(on)  # booted blank (off), turned on
            assert inet6(off).strip() == ""
            assert "ipv6.disable_ipv6=1" in off.read_file("/proc/cmdline").decode()
        finally:
            on.stop()
            off.stop()
