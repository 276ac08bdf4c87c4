"""Times as a person reads them: epoch seconds (what code compares) → local datetimes.

Samples, relay timestamps and ``pkt.time`` stay floats (seconds since the epoch);
tables shown to people get a ``time`` column of pandas ``datetime64`` (local wall
clock, naive) next to the raw float, renamed ``timestamp``.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

__all__ = ["local_datetime", "clock_text", "time_frame"]


def local_datetime(ts: float) -> _dt.datetime:
    """Epoch seconds → a naive local datetime (microsecond precision)."""
    return _dt.datetime.fromtimestamp(float(ts))


def clock_text(ts: float, *, digits: int = 3) -> str:
    """Epoch seconds → ``"14:03:07.123"`` (``digits`` decimals, 0..6)."""
    text = local_datetime(ts).strftime("%H:%M:%S.%f")
    if digits <= 0:
        return text[:-7]
    return text[: -6 + digits] if digits < 6 else text


def time_frame(rows: Iterable[Mapping[str, Any]], *, time_key: str = "time",
               columns: Sequence[str] | None = None) -> Any:
    """Rows whose ``time_key`` is epoch seconds → a DataFrame whose first column ``time``
    is datetime64 (local) and whose ``timestamp`` column keeps the float.

    Without pandas, the rows come back as a list of dicts with the same two keys
    (``time`` a :class:`datetime.datetime`).
    """
    out: list[dict[str, Any]] = []
    for row in rows:
        d = dict(row)
        ts = d.pop(time_key, None)
        new: dict[str, Any] = {"time": local_datetime(ts) if ts is not None else None}
        new.update(d)
        new["timestamp"] = float(ts) if ts is not None else None
        out.append(new)
    try:
        import pandas as pd
    except ImportError:
        return out
    frame = pd.DataFrame(out, columns=list(columns) if columns else None)
    if "time" not in frame.columns:  # no rows and no columns named: still the two time columns
        frame = pd.DataFrame({"time": [], "timestamp": []})
    frame["time"] = pd.to_datetime(frame["time"])
    frame["timestamp"] = frame["timestamp"].astype("float64")
    return frame
