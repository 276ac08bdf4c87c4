"""The description layer (stdpkt_lab.describe): plans, validation, lab files. Fast: no kernels."""

from __future__ import annotations

import ipaddress
import json
import shutil
import subprocess
from pathlib import Path

import networkx as nx
import pytest

import stdpkt_lab.describe as chainmod
from stdpkt_lab.describe import (
    ChainPlan,
    KindRegistry,
    NFKind,
    Param,
    build_plan,
    chain,
    default_registry,
    load_lab,
    register_kind,
    save_lab,
    script_kind,
    sh,
)
from stdpkt_lab.errors import ChainError, LabFileError

ip = ipaddress.IPv4Address
net = ipaddress.IPv4Network


# ---------------------------------------------------------------- helpers
def issue_example() -> nx.Graph:
    g = nx.Graph()
    g.add_node("client", kind="host")
    g.add_node("nat", kind="nat", outside="fw")
    g.add_node("fw", kind="firewall", allow=["tcp/80", "icmp"])
    g.add_node("server", kind="host", serve="http")
    g.add_edges_from([("client", "nat"), ("nat", "fw"), ("fw", "server")])
    return g


def addrs(plan: ChainPlan, node: str) -> list[str]:
    return [str(p.address) for p in plan[node].spec.ports]


def owner(plan: ChainPlan, address: ipaddress.IPv4Address) -> str:
    for name, node in plan.items():
        if any(p.address is not None and p.address.ip == address for p in node.spec.ports):
            return name
    if any(plan.address(n) == address for n in plan if plan[n].kind.name == "lb"):
        return next(n for n in plan if plan.address(n) == address)
    raise AssertionError(f"nobody owns {address}")


def next_hop(plan: ChainPlan, node: str, dst: ipaddress.IPv4Address) -> ipaddress.IPv4Address:
    """What the node's kernel would do: connected subnet, longest-prefix route, default."""
    spec = plan[node].spec
    for port in spec.ports:
        if port.address is not None and dst in port.address.network:
            return dst
    best: tuple[int, ipaddress.IPv4Address] | None = None
    for route in spec.routes:
        dest, via, hop = route.split()
        assert via == "via"
        n = net(dest)
        if dst in n and (best is None or n.prefixlen > best[0]):
            best = (n.prefixlen, ip(hop))
    if best is not None:
        return best[1]
    assert spec.gateway is not None, f"{node} has no route to {dst}"
    return spec.gateway


def walk(plan: ChainPlan, src: str, dst: ipaddress.IPv4Address) -> list[str]:
    """Nodes a packet from ``src`` to ``dst`` visits, by the planned routes (bridges skipped)."""
    path = [src]
    while True:
        here = path[-1]
        if any(p.address is not None and p.address.ip == dst for p in plan[here].spec.ports):
            return path
        hop = next_hop(plan, here, dst)
        nxt = owner(plan, hop)
        assert nxt not in path, f"routing loop: {path + [nxt]}"
        # the next hop must be on a subnet ``here`` is attached to
        assert any(
            p.address is not None and hop in p.address.network for p in plan[here].spec.ports
        ), f"{here} sends to {hop}, which is on none of its subnets"
        path.append(nxt)
        if nxt == owner(plan, dst) and hop == dst:
            return path


def error_of(g: nx.Graph, **kw: object) -> ChainError:
    with pytest.raises(ChainError) as info:
        build_plan(g, **kw)  # type: ignore[arg-type]
    return info.value


# ---------------------------------------------------------------- the issue's example
def test_example_addresses_ports_and_links() -> None:
    plan = build_plan(issue_example())
    assert list(plan.nodes) == ["client", "nat", "fw", "server"]
    assert addrs(plan, "client") == ["10.0.0.2/24"]
    assert addrs(plan, "nat") == ["10.0.0.1/24", "10.0.1.1/24"]
    assert addrs(plan, "fw") == ["10.0.1.2/24", "10.0.2.1/24"]
    assert addrs(plan, "server") == ["10.0.2.2/24"]
    assert [(lp.a, lp.a_port, lp.b, lp.b_port, str(lp.subnet)) for lp in plan.links] == [
        ("client", 0, "nat", 0, "10.0.0.0/24"),
        ("nat", 1, "fw", 0, "10.0.1.0/24"),
        ("fw", 1, "server", 0, "10.0.2.0/24"),
    ]
    assert plan["nat"].neighbors == {0: "client", 1: "fw"}
    assert plan["nat"].port_of("fw") == 1
    with pytest.raises(ChainError, match="not a neighbour"):
        plan["nat"].port_of("server")
    assert plan.address("fw") == ip("10.0.1.2")
    assert plan["nat"].params == {"outside": "fw", "snat": None, "forward": None}
    assert plan["client"].spec.name == "client" and plan["client"].kind.name == "host"


