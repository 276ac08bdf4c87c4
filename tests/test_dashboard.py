"""The dashboard widget on a live chain, without a browser: build it, act, assert its state."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import networkx as nx
import pytest

import stdpkt_lab as sl

PACKAGE = Path(sl.__file__).resolve().parent


def test_only_the_dashboard_package_imports_jupyter_libraries() -> None:
    pattern = re.compile(r"^\s*(import|from)\s+(ipywidgets|bokeh|jupyter_bokeh)\b", re.M)
    offenders = [str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py")
                 if "dashboard" not in p.parts and pattern.search(p.read_text())]
    assert offenders == []


def test_bokehjs_goes_into_the_notebook_inline(monkeypatch) -> None:
    import bokeh.io.notebook

    from stdpkt_lab.dashboard import load_bokehjs

    published: list[dict] = []
    monkeypatch.setattr(bokeh.io.notebook, "publish_display_data", lambda data, **kw: published.append(data))
    load_bokehjs()
    text = json.dumps(published)
    assert "application/vnd.bokehjs_load.v0+json" in text
    assert "cdn.bokeh.org" not in text
    loader = published[-1]["application/vnd.bokehjs_load.v0+json"]
    assert "const js_urls = [];" in loader.replace("\n", " ") or re.search(r"js_urls = \[\];", loader)
    assert len(text) > 500_000  # BokehJS itself, not a link to it


def chain() -> nx.Graph:
    g = nx.Graph()
    g.add_node("client", kind="host")
    g.add_node("nat", kind="nat", outside="fw")
    g.add_node("fw", kind="firewall", allow=["tcp/80", "tcp/5201", "icmp"])
    g.add_node("server", kind="host", serve=["http", "iperf3"])
    g.add_edges_from([("client", "nat"), ("nat", "fw"), ("fw", "server")])
    return g


@pytest.fixture(scope="module")
def dash():
    from .conftest import uml_pids

    before = uml_pids()
    with sl.Lab(chain(), progress=False) as lab:
        assert lab.exec("client", "ping -c 1 -W 2 server").returncode == 0  # warm ARP
        board = lab.dashboard()
        yield board
        board.close()
    deadline = time.monotonic() + 10
    while uml_pids() - before and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not uml_pids() - before


@pytest.fixture(autouse=True)
def no_leaked_kernels():  # the module fixture checks instead (the lab outlives each test)
    yield


def wait_for(predicate, timeout: float = 20.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def http_ok(lab: sl.Lab) -> bool:
    return lab.exec("client", "wget -qO- -t 1 -T 3 http://server/", timeout=20).returncode == 0


@pytest.mark.uml
def test_traffic_button_moves_the_rates_the_graph_and_fills_the_table(dash) -> None:
    assert dash.running
    points = dash.rates.points
    c = dash.controls
    c.kind.value, c.src.value, c.dst.value, c.seconds.value = "http", "client", "server", 3
    c.traffic_button.click()
    wait_for(lambda: max(dash.rates.source.data["bps0"][-8:]) > 0, what="bits/s on client-nat")
    wait_for(lambda: any(dash.graph.rate_source.data["text"]), what="an edge label")
    label = next(t for t in dash.graph.rate_source.data["text"] if t)
    assert re.match(r"[\d.]+ (bit|kbit|Mbit|Gbit)/s", label), label
    assert max(dash.graph.edge_source.data["width"]) > 1.5
    assert wait_for(lambda: "IP / TCP" in dash.table.value, what="TCP packets in the table")
    assert "client &rarr; nat" in dash.table.value and "nat &rarr; client" in dash.table.value
    assert wait_for(lambda: c.progress.description == "1 running", what="the traffic progress")
    wait_for(lambda: "requests answered" in c.log.value, timeout=30, what="the traffic result")
    assert re.search(r"[1-9]\d* requests answered, 0 failed", c.log.value), c.log.value
    # the rates keep streaming (a throttled machine may need longer than the 3 s of traffic)
    assert wait_for(lambda: dash.rates.points > points + 8, timeout=30, what="more rate points")
    assert dash.errors == 0


@pytest.mark.uml
def test_updates_go_on_while_the_main_thread_is_busy(dash) -> None:
    before = dash.rates.points
    dash.lab.exec("client", "ping -c 8 -i 0.25 server")  # blocks this thread ~2 s
    assert dash.rates.points - before >= 6
    assert max(dash.rates.source.data["pps0"][-6:]) > 0


@pytest.mark.uml
def test_pause_freezes_the_table_and_the_link_selector_switches_it(dash) -> None:
    dash.pause.value = True
    time.sleep(0.6)
    frozen = dash.table.value
    dash.lab.exec("client", "ping -c 2 -i 0.2 server")
    time.sleep(1.0)
    assert dash.table.value == frozen
    dash.pause.value = False
    dash.link.value = ("fw", "server")
    wait_for(lambda: "fw &rarr; server" in dash.table.value, what="the fw-server link in the table")
    dash.link.value = ("client", "nat")


@pytest.mark.uml
def test_save_pcap_writes_the_trace_and_says_where(dash, tmp_path) -> None:
    from scapy.utils import rdpcap

    dash.capture_path.value = str(tmp_path / "caps")
    dash.save_button.click()
    log = wait_for(lambda: re.search(r"(\d+) packets saved to (\S+\.pcap)", dash.controls.log.value),
                   what="the save message")
    path = Path(log.group(2))
    assert path.parent == (tmp_path / "caps").resolve()
    assert len(rdpcap(str(path))) == int(log.group(1)) > 0


@pytest.mark.uml
def test_firewall_rule_control_blocks_and_unblocks(dash) -> None:
    c, lab = dash.controls, dash.lab
    c.fw_node.value, c.rule.value, c.verdict.value = "fw", "tcp/80 from client", "DROP"
    # the rule names a node ("from client"): behind the NAT it never matches
    c.add_button.click()
    wait_for(lambda: "-j DROP" in c.rules_view.value, what="the rule listing")
    assert http_ok(lab)
    c.remove_button.click()
    wait_for(lambda: "-j DROP" not in c.rules_view.value.split("FORWARD", 2)[-1], what="the rule removed")
    c.rule.value = "tcp/80"
    c.add_button.click()
    wait_for(lambda: "--dport 80 -j DROP" in c.rules_view.value, what="the tcp/80 rule")
    assert not http_ok(lab)
    c.remove_button.click()
    wait_for(lambda: "--dport 80 -j DROP" not in c.rules_view.value, what="the rule removed")
    assert http_ok(lab)
    c.rule.value = "tcp/99999"  # a typo is reported, nothing runs
    c.add_button.click()
    assert "outside 1..65535" in c.actions.snapshot()["log"][-1][1]


@pytest.mark.uml
def test_stop_and_start_an_nf_from_the_dashboard(dash) -> None:
    c, lab = dash.controls, dash.lab
    c.node.value = "fw"
    fw = dash.graph.nodes.index("fw")
    c.stop_button.click()
    wait_for(lambda: dash.graph.node_source.data["state"][fw] == "stopped", what="fw stopped")
    assert dash.graph.node_source.data["colour"][fw] == "#8c8c8c"
    assert not http_ok(lab)
    c.start_button.click()
    wait_for(lambda: dash.graph.node_source.data["state"][fw] == "running", timeout=60, what="fw running")
    assert wait_for(lambda: http_ok(lab), timeout=10, what="HTTP through the new fw")
    assert "fresh state" in wait_for(lambda: [t for _, t in c.actions.snapshot()["log"] if "start fw:" in t],
                                     what="the start message")[-1]
    assert len(lab.links) == 3


@pytest.mark.uml
def test_a_new_view_gets_the_current_state(dash) -> None:
    """A browser reload builds new views from the kernel's state: it must be today's, not the first."""
    wait_for(lambda: dash.rates.points > 8, what="a few points")
    with dash.paused():  # no update between the state and the reading
        bundle = dash.plots.get_state()["render_bundle"]
        times = list(dash.rates.source.data["t"])
    bundle = json.loads(bundle) if isinstance(bundle, str) else bundle
    text = json.dumps(bundle["docs_json"])
    assert len(times) > 8
    found = re.search(r'\["t", (\[[^\]]*\])\]', text)
    assert found and json.loads(found.group(1)) == times  # today's series, not the first point


@pytest.mark.uml
def test_stopping_the_lab_ends_the_update_thread() -> None:
    lab = sl.Lab(sl.chain("a", "b"), progress=False)
    with lab:
        board = lab.dashboard(rate_hz=10)
        wait_for(lambda: board.rates.points > 2, what="updates")
    wait_for(lambda: not board.running, timeout=5, what="the thread to end")
    assert set(board.graph.node_source.data["state"]) <= {"stopped", "exited"}
    board.close()
