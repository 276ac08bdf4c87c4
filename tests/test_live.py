"""Live chains: insert/remove/replace NFs in a running lab while a long TCP flow runs.

Real kernels, real iperf3 flows; the flow's per-interval byte counts (iperf3 JSON,
-i 0.2) show the outage of each change.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from pathlib import Path

import networkx as nx
import pytest

import stdpkt_lab as sl
from stdpkt_lab.describe import build_plan
from stdpkt_lab.describe.rewire import check_kept, pinned_graph, splice, unsplice
from stdpkt_lab.errors import BootError, ChainError

from .pipeline import Pipeline, Stage

INTERVAL = 0.2


def fw_graph(allow: list[str] | None = None) -> nx.Graph:
    g = nx.Graph()
    g.add_node("client", kind="host")
    g.add_node("fw", kind="firewall", allow=allow or ["tcp/5201", "icmp"])
    g.add_node("server", kind="host", serve="iperf3")
    g.add_edges_from([("client", "fw"), ("fw", "server")])
    return g


def start_flow(lab: sl.Lab, seconds: int, tag: str = "flow") -> str:
    """A background iperf3 client → server; returns the guest path of its JSON report."""
    out = f"/tmp/{tag}.json"
    lab.exec("client", f"iperf3 -c server -t {seconds} -i {INTERVAL} -J > {out} 2>&1 &")
    return out


def wait_flowing(lab: sl.Lab, link: tuple[str, str], timeout: float = 20.0) -> None:
    """Until the relay on ``link`` has carried a few MB more (the flow is established)."""
    start = sum(s.bytes for s in lab.link(*link).stats().values())
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if sum(s.bytes for s in lab.link(*link).stats().values()) - start > 5e6:
            return
        time.sleep(0.1)
    raise AssertionError(f"no flow on {link} within {timeout} s")


def flow_intervals(lab: sl.Lab, path: str, timeout: float = 60.0) -> list[int]:
    """Bytes per interval of a finished iperf3 run (waits for the report)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = lab.exec("client", f"cat {path}").stdout
        try:
            report = json.loads(text)
        except ValueError:
            time.sleep(0.5)
            continue
        assert "error" not in report, report.get("error")
        return [int(i["sum"]["bytes"]) for i in report["intervals"]]
    raise AssertionError(f"no iperf3 report in {path} after {timeout} s")


def _report(lab: sl.Lab, path: str) -> dict | None:  # type: ignore[type-arg]
    try:
        return json.loads(lab.exec("client", f"cat {path}").stdout)  # type: ignore[no-any-return]
    except ValueError:
        return None


