"""Dashboard controls for live chains: insert an NF into an edge, remove or replace a node,
boot a detour, steer flows through it (with the steering table), and the graph redrawn
whenever the running chain changes.

The buttons hand the work to the dashboard's :class:`~.actions.Actions` pool
(the lab's live operations block for a boot); :meth:`LiveControls.refresh`, on
the dashboard's update thread, is the only writer of what these widgets show.
"""

from __future__ import annotations

import html
import json
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import ipywidgets as widgets
from bokeh.layouts import column
from bokeh.models.annotations import LabelSet

from .graph import ChainGraph
from .rates import RatePlots

if TYPE_CHECKING:
    from .actions import Actions
    from .widget import Dashboard

__all__ = ["LiveControls", "parse_params", "INSERT_KINDS"]

#: Kinds offered for insert/replace (the catalogue's, minus end hosts and scripts).
INSERT_KINDS = ("bridge", "filter", "firewall", "router", "nat", "lb")
_W = widgets.Layout


def parse_params(text: str) -> dict[str, Any]:
    """``allow=tcp/80,icmp; outside=fw`` or a JSON object → keyword parameters (a value with
    commas becomes a list)."""
    text = text.strip()
    if not text:
        return {}
    if text.startswith("{"):
        value = json.loads(text)
        if not isinstance(value, dict):
            raise ValueError("parameters must be a JSON object")
        return value
    out: dict[str, Any] = {}
    for part in text.split(";"):
        if not part.strip():
            continue
        key, eq, value = part.partition("=")
        if not eq or not key.strip().isidentifier():
            raise ValueError(f"{part.strip()!r}: expected name=value")
        items = [v.strip() for v in value.split(",") if v.strip()]
        out[key.strip()] = items if "," in value else value.strip()
    return out


def _label(text: str) -> widgets.HTML:
    return widgets.HTML(f"<span style='font-size:12px;color:#555'>{html.escape(text)}</span>")


def steering_html(rows: Sequence[Mapping[str, Any]]) -> str:
    head = "".join(f"<th style='padding:0 6px'>{h}</th>"
                   for h in ("rule", "link", "match", "via", "flows", "frames", "bytes"))
    if not rows:
        body = "<tr><td colspan=7 style='color:#888'>no steering rules</td></tr>"
    else:
        body = "".join(
            "<tr>" + "".join(f"<td style='padding:0 6px'>{html.escape(str(r[k]))}</td>"
                             for k in ("id", "link", "match", "via", "flows", "frames", "bytes"))
            + "</tr>" for r in rows)
    return (f"<table class='stdpkt-steering' style='font-size:11px'><tr>{head}</tr>{body}</table>")