def test_example_hosts_and_routes() -> None:
    plan = build_plan(issue_example())
    hosts = plan["client"].spec.hosts
    assert hosts is not None
    assert hosts.splitlines()[2:] == [
        "10.0.0.2\tclient",
        "10.0.0.1\tnat",
        "10.0.1.2\tfw",
        "10.0.2.2\tserver",
    ]
    assert all(plan[n].spec.hosts == hosts for n in plan)
    assert plan["client"].spec.gateway == ip("10.0.0.1")  # the NAT's address on its link
    assert plan["client"].spec.routes == ()
    assert plan["server"].spec.gateway == ip("10.0.2.1")  # the firewall
    assert next_hop(plan, "server", ip("10.0.0.2")) == ip("10.0.2.1")
    assert plan["fw"].spec.routes == ("10.0.0.0/24 via 10.0.1.1",)
    assert plan["nat"].spec.routes == ("10.0.2.0/24 via 10.0.1.2",)
    assert plan["nat"].spec.gateway is None
    assert walk(plan, "client", plan.address("server")) == ["client", "nat", "fw", "server"]
    assert walk(plan, "server", plan.address("client")) == ["server", "fw", "nat", "client"]


def test_example_setup_texts() -> None:
    plan = build_plan(issue_example())
    nat = plan["nat"].spec.setup or ""
    assert "iptables -t nat -A POSTROUTING -o eth1 -j MASQUERADE" in nat
    fw = (plan["fw"].spec.setup or "").splitlines()
    assert "iptables -P FORWARD DROP" in fw
    established = fw.index(
        "iptables -A FORWARD -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT"
    )
    http = fw.index("iptables -A FORWARD -p tcp --dport 80 -m conntrack --ctstate NEW -j ACCEPT")
    icmp = fw.index("iptables -A FORWARD -p icmp -m conntrack --ctstate NEW -j ACCEPT")
    assert established < http < icmp
    server = plan["server"].spec.setup or ""
    assert "busybox httpd -p 80 -h /tmp/www" in server
    assert "hello from server" in server and "REMOTE_ADDR" in server and "cgi-bin/whoami" in server
    assert plan["client"].spec.setup is None


# ---------------------------------------------------------------- shapes
def test_tree_gets_a_route_for_every_subnet() -> None:
    g = nx.Graph()
    g.add_nodes_from(["r1", "r2", "r3"], kind="router")
    g.add_nodes_from(["a", "b", "c", "d"], kind="host")
    g.add_edges_from(
        [("a", "r1"), ("r1", "r2"), ("r1", "r3"), ("r2", "b"), ("r2", "c"), ("r3", "d")]
    )
    plan = build_plan(g)
    subnets = {lp.subnet for lp in plan.links}
    assert len(subnets) == 6
    for name in ("r1", "r2", "r3"):
        node = plan[name]
        attached = {p.address.network for p in node.spec.ports if p.address is not None}
        routed = {net(r.split()[0]) for r in node.spec.routes}
        assert routed == subnets - attached, name
        assert node.spec.gateway is None
    for name in ("a", "b", "c", "d"):
        assert plan[name].spec.gateway is not None and plan[name].spec.routes == ()
    for src in g:
        for dst in g:
            if src != dst:
                path = walk(plan, src, plan.address(dst))
                assert path[0] == src and path[-1] == dst
    assert plan["r2"].spec.routes == (
        "10.0.0.0/24 via 10.0.1.1",
        "10.0.2.0/24 via 10.0.1.1",
        "10.0.5.0/24 via 10.0.1.1",
    )


def lb_graph(**lb: object) -> nx.Graph:
    g = nx.Graph()
    g.add_node("client", kind="host")
    g.add_node("r", kind="router")
    g.add_node("lb", kind="lb", backends=["s1", "s2", "s3"], **lb)
    g.add_node("sw", kind="bridge")
    for s in ("s1", "s2", "s3"):
        g.add_node(s, kind="host", serve="http")
    g.add_edges_from([("client", "r"), ("r", "lb"), ("lb", "sw")])
    g.add_edges_from([("sw", "s1"), ("sw", "s2"), ("sw", "s3")])
    return g


def test_lb_with_three_backends() -> None:
    plan = build_plan(lb_graph())
    vip = plan.address("lb")
    assert vip == ip("10.0.1.2")  # its address toward the clients, not toward the backends
    assert plan["lb"].params["vip"] == "10.0.1.2"
    assert f"{vip}\tlb" in (plan["client"].spec.hosts or "")
    setup = (plan["lb"].spec.setup or "").splitlines()
    assert "ipvsadm -A -t 10.0.1.2:80 -s rr" in setup
    for backend in ("s1", "s2", "s3"):
        real = plan.address(backend)
        assert f"ipvsadm -a -t 10.0.1.2:80 -r {real}:80 -m" in setup
        assert plan[backend].spec.gateway == ip("10.0.2.1")  # replies go back through the LB
        assert "lb" in walk(plan, backend, plan.address("client"))
    assert walk(plan, "client", vip) == ["client", "r", "lb"]