def outage_seconds(intervals: list[int]) -> float:
    """Time the flow spent below a tenth of its median rate (whole intervals, so an upper
    bound of the real outage at INTERVAL resolution)."""
    median = sorted(intervals)[len(intervals) // 2]
    return sum(INTERVAL for b in intervals[1:-1] if b < median / 10)


def longest_stall(intervals: list[int]) -> float:
    """The longest run of intervals in which the flow moved nothing (seconds)."""
    run = worst = 0
    for b in intervals[:-1]:
        run = run + 1 if b == 0 else 0
        worst = max(worst, run)
    return worst * INTERVAL


def pids(lab: sl.Lab) -> dict[str, int | None]:
    return {name: inst.pid for name, inst in lab.instances.items()}


# ---------------------------------------------------------------- pure graph surgery
def test_splice_and_heal_keep_every_running_port() -> None:
    g = nx.Graph()
    g.add_node("client", kind="host")
    g.add_node("nat", kind="nat", outside="fw")
    g.add_node("fw", kind="firewall", allow=["icmp"])
    g.add_node("server", kind="host")
    g.add_edges_from([("client", "nat"), ("nat", "fw"), ("fw", "server")])
    plan = build_plan(g)
    for a, b in [("client", "nat"), ("nat", "fw"), ("fw", "nat"), ("fw", "server")]:
        spliced = build_plan(splice(pinned_graph(plan), (a, b), "mon", {"kind": "bridge"}))
        check_kept(plan, spliced, plan.nodes, {(a, b): "mon", (b, a): "mon"})
        assert spliced["mon"].neighbors in ({0: a, 1: b}, {0: b, 1: a})
        for n in plan.nodes:  # transparent: nothing else changes
            assert spliced[n].spec.routes == plan[n].spec.routes
            assert spliced[n].spec.hosts == plan[n].spec.hosts
        healed_graph, healed = unsplice(pinned_graph(spliced), "mon")
        assert set(healed) == {a, b}
        healed_plan = build_plan(healed_graph)
        check_kept(spliced, healed_plan, plan.nodes, {(a, "mon"): b, (b, "mon"): a})
        assert [(lp.a, lp.b, lp.subnet) for lp in healed_plan.links] == \
               [(lp.a, lp.b, lp.subnet) for lp in plan.links]
    # a routing kind renumbers the far side, and says so in the routes
    routed = build_plan(splice(pinned_graph(plan), ("fw", "server"), "r2", {"kind": "router"},
                               keep_addresses=False))
    check_kept(plan, routed, plan.nodes, {("fw", "server"): "r2", ("server", "fw"): "r2"},
               renumbered=["server"])
    assert routed["server"].spec.ports[0].address != plan["server"].spec.ports[0].address
    with pytest.raises(ChainError, match="address would change"):
        check_kept(plan, routed, plan.nodes, {("fw", "server"): "r2", ("server", "fw"): "r2"})
    with pytest.raises(ChainError, match="no link between 'client' and 'server'"):
        splice(pinned_graph(plan), ("client", "server"), "x", {"kind": "bridge"})


# ---------------------------------------------------------------- real kernels
@pytest.mark.uml
def test_transparent_insert_and_remove_keep_a_long_tcp_flow() -> None:
    with sl.Lab(fw_graph(), progress=False) as lab:
        before = pids(lab)
        report = start_flow(lab, 12)
        wait_flowing(lab, ("fw", "server"))
        # a 100 Hz ping alongside: each lost echo is 10 ms of outage, a finer ruler than iperf3's
        lab.exec("client", "ping -n -i 0.01 -c 900 -W 1 server > /tmp/ping.txt 2>&1 &")
        time.sleep(2)
        mon = lab.insert(("fw", "server"), "mon", kind="filter")
        inserted = lab.live.history[-1]
        assert set(lab.graph.neighbors("mon")) == {"fw", "server"}
        assert not lab.graph.has_edge("fw", "server")
        # the inserted NF sees the flow: its relays and its own netfilter counters
        time.sleep(2)
        crossed = {k: s.bytes for k, s in lab.link("mon", "server").stats().items()}
        assert crossed[("mon", "server")] > 5e6, crossed
        rules = lab.nf_counters("mon")["rules"]
        established = [r for r in rules if r["chain"] == "FORWARD" and "ESTABLISHED" in r["rule"]]
        assert established and established[0]["packets"] > 1000, rules
        time.sleep(1)
        lab.remove("mon")
        removed = lab.live.history[-1]
        assert lab.graph.has_edge("fw", "server") and "mon" not in lab.graph
        assert mon.state.value == "stopped"
        intervals = flow_intervals(lab, report)
        ping = _wait_for(lambda: "transmitted" in (t := lab.exec("client", "cat /tmp/ping.txt").stdout)
                         and t, "the 100 Hz ping's summary", 60)
        assert pids(lab) == before  # nobody else restarted
        assert lab.exec("client", "ping -c 1 -W 3 server").returncode == 0
    sent, got = (int(x) for x in re.search(r"(\d+) packets transmitted, (\d+) received", ping).groups())
    print(f"100 Hz ping across insert+remove: {sent - got} of {sent} lost "
          f"(~{(sent - got) * 10} ms of outage for the two changes)")
    assert (sent - got) * 10 < 400  # < 200 ms per change
    assert len(intervals) >= 55
    # the flow never stopped for longer than a short dip
    assert longest_stall(intervals) <= 0.4, intervals  # at most a short dip (one TCP RTO)
    outage = outage_seconds(intervals)
    print(f"insert switch {inserted.switch_s * 1e3:.1f} ms (boot {inserted.boot_s:.2f} s), "
          f"remove switch {removed.switch_s * 1e3:.1f} ms, flow below 10% of median "
          f"for {outage:.1f} s in all; intervals MB: {[round(b / 1e6, 1) for b in intervals]}")
    assert inserted.switch_s < 0.2 and removed.switch_s < 0.2
    assert round(outage, 1) <= 1.0


@pytest.mark.uml
def test_replace_firewall_carries_conntrack_and_a_failing_replacement_changes_nothing() -> None:
    with sl.Lab(fw_graph(), progress=False) as lab:
        before = pids(lab)
        old_fw = lab["fw"]
        report = start_flow(lab, 12)
        wait_flowing(lab, ("fw", "server"))
        # a replacement whose set-up fails (a rule the kernel refuses) is never put in service
        with pytest.raises(BootError, match="set-up failed") as failed:
            lab.replace("fw", kind="firewall", rules=["-A FORWARD -m nosuchmatch -j ACCEPT"])
        assert "nosuchmatch" in failed.value.console_tail or "old 'fw' keeps serving" in str(failed.value)
        assert lab["fw"] is old_fw and old_fw.state.value == "running"
        assert pids(lab) == before
        time.sleep(1.5)
        # the new ruleset admits no new TCP flow to 5201: the running one lives on carried state
        fw = lab.replace("fw", kind="firewall", allow=["icmp"])
        change = lab.live.history[-1]
        assert change.details["conntrack_carried"] >= 2  # iperf3's control and data connections
        assert old_fw.state.value == "stopped" and fw.pid != before["fw"]
        assert "ESTABLISHED" in lab.exec("fw", "conntrack -L -p tcp --dport 5201").stdout
        refused = lab.exec("client", "iperf3 -c server -t 1 --connect-timeout 2000", timeout=30)
        assert refused.returncode != 0  # a new flow meets the new rules
        intervals = flow_intervals(lab, report)
        others = {k: v for k, v in pids(lab).items() if k != "fw"}
        assert others == {k: v for k, v in before.items() if k != "fw"}
        # the control experiment: the same replacement without the carried state kills a flow
        lab.replace("fw", kind="firewall", allow=["tcp/5201", "icmp"])
        for _attempt in range(3):  # the server may still be closing the last test ("busy")
            lab.exec("client", f"timeout 12 iperf3 -c server -t 6 -i {INTERVAL} -J > /tmp/cut.json 2>&1 &")
            try:
                wait_flowing(lab, ("fw", "server"), timeout=8)
                break
            except AssertionError:
                print("no flow yet:", lab.exec("client", "cat /tmp/cut.json").stdout[-300:])
        else:
            raise AssertionError("the control flow never started")
        time.sleep(1)
        lab.replace("fw", kind="firewall", allow=["icmp"], carry_state=False)
        cut = _wait_for(lambda: _report(lab, "/tmp/cut.json"), "the cut flow's report", 60)
        stalled = longest_stall([int(i["sum"]["bytes"]) for i in cut["intervals"]] + [0])
    assert longest_stall(intervals) <= 0.4, intervals
    assert stalled >= 2.0, cut["intervals"]  # without the state its packets are NEW: dropped
    print(f"without conntrack carried the flow stalled for good ({stalled:.1f} s until its end)")
    outage = outage_seconds(intervals)
    print(f"replace switch {change.switch_s * 1e3:.1f} ms, boot {change.boot_s:.2f} s, "
          f"{change.details['conntrack_carried']} conntrack entries carried; flow below 10% "
          f"for {outage:.1f} s; intervals MB: {[round(b / 1e6, 1) for b in intervals]}")
    assert round(outage, 1) <= 1.0


@pytest.mark.uml
@pytest.mark.parametrize("ports", ["vector", "vhost"])
def test_steering_detours_only_matching_new_flows_and_unsteer_keeps_the_flow(ports: str) -> None:
    # vhost: steering turns finishing on while a pump holds the guest's transmit queue
    # (relay/vhost_ring.c); the port's thread once waited for socket room holding the
    # lock the pump needed to drain it (the flow stalled, the pump would not stop)
    g = fw_graph(["tcp/5201", "tcp/80", "icmp"])
    g.graph["ports"] = ports
    g.nodes["server"]["serve"] = ["iperf3", "iperf3:80"]
    with sl.Lab(g, progress=False) as lab:
        before = pids(lab)
        ids = lab.add("ids", kind="filter")
        assert "ids" in lab.live.detours and "ids" not in lab.graph
        with pytest.raises(ChainError, match="not a detour"):
            lab.steer(("client", "fw"), "tcp port 80", via=["nosuch"])
        # bad requests name what is wrong and change nothing
        with pytest.raises(ChainError, match="no link between 'client' and 'server'"):
            lab.insert(("client", "server"), "x", kind="bridge")
        with pytest.raises(ChainError, match="unknown kind 'bridgee'.*did you mean 'bridge'"):
            lab.insert(("client", "fw"), "x", kind="bridgee")
        with pytest.raises(ChainError, match="unknown parameter 'alow'"):
            lab.insert(("client", "fw"), "x", kind="filter", alow=["icmp"])
        with pytest.raises(ChainError, match="has 1 links"):
            lab.remove("client")
        with pytest.raises(ChainError, match="already in the chain"):
            lab.add("fw", kind="bridge")
        with pytest.raises(ChainError, match="transparent kind"):
            lab.add("r9", kind="router")
        assert set(lab.graph.edges) == {("client", "fw"), ("fw", "server")} and pids(lab) == before
        plain = start_flow(lab, 10, "plain")  # port 5201: established before the rule
        wait_flowing(lab, ("client", "fw"))
        rule = lab.steer(("client", "fw"), "tcp port 80", via=["ids"])
        lab.exec("client", f"iperf3 -c server -p 80 -t 6 -i {INTERVAL} -J > /tmp/web.json 2>&1 &")
        deadline = time.monotonic() + 20
        while lab.live.steering.stats(rule)["bytes"] < 5e6 and time.monotonic() < deadline:
            time.sleep(0.1)
        flows = lab.link("client", "fw").flow_table.flows()
        by_port = {}
        for f in flows:
            for port in (f.port_lo, f.port_hi):
                if port in (80, 5201):
                    by_port.setdefault(port, set()).add(f.rule)
        assert by_port.get(80) == {rule.id}, flows  # the new port-80 flows took the detour
        assert by_port.get(5201) == {0}, flows      # the older 5201 flows did not
        stats = lab.live.steering.stats(rule)
        assert stats["flows"] >= 2 and stats["frames"] > 1000, stats  # iperf3: control + data
        ids_rules = lab.nf_counters("ids")["rules"]
        fwd = {r["rule"]: r["packets"] for r in ids_rules if r["chain"] == "FORWARD"}
        new = next(v for k, v in fwd.items() if "NEW" in k)
        est = next(v for k, v in fwd.items() if "ESTABLISHED" in k)
        assert new == stats["flows"] and est > 100, ids_rules  # the detour's own counters
        table = lab.live.steering.table()
        assert table[0]["match"] == "tcp port 80" and table[0]["via"] == "ids"
        time.sleep(1)
        lab.unsteer(rule)  # policy change mid-flow: the flow goes on by the default path
        assert lab.live.steering.table() == []
        web_iv = flow_intervals(lab, "/tmp/web.json")
        plain_iv = flow_intervals(lab, plain)
        lab.remove("ids")
        assert ids.state.value == "stopped" and "ids" not in lab.live.detours
        assert pids(lab) == before
    assert longest_stall(web_iv) <= 0.4, web_iv
    assert longest_stall(plain_iv) <= 0.4, plain_iv
    print(f"steered flow below 10% for {outage_seconds(web_iv):.1f} s across unsteer; "
          f"web MB {[round(b / 1e6, 1) for b in web_iv]}")
    assert round(outage_seconds(web_iv), 1) <= 1.0


# ---------------------------------------------------------------- stdpkt run accepts new channels
def _stdpkt(stdpkt_bin: str, *args: str, cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([stdpkt_bin, *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=dict(os.environ))


def _wait_for(check, what: str, timeout: float = 90.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = check()
        if got:
            return got
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.uml
def test_stdpkt_run_pipeline_gains_a_third_stage_without_restarting(
        stdpkt_bin: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STDPKT_CONTROL_DIR", str(tmp_path / "ctl"))
    client = tmp_path / "client.sh"
    client.write_text(
        "until ping -c1 -W1 10.0.1.2 >/dev/null 2>&1; do sleep 0.2; done\n"
        "echo REACHED\n"
        "while ping -c1 -W1 10.0.1.2 >/dev/null 2>&1; do sleep 0.2; done\n"
        "echo LOST\n")
    quiet = tmp_path / "nf.sh"
    quiet.write_text("true\n")
    stages = [
        Stage("A", [stdpkt_bin, "run", "--oneshot", "--name", "A", str(client)],
              {"IF0": "p1|/dev/stdout", "IP0": "10.0.0.2", "NETMASK0": "24", "GATEWAY": "10.0.0.1"}),
        Stage("B", [stdpkt_bin, "run", "--name", "B", str(quiet)],
              {"IF0": "/dev/stdin|p1", "IP0": "10.0.0.1", "NETMASK0": "24"}),
    ]
    c_err = open(tmp_path / "C.err", "wb")
    with Pipeline(stages, tmp_path) as pipe:
        third = subprocess.Popen(
            [stdpkt_bin, "run", "--name", "C", str(quiet)], cwd=tmp_path, stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=c_err,
            env={**os.environ, "IF0": "p4|p5", "IP0": "10.0.1.2", "NETMASK0": "24",
                 "GATEWAY": "10.0.1.1"})
        c_err.close()
        try:
            def listed() -> dict[str, str]:
                out = _stdpkt(stdpkt_bin, "ls", cwd=tmp_path).stdout
                rows = {line.split("\t")[0]: line for line in out.splitlines() if line}
                ok = all(n in rows and "running" in rows[n] for n in ("A", "B", "C"))
                return rows if ok else {}

            rows = _wait_for(listed, "A, B and C in stdpkt ls", 120)
            # a second instance named B runs, without new channels, and says so
            dup_err = open(tmp_path / "dup.err", "wb")
            dup = subprocess.Popen([stdpkt_bin, "run", "--oneshot", "--name", "B", str(quiet)],
                                   cwd=tmp_path, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                   stderr=dup_err, env={k: v for k, v in os.environ.items()
                                                        if not k.startswith(("IF", "IP", "NETMASK"))})
            dup_err.close()
            assert dup.wait(120) == 0
            assert "already running" in (tmp_path / "dup.err").read_text()
            assert "eth0 10.0.0.1/24" in rows["B"] and "eth2" not in rows["B"]
            kernels = {i["name"]: i["kernel_pid"] for i in _infos()}
            # bad input: a clear error, exit status 2
            bad = _stdpkt(stdpkt_bin, "attach", "B", "IF2=a|b|c", cwd=tmp_path)
            assert bad.returncode == 2 and "IF2" in bad.stderr, bad
            missing = _stdpkt(stdpkt_bin, "attach", "nosuch", "IF2=p4|p5", cwd=tmp_path)
            assert missing.returncode == 2 and "no running instance named 'nosuch'" in missing.stderr
            done = _stdpkt(stdpkt_bin, "attach", "B", "IF2=p5|p4", "IP2=10.0.1.1", "NETMASK2=24",
                           cwd=tmp_path)
            assert done.returncode == 0, done
            _wait_for(lambda: "REACHED" in pipe.stderr("A"), "A reaching C through B's new eth2")
            after = _stdpkt(stdpkt_bin, "ls", cwd=tmp_path).stdout
            assert "eth2 10.0.1.1/24" in after and "(attached)" in after, after
            assert {i["name"]: i["kernel_pid"] for i in _infos()} == kernels  # nothing restarted
            again = _stdpkt(stdpkt_bin, "attach", "B", "IF2=p5|p4", cwd=tmp_path)
            assert again.returncode == 2 and "already has eth2" in again.stderr
            gone = _stdpkt(stdpkt_bin, "detach", "B", "2", cwd=tmp_path)
            assert gone.returncode == 0, gone
            codes = pipe.wait(60)  # A sees C vanish, ends; B sees EOF, ends; C sees EOF, ends
            assert "LOST" in pipe.stderr("A"), pipe.all_stderr()
            assert codes == [0, 0], (codes, pipe.all_stderr())
            assert third.wait(60) == 0, (tmp_path / "C.err").read_text()
        finally:
            if third.poll() is None:
                third.terminate()
                third.wait(20)
    assert not list((tmp_path / "ctl").iterdir())  # every name removed


def _infos() -> list[dict]:  # type: ignore[type-arg]
    from stdpkt_lab.engine.control import list_instances

    return list_instances()


@pytest.mark.uml
def test_routing_insert_from_the_warm_pool_rederives_routes_and_the_lab_file_saves_it(
        tmp_path: Path) -> None:
    from stdpkt_lab.describe import load_lab, save_lab

    with sl.Lab(fw_graph(), progress=False) as lab:
        before = pids(lab)
        lab.live.warm(1)
        lab.live.pool.wait_filled(90)
        report = start_flow(lab, 8)
        wait_flowing(lab, ("client", "fw"))
        fw_before = lab.plan["fw"].spec.ports[0].address
        r1 = lab.insert(("client", "fw"), "r1", kind="router")
        change = lab.live.history[-1]
        assert change.details["pooled"] and change.boot_s < 5
        # fw's client-side port moved to the new subnet; routes and /etc/hosts followed
        assert lab.plan["fw"].spec.ports[0].address != fw_before
        assert "fw" in change.details["applied"] and "routes" in change.details["applied"]["fw"]
        fw_ip = str(lab.plan.address("fw"))
        assert f"{fw_ip}\tfw" in lab.exec("client", "cat /etc/hosts").stdout
        assert lab.exec("client", "ping -c 1 -W 3 fw").returncode == 0
        first_hop = lab.exec("client", "ping -n -c 1 -t 1 -W 2 server", timeout=20).stdout
        assert f"From {lab.plan['r1'].spec.ports[0].address.ip}" in first_hop, first_hop
        # the running chain, saved, plans to the same ports and addresses
        save_lab(lab.graph, tmp_path / "running.yaml")
        again = build_plan(load_lab(tmp_path / "running.yaml"))
        assert {n: again[n].spec.ports for n in again} == {n: lab.plan[n].spec.ports for n in lab.plan}
        assert "r1" in lab.shell()
        intervals = flow_intervals(lab, report)
        lab.remove("r1")
        assert r1.state.value == "stopped"
        assert lab.exec("client", "ping -c 1 -W 3 server").returncode == 0
        assert pids(lab) == before
    # a flow that only passes through keeps going (its addresses did not change), after an
    # outage of a renumbering plus TCP's retransmission back-off
    assert sum(intervals) > 5e6 and intervals[-3:] != [0, 0, 0], intervals
    assert outage_seconds(intervals) < 4.0, intervals
    print(f"routing insert: switch {change.switch_s * 1e3:.1f} ms, boot from pool "
          f"{change.boot_s * 1e3:.0f} ms, flow below 10% for {outage_seconds(intervals):.1f} s")


@pytest.mark.uml
def test_dashboard_inserts_steers_removes_and_redraws_the_graph() -> None:
    pytest.importorskip("ipywidgets")
    from stdpkt_lab.dashboard import Dashboard

    g = fw_graph(["tcp/5201", "tcp/80", "icmp"])
    g.nodes["server"]["serve"] = ["iperf3", "http"]
    with sl.Lab(g, progress=False) as lab:
        dash = Dashboard(lab)
        try:
            live = dash.live_controls
            assert "live chain" in dash.controls.tabs.titles
            assert len(dash.graph.edges) == 2
            live.edge.value, live.kind.value, live.name.value = ("fw", "server"), "filter", "mon"
            live.params.value = "allow=tcp/5201,tcp/80,icmp"
            live.insert().result(120)
            dash.refresh()
            assert "mon" in dash.graph.node_source.data["index"]
            assert len(dash.graph.edges) == 3 and frozenset(("mon", "server")) in dash.graph.edges
            assert ("mon", "server") in [v for _, v in dash.link.options]
            assert "mon-server" in dash.rates.links  # the rate plots follow the running links
            points = dash.rates.points
            lab.exec("client", "ping -c 3 -i 0.3 server")
            wait = time.monotonic() + 20
            while dash.rates.points <= points and time.monotonic() < wait:
                time.sleep(0.3)
                dash.refresh()
            assert dash.rates.points > points
            live.kind.value, live.name.value, live.params.value = "bridge", "ids", ""
            live.add().result(120)
            live.steer_link.value, live.match.value, live.via.value = ("client", "fw"), "tcp port 80", "ids"
            live.steer().result(30)
            assert lab.exec("client", "wget -qO- -T 5 http://server/").returncode == 0
            dash.refresh()
            assert "tcp port 80" in live.table.value and "ids" in live.table.value
            rows = lab.live.steering.table()
            assert rows[0]["flows"] >= 1 and rows[0]["frames"] > 0, rows
            live.rule.value = rows[0]["id"]
            live.unsteer().result(30)
            live.node.value = "mon"
            live.remove().result(60)
            dash.refresh()
            assert "mon" not in dash.graph.node_source.data["index"]
            assert frozenset(("fw", "server")) in dash.graph.edges
            assert "no steering rules" in live.table.value
            assert not any("failed" in text for _, text in dash.actions.log), list(dash.actions.log)
        finally:
            dash.close()


@pytest.mark.uml
def test_connect_and_disconnect_hot_plug_ports_into_running_instances() -> None:
    g = nx.Graph()
    g.add_node("a", kind="host")
    g.add_node("r", kind="router")
    g.add_node("b", kind="host", serve="iperf3")
    g.add_node("c", kind="host", serve="http")  # booted with no link at all
    g.add_edges_from([("a", "r"), ("r", "b")])
    with sl.Lab(g, progress=False) as lab:
        before = pids(lab)
        assert lab.exec("a", "ping -c 1 -W 2 c").returncode != 0  # no path (no name either)
        link = lab.connect("r", "c")
        assert lab.graph.has_edge("r", "c") and 2 in (link.a_port, link.b_port)
        c_ip = str(lab.plan.address("c"))
        assert lab.exec("r", "ip -o addr show eth2").stdout.count("inet ") == 1
        assert "hello from c" in lab.exec("a", "wget -qO- -T 5 http://c/").stdout  # routes, hosts
        with pytest.raises(ChainError, match="not its last port"):
            lab.disconnect("a", "r")
        lab.disconnect("r", "c")
        assert not lab.graph.has_edge("r", "c")
        assert lab.exec("r", "ip link show eth2").returncode != 0  # unplugged
        assert lab.exec("a", f"ping -c 1 -W 2 {c_ip}").returncode != 0
        lab.connect("c", "r")  # again, from the other side: new ports plugged again
        assert lab.exec("a", "ping -c 1 -W 3 c").returncode == 0
        assert lab.exec("a", "ping -c 1 -W 3 b").returncode == 0
        assert pids(lab) == before
        kinds = [c.what for c in lab.live.history]
        assert kinds == ["connect", "disconnect", "connect"]


def test_attach_variables_and_dashboard_params_parse_or_say_what_is_wrong() -> None:
    from stdpkt_lab.engine.control import parse_attach
    from stdpkt_lab.errors import VariableError

    req = parse_attach(["IF2=p4|p5", "IP2=10.0.1.1", "NETMASK2=255.255.255.0", "MTU2=9000"], cwd="/w")
    assert req == {"op": "attach", "index": 2, "rx": "/w/p4", "tx": "/w/p5",
                   "address": "10.0.1.1/24", "mtu": 9000}
    for words, variable in ((["IF2=a|b|c"], "IF2"), (["IF2=a|b", "IP2=300.1.1.1"], "IP2"),
                            (["IF2=a|b", "IF3=c|d"], "IFn"), (["IF2=a|b", "MTU2=99999"], "MTU2"),
                            (["IF2=a|b", "IP3=10.0.0.1"], "IP3"), (["IF2"], "IF2")):
        with pytest.raises(VariableError) as err:
            parse_attach(words, cwd="/w")
        assert err.value.variable == variable, (words, err.value)
    pytest.importorskip("ipywidgets")
    from stdpkt_lab.dashboard.live_controls import parse_params

    assert parse_params("allow=tcp/80,icmp; outside=fw") == {"allow": ["tcp/80", "icmp"], "outside": "fw"}
    assert parse_params('{"allow": ["icmp"]}') == {"allow": ["icmp"]}
    with pytest.raises(ValueError, match="expected name=value"):
        parse_params("allow")
