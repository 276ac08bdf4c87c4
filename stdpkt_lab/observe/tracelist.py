"""``Trace``: the scapy ``PacketList`` that ``Lab.trace`` returns, readable in a notebook.

Imported only when a trace is made (scapy is slow to import).
"""

from __future__ import annotations

from typing import Any

from scapy.plist import PacketList

from ..htmltable import html_table
from .clock import clock_text, time_frame
from .traces import _summary

__all__ = ["Trace"]

#: rows a Trace shows in a notebook (the newest); to_frame() has them all
_HTML_ROWS = 40


class Trace(PacketList):
    """A scapy ``PacketList`` of traced frames (``.time`` stays a float), shown as a table."""

    def to_frame(self) -> Any:
        """One row per packet: ``time`` (datetime64), ``src``, ``dst``, ``bytes``, ``summary``,
        ``injected``, ``timestamp`` (the float)."""
        rows = [{"time": float(p.time), "src": p.link[0], "dst": p.link[1],
                 "bytes": int(getattr(p, "wirelen", None) or len(p)), "summary": _summary(p),
                 "injected": bool(getattr(p, "injected", False))} for p in self.res]
        return time_frame(rows, columns=["time", "src", "dst", "bytes", "summary", "injected",
                                         "timestamp"])

    def _repr_html_(self) -> str:
        pkts = list(self.res)
        shown = pkts[-_HTML_ROWS:]
        t0 = float(pkts[0].time) if pkts else 0.0
        rows = [(clock_text(float(p.time), digits=6), f"{(float(p.time) - t0) * 1e3:.3f}",
                 f"{p.link[0]} → {p.link[1]}" + (" (injected)" if getattr(p, "injected", False) else ""),
                 int(getattr(p, "wirelen", None) or len(p)), _summary(p)) for p in shown]
        note = f"{len(pkts)} packets" + (f", the last {len(shown)} shown" if len(shown) < len(pkts) else "")
        return html_table(("time", "ms", "direction", "bytes", "packet"), rows,
                          title="trace", note=note, css_class="stdpkt-trace")
