"""Labs across Dask workers: placement (pure) and a real LocalCluster on 127.0.0.1."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import networkx as nx
import pytest

import stdpkt_lab as sl
from stdpkt_lab.cluster import DistributedLab, WorkerInfo, place
from stdpkt_lab.errors import ChainError

from .conftest import REPO, run_dirs, uml_pids

W = [WorkerInfo("tcp://127.0.0.1:1001", "w0", 4 << 30), WorkerInfo("tcp://127.0.0.1:1002", "w1", 4 << 30),
     WorkerInfo("tcp://10.9.9.9:1003", "w2", 8 << 30)]


def test_placement_balances_by_memory_and_honours_pins() -> None:
    nodes = {f"n{i}": 128 for i in range(8)}
    spread = place(nodes, W)
    counts = {w.name: sum(1 for x in spread.values() if x.name == w.name) for w in W}
    assert counts == {"w0": 2, "w1": 2, "w2": 4}  # w2 has twice the memory
    pinned = place(nodes, W, {"n0": "w1", "n1": "10.9.9.9", "n2": "tcp://127.0.0.1:1001"})
    assert (pinned["n0"].name, pinned["n1"].name, pinned["n2"].name) == ("w1", "w2", "w0")
    with pytest.raises(ChainError, match=r"node 'n0'.*host='nowhere'.*w0"):
        place(nodes, W, {"n0": "nowhere"})
    with pytest.raises(ChainError, match="no workers"):
        place(nodes, [])


def chain_graph() -> nx.Graph:
    g = nx.Graph()
    g.add_node("client", kind="host", host="w0")
    g.add_node("nat", kind="nat", outside="fw", host="w1")
    g.add_node("fw", kind="firewall", allow=["tcp/80", "icmp"], host="w2")
    g.add_node("server", kind="host", serve="http", host="w2")
    g.add_edges_from([("client", "nat"), ("nat", "fw"), ("fw", "server")])
    return g


@pytest.fixture(scope="module")
def cluster() -> Iterator[object]:
    distributed = pytest.importorskip("distributed")
    lc = distributed.LocalCluster(n_workers=3, threads_per_worker=2, processes=True,
                                  host="127.0.0.1", dashboard_address=None,
                                  worker_class=distributed.Nanny)
    # name the workers w0.. in address order so the graph's host= pins are stable
    client = distributed.Client(lc)
    try:
        yield client
    finally:
        client.close()
        lc.close()


def _rename(client: object) -> dict[str, str]:
    info = client.scheduler_info()["workers"]  # type: ignore[attr-defined]
    return {str(w["name"]): addr for addr, w in info.items()}


def _pinned_graph(client: object) -> nx.Graph:
    names = sorted(_rename(client))  # LocalCluster names its workers 0, 1, 2
    g = chain_graph()
    for _node, data in g.nodes(data=True):
        data["host"] = names[int(data["host"][1])]
    return g


@pytest.mark.uml
def test_chain_over_three_workers_passes_http_through_nat(cluster: object) -> None:
    with sl.Lab(_pinned_graph(cluster), cluster=cluster, progress=False) as lab:
        assert isinstance(lab, DistributedLab)
        assert len({lab.worker_of(n) for n in lab}) == 3
        seen = lab.exec("client", "wget -qO- -T 10 http://server/cgi-bin/whoami", timeout=60).check()
        nat_outside = str(lab.plan["nat"].spec.ports[lab.plan["nat"].port_of("fw")].address.ip)
        assert seen.stdout.strip() == nat_outside
        assert lab.exec("client", "ping -c 2 -W 3 server", timeout=30).returncode == 0
        table = lab.counters()
        rows = {(r.src, r.dst): r for r in table.itertuples()}
        assert rows[("client", "nat")].kind == "tcp" and rows[("client", "nat")].frames > 0
        assert rows[("nat", "fw")].kind == "tcp" and rows[("fw", "nat")].frames > 0
        assert rows[("fw", "server")].kind == "local" and rows[("server", "fw")].frames > 0
        pkts = lab.trace(("nat", "fw"), count=None)
        assert any(p.haslayer("TCP") and p["TCP"].dport == 80 for p in pkts), [p.summary() for p in pkts]
        assert {p.link for p in pkts} == {("nat", "fw"), ("fw", "nat")}
        assert lab.nf_counters("nat")["interfaces"]["eth0"]["rx_packets"] > 0
        # a frame injected on the cross-worker link toward fw is counted as injected there
        from scapy.layers.inet import ICMP, IP
        from scapy.layers.l2 import Ether

        lab.inject(("nat", "fw"), Ether() / IP(dst="10.0.1.2") / ICMP(), count=3)
        rows = {(r.src, r.dst): r for r in lab.counters().itertuples()}
        assert rows[("nat", "fw")].injected == 3


@pytest.mark.uml
def test_a_killed_worker_ends_its_links_and_leaves_nothing(cluster: object) -> None:
    before, dirs_before = uml_pids(), run_dirs()
    lab = sl.Lab(_pinned_graph(cluster), cluster=cluster, progress=False).start()
    try:
        assert lab.exec("client", "ping -c 1 -W 3 nat", timeout=30).returncode == 0
        nat_pids = set(lab.pids().values())
        victim = lab.worker_of("nat")
        pid = cluster.run(os.getpid, workers=[victim])[victim]  # type: ignore[attr-defined]
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        ended: list[str] = []
        while time.monotonic() < deadline:
            ended = [why for _, why in lab.drain_events() if "ended" in why]
            if len(ended) >= 2 and not (uml_pids() & nat_pids):
                break
            time.sleep(0.5)
        assert len(ended) >= 2, lab.events  # client's and fw's stream ends saw the EOF
        # the killed worker's kernel went with it (its launcher cleaned up)
        assert lab.exec("client", "true", timeout=30).returncode == 0  # the others still serve
    finally:
        lab.stop()
    deadline = time.monotonic() + 30
    while (uml_pids() - before or run_dirs() - dirs_before) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not uml_pids() - before
    left = run_dirs() - dirs_before
    assert not left, {d: sorted(str(p) for p in Path(d).rglob("*")) for d in left}


@pytest.mark.uml
def test_a_killed_notebook_loses_its_lease_and_the_workers_stop_everything(cluster: object) -> None:
    before = uml_pids()
    address = cluster.scheduler.address  # type: ignore[attr-defined]
    names = sorted(_rename(cluster))
    code = textwrap.dedent(f"""
        import sys, time, networkx as nx
        from distributed import Client
        import stdpkt_lab as sl
        g = nx.Graph()
        g.add_node("a", kind="host", host={names[0]!r})
        g.add_node("b", kind="host", host={names[1]!r})
        g.add_edge("a", "b")
        client = Client({address!r})
        lab = sl.Lab(g, cluster=client, progress=False, lease=6.0).start()
        assert lab.exec("a", "ping -c 1 -W 3 b", timeout=30).returncode == 0
        print("READY", flush=True)
        time.sleep(600)
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                            cwd=REPO, env={**os.environ})
    try:
        line = proc.stdout.readline()  # type: ignore[union-attr]
        assert line.strip() == "READY"
        assert len(uml_pids() - before) >= 2
        proc.kill()  # what a notebook's "restart kernel" does
        proc.wait(10)
        deadline = time.monotonic() + 6.0 + 30
        while uml_pids() - before and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not uml_pids() - before, "instances outlived their notebook's lease"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


