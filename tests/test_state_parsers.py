"""Pure parts of the notebook view: /proc parsers on captured real outputs
(tests/data/state/, from a client | nat | server chain with IPv6 turned on), time
columns, HTML tables, error hints, IPv6 boot arguments, and the layering rule."""

from __future__ import annotations

import ast
import datetime as dt
import pathlib
import time

import pandas as pd
import pytest

from stdpkt_lab import errors
from stdpkt_lab.engine.bootprofile import kernel_args
from stdpkt_lab.engine.ipv6 import ipv6_setup
from stdpkt_lab.htmltable import Cell, html_table
from stdpkt_lab.observe import state
from stdpkt_lab.observe.clock import clock_text, time_frame
from stdpkt_lab.observe.samples import LinkSample, records

DATA = pathlib.Path(__file__).parent / "data" / "state"
PKG = pathlib.Path(__file__).parent.parent / "stdpkt_lab"


def text(name: str) -> str:
    return (DATA / name).read_text()


def test_conntrack_proc_with_accounting() -> None:
    rows = state.parse_conntrack(text("nat-nf_conntrack.txt"))
    assert len(rows) == 5
    tcp = next(r for r in rows if r["protocol"] == "tcp" and r["sport"] == 33850)
    assert tcp == {
        "family": "ipv4", "protocol": "tcp", "state": "TIME_WAIT",
        "original": "10.0.0.2:33850 → 10.0.1.2:80", "reply": "10.0.1.2:80 → 10.0.1.1:33850",
        "src": "10.0.0.2", "dst": "10.0.1.2", "sport": 33850, "dport": 80,
        "reply_src": "10.0.1.2", "reply_dst": "10.0.1.1", "reply_sport": 80, "reply_dport": 33850,
        "packets": 5, "bytes": 389, "reply_packets": 5, "reply_bytes": 495,
        "timeout": 118, "mark": 0, "zone": None, "status": "ASSURED", "nat": True,
    }
    udp = [r for r in rows if r["protocol"] == "udp"]
    assert {r["dport"] for r in udp} == {53, 5353}
    assert all(r["state"] == "" and r["status"] == "UNREPLIED" and r["reply_packets"] == 0
               for r in udp)
    icmp = next(r for r in rows if r["protocol"] == "icmp")
    assert icmp["sport"] is None and icmp["original"] == "10.0.0.2 → 10.0.1.2 echo id=89"
    assert icmp["reply"] == "10.0.1.2 → 10.0.1.1 echo-reply id=89" and icmp["nat"]
    (unreachable,) = state.parse_conntrack(
        "ipv4 2 icmp 1 29 src=10.0.0.2 dst=10.0.1.2 type=3 code=1 src=10.0.1.2 dst=10.0.0.2 "
        "type=3 code=1 mark=0 use=1")
    assert unreachable["original"] == "10.0.0.2 → 10.0.1.2 type=3 code=1" and not unreachable["nat"]


def test_conntrack_tool_output_parses_the_same() -> None:
    proc = state.parse_conntrack(text("nat-nf_conntrack.txt"))
    tool = state.parse_conntrack(text("nat-conntrack-L-extended.txt"))
    assert tool == proc
    plain = "\n".join(line.split(None, 2)[2] for line in text("nat-nf_conntrack.txt").splitlines())
    footer = "conntrack v1.4.7 (conntrack-tools): 5 flow entries have been shown.\n"
    assert state.parse_conntrack(f"{plain}\n{footer}") == proc


def test_conntrack_without_accounting_and_unnatted() -> None:
    rows = state.parse_conntrack(text("nat-nf_conntrack-noacct.txt"))
    assert rows[0]["packets"] is None and rows[0]["reply_bytes"] is None
    assert rows[0]["timeout"] == 119
    mirrored = ("ipv4     2 tcp      6 431999 ESTABLISHED src=10.0.1.1 dst=10.0.2.2 sport=4000 "
                "dport=80 src=10.0.2.2 dst=10.0.1.1 sport=80 dport=4000 [ASSURED] mark=7 zone=3 use=1")
    (row,) = state.parse_conntrack(mirrored)
    assert not row["nat"] and row["mark"] == 7 and row["zone"] == 3 and row["state"] == "ESTABLISHED"


