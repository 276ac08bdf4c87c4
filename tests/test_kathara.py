"""Netkit/Kathará lab folders (tests/labs/): parsing, then real kernels and real traffic."""

from __future__ import annotations

import re
import time
import warnings
from pathlib import Path

import networkx as nx
import pytest

import stdpkt_lab as sl
from stdpkt_lab.describe.kathara import KatharaWarning
from stdpkt_lab.errors import ChainError, LabConfError

LABS = Path(__file__).resolve().parent / "labs"


def write_lab(tmp_path: Path, conf: str, **files: str) -> Path:
    (tmp_path / "lab.conf").write_text(conf)
    for name, text in files.items():
        (tmp_path / name.replace("__", ".")).write_text(text)
    return tmp_path


# ------------------------------------------------------------------ parsing (no kernels)
def test_malformed_lab_conf_names_the_line() -> None:
    with pytest.raises(LabConfError, match=r"malformed/lab.conf:3: .*pc1\[0 = \"B\"") as info:
        sl.load_kathara(LABS / "malformed")
    assert info.value.line == 3
    assert isinstance(info.value, ChainError)


@pytest.mark.parametrize("conf, pattern", [
    ('a[0]="A B"\n', r":1: .*one word or quoted|collision domain"),
    ('a[0]="A.x"\n', r":1: .*collision domain 'A.x'"),
    ('a[0]="A/zz:00:00:00:00:01"\n', r":1: .*MAC"),
    ('a[0]="A"\na[2]="B"\n', r":2: .*has eth2 but no eth1"),
    ('a[0]="A"\na[0]="B"\n', r":2: .*given twice"),
    ('a[mem]="lots"\n', r":1: .*mem"),
    ('a[sysctl]="kernel.panic=1"\n', r":1: .*only net\.\*"),
    ('a[ipv6]="maybe"\n', r":1: .*true or false"),
    ('a[0]="A\n', r":1: .*unterminated"),
])
def test_bad_values_name_file_and_line(tmp_path: Path, conf: str, pattern: str) -> None:
    with pytest.raises(LabConfError, match=pattern):
        sl.load_kathara(write_lab(tmp_path, conf))


def test_lab_dep_errors(tmp_path: Path) -> None:
    lab = write_lab(tmp_path, 'a[0]="x"\nb[0]="x"\n')
    (lab / "lab.dep").write_text("a: b\nb: a\n")
    with pytest.raises(LabConfError, match="dependency cycle"):
        sl.load_kathara(lab)
    (lab / "lab.dep").write_text("# comment\na: c\n")
    with pytest.raises(LabConfError, match=r"lab.dep:2: 'c' is not a device"):
        sl.load_kathara(lab)


def test_unknown_and_unsupported_options_warn_with_file_and_line(tmp_path: Path) -> None:
    conf = ('LAB_DESCRIPTION="d"\nLAB_COLOUR=red\na[0]="x"\na[bridged]=true\na[port]="8080:80"\n'
            'a[frobnicate]=1\na[cpus]=2\na[image]="acme/unknown:1"\nb[0]="x"\n')
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        g = sl.load_kathara(write_lab(tmp_path, conf))
    texts = [str(w.message) for w in caught if issubclass(w.category, KatharaWarning)]
    for line, word in [(2, "LAB_COLOUR"), (4, "bridged"), (5, "port"), (6, "frobnicate"), (7, "cpus"),
                       (8, "unknown image")]:
        assert any(f"lab.conf:{line}:" in t and word in t for t in texts), (line, word, texts)
    assert any("not supported" in t and "bridged" in t for t in texts)
    assert g.graph["kathara"]["meta"]["description"] == "d"
    assert len(g.graph["kathara"]["warnings"]) == len(texts)


def test_graph_shape_domains_ports_and_macs() -> None:
    g = sl.load_kathara(LABS / "static")
    assert {n: k for n, k in g.nodes(data="kind")} == {
        "pc1": "kathara", "r1": "kathara", "r2": "kathara", "pc2": "kathara", "pc3": "kathara",
        "cd-C": "domain"}
    assert g.edges["pc1", "r1"]["mac"] == {"pc1": "02:00:00:00:0a:01"}
    assert set(g["cd-C"]) == {"r2", "pc2", "pc3"}  # three devices on one collision domain
    plan = sl.build_plan(g)
    # interface numbers follow lab.conf, addresses are left to the startup scripts
    assert plan["r2"].neighbors == {0: "r1", 1: "cd-C"}
    assert all(p.address is None for p in plan["r1"].spec.ports)
    assert plan["r1"].spec.routes == () and plan["r1"].spec.gateway is None
    assert plan["pc1"].spec.ports[0].mac == "02:00:00:00:0a:01"
    assert g.graph["kathara"]["meta"]["author"] == "stdpkt-lab tests"


