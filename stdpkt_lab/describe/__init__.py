"""Chains as networkx graphs: description only (no process is started here).

A graph's nodes carry ``kind=`` plus that kind's parameters; its edges are
links.  :func:`build_plan` validates it and derives, for every node, an
:class:`~stdpkt_lab.engine.spec.InstanceSpec` (ports and addresses, routes,
``/etc/hosts``, the kind's set-up script) that the runtime (``stdpkt_lab.Lab``)
boots::

    g = chain("client", "nat", "fw", "server",
              kinds={"nat": "nat", "fw": "firewall"},
              params={"fw": {"allow": ["tcp/80", "icmp"]}, "server": {"serve": "http"}})
    plan = build_plan(g)
    plan["client"].spec.gateway        # IPv4Address('10.0.0.1'): the NAT
    print(plan.shell_pipeline())       # the same chain as a `stdpkt run` pipeline

Division of labour: :mod:`.kinds` (what a kind is, the registry),
:mod:`.catalogue` (the built-in kinds), :mod:`.rules` (firewall / forward
syntax), :mod:`.addressing` (ports, segments, addresses), :mod:`.routing`
(static routes), :mod:`.plan` (validation and the plan), :mod:`.labfile`
(YAML/JSON lab files), :mod:`.builders` (``chain()`` and the shell pipeline).
"""

from __future__ import annotations

from .builders import chain, linear_order
from .catalogue import (
    CATALOGUE,
    Bridge,
    Firewall,
    Host,
    LoadBalancer,
    Nat,
    Router,
    Script,
    default_registry,
)
from .devices import CollisionDomain, KatharaDevice
from .frr import Frr
from .kathara import KatharaWarning, load_kathara
from .kinds import (
    KindContext,
    KindRegistry,
    NFKind,
    Param,
    ScriptKind,
    register_kind,
    script_kind,
    sh,
)
from .labfile import load_lab, save_lab
from .plan import NODE_ATTRIBUTES, ChainPlan, LinkPlan, NodePlan, build_plan

__all__ = [
    "build_plan",
    "ChainPlan",
    "NodePlan",
    "LinkPlan",
    "NODE_ATTRIBUTES",
    "NFKind",
    "Param",
    "KindContext",
    "KindRegistry",
    "ScriptKind",
    "script_kind",
    "register_kind",
    "default_registry",
    "sh",
    "CATALOGUE",
    "Host",
    "Router",
    "Nat",
    "Firewall",
    "LoadBalancer",
    "Bridge",
    "Script",
    "load_lab",
    "save_lab",
    "load_kathara",
    "KatharaWarning",
    "KatharaDevice",
    "CollisionDomain",
    "Frr",
    "chain",
    "linear_order",
]