def test_conntrack_table_types_and_empty() -> None:
    frame = state.table(state.parse_conntrack(text("nat-nf_conntrack-noacct.txt")), state.CONNTRACK_COLUMNS)
    assert str(frame["packets"].dtype) == "Int64" and frame["packets"].isna().iloc[0]
    empty = state.table([], state.CONNTRACK_COLUMNS)
    assert list(empty.columns) == list(state.CONNTRACK_COLUMNS) and len(empty) == 0
    assert "flags" not in state.CONNTRACK_COLUMNS + state.ROUTE_COLUMNS + state.ADDRESS_COLUMNS


def test_routes_ipv4_and_ipv6() -> None:
    client = state.parse_route(text("client-route.txt"))
    assert client == [
        {"family": "ipv4", "destination": "default", "gateway": "10.0.0.1", "interface": "eth0",
         "metric": 0, "type": "unicast", "route_flags": "UG"},
        {"family": "ipv4", "destination": "10.0.0.0/24", "gateway": None, "interface": "eth0",
         "metric": 0, "type": "unicast", "route_flags": "U"},
    ]
    v6 = state.parse_ipv6_route(text("nat-ipv6_route.txt"))
    unicast = [(r["destination"], r["gateway"], r["interface"], r["metric"]) for r in v6
               if r["type"] == "unicast"]
    assert unicast == [("fd00:1::/64", None, "eth1", 256), ("fd00:99::/64", "fd00:1::2", "eth1", 1024),
                       ("fe80::/64", None, "eth0", 256), ("fe80::/64", None, "eth1", 256)]
    kinds = {r["type"] for r in v6}
    assert kinds == {"unicast", "local", "multicast", "unreachable"}
    assert {r["destination"] for r in v6 if r["type"] == "local"} >= {"::1/128", "fd00:1::1/128"}


def test_addresses_from_fib_trie_route_and_if_inet6() -> None:
    rows = state.parse_addresses(text("nat-fib_trie.txt"), text("nat-route.txt"), text("nat-if_inet6.txt"))
    v4 = [(r["interface"], r["cidr"], r["scope"]) for r in rows if r["family"] == "ipv4"]
    assert v4 == [("lo", "127.0.0.1/8", "host"), ("eth0", "10.0.0.1/24", "global"),
                  ("eth1", "10.0.1.1/24", "global")]
    v6 = {(r["interface"], r["cidr"], r["scope"]) for r in rows if r["family"] == "ipv6"}
    assert v6 == {("lo", "::1/128", "host"), ("eth1", "fd00:1::1/64", "global"),
                  ("eth1", "fe80::a88b:faff:fed6:36af/64", "link"),
                  ("eth0", "fe80::acb8:86ff:fe31:e994/64", "link")}
    client = state.parse_addresses(text("client-fib_trie.txt"), text("client-route.txt"))
    assert [(r["interface"], r["cidr"]) for r in client] == [("lo", "127.0.0.1/8"), ("eth0", "10.0.0.2/24")]


def test_ip_json_gives_the_same_rows() -> None:
    ip_json = (
        '[{"ifindex":1,"ifname":"lo","addr_info":[{"family":"inet","local":"127.0.0.1","prefixlen":8,'
        '"scope":"host"},{"family":"inet6","local":"::1","prefixlen":128,"scope":"host",'
        '"valid_life_time":4294967295}]},{"ifindex":2,"ifname":"eth0","addr_info":[{"family":"inet",'
        '"local":"10.0.0.1","prefixlen":24,"scope":"global"}]}]')
    rows = state.parse_ip_json(ip_json)
    assert [(r["interface"], r["family"], r["cidr"], r["scope"]) for r in rows] == [
        ("lo", "ipv4", "127.0.0.1/8", "host"), ("lo", "ipv6", "::1/128", "host"),
        ("eth0", "ipv4", "10.0.0.1/24", "global")]
    assert rows[1]["addr_flags"] == "permanent"


