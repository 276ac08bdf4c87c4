"""Plain text and HTML for the dashboard (no widget imports: easy to test)."""

from __future__ import annotations

import html
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["human_bps", "human_pps", "PacketRow", "packet_rows", "packets_html", "log_html"]


def human_bps(bps: float) -> str:
    """``1234567`` → ``"1.2 Mbit/s"``."""
    for unit, scale in (("Gbit/s", 1e9), ("Mbit/s", 1e6), ("kbit/s", 1e3)):
        if bps >= scale:
            return f"{bps / scale:.1f} {unit}"
    return f"{bps:.0f} bit/s"


def human_pps(pps: float) -> str:
    return f"{pps / 1000:.1f} kpkt/s" if pps >= 1000 else f"{pps:.0f} pkt/s"


@dataclass(frozen=True)
class PacketRow:
    """One line of the packet table."""

    time: float  # seconds since the epoch
    src: str
    dst: str
    length: int
    summary: str
    injected: bool = False

    @property
    def clock(self) -> str:
        return time.strftime("%H:%M:%S", time.localtime(self.time)) + f".{int(self.time * 1000) % 1000:03d}"


def packet_rows(packets: Iterable[Any]) -> list[PacketRow]:
    """Scapy packets from ``Lab.trace`` (with ``.link``, ``.time``, ``.wirelen``) → rows, newest first."""
    rows = []
    for pkt in packets:
        summary = pkt.summary()
        if summary.startswith("Ether / "):
            summary = summary[len("Ether / "):]
        src, dst = pkt.link
        rows.append(PacketRow(float(pkt.time), src, dst, int(getattr(pkt, "wirelen", None) or len(pkt)),
                              summary, bool(getattr(pkt, "injected", False))))
    rows.sort(key=lambda r: r.time, reverse=True)
    return rows


_CELL = "padding:1px 6px;border-bottom:1px solid #eee;white-space:nowrap;"


def packets_html(rows: Sequence[PacketRow], *, title: str, note: str = "") -> str:
    """An HTML table of packet rows (the dashboard's trace view)."""
    head = "".join(f"<th style='{_CELL}text-align:left'>{h}</th>" for h in
                   ("time", "direction", "bytes", "packet (scapy summary)"))
    body = "".join(
        f"<tr><td style='{_CELL}'>{r.clock}</td>"
        f"<td style='{_CELL}'>{html.escape(r.src)} &rarr; {html.escape(r.dst)}"
        f"{' (injected)' if r.injected else ''}</td>"
        f"<td style='{_CELL}text-align:right'>{r.length}</td>"
        f"<td style='{_CELL}'>{html.escape(r.summary)}</td></tr>"
        for r in rows)
    if not rows:
        body = f"<tr><td colspan='4' style='{_CELL}color:#888'>no packets on this link yet</td></tr>"
    return (f"<div class='stdpkt-packets' style='font-family:monospace;font-size:11px'>"
            f"<b>{html.escape(title)}</b> <span style='color:#888'>{html.escape(note)}</span>"
            f"<table style='border-collapse:collapse;width:100%'><thead><tr>{head}</tr></thead>"
            f"<tbody>{body}</tbody></table></div>")


def log_html(lines: Iterable[tuple[float, str]]) -> str:
    """Recent control actions and their results, newest last."""
    items = "".join(
        f"<div>{time.strftime('%H:%M:%S', time.localtime(t))} {html.escape(text)}</div>"
        for t, text in lines)
    return f"<div class='stdpkt-log' style='font-family:monospace;font-size:11px;color:#333'>{items}</div>"
