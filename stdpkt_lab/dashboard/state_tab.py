"""The dashboard's *NF state* tab: one NF's connections, routes, addresses and neighbours,
read live from its kernel's ``/proc`` (one agent round trip, no process in the guest)."""

from __future__ import annotations

import html
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import ipywidgets as widgets

from ..htmltable import html_table
from ..observe.nfstate import all_tables

if TYPE_CHECKING:
    from .source import LabView

__all__ = ["StateTab", "state_html", "SHOWN_COLUMNS"]

#: what each table shows (the DataFrames from Lab.conntrack() etc. have more)
SHOWN_COLUMNS: dict[str, tuple[str, ...]] = {
    "connections": ("protocol", "state", "original", "reply", "packets", "bytes", "timeout", "status"),
    "routes": ("family", "destination", "gateway", "interface", "metric"),
    "addresses": ("interface", "family", "cidr", "scope"),
    "neighbours": ("address", "lladdr", "interface", "state"),
}


def _cell(value: Any) -> Any:
    if value is None:
        return ""
    try:
        import pandas as pd

        if not isinstance(value, str) and pd.isna(value):
            return ""
    except (ImportError, TypeError, ValueError):
        pass
    return value


def _pair(a: Any, b: Any) -> str:
    a, b = _cell(a), _cell(b)
    return f"{a} / {b}" if a != "" or b != "" else ""


def _rows(name: str, records: Sequence[Mapping[str, Any]]) -> list[list[Any]]:
    if name != "connections":
        return [[_cell(r.get(c)) for c in SHOWN_COLUMNS[name]] for r in records]
    ordered = sorted(records, key=lambda r: (str(r.get("protocol")), str(r.get("original"))))
    return [[_cell(r.get("protocol")), _cell(r.get("state")), r.get("original", ""), r.get("reply", ""),
             _pair(r.get("packets"), r.get("reply_packets")), _pair(r.get("bytes"), r.get("reply_bytes")),
             _cell(r.get("timeout")), _cell(r.get("status"))] for r in ordered]


def state_html(node: str, tables: Mapping[str, Any], *, max_rows: int = 25,
               when: float | None = None) -> str:
    """The four tables of ``node`` as HTML (each cut to ``max_rows``): connections across,
    routes, addresses and neighbours side by side under it."""
    parts: list[str] = []
    for name, columns in SHOWN_COLUMNS.items():
        frame: Any = tables.get(name)
        records: Sequence[Mapping[str, Any]] = (
            frame.to_dict("records") if hasattr(frame, "to_dict") else (frame or []))
        rows = _rows(name, records)[:max_rows]
        more = f", first {max_rows} shown" if len(records) > max_rows else ""
        if name == "connections":
            columns = ("protocol", "state", "original", "reply", "packets →/←", "bytes →/←",
                       "timeout s", "status")
        parts.append(html_table(columns, rows, title=name, note=f"({len(records)}{more})",
                                css_class=f"stdpkt-state-{name}", dense=True))
    stamp = time.strftime("%H:%M:%S", time.localtime(when or time.time()))
    return (f"<div class='stdpkt-state'><b>{html.escape(node)}</b> "
            f"<span style='color:#888'>read from its kernel's /proc at {stamp}</span>{parts[0]}"
            f"<div style='display:flex;flex-wrap:wrap;gap:18px;margin-top:4px'>{''.join(parts[1:])}</div>"
            f"</div>")


class StateTab:
    """A page for the controls' tabs: choose an NF, see its state tables, refreshed every
    ``every_s`` seconds while the page is the one shown (:meth:`refresh` is called by the
    dashboard's update thread)."""

    title = "NF state"

    def __init__(self, lab: LabView, *, every_s: float = 1.0, max_rows: int = 25) -> None:
        self.lab = lab
        self.every_s = every_s
        self.max_rows = max_rows
        self._last = 0.0
        self.refreshes = 0
        nodes = [n for n in lab.plan.nodes if lab.plan[n].kind.name != "bridge"] or list(lab.plan.nodes)
        prefer = [n for n in nodes if lab.plan[n].kind.name in ("nat", "firewall", "lb", "router")]
        self.node = widgets.Dropdown(options=nodes, value=(prefer or nodes)[0], description="NF",
                                     layout=widgets.Layout(width="220px"))
        self.node.observe(lambda _: self.refresh(force=True), names="value")
        self.view = widgets.HTML("<i>waiting for the first read</i>")
        self.view.add_class("stdpkt-state-view")
        self.widget = widgets.VBox([self.node, self.view])
        self._tabs: widgets.Tab | None = None
        self._index = -1

    def attach(self, tabs: widgets.Tab) -> None:
        """Append this page to ``tabs`` (the dashboard's controls)."""
        titles = list(tabs.titles)
        tabs.children = (*tabs.children, self.widget)
        tabs.titles = (*titles, self.title)
        self._tabs, self._index = tabs, len(tabs.children) - 1

    @property
    def visible(self) -> bool:
        return self._tabs is None or self._tabs.selected_index == self._index

    def refresh(self, *, force: bool = False) -> None:
        now = time.monotonic()
        if not force and (not self.visible or now - self._last < self.every_s):
            return
        self._last = now
        node = self.node.value
        if self.lab.state.value != "running":
            return
        instance = self.lab.instances.get(node)
        if instance is None or instance.state.value != "running":
            self.view.value = (f"<i>{html.escape(node)} is "
                               f"{html.escape(instance.state.value if instance else 'absent')}</i>")
            return
        try:
            tables = all_tables(instance.agent, timeout=2.0)
        except Exception as exc:  # the instance may be stopping: say so, keep the view
            self.view.value = f"<i>{html.escape(node)}: {html.escape(str(exc))}</i>"
            return
        self.view.value = state_html(node, tables, max_rows=self.max_rows, when=time.time())
        self.refreshes += 1