def test_lb_options_and_pinned_return_path_on_a_cycle() -> None:
    # s1 is reachable from the client side both via lb and via r2: the return path must use lb
    g = nx.Graph()
    g.add_node("client", kind="host")
    g.add_nodes_from(["r1", "r2"], kind="router")
    g.add_node("lb", kind="lb", backends=["s1"], front="r1", scheduler="sh", weights={"s1": 3})
    g.add_node("s1", kind="host")
    g.add_edges_from([("client", "r1"), ("r1", "r2"), ("r2", "s1"), ("r1", "lb"), ("lb", "s1")])
    plan = build_plan(g)
    vip = plan.address("lb")
    assert vip == plan["lb"].spec.ports[plan["lb"].port_of("r1")].address.ip  # type: ignore[union-attr]
    setup = plan["lb"].spec.setup or ""
    assert f"ipvsadm -A -t {vip}:80 -s sh" in setup and "-m -w 3" in setup
    assert walk(plan, "s1", plan.address("client"))[1] == "lb"
    # without the LB the same graph would return via r2: the pin is what changed it
    plain = g.copy()
    plain.nodes["lb"].update(kind="router")
    for key in ("backends", "front", "scheduler", "weights"):
        del plain.nodes["lb"][key]
    assert walk(build_plan(plain), "s1", plan.address("client"))[1] == "r2"


def test_bridge_makes_one_segment() -> None:
    g = chain("a", "br", "b", kinds={"br": "bridge"})
    plan = build_plan(g)
    assert [lp.subnet for lp in plan.links] == [net("10.0.0.0/24")] * 2
    assert [p.address for p in plan["br"].spec.ports] == [None, None]
    assert addrs(plan, "a") == ["10.0.0.1/24"] and addrs(plan, "b") == ["10.0.0.2/24"]
    assert plan["a"].spec.gateway is None and plan["a"].spec.routes == ()
    setup = (plan["br"].spec.setup or "").splitlines()
    assert "ip link add name br0 type bridge" in setup
    assert "ip link set dev eth0 master br0" in setup and "ip link set dev eth1 master br0" in setup
    assert "br" not in (plan["a"].spec.hosts or "")
    with pytest.raises(ChainError, match="no address"):
        plan.address("br")
    # two bridges in a row between routers: still one segment, one subnet
    g2 = chain("h1", "r1", "b1", "b2", "r2", "h2", kinds={"b1": "bridge", "b2": "bridge"})
    plan2 = build_plan(g2)
    assert len({lp.subnet for lp in plan2.links}) == 3
    assert walk(plan2, "h1", plan2.address("h2")) == ["h1", "r1", "r2", "h2"]


def test_bridge_loop_is_rejected() -> None:
    g = nx.Graph()
    g.add_nodes_from(["b1", "b2"], kind="bridge")
    g.add_nodes_from(["h1", "h2"], kind="host")
    g.add_edges_from([("h1", "b1"), ("b1", "b2"), ("h2", "b2"), ("h1", "b2"), ("h2", "b1")])
    assert "L2 loop" in str(error_of(g))


# ---------------------------------------------------------------- explicit settings
def test_explicit_subnet_addresses_mtu_routes_gateway() -> None:
    g = chain("client", "r", "server")
    g.edges["client", "r"].update(subnet="192.168.7.0/24", mtu=9000, addr={"r": "192.168.7.254"})
    g.edges["r", "server"]["addr"] = {"server": "172.16.0.10/16"}
    plan = build_plan(g)
    assert addrs(plan, "r") == ["192.168.7.254/24", "172.16.0.1/16"]
    assert addrs(plan, "client") == ["192.168.7.1/24"]
    assert addrs(plan, "server") == ["172.16.0.10/16"]
    assert plan["client"].spec.ports[0].mtu == 9000 and plan.links[0].mtu == 9000
    assert plan["client"].spec.gateway == ip("192.168.7.254")

    g.nodes["client"]["routes"] = ["172.16.0.0/16 via r", "default via 192.168.7.254"]
    g.nodes["server"]["gateway"] = "r"
    plan = build_plan(g)
    assert plan["client"].spec.routes == (
        "172.16.0.0/16 via 192.168.7.254",
        "default via 192.168.7.254",
    )
    assert plan["server"].spec.gateway == ip("172.16.0.1")
    g.nodes["server"]["gateway"] = ""
    assert build_plan(g)["server"].spec.gateway is None


def test_auto_subnets_avoid_explicit_ones() -> None:
    g = chain("a", "r1", "r2", "b")
    g.edges["r2", "b"]["subnet"] = "10.0.0.0/24"
    plan = build_plan(g)
    assert [str(lp.subnet) for lp in plan.links] == ["10.0.1.0/24", "10.0.2.0/24", "10.0.0.0/24"]


def test_address_conflict_names_both_nodes() -> None:
    g = chain("a", "br", "b", kinds={"br": "bridge"})
    g.edges["a", "br"]["addr"] = {"a": "10.0.0.5"}
    g.edges["br", "b"]["addr"] = {"b": "10.0.0.5"}
    err = error_of(g)
    assert "'a'" in str(err) and "'b'" in str(err) and "10.0.0.5" in str(err)


