"""The dashboard's controls (ipywidgets): stop/start an NF, firewall rules, traffic generators.

Button handlers only read the controls and hand work to :class:`~.actions.Actions`;
:meth:`Controls.refresh`, called by the dashboard's update thread, is the only
writer of what the controls display.
"""

from __future__ import annotations

import html
from typing import TYPE_CHECKING, Any

import ipywidgets as widgets

from .actions import TRAFFIC_KINDS, Actions
from .formatting import log_html

if TYPE_CHECKING:
    from .source import LabView

__all__ = ["Controls"]

_SMALL = widgets.Layout(width="auto")


def _label(text: str) -> widgets.HTML:
    return widgets.HTML(f"<span style='font-size:12px;color:#555'>{html.escape(text)}</span>")


class Controls:
    """Tabs of controls acting on ``lab`` through ``actions``; :attr:`widget` is the view."""

    def __init__(self, lab: LabView, actions: Actions) -> None:
        self.lab = lab
        self.actions = actions
        nodes = list(lab.plan.nodes)
        kinds = {n: lab.plan[n].kind.name for n in nodes}
        hosts = [n for n in nodes if kinds[n] == "host"] or nodes
        firewalls = [n for n in nodes if kinds[n] == "firewall"] + [
            n for n in nodes if kinds[n] not in ("firewall", "host", "bridge")]

        # network functions: stop / start
        self.node = widgets.Dropdown(options=nodes, description="NF", layout=widgets.Layout(width="220px"))
        self.stop_button = widgets.Button(description="stop", icon="stop", button_style="danger",
                                          layout=_SMALL, tooltip="stop this instance (its kernel ends)")
        self.start_button = widgets.Button(description="start", icon="play", button_style="success",
                                           layout=_SMALL,
                                           tooltip="boot a fresh instance from the plan and re-join its links")
        self.stop_button.on_click(lambda _: self.actions.stop_node(self.node.value))
        self.start_button.on_click(lambda _: self.actions.start_node(self.node.value))
        nf_page = widgets.VBox([
            widgets.HBox([self.node, self.stop_button, self.start_button]),
            _label("A stopped NF drops everything; 'start' boots a new instance (conntrack and "
                   "any rules you added are gone)."),
        ])

        # firewall rules
        self.fw_node = widgets.Dropdown(options=firewalls or nodes, description="in",
                                        layout=widgets.Layout(width="180px"))
        self.rule = widgets.Text(value="tcp/80", placeholder="tcp/80 from client   or   -p udp --dport 53",
                                 description="rule", layout=widgets.Layout(width="300px"))
        self.verdict = widgets.Dropdown(options=["DROP", "ACCEPT"], layout=widgets.Layout(width="95px"))
        self.add_button = widgets.Button(description="add", icon="plus", layout=_SMALL,
                                         tooltip="insert at the top of the FORWARD chain")
        self.remove_button = widgets.Button(description="remove", icon="minus", layout=_SMALL)
        self.list_button = widgets.Button(description="list", icon="list", layout=_SMALL)
        self.add_button.on_click(lambda _: self._rule(self.actions.add_rule))
        self.remove_button.on_click(lambda _: self._rule(self.actions.remove_rule))
        self.list_button.on_click(lambda _: self.actions.list_rules(self.fw_node.value))
        self.rules_view = widgets.HTML()
        fw_page = widgets.VBox([
            widgets.HBox([self.fw_node, self.rule, self.verdict]),
            widgets.HBox([self.add_button, self.remove_button, self.list_button]),
            self.rules_view,
        ])

        # traffic generators
        self.kind = widgets.Dropdown(options=TRAFFIC_KINDS, value="http", description="traffic",
                                     layout=widgets.Layout(width="190px"))
        self.src = widgets.Dropdown(options=hosts, value=hosts[0], description="from",
                                    layout=widgets.Layout(width="180px"))
        self.dst = widgets.Dropdown(options=hosts, value=hosts[-1], description="to",
                                    layout=widgets.Layout(width="180px"))
        self.seconds = widgets.BoundedIntText(value=10, min=1, max=300, description="seconds",
                                              layout=widgets.Layout(width="150px"))
        self.traffic_button = widgets.Button(description="start traffic", icon="play",
                                             button_style="primary", layout=_SMALL)
        self.traffic_button.on_click(lambda _: self.actions.traffic(
            self.kind.value, self.src.value, self.dst.value, int(self.seconds.value)))
        self.progress = widgets.FloatProgress(value=0.0, min=0.0, max=1.0, description="idle",
                                              layout=widgets.Layout(width="360px"))
        traffic_page = widgets.VBox([
            widgets.HBox([self.kind, self.src, self.dst]),
            widgets.HBox([self.seconds, self.traffic_button, self.progress]),
            _label("iperf3 needs serve='iperf3' on the target and a firewall that allows tcp/5201."),
        ])

        self.tabs = widgets.Tab(children=[traffic_page, fw_page, nf_page])
        self.tabs.titles = ("traffic", "firewall rules", "network functions")
        self.log = widgets.HTML(log_html([]))
        self.widget = widgets.VBox([self.tabs, self.log])
        self._shown: tuple[int, str] | None = None

    def _rule(self, action: Any) -> None:
        try:
            action(self.fw_node.value, self.rule.value, self.verdict.value)
        except ValueError as exc:  # a typo in the rule: say so, change nothing
            self.actions.note(f"rule {self.rule.value!r}: {exc}")

    def refresh(self) -> None:
        """Show the actions' log, listed rules and traffic progress (update thread only)."""
        snap = self.actions.snapshot()
        traffic = [j for j in snap["jobs"] if j.seconds]
        if traffic:
            self.progress.value = min(j.progress for j in traffic)
            self.progress.description = f"{len(traffic)} running"
        elif self.progress.description != "idle":
            self.progress.value = 0.0
            self.progress.description = "idle"
        shown = (snap["version"], self.fw_node.value)
        if shown == self._shown:
            return
        self._shown = shown
        self.log.value = log_html(snap["log"])
        rules = snap["rules"].get(self.fw_node.value)
        if rules is not None:
            self.rules_view.value = (
                f"<pre style='font-size:11px;margin:2px'>{html.escape(self.fw_node.value)}: "
                f"iptables -S FORWARD\n{html.escape(rules)}</pre>")