def test_explicit_port_numbers_in_plain_graphs() -> None:
    g = nx.Graph()
    g.add_node("r", kind="router")
    for h in ("a", "b", "c"):
        g.add_node(h, kind="host")
    g.add_edge("r", "a", ports={"r": 2})
    g.add_edge("r", "b", ports={"r": 0})
    g.add_edge("r", "c")
    assert sl.build_plan(g)["r"].neighbors == {0: "b", 1: "c", 2: "a"}
    g.edges["r", "c"]["ports"] = {"r": 0}
    with pytest.raises(ChainError, match="eth0 given to two links"):
        sl.build_plan(g)


def test_start_waves_from_lab_dep() -> None:
    from stdpkt_lab.describe.startorder import start_waves

    g = sl.load_kathara(LABS / "dep")
    assert start_waves(g) == [["a"], ["b"]]
    assert "a" in g.graph["on_stop"] and "b" not in g.graph["on_stop"]


# ------------------------------------------------------------------ real kernels
def wait_for(lab: sl.Lab, node: str, cmd: str, ok: re.Pattern[str] | str, timeout: float) -> str:
    """Run ``cmd`` in ``node`` until its output matches ``ok`` (bounded poll)."""
    deadline = time.monotonic() + timeout
    out = ""
    while time.monotonic() < deadline:
        r = lab.exec(node, cmd, timeout=20)
        out = r.stdout + r.stderr
        if re.search(ok, out):
            return out
        time.sleep(1)
    raise AssertionError(f"{node}: {cmd!r} never matched {ok!r} in {timeout} s; last output:\n{out}")


@pytest.mark.uml
def test_static_lab_routes_mac_overlay_shared_exec_and_three_device_domain() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", KatharaWarning)
        g = sl.load_kathara(LABS / "static")
    with sl.Lab(g, progress=False) as lab:
        # static routes set by the startup scripts: pc1 reaches both hosts of the far domain
        for target in ("10.1.3.2", "10.1.3.3"):
            r = lab.exec("pc1", f"ping -c 2 -W 3 {target}")
            assert r.returncode == 0, r
            assert "ttl=62" in r.stdout  # two routers on the way
        # the three-device domain is one L2 segment: pc2 and pc3 see each other's MACs
        assert lab.exec("pc2", "ping -c 1 -W 3 10.1.3.3").returncode == 0
        neigh = lab.exec("pc2", "ip neigh show 10.1.3.3").stdout
        assert re.search(r"lladdr ([0-9a-f]{2}:){5}[0-9a-f]{2}", neigh), neigh
        assert "02:00:00:00:0a:01" in lab.exec("pc1", "ip link show eth0").stdout
        # Kathará's defaults and the lab's sysctl
        assert lab.exec("r1", "cat /proc/sys/net/ipv4/ip_forward /proc/sys/net/ipv4/conf/all/rp_filter"
                        ).stdout.split() == ["1", "0"]
        assert lab.exec("r2", "cat /proc/sys/net/ipv4/conf/all/send_redirects").stdout.strip() == "0"
        # r1/ copied over the root, shared/ at /shared, exec command run, startup logged
        assert lab.exec("r1", "cat /etc/motd-stdpkt").stdout == "overlay file of r1\n"
        assert lab.exec("pc2", "cat /shared/readme.txt").stdout == "shared by all\n"
        assert lab.exec("pc3", "cat /tmp/exec-mark").stdout == "exec-ran\n"
        assert "+ ip addr add 10.1.1.1/24 dev eth0" in lab.exec("r1", "cat /var/log/startup.log").stdout
        # writes stay in the guest: the host's /etc is untouched
        lab.exec("r1", "echo x > /etc/stdpkt-guest-write && echo y > /shared/readme.txt").check()
        assert not Path("/etc/stdpkt-guest-write").exists()
        assert (LABS / "static" / "shared" / "readme.txt").read_text() == "shared by all\n"


@pytest.mark.uml
def test_netkit_nat_lab_http_through_masquerade() -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        g = sl.load_kathara(LABS / "nat-netkit")
    assert any("gw[con0]" in str(w.message) and "lab.conf:10:" in str(w.message) for w in caught)
    assert g.nodes["pc"]["mem_mb"] == 64
    with sl.Lab(g, progress=False) as lab:
        r = lab.exec("pc", "wget -qO- -T 5 http://203.0.113.2/")
        assert r.returncode == 0, r
        assert r.stdout == "hello through the NAT\n"
        # the server has no route to the client's network: the reply came back through the NAT
        assert "192.168.0" not in lab.exec("srv", "ip route").stdout
        assert "src=192.168.0.2" in lab.exec("gw", "conntrack -L -p tcp 2>/dev/null").stdout