class LiveControls:
    """The 'live chain' tab; :attr:`widget` is its view."""

    def __init__(self, lab: Any, actions: Actions, dashboard: Dashboard | None = None) -> None:
        # lab: a Lab with the live-chain methods; typed loosely, the dashboard never imports lab.py
        self.lab = lab
        self.actions = actions
        self.dashboard = dashboard
        self._topology: tuple[Any, ...] = ()
        # insert into an edge
        self.edge = widgets.Dropdown(description="edge", layout=_W(width="230px"))
        self.kind = widgets.Dropdown(options=INSERT_KINDS, value="bridge", description="kind",
                                     layout=_W(width="170px"))
        self.name = widgets.Text(value="mon", description="name", layout=_W(width="170px"))
        self.params = widgets.Text(placeholder="allow=tcp/80,icmp   (or JSON)", description="params",
                                   layout=_W(width="300px"))
        self.insert_button = widgets.Button(description="insert", icon="plus", button_style="primary",
                                            layout=_W(width="auto"))
        self.insert_button.on_click(lambda _: self.insert())
        self.add_button = widgets.Button(description="add detour", icon="plus-square",
                                         layout=_W(width="auto"),
                                         tooltip="boot a transparent NF on no path (for steering)")
        self.add_button.on_click(lambda _: self.add())
        # remove / replace a node
        self.node = widgets.Dropdown(description="node", layout=_W(width="200px"))
        self.remove_button = widgets.Button(description="remove", icon="minus", button_style="danger",
                                            layout=_W(width="auto"), tooltip="the link it sat on heals")
        self.replace_button = widgets.Button(description="replace", icon="exchange",
                                             layout=_W(width="auto"),
                                             tooltip="boot a new one (kind, params above) first; "
                                                     "conntrack state is carried")
        self.remove_button.on_click(lambda _: self.remove())
        self.replace_button.on_click(lambda _: self.replace())
        # steering
        self.steer_link = widgets.Dropdown(description="on", layout=_W(width="230px"))
        self.match = widgets.Text(value="tcp port 80", description="match", layout=_W(width="230px"))
        self.via = widgets.Text(placeholder="ids[, other]", description="via", layout=_W(width="200px"))
        self.steer_button = widgets.Button(description="steer", icon="random", layout=_W(width="auto"))
        self.steer_button.on_click(lambda _: self.steer())
        self.rule = widgets.Dropdown(description="rule", layout=_W(width="160px"))
        self.unsteer_button = widgets.Button(description="unsteer", icon="undo", layout=_W(width="auto"))
        self.unsteer_button.on_click(lambda _: self.unsteer())
        self.table = widgets.HTML(steering_html([]))
        self.table.add_class("stdpkt-steering-table")
        self.widget = widgets.VBox([
            widgets.HBox([self.edge, self.kind, self.name]),
            widgets.HBox([self.params, self.insert_button, self.add_button]),
            widgets.HBox([self.node, self.remove_button, self.replace_button]),
            _label("insert splices the NF into the edge while traffic flows; replace boots the "
                   "new one first (kind and params above) and keeps the old one if it fails."),
            widgets.HBox([self.steer_link, self.match, self.via]),
            widgets.HBox([self.steer_button, self.rule, self.unsteer_button]),
            self.table,
        ])
        self.refresh()

    # ------------------------------------------------------------ actions (buttons)
    def _params(self) -> dict[str, Any] | None:
        try:
            return parse_params(self.params.value)
        except ValueError as exc:
            self.actions.note(f"params {self.params.value!r}: {exc}")
            return None

    def insert(self) -> Any:
        params, edge, name, kind = self._params(), self.edge.value, self.name.value.strip(), self.kind.value
        if params is None or edge is None:
            return None
        return self.actions.submit(f"insert {name} ({kind}) into {edge[0]}–{edge[1]}", lambda: _said(
            self.lab.insert(edge, name, kind=kind, **params), self.lab, "insert"))

    def add(self) -> Any:
        params, name, kind = self._params(), self.name.value.strip(), self.kind.value
        if params is None:
            return None
        return self.actions.submit(f"add detour {name} ({kind})", lambda: _said(
            self.lab.add(name, kind=kind, **params), self.lab, "add"))

    def remove(self) -> Any:
        node = self.node.value
        if node is None:
            return None
        def work() -> str:
            self.lab.remove(node)
            return _said(None, self.lab, "remove")

        return self.actions.submit(f"remove {node}", work)

    def replace(self) -> Any:
        params, node, kind = self._params(), self.node.value, self.kind.value
        if params is None or node is None:
            return None
        return self.actions.submit(f"replace {node} by a {kind}", lambda: _said(
            self.lab.replace(node, kind=kind, **params), self.lab, "replace"))

    def steer(self) -> Any:
        link, match = self.steer_link.value, self.match.value
        via = [v.strip() for v in self.via.value.split(",") if v.strip()]
        if link is None:
            return None
        return self.actions.submit(f"steer {match!r} on {link[0]}->{link[1]} via {via}",
                                   lambda: f"rule {self.lab.steer(link, match, via=via).id}")

    def unsteer(self) -> Any:
        rule = self.rule.value
        if rule is None:
            return None
        def work() -> str:
            self.lab.unsteer(rule)
            return "done"

        return self.actions.submit(f"unsteer rule {rule}", work)

    # ------------------------------------------------------------ view (update thread)
    def topology(self) -> tuple[Any, ...]:
        live = self.lab._live  # noqa: SLF001 - None until the first live operation
        detours = tuple(live.detours) if live is not None else ()
        return (tuple(self.lab.plan.nodes), tuple((lp.a, lp.b) for lp in self.lab.plan.links), detours)

    def refresh(self) -> bool:
        """Update choices and the steering table; redraw the graph if the chain changed
        (returns True then)."""
        live = self.lab._live  # noqa: SLF001
        rows = live.steering.table() if live is not None else []
        html_ = steering_html(rows)
        if self.table.value != html_:
            self.table.value = html_
        rules = [r["id"] for r in rows]
        if list(self.rule.options) != rules:
            self.rule.options = rules
        topo = self.topology()
        if topo == self._topology:
            return False
        first = not self._topology  # at construction the dashboard drew this chain itself
        self._topology = topo
        nodes, links, detours = topo
        edge_opts = [(f"{a} ⟷ {b}", (a, b)) for a, b in links]
        self.edge.options = edge_opts
        self.steer_link.options = edge_opts + [(f"{b} → {a}", (b, a)) for a, b in links]
        self.node.options = list(nodes) + list(detours)
        if self.dashboard is not None and not first:
            redraw(self.dashboard, self.lab, detours)
        return not first