def test_digraph_and_chain_builder() -> None:
    g = chain("client", "fw", "server", kinds={"fw": "firewall"}, directed=True)
    assert isinstance(g, nx.DiGraph) and list(g.edges) == [("client", "fw"), ("fw", "server")]
    plan = build_plan(g)
    assert plan.graph is not g and isinstance(plan.graph, nx.DiGraph)
    assert plan["server"].spec.gateway == plan["fw"].spec.ports[1].address.ip  # type: ignore[union-attr]
    g2 = chain("a", "m", "b", params={"b": {"serve": ["http", "iperf3:5202"]}})
    assert g2.nodes["m"]["kind"] == "router" and g2.nodes["a"]["kind"] == "host"
    assert "iperf3 -s -D -p 5202" in (build_plan(g2)["b"].spec.setup or "")
    with pytest.raises(ChainError, match="twice"):
        chain("a", "b", "a")
    with pytest.raises(ChainError, match="not in the chain"):
        chain("a", "b", kinds={"c": "host"})


def test_plan_does_not_touch_the_input_graph() -> None:
    g = issue_example()
    before = (list(g.nodes(data=True)), list(g.edges(data=True)))
    before = json.loads(json.dumps(before))
    build_plan(g)
    assert json.loads(json.dumps((list(g.nodes(data=True)), list(g.edges(data=True))))) == before


# ---------------------------------------------------------------- nat / firewall details
def test_nat_snat_and_port_forwards() -> None:
    g = issue_example()
    g.nodes["nat"].update(snat="10.0.1.100", forward=["tcp/8080->server:80", "udp/53->10.0.2.2"])
    setup = (build_plan(g)["nat"].spec.setup or "").splitlines()
    assert "ip addr add 10.0.1.100/24 dev eth1" in setup
    assert "iptables -t nat -A POSTROUTING -o eth1 -j SNAT --to-source 10.0.1.100" in setup
    assert (
        "iptables -t nat -A PREROUTING -i eth1 -p tcp --dport 8080 -j DNAT "
        "--to-destination 10.0.2.2:80"
    ) in setup
    assert (
        "iptables -t nat -A PREROUTING -i eth1 -p udp --dport 53 -j DNAT --to-destination 10.0.2.2"
        in setup
    )
    assert not any("MASQUERADE" in line for line in setup)
    # outside left out: the neighbour on the NAT's last port
    g2 = issue_example()
    del g2.nodes["nat"]["outside"]
    plan = build_plan(g2)
    assert plan["nat"].params["outside"] == "fw"


def test_firewall_syntax() -> None:
    g = issue_example()
    g.nodes["fw"].update(
        allow=[
            "tcp/1000-2000",
            "tcp/80,443",
            "udp/53",
            "icmp/echo-request",
            "tcp/22 from client",
            "any from 10.0.0.0/8 to server",
        ],
        deny=["tcp/23"],
        rules=[
            "-A FORWARD -p tcp --dport 9 -j REJECT",
            "iptables -A INPUT -p tcp --dport 22 -j DROP",
        ],
    )
    lines = (build_plan(g)["fw"].spec.setup or "").splitlines()
    new = "-m conntrack --ctstate NEW"
    expected = [
        f"iptables -A FORWARD -p tcp --dport 23 {new} -j DROP",
        f"iptables -A FORWARD -p tcp --dport 1000:2000 {new} -j ACCEPT",
        f"iptables -A FORWARD -p tcp -m multiport --dports 80,443 {new} -j ACCEPT",
        f"iptables -A FORWARD -p udp --dport 53 {new} -j ACCEPT",
        f"iptables -A FORWARD -p icmp --icmp-type echo-request {new} -j ACCEPT",
        f"iptables -A FORWARD -p tcp --dport 22 -s 10.0.0.2 {new} -j ACCEPT",
        f"iptables -A FORWARD -s 10.0.0.0/8 -d 10.0.2.2 {new} -j ACCEPT",
        "iptables -A FORWARD -p tcp --dport 9 -j REJECT",
        "iptables -A INPUT -p tcp --dport 22 -j DROP",
    ]
    positions = [lines.index(e) for e in expected]
    assert positions == sorted(positions)
    # a node with several addresses matches all of them
    g.nodes["fw"].update(allow=["any from nat"], deny=None, rules=None)
    assert "-s 10.0.0.1,10.0.1.1" in (build_plan(g)["fw"].spec.setup or "")


@pytest.mark.parametrize(
    ("rule", "problem"),
    [
        ("tcp", None),
        ("tcp/0", "outside 1..65535"),
        ("tcp/2000-1000", "backwards"),
        ("sctp/80", "not tcp, udp, icmp or any"),
        ("tcp/80 from", "expected 'from PEER'"),
        ("tcp/80 via client", "expected 'from PEER'"),
        ("tcp/80 from clinet", "did you mean 'client'"),
        ("any/80", "takes no ports"),
        ("icmp/Echo Reply", "expected 'from PEER'"),
        ("", "empty rule"),
    ],
)
def test_firewall_rule_errors(rule: str, problem: str | None) -> None:
    g = issue_example()
    g.nodes["fw"]["allow"] = [rule]
    if problem is None:
        build_plan(g)
        return
    err = error_of(g)
    assert err.node == "fw" and problem in str(err), str(err)


