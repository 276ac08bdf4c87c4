"""stdpkt-lab: service function chains of Linux kernels joined by pcap-framed pipes.

Describe a chain as a networkx graph, then run it::

    import networkx as nx
    import stdpkt_lab as sl

    g = sl.chain("client", "nat", "fw", "server",
                 kinds={"nat": "nat", "fw": "firewall"},
                 params={"fw": {"allow": ["tcp/80", "icmp"]}, "server": {"serve": "http"}})
    with sl.Lab(g) as lab:
        print(lab.exec("client", "wget -qO- http://server/").stdout)
"""

from __future__ import annotations

from . import check, errors
from .describe import (
    ChainPlan,
    KindRegistry,
    LinkPlan,
    NFKind,
    NodePlan,
    Param,
    build_plan,
    chain,
    default_registry,
    load_kathara,
    load_lab,
    register_kind,
    save_lab,
)
from .lab import Lab, LabState

__version__ = "0.1.0"

__all__ = [
    "errors",
    "check",
    "Lab",
    "LabState",
    "ChainPlan",
    "KindRegistry",
    "LinkPlan",
    "NFKind",
    "NodePlan",
    "Param",
    "build_plan",
    "chain",
    "default_registry",
    "load_lab",
    "load_kathara",
    "register_kind",
    "save_lab",
]
