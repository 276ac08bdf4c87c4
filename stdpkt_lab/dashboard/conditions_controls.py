"""The dashboard's link-conditions page: delay, loss and rate of the chosen link, live.

Choosing a link (and a direction) fills the fields with what is set there;
*apply* hands ``Lab.set_link(..., update=True)`` to the dashboard's
:class:`~.actions.Actions` (``""`` in a field removes that condition, the
others set on the link stay), *clear* removes every condition.  Each edge of
the chain graph carries a second label, under its rate, with its conditions.
"""

from __future__ import annotations

import html
from typing import TYPE_CHECKING, Any

import ipywidgets as widgets
from bokeh.models import ColumnDataSource
from bokeh.models.annotations import LabelSet

from ..describe.conditions import parse_conditions
from ..errors import ChainError

if TYPE_CHECKING:
    from .actions import Actions
    from .graph import ChainGraph

__all__ = ["ConditionsControls", "conditions_label"]

FIELDS = ("delay", "loss", "rate")
_DIRECTIONS = ("both", "forward", "backward")


def conditions_label(a: str, b: str, per_direction: dict[str, dict[str, Any]]) -> str:
    """One edge label: ``"20ms loss 1%"`` when both directions agree, else per direction."""
    there = parse_conditions(per_direction.get(f"{a}->{b}", {})).label()
    back = parse_conditions(per_direction.get(f"{b}->{a}", {})).label()
    if there == back:
        return there
    return "  ".join(t for t in (f"{a}→ {there}" if there else "", f"{b}→ {back}" if back else "") if t)