# ---------------------------------------------------------------- validation
def _with(change):
    g = issue_example()
    change(g)
    return g


VALIDATION_CASES = [
    (
        "unknown kind",
        lambda g: g.nodes["fw"].update(kind="firewal"),
        "fw",
        [
            "unknown kind 'firewal'",
            "did you mean 'firewall'",
            "known kinds: bridge, domain, filter, firewall, frr, host",
        ],
    ),
    ("missing kind", lambda g: g.nodes["client"].pop("kind"), "client", ["no kind="]),
    (
        "unknown parameter",
        lambda g: g.nodes["server"].update(serv="http"),
        "server",
        ["unknown parameter 'serv'", "did you mean 'serve'"],
    ),
    (
        "bad parameter value",
        lambda g: g.nodes["server"].update(serve="ftp"),
        "server",
        ["serve='ftp'", "not 'http' or 'iperf3'"],
    ),
    (
        "host with three links",
        lambda g: (
            g.add_edges_from([("client", "x"), ("client", "y")])
            or g.nodes["x"].update(kind="host")
            or g.nodes["y"].update(kind="host")
        ),
        "client",
        ["at most 2 links", "has 3 links"],
    ),
    (
        "nat with one link",
        lambda g: g.remove_edge("nat", "fw") or g.add_edge("client", "fw"),
        "nat",
        ["at least 2 links"],
    ),
    (
        "nat outside not a neighbour",
        lambda g: g.nodes["nat"].update(outside="server"),
        "nat",
        ["outside 'server' is not a neighbour", "client, fw"],
    ),
    (
        "nat outside not a node",
        lambda g: g.nodes["nat"].update(outside="fw2"),
        "nat",
        ["outside 'fw2' is not a node", "did you mean 'fw'"],
    ),
    ("self loop", lambda g: g.add_edge("fw", "fw"), "fw", ["self-loop"]),
    ("invalid name", lambda g: g.add_node("bad name!", kind="host"), "bad name!", ["invalid name"]),
    ("name too long", lambda g: g.add_node("x" * 41, kind="host"), "x" * 41, ["at most 40"]),
    (
        "names differing in case",
        lambda g: g.add_node("Server", kind="host"),
        "Server",
        ["differ only in case"],
    ),
    (
        "bad subnet",
        lambda g: g.edges["nat", "fw"].update(subnet="10.0.1.1/24"),
        None,
        ["'nat'–'fw'", "not an IPv4 network"],
    ),
    (
        "overlapping subnets",
        lambda g: (
            g.edges["nat", "fw"].update(subnet="10.9.0.0/16")
            or g.edges["fw", "server"].update(subnet="10.9.3.0/24")
        ),
        None,
        ["overlap", "10.9.0.0/16"],
    ),
    (
        "address outside subnet",
        lambda g: g.edges["fw", "server"].update(subnet="10.5.0.0/24", addr={"server": "10.6.0.1"}),
        "server",
        ["outside the segment"],
    ),
    (
        "addr for a non-end",
        lambda g: g.edges["fw", "server"].update(addr={"nat": "10.0.2.9"}),
        None,
        ["not an end of this link"],
    ),
    ("bad mtu", lambda g: g.edges["fw", "server"].update(mtu=20), None, ["mtu 20"]),
    (
        "bad route",
        lambda g: g.nodes["client"].update(routes=["somewhere via nat"]),
        "client",
        ["does not start with a network"],
    ),
    (
        "route via a stranger",
        lambda g: g.nodes["client"].update(routes=["default via server"]),
        "client",
        ["shares no subnet"],
    ),
    ("bad mem", lambda g: g.nodes["client"].update(mem_mb=5), "client", ["mem_mb 5"]),
    (
        "snat outside subnet",
        lambda g: g.nodes["nat"].update(snat="192.0.2.1"),
        "nat",
        ["outside the outside port's subnet"],
    ),
    (
        "forward target unknown",
        lambda g: g.nodes["nat"].update(forward=["tcp/80->sever"]),
        "nat",
        ["did you mean 'server'"],
    ),
    (
        "forward syntax",
        lambda g: g.nodes["nat"].update(forward=["80 to server"]),
        "nat",
        ["is not like 'tcp/8080->server:80'"],
    ),
    (
        "script without a script",
        lambda g: g.nodes["fw"].update(kind="script") or g.nodes["fw"].pop("allow"),
        "fw",
        ["exactly one of script=PATH or text="],
    ),
    (
        "script file missing",
        lambda g: (
            g.nodes["fw"].update(kind="script", script="/nonexistent/x.sh")
            or g.nodes["fw"].pop("allow")
        ),
        "fw",
        ["cannot read script"],
    ),
]


@pytest.mark.parametrize(
    ("case", "change", "node", "words"), VALIDATION_CASES, ids=[c[0] for c in VALIDATION_CASES]
)
def test_validation_errors(case, change, node, words) -> None:
    g = issue_example()
    change(g)
    err = error_of(g)
    assert err.node == node, str(err)
    for word in words:
        assert word in str(err), f"{case}: {word!r} not in {str(err)!r}"


