"""Counter samples as plain data: the same names on every link and every NF."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

__all__ = ["LinkSample", "NodeSample", "Sample", "parse_proc_net_dev", "parse_ip_vs", "records"]


@dataclass(frozen=True)
class LinkSample:
    """One direction of one link (``src`` → ``dst``) at ``time``."""

    time: float
    link: str
    src: str
    dst: str
    frames: int
    bytes: int
    drops: int
    malformed: int
    injected: int
    pps: float = 0.0  # over the last interval
    bps: float = 0.0


@dataclass(frozen=True)
class NodeSample:
    """What one instance reports about itself, read through its agent (no fork in the guest)."""

    time: float
    node: str
    state: str
    interfaces: dict[str, dict[str, int]] = field(default_factory=dict)
    conntrack_entries: int | None = None
    ipvs: list[dict[str, Any]] = field(default_factory=list)
    #: Egress qdiscs per interface (only for nodes with link conditions set).
    qdiscs: dict[str, list[dict[str, Any]]] = field(default_factory=dict)


@dataclass(frozen=True)
class Sample:
    """Everything one sampling round saw."""

    time: float
    links: tuple[LinkSample, ...]
    nodes: dict[str, NodeSample]


_DEV_FIELDS = (
    "rx_bytes rx_packets rx_errs rx_drop rx_fifo rx_frame rx_compressed rx_multicast "
    "tx_bytes tx_packets tx_errs tx_drop tx_fifo tx_colls tx_carrier tx_compressed"
).split()


def parse_proc_net_dev(text: str) -> dict[str, dict[str, int]]:
    """``/proc/net/dev`` → {device: {rx_bytes: …, tx_packets: …}}."""
    out: dict[str, dict[str, int]] = {}
    for line in text.splitlines()[2:]:
        name, _, rest = line.partition(":")
        values = rest.split()
        if len(values) >= len(_DEV_FIELDS):
            out[name.strip()] = dict(zip(_DEV_FIELDS, map(int, values), strict=False))
    return out


def parse_ip_vs(text: str) -> list[dict[str, Any]]:
    """``/proc/net/ip_vs`` → one row per (service, real server) with its connection counts.

    Addresses there are hex (``0A000102:0050``); they are decoded to dotted form.
    """
    rows: list[dict[str, Any]] = []
    service = None
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[0] in ("TCP", "UDP"):
            service = f"{parts[0].lower()}/{_hexaddr(parts[1])}"
        elif len(parts) >= 6 and parts[0] == "->" and service and ":" in parts[1]:
            rows.append({
                "service": service, "backend": _hexaddr(parts[1]), "forward": parts[2],
                "weight": int(parts[3]), "active": int(parts[4]), "inactive": int(parts[5]),
            })
    return rows


def _hexaddr(text: str) -> str:
    host, _, port = text.partition(":")
    try:
        octets = [str(int(host[i:i + 2], 16)) for i in range(0, 8, 2)]
        return f"{'.'.join(octets)}:{int(port, 16)}"
    except ValueError:
        return text


def records(samples: list[LinkSample]) -> Any:
    """A tidy table: a pandas DataFrame (``time`` as datetime64, the raw float as
    ``timestamp``) when pandas is installed, else a list of dicts."""
    from .clock import time_frame

    columns = ["time", *(f.name for f in fields(LinkSample) if f.name != "time"), "timestamp"]
    return time_frame([asdict(s) for s in samples], columns=columns)