@pytest.mark.uml
def test_ospf_area_with_frr_converges_and_forwards() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", KatharaWarning)
        g = sl.load_kathara(LABS / "ospf")
    with sl.Lab(g, progress=False) as lab:
        out = wait_for(lab, "r1", "vtysh -c 'show ip route ospf'", r"O>\* 10\.0\.3\.0/24 .*via 10\.0\.12\.2",
                       timeout=90)
        assert "10.0.23.0/24" in out
        assert "Full" in lab.exec("r2", "vtysh -c 'show ip ospf neighbor'").stdout
        r = lab.exec("r1", "ping -c 2 -W 3 -I 10.0.1.1 10.0.3.3")
        assert r.returncode == 0, r
        assert lab.exec("r1", "systemctl is-active frr").stdout.strip() == "active"
        # the daemons file of the overlay is what FRR honoured: ospfd runs, bgpd does not
        ps = lab.exec("r3", "ps ax").stdout
        assert "/usr/lib/frr/ospfd" in ps and "/usr/lib/frr/bgpd" not in ps
        assert lab.exec("r1", "service frr stop").returncode == 0
        assert lab.exec("r1", "systemctl status frr").returncode == 3


@pytest.mark.uml
def test_lab_dep_orders_startups_and_shutdown_runs_on_stop() -> None:
    g = sl.load_kathara(LABS / "dep")
    lab = sl.Lab(g, progress=False)
    with lab:
        a_done = float(lab.exec("a", "cat /tmp/a-done").check().stdout)
        b_started = float(lab.exec("b", "cat /tmp/b-started").check().stdout)
        assert b_started >= a_done, (a_done, b_started)  # a's startup sleeps 2 s first
        assert lab.exec("b", "ping -c 1 -W 3 10.9.0.1").returncode == 0
        a = lab["a"]
    assert "a.shutdown ran" in a.console_tail(200)


@pytest.mark.uml
def test_frr_kind_in_a_graph_learns_routes_by_ospf() -> None:
    g = nx.Graph()
    g.add_node("h1", kind="host")
    g.add_node("h2", kind="host", serve="http")
    for r in ("r1", "r2", "r3"):
        g.add_node(r, kind="frr", ospf=True)
    g.add_edges_from([("h1", "r1"), ("r1", "r2"), ("r2", "r3"), ("r3", "h2")])
    with sl.Lab(g, progress=False) as lab:
        assert " via " not in lab.exec("r1", "ip route show proto boot").stdout  # static routes gone
        wait_for(lab, "h1", "wget -qO- -T 2 http://h2/", "hello from h2", timeout=90)
        assert re.search(r"O>\* \S+ \[110/\d+\] via", lab.exec("r1", "vtysh -c 'show ip route ospf'").stdout)
        # /etc/frr, /var/log/frr and /var/tmp are writable; crash logs dir made
        assert lab.exec("r2", "touch /etc/frr/x /var/log/frr/x /var/tmp/frr/x").returncode == 0


@pytest.mark.uml
def test_services_of_kathara_images_through_systemctl_and_service() -> None:
    g = sl.load_kathara(LABS / "services")
    with sl.Lab(g, progress=False) as lab:
        # apache2 (systemctl start) serves the overlay's /var/www/html
        r = lab.exec("pc", "wget -qO- -T 5 http://10.5.0.1/")
        assert r.stdout == "served by apache2 from /var/www/html\n", r
        # bind9 (service bind9 start) answers for its default localhost zone
        r = lab.exec("pc", "busybox nslookup -type=a localhost 10.5.0.1")
        assert re.search(r"Address:\s*127\.0\.0\.1", r.stdout), r
        # dnsmasq honours the overlay's /etc/dnsmasq.conf
        r = lab.exec("pc", "busybox nslookup -type=a test.lab 10.5.0.2")
        assert "10.5.0.9" in r.stdout, r
        assert lab.exec("srv", "systemctl is-active apache2 bind9").stdout.split() == ["active", "active"]
        # a unit the host lacks says so, with systemctl's status 5
        r = lab.exec("pc", "systemctl start nosuchd")
        assert r.returncode == 5 and "not available on this host" in r.stderr
        assert lab.exec("srv", "service apache2 stop").returncode == 0
        assert lab.exec("srv", "service apache2 status").returncode == 3


@pytest.mark.uml
def test_netkit_quagga_lab_runs_on_frr() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", KatharaWarning)
        g = sl.load_kathara(LABS / "rip-quagga")
    with sl.Lab(g, progress=False) as lab:
        # /etc/init.d/quagga start in the startup; /etc/quagga/{daemons,zebra.conf,ripd.conf} honoured
        wait_for(lab, "r1", "ip route show 10.30.2.0/24", r"via 10\.30\.0\.2 .*proto rip", timeout=60)
        assert lab.exec("r1", "ping -c 1 -W 3 10.30.2.1").returncode == 0
        ps = lab.exec("r2", "ps ax").stdout
        assert "/usr/lib/frr/ripd" in ps and "/usr/lib/frr/ospfd" not in ps