def lb_case(**lb: object) -> ChainError:
    g = lb_graph()
    g.nodes["lb"].update(lb)
    err = error_of(g)
    assert err.node == "lb", str(err)
    return err


def test_lb_validation() -> None:
    g = lb_graph()
    del g.nodes["lb"]["backends"]
    err = error_of(g)
    assert err.node == "lb" and "missing required parameter 'backends'" in str(err)
    assert "at least one backend" in str(lb_case(backends=[]))
    assert "'s4' is not a node" in str(lb_case(backends=["s1", "s4"]))
    assert "listed twice" in str(lb_case(backends=["s1", "s1"]))
    assert "own backend" in str(lb_case(backends=["lb"]))
    assert "'sw' has no address" in str(lb_case(backends=["sw"]))
    assert "not one of rr, wrr" in str(lb_case(scheduler="round-robin"))
    assert "expected int" in str(lb_case(port="80"))
    assert "front port" in str(lb_case(front="sw"))
    assert "weights names 'client'" in str(lb_case(weights={"client": 2}))
    assert "integer >= 0" in str(lb_case(weights={"s1": "2"}))
    # a backend that cannot be reached: an island
    g = lb_graph()
    g.add_nodes_from(["s9", "s10"], kind="host")
    g.add_edge("s9", "s10")
    g.nodes["lb"]["backends"] = ["s1", "s9"]
    err = error_of(g)
    assert err.node == "lb" and "'s9' is not reachable" in str(err)
    # every port leads to backends: no clients' side
    g = nx.Graph()
    g.add_node("lb", kind="lb", backends=["a", "b"])
    g.add_nodes_from(["a", "b"], kind="host")
    g.add_edges_from([("lb", "a"), ("lb", "b")])
    assert "no port toward clients" in str(error_of(g))


def test_graph_level_errors() -> None:
    assert "empty" in str(error_of(nx.Graph()))
    multi = nx.MultiGraph()
    multi.add_edge("a", "b")
    assert "MultiGraph" in str(error_of(multi))
    g = nx.Graph()
    g.add_node(7, kind="host")
    assert "must be strings" in str(error_of(g))
    with pytest.raises(ChainError, match="expected a networkx Graph"):
        build_plan({"a": 1})
    d = nx.DiGraph()
    d.add_nodes_from(["a", "b"], kind="host")
    d.add_edge("a", "b", mtu=1400)
    d.add_edge("b", "a", mtu=1500)
    assert "both directions" in str(error_of(d))
    d.edges["b", "a"]["mtu"] = 1400
    assert len(build_plan(d).links) == 1


# ---------------------------------------------------------------- user kinds
class Shaper(NFKind):
    """Rate-limits every port. rate: tc rate."""

    name = "shaper"
    min_ports, max_ports = 2, 2
    params = {
        "rate": Param("10mbit", "tc rate", type=str),
        "delay": Param(None, "extra delay, derived: 1ms per port"),
    }

    def validate(self, ctx) -> None:
        if not ctx.params["rate"].endswith("bit"):
            raise ctx.error(f"rate {ctx.params['rate']!r} needs a unit like 10mbit")

    def derive(self, ctx):
        return {"delay": f"{len(ctx.ports)}ms"}

    def setup(self, ctx) -> str:
        return "\n".join(
            sh("tc", "qdisc", "add", "dev", p.device, "root", "tbf", "rate", ctx.params["rate"])
            for p in ctx.ports
        )


def test_user_registered_kind() -> None:
    registry = default_registry.copy()
    assert register_kind(Shaper, registry=registry) is Shaper
    assert "shaper" in registry and "shaper" not in default_registry
    g = chain("a", "tc", "b", kinds={"tc": "shaper"}, params={"tc": {"rate": "5mbit"}})
    plan = build_plan(g, registry=registry)
    assert plan["tc"].kind.name == "shaper"
    assert plan["tc"].params == {"rate": "5mbit", "delay": "2ms"}
    assert "tc qdisc add dev eth1 root tbf rate 5mbit" in (plan["tc"].spec.setup or "")
    assert walk(plan, "a", plan.address("b")) == ["a", "tc", "b"]  # it forwards: routed through
    err = error_of(g)  # the default registry does not know it
    assert "unknown kind 'shaper'" in str(err)
    g.nodes["tc"]["rate"] = "5"
    err = error_of(g, registry=registry)
    assert err.node == "tc" and "needs a unit" in str(err)
    # a class can be used directly as kind=, without registering
    g.nodes["tc"].update(kind=Shaper, rate="1mbit")
    assert build_plan(g)["tc"].kind.name == "shaper"
    with pytest.raises(ChainError, match="already registered"):
        registry.register_kind(type("Other", (Shaper,), {}))
    with pytest.raises(ChainError, match="not an NFKind"):
        registry.register_kind(dict)  # type: ignore[arg-type]
    bad = type("Bad", (NFKind,), {"name": "bad", "min_ports": 3, "max_ports": 1})
    with pytest.raises(ChainError, match="min_ports"):
        KindRegistry([bad])