def _said(result: Any, lab: Any, what: str) -> str:
    change = lab.live.history[-1] if lab.live.history else None
    if change is None:
        return "done"
    boot = f", booted in {change.boot_s:.2f} s" if change.boot_s else ""
    return f"done: switch {change.switch_s * 1e3:.1f} ms{boot}"


def redraw(dash: Dashboard, lab: Any, detours: tuple[str, ...] = ()) -> None:
    """Redraw ``dash``'s chain graph from the running chain (in place: same figure, new data)."""
    fresh = ChainGraph(lab.plan)
    old = dash.graph
    old_renderer = next(r for r in old.figure.renderers if hasattr(r, "layout_provider"))
    new_renderer = next(r for r in fresh.figure.renderers if hasattr(r, "layout_provider"))
    layout = dict(new_renderer.layout_provider.graph_layout)
    node_data = dict(fresh.node_source.data)
    if detours:  # detours: drawn apart, under the chain
        xs = [p[0] for p in layout.values()] or [0.0]
        base = min(p[1] for p in layout.values()) - 1.0 if layout else 0.0
        for i, name in enumerate(detours):
            layout[name] = (min(xs) + i, base)
            for key in node_data:
                node_data[key] = list(node_data[key]) + [
                    {"index": name, "kind": "detour", "state": "running"}.get(key, "")]
    with dash._lock:  # noqa: SLF001 - the dashboard's document lock
        old_renderer.layout_provider.graph_layout = layout
        old.node_source.data = node_data
        old.edge_source.data = dict(fresh.edge_source.data)
        old.rate_source.data = dict(fresh.rate_source.data)
        names = [r for r in old.figure.center if isinstance(r, LabelSet) and r.source is not old.rate_source]
        fresh_names = [r for r in fresh.figure.center if isinstance(r, LabelSet)
                       and r.source is not fresh.rate_source]
        if names and fresh_names:
            fresh_source: Any = fresh_names[0].source
            data = dict(fresh_source.data)
            for name in detours:
                data["x"] = list(data["x"]) + [layout[name][0]]
                data["y"] = list(data["y"]) + [layout[name][1] - 0.22]
                data["text"] = list(data["text"]) + [f"{name} (detour)"]
            target: Any = names[0].source
            target.data = data
        xs = [p[0] for p in layout.values()] or [0.0]
        ys = [p[1] for p in layout.values()] or [0.0]
        fig: Any = old.figure
        fig.x_range.start, fig.x_range.end = min(xs) - 0.6, max(xs) + 0.6
        fig.y_range.start, fig.y_range.end = min(ys) - 0.8, max(ys) + 0.6
        old.nodes = list(fresh.nodes) + list(detours)
        old.edges = list(fresh.edges)
        # the packet table and the rate plots follow the running links (a bokeh stream cannot
        # grow columns: new plots replace the old ones in the same layout)
        links = [(lp.a, lp.b) for lp in lab.plan.links]
        dash.link.options = [(f"{a} ⟷ {b}", (a, b)) for a, b in links]
        rates = RatePlots([f"{a}-{b}" for a, b in links], keep=dash.rates.keep,
                          window_s=dash.rates.keep / max(dash.rate_hz, 0.1))
        root: Any = dash.plots._model  # noqa: SLF001 - the row(graph, column(pps, bps)) shown
        root.children[1] = column(rates.pps, rates.bps)
        dash.rates = rates
        dash.links = links
