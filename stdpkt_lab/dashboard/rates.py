"""Live packets/s and bits/s per link: one ``ColumnDataSource`` streamed with rollover."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from bokeh.models import ColumnDataSource, DataRange1d, NumeralTickFormatter
from bokeh.palettes import Category10_10
from bokeh.plotting import figure

__all__ = ["RatePlots"]


class RatePlots:
    """Two stacked figures (packets/s, bits/s) with one line per link.

    Column ``t`` is seconds since the plots were made; ``pps<i>``/``bps<i>`` belong to
    ``links[i]``.  :meth:`push` streams one point per link and keeps ``keep`` points.
    """

    def __init__(self, links: Sequence[str], *, keep: int = 240, window_s: float = 60.0,
                 width: int = 500, height: int = 150) -> None:
        self.links = list(links)
        self.keep = keep
        self.points = 0
        columns: dict[str, list[float]] = {"t": [0.0]}  # one point: ranges need data to start from
        for i in range(len(self.links)):
            columns[f"pps{i}"] = [0.0]
            columns[f"bps{i}"] = [0.0]
        self.source = ColumnDataSource(columns)
        x_range = DataRange1d(follow="end", follow_interval=window_s, range_padding=0)
        self.pps = figure(width=width, height=height, title="packets/s per link (both directions)",
                          x_range=x_range, y_range=DataRange1d(start=0), tools="pan,wheel_zoom,reset",
                          toolbar_location="right")
        self.bps = figure(width=width, height=height, title="bits/s per link (both directions)",
                          x_range=x_range, y_range=DataRange1d(start=0), tools="pan,wheel_zoom,reset",
                          toolbar_location="right")
        self.bps.xaxis.axis_label = "seconds"
        self.bps.yaxis.formatter = NumeralTickFormatter(format="0.0a")
        self.pps.yaxis.formatter = NumeralTickFormatter(format="0a")
        for i, name in enumerate(self.links):
            colour = Category10_10[i % 10]
            self.pps.line("t", f"pps{i}", source=self.source, color=colour, line_width=2, legend_label=name)
            self.bps.line("t", f"bps{i}", source=self.source, color=colour, line_width=2, legend_label=name)
        if self.links:
            for fig in (self.pps, self.bps):
                legend: Any = fig.legend
                legend.location = "top_left"
                legend.label_text_font_size = "9px"
                legend.background_fill_alpha = 0.6
                legend.click_policy = "hide"
                legend.spacing = 0
                legend.padding = 2

    def push(self, t: float, rates: Sequence[tuple[float, float]]) -> None:
        """One point per link: ``rates[i]`` = (packets/s, bits/s) of ``links[i]`` at ``t``."""
        point: dict[str, Any] = {"t": [t]}
        for i, (pps, bps) in enumerate(rates):
            point[f"pps{i}"] = [round(pps, 1)]
            point[f"bps{i}"] = [round(bps, 1)]
        self.source.stream(point, rollover=self.keep)
        self.points += 1