def test_script_kinds(tmp_path: Path) -> None:
    script = tmp_path / "mark.sh"
    script.write_text("#!/bin/sh\niptables -t mangle -A FORWARD -j MARK --set-mark $MARK\n")
    registry = default_registry.copy()
    registry.register_kind(
        script_kind("marker", path=script, params={"MARK": Param("7", "the mark")}, min_ports=2)
    )
    g = chain("a", "m", "b", kinds={"m": "marker"}, params={"m": {"MARK": "9"}})
    plan = build_plan(g, registry=registry)
    assert plan["m"].spec.env == {"MARK": "9"}
    setup = plan["m"].spec.setup or ""
    assert "iptables -t mangle -A FORWARD -j MARK --set-mark $MARK" in setup
    assert setup.rstrip().endswith("/bin/sh /run/stdpkt/nf-m.sh")
    # the catalogue's `script` kind: a path or text, UPPER_CASE extras exported, others rejected
    g.nodes["m"].clear()
    g.nodes["m"].update(kind="script", text="echo $GREETING\n", GREETING="hi", N=3)
    plan = build_plan(g)
    assert plan["m"].spec.env == {"GREETING": "hi", "N": "3"}
    assert "echo $GREETING" in (plan["m"].spec.setup or "")
    g.nodes["m"]["greeting"] = "hi"
    assert "unknown parameter 'greeting'" in str(error_of(g))
    # a text that contains the heredoc delimiter still round-trips
    g.nodes["m"].pop("greeting")
    g.nodes["m"]["text"] = "echo a\nSTDPKT_SCRIPT_END\necho b\n"
    setup = build_plan(g)["m"].spec.setup or ""
    assert "<<'STDPKT_SCRIPT_END_'" in setup
    with pytest.raises(ChainError, match="exactly one"):
        script_kind("x")


# ---------------------------------------------------------------- lab files
def rich_graph() -> nx.Graph:
    g = issue_example()
    g.graph["title"] = "exercise 1"
    g.nodes["fw"]["deny"] = ["tcp/23"]
    g.edges["nat", "fw"].update(subnet="192.168.0.0/24", mtu=1400, addr={"fw": "192.168.0.2"})
    g.add_node("lb", kind="lb", backends=["s1", "s2"], weights={"s1": 2})
    g.add_nodes_from(["s1", "s2"], kind="host")
    g.add_edges_from([("server", "lb"), ("lb", "s1"), ("lb", "s2")])
    g.nodes["server"]["kind"] = "router"
    g.nodes["server"].pop("serve")
    return g


@pytest.mark.parametrize("suffix", [".yaml", ".yml", ".json"])
def test_lab_file_round_trip(tmp_path: Path, suffix: str) -> None:
    g = rich_graph()
    path = save_lab(g, tmp_path / f"lab{suffix}")
    back = load_lab(path)
    assert type(back) is nx.Graph
    assert list(back.nodes(data=True)) == list(g.nodes(data=True))
    assert list(back.edges(data=True)) == list(g.edges(data=True))
    assert back.graph == g.graph
    p1, p2 = build_plan(g), build_plan(back)
    assert [n.spec for n in p1.values()] == [n.spec for n in p2.values()]
    assert p1.links == p2.links
    # directed graphs stay directed
    d = chain("a", "b", directed=True)
    back_d = load_lab(save_lab(d, tmp_path / f"d{suffix}"))
    assert isinstance(back_d, nx.DiGraph) and list(back_d.edges) == [("a", "b")]


def test_lab_file_hand_written(tmp_path: Path) -> None:
    path = tmp_path / "lab.yaml"
    path.write_text(
        "stdpkt-lab: 1\n"
        "nodes:\n"
        "  client: {kind: host}\n"
        "  nat: {kind: nat, outside: fw}\n"
        "  fw: {kind: firewall, allow: [tcp/80, icmp]}\n"
        "  server:\n"
        "    kind: host\n"
        "    serve: http\n"
        "links:\n"
        "  - [client, nat]\n"
        "  - {a: nat, b: fw}\n"
        "  - {a: fw, b: server}\n"
    )
    g = load_lab(path)
    ref = issue_example()
    assert list(g.nodes(data=True)) == list(ref.nodes(data=True))
    assert list(g.edges) == list(ref.edges)
    assert build_plan(g)["client"].spec.gateway == ip("10.0.0.1")