def test_arp() -> None:
    rows = state.parse_arp(text("nat-arp.txt"))
    assert rows == [
        {"address": "10.0.1.2", "lladdr": "de:df:62:6d:af:ba", "interface": "eth1", "state": "reachable",
         "hw_type": "ether"},
        {"address": "10.0.0.2", "lladdr": "c6:a5:22:7d:a6:9f", "interface": "eth0", "state": "reachable",
         "hw_type": "ether"},
    ]
    incomplete = "IP address HW type Flags HW address Mask Device\n10.0.0.9 0x1 0x0 00:00:00:00:00:00 * eth0\n"
    assert state.parse_arp(incomplete)[0]["state"] == "incomplete"
    assert state.parse_arp(incomplete)[0]["lladdr"] is None


def test_garbage_lines_are_skipped() -> None:
    junk = "hello\n\x00\x00\nipv4 2\n"
    assert state.parse_conntrack(junk) == []
    assert state.parse_route("header\nbad line here x y z w v\n") == []
    assert state.parse_if_inet6("zz 01 40 20 80 eth0\n") == []


def test_counters_time_is_datetime_and_float_kept() -> None:
    now = time.time()
    frame = records([LinkSample(now, "a-b", "a", "b", 1, 100, 0, 0, 0, 2.0, 16.0)])
    assert pd.api.types.is_datetime64_any_dtype(frame["time"])
    assert frame["timestamp"].iloc[0] == now
    assert frame["time"].iloc[0].to_pydatetime() == pytest.approx(dt.datetime.fromtimestamp(now),
                                                                  abs=dt.timedelta(milliseconds=1))
    assert list(frame.columns) == ["time", "link", "src", "dst", "frames", "bytes", "drops",
                                   "malformed", "injected", "pps", "bps", "timestamp"]
    empty = records([])
    assert pd.api.types.is_datetime64_any_dtype(empty["time"]) and empty["timestamp"].dtype == "float64"
    assert time_frame([{"time": now, "x": 1}])["x"].iloc[0] == 1


def test_clock_text() -> None:
    ts = dt.datetime(2026, 1, 2, 3, 4, 5, 678901).timestamp()
    assert clock_text(ts) == "03:04:05.678"
    assert clock_text(ts, digits=6) == "03:04:05.678901"
    assert clock_text(ts, digits=0) == "03:04:05"


def test_html_table_escapes_and_highlights() -> None:
    html = html_table(("a", "b"), [["<x>", Cell("10.0.0.1", highlight=True, title="was 10.0.0.2")]],
                      title="t & u")
    assert "&lt;x&gt;" in html and "t &amp; u" in html and "background:#fff3b0" in html
    assert "title='was 10.0.0.2'" in html
    assert "(none)" in html_table(("a",), [])


def test_errors_carry_a_hint_as_a_note_not_in_str() -> None:
    err = errors.ChainError("unknown kind 'natt'", node="nat")
    assert str(err) == "node 'nat': unknown kind 'natt'"
    assert err.hint and err.__notes__ == [f"hint: {err.hint}"]
    custom = errors.InstanceError("boom", name="x", hint="do this")
    assert custom.__notes__ == ["hint: do this"] and custom.hint == "do this"
    import traceback

    shown = "".join(traceback.format_exception(errors.StateError("lab is stopped")))
    assert "StateError: lab is stopped\nhint: " in shown
    for cls in (errors.ConfigError, errors.VariableError, errors.ChainError, errors.LabFileError,
                errors.EnvironmentProblem, errors.PcapError, errors.InstanceError, errors.BootError,
                errors.InstanceDied, errors.ExecError, errors.ExecTimeout, errors.LinkError,
                errors.StateError):
        assert cls.default_hint and "\n" not in cls.default_hint, cls


