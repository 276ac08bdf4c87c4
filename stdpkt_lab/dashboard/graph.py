"""The chain drawn as a graph (bokeh ``from_networkx``): node colour = instance state,
edge width and label = the link's current rate."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, cast

import networkx as nx
from bokeh.core.properties import field
from bokeh.models import ColumnDataSource, HoverTool, MultiLine, Range1d, Scatter
from bokeh.models.annotations import LabelSet
from bokeh.plotting import figure, from_networkx

from .formatting import human_bps

if TYPE_CHECKING:
    from ..describe import ChainPlan

__all__ = ["ChainGraph", "STATE_COLOURS", "chain_layout"]

#: Instance state → node colour (the legend under the graph says the same).
STATE_COLOURS: dict[str, str] = {
    "created": "#c7c7c7",
    "booting": "#f0ad4e",
    "running": "#2ca02c",
    "stopped": "#8c8c8c",
    "exited": "#8c8c8c",
    "failed": "#d62728",
}
IDLE_EDGE, BUSY_EDGE = "#b0b0b0", "#1f77b4"

LinkKey = frozenset[str]


def chain_layout(graph: nx.Graph) -> dict[str, tuple[float, float]]:
    """Positions for drawing: the nodes' ``pos`` attributes when every node has one, else
    breadth-first layers from the first node (a chain is a line, a tree fans out)."""
    nodes = list(graph.nodes)
    if all("pos" in graph.nodes[n] for n in nodes):
        return {n: (float(graph.nodes[n]["pos"][0]), float(graph.nodes[n]["pos"][1])) for n in nodes}
    pos: dict[str, tuple[float, float]] = {}
    x = 0
    for component in nx.connected_components(graph):
        start = next(n for n in nodes if n in component)
        for layer in nx.bfs_layers(graph, [start]):
            ordered = [n for n in nodes if n in layer]
            for i, n in enumerate(ordered):
                pos[n] = (float(x), (len(ordered) - 1) / 2.0 - i)
            x += 1
    return pos


class ChainGraph:
    """A bokeh figure of ``plan``'s graph; :meth:`update` recolours nodes and re-labels edges."""

    def __init__(self, plan: ChainPlan, *, width: int = 440, height: int = 300) -> None:
        g = nx.Graph()
        for name, node in plan.nodes.items():
            g.add_node(name, kind=node.kind.name, state="created", colour=STATE_COLOURS["created"],
                       info="")
        for lp in plan.links:
            g.add_edge(lp.a, lp.b, width=1.5, colour=IDLE_EDGE, rate="")
        pos = chain_layout(g)
        self.nodes: list[str] = list(g.nodes)
        self.edges: list[LinkKey] = [frozenset(e) for e in g.edges]
        layout: dict[int | str, Sequence[float]] = {k: v for k, v in pos.items()}
        renderer = from_networkx(g, layout)
        renderer.node_renderer.glyph = Scatter(size=34, fill_color=field("colour"), line_color="#333333",
                                               line_width=1.5)
        renderer.edge_renderer.glyph = MultiLine(line_width=field("width"), line_color=field("colour"),
                                                 line_alpha=0.9)
        self.node_source = cast(ColumnDataSource, renderer.node_renderer.data_source)
        self.edge_source = cast(ColumnDataSource, renderer.edge_renderer.data_source)

        xs = [p[0] for p in pos.values()] or [0.0]
        ys = [p[1] for p in pos.values()] or [0.0]
        fig = figure(width=width, height=height, title="chain (colour = state, edge = rate)",
                     x_range=Range1d(start=min(xs) - 0.6, end=max(xs) + 0.6),
                     y_range=Range1d(start=min(ys) - 0.8, end=max(ys) + 0.6),
                     tools="pan,wheel_zoom,reset", toolbar_location="right")
        fig.axis.visible = False
        fig.grid.visible = False
        fig.outline_line_color = None
        fig.renderers.append(renderer)
        fig.add_tools(HoverTool(renderers=[renderer.node_renderer], tooltips=[
            ("node", "@index"), ("kind", "@kind"), ("state", "@state"), ("", "@info")]))
        names = ColumnDataSource({"x": [pos[n][0] for n in self.nodes],
                                  "y": [pos[n][1] - 0.22 for n in self.nodes],
                                  "text": [f"{n} ({g.nodes[n]['kind']})" for n in self.nodes]})
        fig.add_layout(LabelSet(x="x", y="y", text="text", source=names, text_align="center",
                                text_baseline="top", text_font_size="11px"))
        edge_ends = [tuple(e) for e in g.edges]
        self.rate_source = ColumnDataSource({
            "x": [(pos[a][0] + pos[b][0]) / 2 for a, b in edge_ends],
            "y": [(pos[a][1] + pos[b][1]) / 2 + 0.07 for a, b in edge_ends],
            "text": ["" for _ in edge_ends]})
        fig.add_layout(LabelSet(x="x", y="y", text="text", source=self.rate_source,
                                text_align="center", text_baseline="bottom", text_font_size="10px",
                                text_color="#1f4e79"))
        self.figure = fig

    def update(self, states: Mapping[str, str], rates: Mapping[LinkKey, tuple[float, float]],
               info: Mapping[str, str] | None = None) -> None:
        """``states``: node → instance state; ``rates``: link → (packets/s, bits/s) both ways."""
        info = info or {}
        node_cols = {
            "state": [states.get(n, "created") for n in self.nodes],
            "colour": [STATE_COLOURS.get(states.get(n, "created"), "#c7c7c7") for n in self.nodes],
            "info": [info.get(n, "") for n in self.nodes],
        }
        _update_columns(self.node_source, node_cols)
        widths, colours, labels = [], [], []
        for key in self.edges:
            pps, bps = rates.get(key, (0.0, 0.0))
            widths.append(round(1.5 + min(12.0, 1.8 * math.log10(1.0 + bps / 1000.0)), 1))
            colours.append(BUSY_EDGE if pps > 0.5 else IDLE_EDGE)
            labels.append(human_bps(bps) if pps > 0.5 else "")
        _update_columns(self.edge_source, {"width": widths, "colour": colours})
        _update_columns(self.rate_source, {"text": labels})


def _update_columns(source: ColumnDataSource, columns: Mapping[str, list]) -> None:
    """Send only the columns whose values changed (one small patch message, not the table)."""
    changed = {k: v for k, v in columns.items() if list(source.data.get(k, [])) != v}
    if changed:
        source.data.update(changed)