class ConditionsControls:
    """Widgets acting on ``lab``'s link conditions through ``actions``; :attr:`widget` is the page."""

    def __init__(self, lab: Any, actions: Actions, graph: ChainGraph) -> None:
        # lab: a Lab (set_link, link_conditions): typed loosely, the dashboard never imports lab.py
        self.lab = lab
        self.actions = actions
        self.graph = graph
        self.links: list[tuple[str, str]] = [(lp.a, lp.b) for lp in lab.plan.links]
        self._edge_links = [tuple(sorted(e)) for e in graph.edges]
        self.link = widgets.Dropdown(options=[(f"{a} ⟷ {b}", (a, b)) for a, b in self.links],
                                     description="link", layout=widgets.Layout(width="230px"))
        self.direction = widgets.Dropdown(description="toward", layout=widgets.Layout(width="220px"))
        self.delay = widgets.Text(placeholder="e.g. 20ms", description="delay",
                                  layout=widgets.Layout(width="170px"))
        self.loss = widgets.Text(placeholder="e.g. 1% or 0.01", description="loss",
                                 layout=widgets.Layout(width="170px"))
        self.rate = widgets.Text(placeholder="e.g. 10mbit", description="rate",
                                 layout=widgets.Layout(width="170px"))
        self.apply_button = widgets.Button(description="apply", icon="check", button_style="primary",
                                           layout=widgets.Layout(width="auto"),
                                           tooltip="set these on the link (no restart)")
        self.clear_button = widgets.Button(description="clear", icon="times",
                                           layout=widgets.Layout(width="auto"),
                                           tooltip="remove every condition of this link")
        self.apply_button.on_click(lambda _: self.apply())
        self.clear_button.on_click(lambda _: self.clear())
        self.current = widgets.HTML()
        self.link.observe(lambda _: self._link_changed(), names="value")
        self.direction.observe(lambda _: self._fill(), names="value")
        self._link_changed()
        self.widget = widgets.VBox([
            widgets.HBox([self.link, self.direction]),
            widgets.HBox([self.delay, self.loss, self.rate, self.apply_button, self.clear_button]),
            self.current,
            widgets.HTML("<span style='font-size:12px;color:#555'>Each direction is the sender's "
                         "egress queue (netem, tbf): a delay on both directions adds twice to the "
                         "round trip. An empty field removes that condition.</span>"),
        ])
        self.source = ColumnDataSource({
            "x": list(graph.rate_source.data["x"]),
            "y": [y - 0.16 for y in graph.rate_source.data["y"]],
            "text": ["" for _ in graph.edges]})
        graph.figure.add_layout(LabelSet(x="x", y="y", text="text", source=self.source,
                                         text_align="center", text_baseline="top",
                                         text_font_size="10px", text_color="#a0522d"))
        self._shown: tuple[Any, ...] = ()

    # ------------------------------------------------------------ user actions
    def _direction_arg(self) -> str:
        return str(self.direction.value or "both")

    def _link_changed(self) -> None:
        a, b = self.link.value
        self.direction.options = list(zip(("both directions", f"{a} → {b}", f"{b} → {a}"),
                                          _DIRECTIONS, strict=True))
        self.direction.value = "both"
        self._fill()

    def _fill(self) -> None:
        if self.link.value is None:
            return
        a, b = self.link.value
        now = self.lab.link_conditions((a, b))
        shown = now[f"{b}->{a}"] if self._direction_arg() == "backward" else now[f"{a}->{b}"]
        for name in FIELDS:
            getattr(self, name).value = str(shown.get(name, ""))

    def values(self) -> dict[str, Any]:
        """The fields as ``set_link`` keywords (an empty field unsets), checked now."""
        values = {name: (getattr(self, name).value.strip() or None) for name in FIELDS}
        parse_conditions({k: v for k, v in values.items() if v is not None})  # ValueError: say so
        return values

    def apply(self) -> None:
        link, direction = self.link.value, self._direction_arg()
        try:
            values = self.values()
        except ValueError as exc:  # a typo: say so, change nothing
            self.actions.note(f"conditions {link[0]}-{link[1]}: {exc}")
            return

        def work() -> str:
            now = self.lab.set_link(link, direction=direction, update=True, **values)
            return conditions_label(link[0], link[1], now) or "none"
        self.actions.submit(f"conditions {link[0]}-{link[1]} ({direction})", work)

    def clear(self) -> None:
        link, direction = self.link.value, self._direction_arg()

        def work() -> str:
            self.lab.clear_link(link, direction=direction)
            return "cleared"
        self.actions.submit(f"conditions {link[0]}-{link[1]} ({direction})", work)

    # ------------------------------------------------------------ view (update thread)
    def labels(self) -> list[str]:
        """One label per graph edge (in the graph's edge order)."""
        return [conditions_label(a, b, self.lab.link_conditions((a, b))) for a, b in self._edge_links]

    def _follow_the_chain(self) -> None:
        """A live change (insert, remove, ...) re-wired the chain: follow its links and edges."""
        links = [(lp.a, lp.b) for lp in self.lab.plan.links]
        edges = [tuple(sorted(e)) for e in self.graph.edges]
        if links == self.links and edges == self._edge_links:
            return
        self.links, self._edge_links = links, edges
        if [o[1] for o in self.link.options] != links:
            self.link.options = [(f"{a} ⟷ {b}", (a, b)) for a, b in links]
        xs, ys = list(self.graph.rate_source.data["x"]), list(self.graph.rate_source.data["y"])
        self.source.data = {"x": xs, "y": [y - 0.16 for y in ys], "text": ["" for _ in xs]}
        self._shown = ()

    def refresh(self) -> None:
        self._follow_the_chain()
        try:
            labels = self.labels()
        except ChainError:  # the graph is being redrawn after a live change: next round
            return
        link = self.link.value
        now = self.lab.link_conditions(link) if link else {}
        if (labels, now) == self._shown:
            return
        self._shown = (labels, now)
        if list(self.source.data["text"]) != labels:
            self.source.data.update({"text": labels})
        rows = "".join(f"<tr><td>{html.escape(d.replace('->', ' → '))}</td>"
                       f"<td>{html.escape(parse_conditions(c).label() or 'none')}</td></tr>"
                       for d, c in now.items())
        self.current.value = f"<table style='font-size:12px'>{rows}</table>"
