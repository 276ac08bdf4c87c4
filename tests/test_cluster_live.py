"""Live chains and the dashboard on a DistributedLab: a real 2-worker LocalCluster on 127.0.0.1.

Instances are pinned (``host=``) so that links cross workers where the test says; a
node inserted without ``host=`` goes where placement.py puts it (the least loaded
worker).  Every test passes real traffic (ping, HTTP) through the changed chain.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterator
from typing import Any

import networkx as nx
import pytest

import stdpkt_lab as sl
from stdpkt_lab.cluster import DistributedLab
from stdpkt_lab.errors import BootError, ChainError

pytestmark = pytest.mark.uml


@pytest.fixture(scope="module")
def cluster() -> Iterator[Any]:
    distributed = pytest.importorskip("distributed")
    lc = distributed.LocalCluster(n_workers=2, threads_per_worker=2, processes=True,
                                  host="127.0.0.1", dashboard_address=None,
                                  worker_class=distributed.Nanny)
    client = distributed.Client(lc)
    try:
        yield client
    finally:
        client.close()
        lc.close()


def workers(client: Any) -> list[str]:
    """Worker names in name order (LocalCluster names them 0, 1)."""
    return sorted(str(w["name"]) for w in client.scheduler_info()["workers"].values())


def address(client: Any, name: str) -> str:
    return next(a for a, w in client.scheduler_info()["workers"].items() if str(w["name"]) == name)


def graph(client: Any) -> nx.Graph:
    """client on worker 0; fw and server on worker 1: client–fw is a TCP stream link."""
    w0, w1 = workers(client)
    g = nx.Graph()
    g.add_node("client", kind="host", host=w0)
    g.add_node("fw", kind="firewall", allow=["tcp/80", "icmp"], host=w1)
    g.add_node("server", kind="host", serve="http", host=w1)
    g.add_edges_from([("client", "fw"), ("fw", "server")])
    return g


def rows(lab: DistributedLab) -> dict[tuple[str, str], Any]:
    return {(r.src, r.dst): r for r in lab.counters().itertuples()}


def wait_for(predicate: Callable[[], Any], what: str, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def http_ok(lab: DistributedLab) -> bool:
    got = lab.exec("client", "wget -qO- -t 1 -T 5 http://server/", timeout=30)
    return got.returncode == 0 and "hello" in got.stdout


def test_transparent_insert_and_remove_across_workers_keep_a_ping_flowing(cluster: Any) -> None:
    w0, w1 = (address(cluster, n) for n in workers(cluster))
    with sl.Lab(graph(cluster), cluster=cluster, progress=False) as lab:
        before = lab.pids()
        assert lab.exec("client", "ping -c 1 -W 3 server", timeout=30).returncode == 0
        # a fast ping (-i 0.02; the guest's timers make it faster) stopped with SIGINT after the
        # changes: lost echoes over its rate as measured here is the time without a path
        lab.exec("client", "ping -n -i 0.02 -c 100000 -W 1 server > /tmp/ping.txt 2>&1 &")
        ping_started = time.monotonic()
        time.sleep(1.5)
        mon = lab.insert(("client", "fw"), "mon", kind="bridge")  # no host=: placement decides
        inserted = lab.live.history[-1]
        assert lab.worker_of("mon") == w0  # the least loaded worker (1 instance against 2)
        assert inserted.what == "insert" and inserted.details["worker"] == w0
        assert set(lab.graph.neighbors("mon")) == {"client", "fw"} and not lab.graph.has_edge("client", "fw")
        assert mon.state.value == "running"
        time.sleep(1.0)
        now = rows(lab)
        assert now[("client", "mon")].kind == "local" and now[("client", "mon")].frames > 0
        assert now[("mon", "fw")].kind == "tcp" and now[("fw", "mon")].frames > 0  # the new stream link
        assert ("client", "fw") not in now
        pkts = lab.trace(("mon", "fw"), count=None)
        assert any(p.haslayer("ICMP") for p in pkts), [p.summary() for p in pkts]
        assert http_ok(lab)
        lab.remove("mon")
        removed = lab.live.history[-1]
        assert lab.graph.has_edge("client", "fw") and "mon" not in lab.graph
        assert mon.state.value == "stopped"
        time.sleep(0.5)
        assert "transmitted" not in lab.exec("client", "cat /tmp/ping.txt").stdout  # it ran throughout
        lab.exec("client", "kill -INT $(pidof ping)")
        ping_s = time.monotonic() - ping_started
        ping = wait_for(lambda: "transmitted" in (t := lab.exec("client", "cat /tmp/ping.txt").stdout) and t,
                        "the ping's summary", 60)
        assert {n: p for n, p in lab.pids().items() if n in before} == before  # nobody restarted
        assert http_ok(lab)
        healed = rows(lab)
        assert healed[("client", "fw")].kind == "tcp" and healed[("fw", "client")].frames > 0
    sent, got = (int(x) for x in re.search(r"(\d+) packets transmitted, (\d+) received", ping).groups())
    outage = (sent - got) / (sent / ping_s)
    print(f"ping at {sent / ping_s:.0f}/s across a cross-worker insert+remove: {sent - got} of {sent} "
          f"lost (~{outage * 1e3:.0f} ms without a path); switch {inserted.switch_s * 1e3:.1f} ms "
          f"(boot {inserted.boot_s:.2f} s) and {removed.switch_s * 1e3:.1f} ms")
    # the echo rate varies from run to run (30..600/s, the guests' timers): enough echoes for a
    # ruler finer than the bound, and under 0.5 s without a path per change
    assert sent >= 50 and outage < 1.0, ping[-300:]
    assert inserted.switch_s < 1.0 and removed.switch_s < 1.0


def test_routing_insert_on_a_named_worker_renumbers_across_workers(cluster: Any) -> None:
    n0, _n1 = workers(cluster)
    with sl.Lab(graph(cluster), cluster=cluster, progress=False) as lab:
        old_server = str(lab.plan["server"].spec.ports[0].address.ip)
        assert lab.live.warm(1, host=n0) == {address(cluster, n0): 1}
        wait_for(lambda: lab.live.pool_available()[address(cluster, n0)] == 1, "a warm instance", 60)
        lab.insert(("fw", "server"), "r", kind="router", host=n0)
        change = lab.live.history[-1]
        assert change.details["pooled"], change  # from worker 0's warm pool
        assert lab.worker_of("r") == address(cluster, n0)
        assert "server" in change.details["applied"]  # renumbered on its own worker
        new_server = str(lab.plan["server"].spec.ports[0].address.ip)
        assert new_server != old_server
        now = rows(lab)  # fw (w1) – r (w0) – server (w1): two stream links
        assert now[("fw", "r")].kind == "tcp" and now[("r", "server")].kind == "tcp"
        out = wait_for(lambda: (p := lab.exec("client", "ping -c 2 -W 3 server", timeout=30)).returncode == 0
                       and p.stdout, "a ping through the new router", 30)
        assert new_server in out and "ttl=62" in out, out  # fw and r on the way
        assert http_ok(lab)
        seen = lab.exec("server", "cat /etc/hosts").stdout
        assert re.search(rf"^{re.escape(new_server)}\s+server\b", seen, re.M), seen


def test_a_vector_port_on_another_worker_gets_plain_frames_from_a_vhost_port(cluster: Any) -> None:
    """a (vhost, the default, with TSO) on worker 0, b (UML's vector driver) on worker 1: the
    stream link between them must carry finished frames, or b drops every super-frame."""
    n0, n1 = workers(cluster)
    g = nx.Graph()
    g.add_node("a", kind="host", host=n0)
    g.add_node("b", kind="host", host=n1, ports="vector", serve=["iperf3"])
    g.add_edge("a", "b")
    with sl.Lab(g, cluster=cluster, progress=False) as lab:
        assert rows(lab)[("a", "b")].kind == "tcp"
        lab.exec("a", "iperf3 -s -D")

        def iperf(client: str, server: str) -> dict[str, Any] | None:
            got = lab.exec(client, f"iperf3 -c {server} -t 2 -J", timeout=60)
            report = json.loads(got.stdout or "{}")
            return report if got.returncode == 0 and "error" not in report else None

        for client, server in (("a", "b"), ("b", "a")):
            report = wait_for(lambda c=client, s=server: iperf(c, s), f"iperf3 {client} -> {server}", 60)
            received = report["end"]["sum_received"]
            assert received["bits_per_second"] > 5e7, (client, received)
        offloads = lab.exec("a", "ethtool -k eth0").stdout
        assert "tcp-segmentation-offload: on" in offloads, offloads  # a still hands over super-frames


def test_insert_onto_a_worker_the_lab_did_not_use_yet(cluster: Any) -> None:
    n0, n1 = workers(cluster)
    g = nx.Graph()
    g.add_node("a", kind="host", host=n1)
    g.add_node("b", kind="host", serve="http", host=n1)
    g.add_edge("a", "b")
    with sl.Lab(g, cluster=cluster, progress=False) as lab:
        assert list(lab._actors) == [address(cluster, n1)]  # one worker side so far
        lab.insert(("a", "b"), "mid", kind="filter", allow=["tcp/80", "icmp"], host=n0)
        assert set(lab._actors) == {address(cluster, n0), address(cluster, n1)}
        assert lab.exec("a", "ping -c 2 -W 3 b", timeout=30).returncode == 0
        assert lab.exec("a", "wget -qO- -T 5 http://b/", timeout=30).stdout.startswith("hello")
        now = rows(lab)
        assert now[("a", "mid")].kind == "tcp" and now[("mid", "b")].kind == "tcp"
        assert now[("mid", "b")].frames > 0 and now[("b", "mid")].frames > 0
        # the filter's own netfilter saw the flows: it runs on the other worker
        assert "ESTABLISHED" in lab.exec("mid", "iptables -S FORWARD", timeout=30).stdout
        assert lab.worker_of("mid") == address(cluster, n0)


def test_replace_carries_conntrack_and_moves_a_stream_link(cluster: Any) -> None:
    """fw (worker 1) has a stream link to client (worker 0) and a local one to server."""
    n0, n1 = workers(cluster)
    g = graph(cluster)
    g.nodes["fw"]["allow"] = ["tcp/5201", "tcp/80", "icmp"]
    g.nodes["server"]["serve"] = ["http", "iperf3"]
    with sl.Lab(g, cluster=cluster, progress=False) as lab:
        before = lab.pids()
        lab.exec("client", "iperf3 -c server -t 8 -i 0.5 -J > /tmp/flow.json 2>&1 &")
        start = rows(lab)[("fw", "server")].bytes
        wait_for(lambda: rows(lab)[("fw", "server")].bytes - start > 2e6, "the iperf3 flow")
        # a replacement whose set-up fails is never put in service
        with pytest.raises(BootError, match="old 'fw' keeps serving"):
            lab.replace("fw", kind="firewall", rules=["-A FORWARD -m nosuchmatch -j ACCEPT"])
        with pytest.raises(ChainError, match="on the old one's worker"):
            lab.replace("fw", kind="firewall", host=n0)
        assert lab.pids() == before
        # the new rules admit no new flow to 5201: the running one lives on carried state
        lab.replace("fw", kind="firewall", allow=["tcp/80", "icmp"])
        change = lab.live.history[-1]
        assert change.what == "replace" and change.details["conntrack_carried"] >= 2, change
        assert change.details["worker"] == address(cluster, n1)
        now = lab.pids()
        assert now["fw"] != before["fw"] and {k: v for k, v in now.items() if k != "fw"} == {
            k: v for k, v in before.items() if k != "fw"}
        assert "ESTABLISHED" in lab.exec("fw", "conntrack -L -p tcp --dport 5201", timeout=30).stdout
        moved = rows(lab)
        assert moved[("client", "fw")].kind == "tcp" and moved[("fw", "server")].kind == "local"
        report = wait_for(lambda: _json(lab.exec("client", "cat /tmp/flow.json").stdout), "the report", 60)
        assert "error" not in report, report["error"]
        intervals = [int(i["sum"]["bytes"]) for i in report["intervals"]]
        refused = lab.exec("client", "iperf3 -c server -t 1 --connect-timeout 2000", timeout=30)
        assert refused.returncode != 0  # a new flow meets the new rules
        assert http_ok(lab)
    stalls = [b for b in intervals[1:-1] if b == 0]
    print(f"replace across workers: switch {change.switch_s * 1e3:.1f} ms, boot {change.boot_s:.2f} s, "
          f"{change.details['conntrack_carried']} entries carried; 0.5 s intervals MB: "
          f"{[round(b / 1e6, 1) for b in intervals]}")
    assert len(intervals) >= 15 and len(stalls) <= 1, intervals  # the flow went on


def _json(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return None


def test_connect_and_disconnect_hot_plug_ports_across_workers(cluster: Any) -> None:
    n0, n1 = workers(cluster)
    g = nx.Graph()
    g.add_node("a", kind="host", host=n0)
    g.add_node("r", kind="router", host=n1)
    g.add_node("b", kind="host", host=n1)
    g.add_node("c", kind="host", serve="http", host=n0)  # booted with no link at all
    g.add_edges_from([("a", "r"), ("r", "b")])
    with sl.Lab(g, cluster=cluster, progress=False) as lab:
        before = lab.pids()
        assert lab.exec("a", "ping -c 1 -W 2 c", timeout=30).returncode != 0  # no path, no name
        pair = lab.connect("r", "c")  # r on worker 1, c on worker 0: a stream link
        assert lab.graph.has_edge("r", "c") and set(pair) == {"r", "c"}
        assert rows(lab)[("r", "c")].kind == "tcp"
        assert lab.exec("r", "ip -o addr show eth2", timeout=30).stdout.count("inet ") == 1
        assert "hello" in lab.exec("a", "wget -qO- -T 5 http://c/", timeout=30).stdout  # routes, hosts
        c_ip = str(lab.plan.address("c"))
        with pytest.raises(ChainError, match="not its last port"):
            lab.disconnect("a", "r")
        lab.disconnect("r", "c")
        assert not lab.graph.has_edge("r", "c") and ("r", "c") not in rows(lab)
        assert lab.exec("r", "ip link show eth2", timeout=30).returncode != 0  # unplugged
        assert lab.exec("a", f"ping -c 1 -W 2 {c_ip}", timeout=30).returncode != 0
        lab.connect("c", "r")  # again, from the other side
        assert lab.exec("a", "ping -c 1 -W 3 c", timeout=30).returncode == 0
        assert lab.exec("a", "ping -c 1 -W 3 b", timeout=30).returncode == 0
        assert lab.pids() == before
        assert [c.what for c in lab.live.history] == ["connect", "disconnect", "connect"]


def test_steering_on_one_worker_and_clear_errors_otherwise(cluster: Any) -> None:
    n0, n1 = workers(cluster)
    with sl.Lab(graph(cluster), cluster=cluster, progress=False) as lab:
        started = dict(lab.pids())
        # bad input: a clear error, and nothing boots
        with pytest.raises(ChainError, match="no link between 'client' and 'server'"):
            lab.insert(("client", "server"), "x", kind="bridge")
        with pytest.raises(ChainError, match=r"host='nowhere' names no worker"):
            lab.insert(("client", "fw"), "x", kind="bridge", host="nowhere")
        with pytest.raises(ChainError, match="already in the chain"):
            lab.insert(("client", "fw"), "fw", kind="bridge")
        with pytest.raises(ChainError, match="must be a transparent kind"):
            lab.add("x", kind="router")
        with pytest.raises(ChainError, match="not its last port"):
            lab.disconnect("client", "fw")
        assert lab.pids() == started and "x" not in lab.placement
        ids = lab.add("ids", kind="bridge", host=n1)
        assert lab.worker_of("ids") == address(cluster, n1) and ids.state.value == "running"
        rule = lab.steer(("fw", "server"), "tcp port 80", via=["ids"])
        assert http_ok(lab)
        table = lab.live.steering.table()
        assert [r["id"] for r in table] == [rule.id]
        assert table[0]["flows"] >= 1 and table[0]["frames"] > 0, table
        assert table[0]["worker"] == address(cluster, n1)
        with pytest.raises(ChainError, match=r"joins two workers.*client on .*fw on "):
            lab.steer(("client", "fw"), "tcp port 80", via=["ids"])
        lab.add("ids0", kind="bridge", host=n0)
        with pytest.raises(ChainError, match=r"'ids0': the detour runs on worker"):
            lab.steer(("fw", "server"), "icmp", via=["ids0"])
        with pytest.raises(ChainError, match="not a detour"):
            lab.steer(("fw", "server"), "icmp", via=["nobody"])
        lab.unsteer(rule)
        with pytest.raises(ChainError, match="no steering rule"):
            lab.unsteer(rule)
        assert lab.live.steering.table() == []
        assert http_ok(lab)
        lab.remove("ids")
        lab.remove("ids0")
        assert lab.live.detours == {} and lab.pids().keys() == started.keys()
        assert http_ok(lab)


def test_dashboard_shows_a_cross_worker_link_and_acts_on_the_chain(cluster: Any) -> None:
    pytest.importorskip("ipywidgets")
    with sl.Lab(graph(cluster), cluster=cluster, progress=False) as lab:
        dash = lab.dashboard(rate_hz=5)
        try:
            assert dash.running and lab.sampler.running
            assert "Lab: 3 nodes, running" in lab._repr_html_()
            cross = dash.links.index(("client", "fw"))  # a TCP stream link between the workers
            points = dash.rates.points
            # traffic for 8 s in the background, so it still flows while the plot catches up
            # (a 1.5 s ping before waiting could scroll out of the last points on a busy host)
            lab.exec("client", "ping -c 80 -i 0.1 server >/dev/null 2>&1 &", timeout=30)
            wait_for(lambda: max(dash.rates.source.data[f"bps{cross}"]) > 0,
                     "bits/s on the cross-worker link")
            wait_for(lambda: max(dash.rates.source.data[f"pps{cross}"]) > 0,
                     "packets/s on the cross-worker link")
            wait_for(lambda: dash.rates.points > points + 8, "several updates", 10)
            wait_for(lambda: "3/3 NFs running" in dash.status.value, "the status line")
            dash.link.value = ("client", "fw")
            lab.exec("client", "ping -c 3 -i 0.2 server", timeout=30)
            wait_for(lambda: "client &rarr; fw" in dash.table.value and "fw &rarr; client" in dash.table.value,
                     "the cross-worker link's packets in the table")
            # link conditions through the remote instances: 30 ms on what client sends
            lab.set_link(("client", "fw"), direction=("client", "fw"), delay="30ms")
            rtt = lab.exec("client", "ping -c 3 -i 0.2 server", timeout=30).stdout
            avg = float(re.search(r"= [\d.]+/([\d.]+)/", rtt).group(1))
            assert avg >= 30, rtt
            assert lab.link_conditions(("client", "fw"))["client->fw"] == {"delay": "30ms"}
            lab.clear_link(("client", "fw"))
            # the NF state tab reads the remote fw's tables
            dash.state_tab.node.value = "fw"
            dash.state_tab.refresh(force=True)
            assert "fw" in dash.state_tab.view.value and "eth1" in dash.state_tab.view.value
            # the live tab: insert a bridge on the other worker's local link
            live = dash.live_controls
            live.edge.value, live.kind.value, live.name.value = ("fw", "server"), "bridge", "mon"
            live.insert().result(120)
            dash.refresh()
            assert "mon" in dash.graph.node_source.data["index"]
            assert ("mon", "server") in [v for _, v in dash.link.options]
            assert http_ok(lab)
            # stop and start fw from the controls: a fresh fw re-joins its stream link too
            c = dash.controls
            c.node.value = "fw"
            c.stop_button.click()
            wait_for(lambda: lab["fw"].state.value == "stopped", "fw stopped")
            assert not http_ok(lab)
            c.start_button.click()
            wait_for(lambda: http_ok(lab), "HTTP through the restarted fw", 90)
            assert not any("failed" in text for _, text in dash.actions.log), list(dash.actions.log)
            assert dash.errors == 0
        finally:
            dash.close()
    wait_for(lambda: not dash.running, "the dashboard's thread to end", 10)