class _Answer:
    def __init__(self, events: list[tuple[float, str]] | None) -> None:
        self.events = events

    def done(self) -> bool:
        return self.events is not None

    def result(self, timeout: float | None = None) -> list[tuple[float, str]]:
        assert self.events is not None
        return self.events


class _Actor:
    def __init__(self, events: list[tuple[float, str]] | None) -> None:
        self.answer = _Answer(events)

    def drain_events(self) -> _Answer:
        return self.answer


def test_a_silent_worker_does_not_hold_back_the_events_of_the_others() -> None:
    # the CI failure of stop 17: a worker killed a moment before drain_events() was asked first
    # and its 30 s timeout swallowed the other worker's "connection ended" event
    lab = DistributedLab.__new__(DistributedLab)
    lab.events, lab._unreachable = [], {"tcp://c": "heartbeat failed"}
    lab._actors = {"tcp://a": _Actor([(1.0, "client: eth0: ended")]), "tcp://silent": _Actor(None),
                   "tcp://b": _Actor([(2.0, "fw: eth0: ended")]), "tcp://c": _Actor(None)}
    t0 = time.monotonic()
    seen = [why for _, why in lab.drain_events(timeout=0.5)]
    assert time.monotonic() - t0 < 5
    assert seen[:2] == ["client: eth0: ended", "fw: eth0: ended"], seen
    assert len(seen) == 3 and "tcp://silent unreachable: no answer" in seen[2]  # c was known lost


def test_lab_without_cluster_is_the_local_lab() -> None:
    lab = sl.Lab(chain_graph(), progress=False)  # host= is ignored without a cluster
    assert type(lab) is sl.Lab and re.search(r"4 nodes created", repr(lab))