MALFORMED = [
    ("lab.yaml", "stdpkt-lab: 1\nnodes:\n  a: [kind: host\n  b: {}\n", ["line 4", "invalid YAML"]),
    ("lab.json", '{"stdpkt-lab": 1, "nodes": {}', ["line 1", "invalid JSON"]),
    ("lab.yaml", "nodes: {a: {kind: host}}\n", ["stdpkt-lab", "expected 'stdpkt-lab: 1'"]),
    ("lab.yaml", "stdpkt-lab: 2\nnodes: {a: {}}\n", ["got 2"]),
    ("lab.yaml", "stdpkt-lab: 1\nnodes: {a: {}}\nlinkz: []\n", ["unknown key 'linkz'"]),
    ("lab.yaml", "stdpkt-lab: 1\nnodes: []\n", ["nodes", "non-empty mapping"]),
    (
        "lab.yaml",
        "stdpkt-lab: 1\nnodes:\n  a: {}\n  b: {}\nlinks:\n  - {a: a, b: c}\n",
        ["line 6", "links[0].b", "'c' is not a node"],
    ),
    ("lab.yaml", "stdpkt-lab: 1\nnodes:\n  a: {}\nlinks:\n  - {a: a}\n", ["line 5", "missing 'b'"]),
    (
        "lab.yaml",
        "stdpkt-lab: 1\nnodes:\n  a: {}\n  b: {}\nlinks:\n  - [a, b]\n  - [b, a]\n",
        ["links[1]", "duplicate link"],
    ),
    ("lab.yaml", "stdpkt-lab: 1\nnodes:\n  a: {}\nlinks:\n  - [a, a]\n", ["to itself"]),
    ("lab.yaml", "stdpkt-lab: 1\nnodes:\n  1: {kind: host}\n", ["not a string"]),
    ("lab.yaml", "stdpkt-lab: 1\nnodes:\n  a: host\n", ["nodes.a", "mapping of attributes"]),
    ("lab.yaml", "- 1\n", ["top level"]),
    ("lab.txt", "", ["unknown lab file type '.txt'"]),
]


@pytest.mark.parametrize(("name", "text", "words"), MALFORMED)
def test_malformed_lab_files(tmp_path: Path, name: str, text: str, words: list[str]) -> None:
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(LabFileError) as info:
        load_lab(path)
    message = str(info.value)
    assert str(path) in message
    for word in words:
        assert word in message, message


def test_lab_file_write_errors(tmp_path: Path) -> None:
    with pytest.raises(LabFileError, match="missing.yaml: cannot read"):
        load_lab(tmp_path / "missing.yaml")
    g = chain("a", "b")
    g.nodes["a"]["blob"] = object()
    with pytest.raises(LabFileError, match="nodes.a.blob"):
        save_lab(g, tmp_path / "x.yaml")
    g = chain("a", "b")
    g.nodes["a"]["nets"] = (ipaddress.IPv4Network("10.1.0.0/16"),)
    back = load_lab(save_lab(g, tmp_path / "x.json"))
    assert back.nodes["a"]["nets"] == ["10.1.0.0/16"]


# ---------------------------------------------------------------- shell pipeline
def test_shell_pipeline_for_the_linear_chain() -> None:
    plan = build_plan(issue_example())
    text = plan.shell_pipeline()
    assert "mkfifo p1 p2 p3" in text
    assert (
        "IF0='p1|/dev/stdout' IP0=10.0.0.2 NETMASK0=24 GATEWAY=10.0.0.1 \\\n"
        "    $STDPKT run --name client --prefix client.sh \\\n"
        "| IF0='/dev/stdin|p1' IF1='p2|/dev/stdout' IP0=10.0.0.1 NETMASK0=24 IP1=10.0.1.1 "
        "NETMASK1=24 \\\n"
        "    $STDPKT run --name nat --prefix nat.sh \\\n"
    ) in text
    assert "| IF0='/dev/stdin|p3' IP0=10.0.2.2 NETMASK0=24 GATEWAY=10.0.2.1 \\\n" in text
    assert text.rstrip().endswith("$STDPKT run --name server --prefix server.sh")
    # each stage's script carries its routes, /etc/hosts and kind set-up
    nat_script = text.split("cat > nat.sh <<'STDPKT_END'\n")[1].split("\nSTDPKT_END\n")[0]
    assert "ip route add 10.0.2.0/24 via 10.0.1.2" in nat_script
    assert "iptables -t nat -A POSTROUTING -o eth1 -j MASQUERADE" in nat_script
    assert "mount --bind /run/stdpkt/hosts /etc/hosts" in nat_script
    if shutil.which("bash"):
        subprocess.run(["bash", "-n"], input=text, text=True, check=True)


def test_shell_pipeline_order_mtu_and_non_linear() -> None:
    g = chain("z", "m", "a")
    g.edges["m", "a"]["mtu"] = 9000
    text = build_plan(g).shell_pipeline()
    assert text.index("--name z") < text.index("--name m") < text.index("--name a")
    assert "MTU1=9000" in text and "MTU0=9000" in text
    with pytest.raises(ChainError, match="not a linear chain"):
        build_plan(lb_graph()).shell_pipeline()
    ring = chain("a", "r1", "r2", "b")
    ring.add_edge("a", "b")
    ring.nodes["a"]["kind"] = ring.nodes["b"]["kind"] = "router"
    with pytest.raises(ChainError, match="cycle"):
        build_plan(ring).shell_pipeline()


def test_public_names() -> None:
    for name in chainmod.__all__:
        assert hasattr(chainmod, name), name
    assert {"host", "router", "nat", "firewall", "lb", "bridge", "script"} <= set(default_registry)
    for kind in default_registry.values():
        assert kind.__doc__ and all(p in kind.__doc__ for p in kind.params), kind.name