def test_ipv6_boot_arguments_and_setup() -> None:
    common = dict(mem_mb=64, init="/init", console=(0, 1), agent=None, ports=(), uml_dir="/d", umid="x")
    off = kernel_args(**common)  # type: ignore[arg-type]
    on = kernel_args(**common, ipv6=True)  # type: ignore[arg-type]
    assert "ipv6.disable_ipv6=1" in off and "ipv6.disable_ipv6=1" not in on
    assert "nf_conntrack.acct=1" in off and "nf_conntrack.acct=1" in on
    assert ipv6_setup(False, booted_with=False) == ""
    assert "modprobe ipv6" in ipv6_setup(True, booted_with=False)
    assert "echo 1 >" in ipv6_setup(False, booted_with=True)


def test_ipv6_is_a_node_and_graph_option() -> None:
    import networkx as nx

    import stdpkt_lab as sl

    g = nx.Graph()
    g.add_node("a", kind="host")
    g.add_node("b", kind="host", ipv6=True)
    g.add_edge("a", "b")
    plan = sl.build_plan(g)
    assert (plan["a"].spec.ipv6, plan["b"].spec.ipv6) == (False, True)
    g.graph["ipv6"] = True
    assert sl.build_plan(g)["a"].spec.ipv6
    g.nodes["a"]["ipv6"] = "yes"
    with pytest.raises(errors.ChainError, match="ipv6 must be True or False"):
        sl.build_plan(g)


def _imports(path: pathlib.Path) -> set[str]:
    tree = ast.parse(path.read_text())
    pkg = ".".join(path.relative_to(PKG.parent).with_suffix("").parts[:-1])
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg.rsplit(".", node.level - 1)[0] if node.level > 1 else pkg
                out.add(f"{base}.{node.module}" if node.module else base)
                out.update(f"{base}.{a.name}" for a in node.names if not node.module)
            elif node.module:
                out.add(node.module)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return out


def test_lower_layers_never_import_lab() -> None:
    """lab.py is the top: describe/, engine/, observe/, relay/ and dashboard/ do not import it
    (not even for type checking), so there is no lab ⇄ dashboard or lab ⇄ sampler cycle; nor
    does cluster/ (``Lab(g, cluster=...)`` imports it: the DistributedLab gives the dashboard
    what it reads through the same protocol, dashboard/source.py)."""
    offenders = []
    for sub in ("describe", "engine", "observe", "relay", "dashboard", "cluster"):
        for path in (PKG / sub).glob("*.py"):
            if "stdpkt_lab.lab" in _imports(path):
                offenders.append(str(path.relative_to(PKG)))
    assert not offenders, offenders


def test_html_reprs_before_anything_boots() -> None:
    import networkx as nx

    import stdpkt_lab as sl
    from stdpkt_lab.engine.instance import Instance

    g = nx.Graph()
    g.add_node("client", kind="host")
    g.add_node("nat", kind="nat", outside="server", ipv6=True)
    g.add_node("server", kind="host")
    g.add_edges_from([("client", "nat"), ("nat", "server")])
    lab = sl.Lab(g, progress=False)
    html = lab._repr_html_()
    assert "Lab: 3 nodes, created" in html and html.count("<tr>") == 1 + 3
    assert f"eth1 {lab.plan['nat'].spec.ports[1].address} → server" in html
    assert ">nat<" in html and ">on<" in html and ">off<" in html
    inst = Instance(lab.plan["nat"].spec)
    shown = inst._repr_html_()
    assert "created" in shown and str(lab.plan["nat"].spec.ports[0].address) in shown
