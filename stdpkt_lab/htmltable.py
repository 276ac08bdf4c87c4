"""Small HTML tables for notebook representations (``_repr_html_``); no dependencies.

Every layer may use it (it imports nothing of stdpkt_lab), so ``Instance``,
``Journey`` and ``Lab`` render the same way.
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Sequence
from typing import Any

__all__ = ["Cell", "html_table"]

_TD = "padding:2px 8px;border-bottom:1px solid #eee;text-align:left;white-space:nowrap;"
_MARK = "background:#fff3b0;font-weight:600;"


class Cell:
    """A table cell with an optional highlight (a changed field) and a tooltip."""

    __slots__ = ("text", "highlight", "title", "colour")

    def __init__(self, text: Any, *, highlight: bool = False, title: str = "", colour: str = "") -> None:
        self.text = "" if text is None else str(text)
        self.highlight = highlight
        self.title = title
        self.colour = colour


_DENSE = "padding:1px 5px;"


def _cell(value: Any, tag: str = "td", dense: bool = False) -> str:
    cell = value if isinstance(value, Cell) else Cell(value)
    style = (_TD + (_DENSE if dense else "") + (_MARK if cell.highlight else "")
             + (f"color:{cell.colour};" if cell.colour else ""))
    title = f" title='{html.escape(cell.title, quote=True)}'" if cell.title else ""
    return f"<{tag} style='{style}'{title}>{html.escape(cell.text)}</{tag}>"


def html_table(columns: Sequence[str], rows: Iterable[Sequence[Any]], *, title: str = "",
               note: str = "", css_class: str = "stdpkt-table", dense: bool = False) -> str:
    """A compact table; cells are values or :class:`Cell` (highlighted ones stand out);
    ``dense``: smaller type and padding, scrolling sideways when wider than its place."""
    head = "".join(_cell(c, "th", dense) for c in columns)
    body = "".join("<tr>" + "".join(_cell(v, dense=dense) for v in row) + "</tr>" for row in rows)
    if not body:
        body = f"<tr><td colspan='{len(columns)}' style='{_TD}color:#888'>(none)</td></tr>"
    caption = ""
    if title or note:
        caption = (f"<div><b>{html.escape(title)}</b> "
                   f"<span style='color:#666'>{html.escape(note)}</span></div>")
    size = "font-size:11px;overflow-x:auto;max-width:100%" if dense else "font-size:12px"
    return (f"<div class='{css_class}' style='font-family:monospace;{size}'>{caption}"
            f"<table style='border-collapse:collapse'><thead><tr>{head}</tr></thead>"
            f"<tbody>{body}</tbody></table></div>")
