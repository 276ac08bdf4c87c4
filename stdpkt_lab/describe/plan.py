"""``build_plan``: a networkx graph → everything the runtime boots, checked before anything runs.

Graph conventions:

* Every node carries ``kind=`` (a registered name, or an :class:`NFKind`
  subclass) plus that kind's parameters as attributes.  Every node also
  accepts ``routes=[...]`` (replaces its derived routes; ``via`` may name a
  neighbour), ``gateway=`` (address or neighbour name; ``""`` for none),
  ``mem_mb=``, ``env={...}`` (extra guest variables), ``ipv6=True`` (IPv6 on
  its interfaces; off by default, ``g.graph["ipv6"] = True`` turns it on for
  every node) and the drawing attributes ``label``/``pos``, which are ignored.
* Every edge is a link (direction in a DiGraph is ignored; ``a→b`` plus
  ``b→a`` is one link).  Edges may carry ``subnet=``, ``mtu=`` and
  ``addr={end: "10.0.0.2[/24]"}``, ``ports={end: N}`` (that end is ``ethN``),
  ``mac={end: "02:..."}`` — see :mod:`~stdpkt_lab.describe.addressing` — and
  link conditions (``delay=``, ``jitter=``, ``loss=``, ``rate=``, ``reorder=``,
  ``duplicate=``, ``corrupt=``, ``limit=``; ``egress={end: {...}}`` for one
  direction) — see :mod:`~stdpkt_lab.describe.conditions`.

Routes are derived by :mod:`~stdpkt_lab.describe.routing`; ``/etc/hosts`` of every
instance maps every node name to :meth:`ChainPlan.address`.
"""

from __future__ import annotations

import copy
import ipaddress
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import networkx as nx

from ..engine.spec import InstanceSpec, PortSpec, port_kind
from ..errors import ChainError
from .addressing import Addressing, RawLink, assign_addresses
from .conditions import LinkConditions, edge_conditions, setup_text
from .kinds import KindContext, KindRegistry, NFKind, Param, suggest
from .routing import (
    L3Graph,
    RouteTable,
    collapse_to_gateway,
    explicit_routes,
    format_routes,
    hop_address,
    pin_through,
)

__all__ = ["build_plan", "ChainPlan", "NodePlan", "LinkPlan", "NODE_ATTRIBUTES"]

IPv4Address = ipaddress.IPv4Address
IPv4Network = ipaddress.IPv4Network
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,39}$")
_ENV = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_UPPER_ENV = re.compile(r"^[A-Z_][A-Z0-9_]*$")

#: Attributes every node accepts besides its kind's parameters.
NODE_ATTRIBUTES: dict[str, str] = {
    "kind": "the node's NF kind",
    "routes": "explicit 'ip route' arguments replacing the derived routes",
    "gateway": "explicit default gateway (address or neighbour name)",
    "mem_mb": "guest memory in MiB",
    "ipv6": "IPv6 on this node's interfaces (default off; the graph attribute ipv6=True sets it for all)",
    "env": "extra environment variables in the guest",
    "ports": "port kind: vhost (default: virtio-net with offload), vector (UML's vector driver), vhost-plain; "
             "the graph attribute ports= or $STDPKT_PORTS sets it for all",
    "label": "ignored (drawing)",
    "pos": "ignored (drawing)",
    "host": "the Dask worker to run this node on (Lab(g, cluster=client)); ignored otherwise",
}


@dataclass(frozen=True)
class LinkPlan:
    """Port ``a_port`` of ``a`` ⟷ port ``b_port`` of ``b``, on ``subnet``."""

    a: str
    a_port: int
    b: str
    b_port: int
    subnet: IPv4Network
    mtu: int = 1500
    #: Link conditions per direction ``(sender, receiver)`` (:mod:`.conditions`).
    conditions: Mapping[tuple[str, str], LinkConditions] = field(default_factory=dict)


@dataclass(frozen=True)
class NodePlan:
    """One node: its kind, parameters (defaults and derived values filled) and instance spec."""

    name: str
    kind: NFKind
    params: Mapping[str, Any]
    spec: InstanceSpec
    neighbors: Mapping[int, str] = field(default_factory=dict)

    def port_of(self, neighbour: str) -> int:
        """The port index (``eth<n>``) linked to ``neighbour``."""
        for index, name in self.neighbors.items():
            if name == neighbour:
                return index
        raise ChainError(
            f"{neighbour!r} is not a neighbour (neighbours: "
            f"{', '.join(self.neighbors.values()) or 'none'})",
            node=self.name,
        )


class ChainPlan(Mapping[str, NodePlan]):
    """The plan of one chain: ``plan["nat"]`` is a :class:`NodePlan`."""

    def __init__(
        self,
        graph: nx.Graph,
        nodes: dict[str, NodePlan],
        links: tuple[LinkPlan, ...],
        addresses: Mapping[str, IPv4Address | None],
    ) -> None:
        self.graph = graph
        self.nodes = nodes
        self.links = links
        self._addresses = dict(addresses)

    def address(self, node: str) -> IPv4Address:
        """The address ``node``'s name resolves to inside every instance."""
        if node not in self.nodes:
            raise ChainError(f"no such node{suggest(str(node), list(self.nodes))}", node=node)
        addr = self._addresses[node]
        if addr is None:
            raise ChainError("has no address (a bridge, or no links)", node=node)
        return addr

    def shell_pipeline(self) -> str:
        """The equivalent ``stdpkt run`` pipeline (bash) for a linear chain."""
        from .builders import shell_pipeline

        return shell_pipeline(self)

    def __getitem__(self, node: str) -> NodePlan:
        return self.nodes[node]

    def __iter__(self) -> Iterator[str]:
        return iter(self.nodes)

    def __len__(self) -> int:
        return len(self.nodes)

    def __repr__(self) -> str:
        return f"<ChainPlan {len(self.nodes)} nodes, {len(self.links)} links>"


def build_plan(
    g: nx.Graph,
    *,
    registry: KindRegistry | None = None,
    pool: str = "10.0.0.0/16",
    prefixlen: int = 24,
) -> ChainPlan:
    """Validate ``g`` and derive ports, addresses, routes, /etc/hosts and setup for every node.

    Raises :class:`~stdpkt_lab.errors.ChainError` naming the node and the problem.
    """
    if registry is None:
        from .catalogue import default_registry

        registry = default_registry
    if not isinstance(g, nx.Graph):
        raise ChainError(f"expected a networkx Graph or DiGraph, got {type(g).__name__}")
    if g.is_multigraph():
        raise ChainError(
            "parallel links (a MultiGraph) are not supported: put a bridge or router between"
        )
    graph = g.copy()
    if graph.number_of_nodes() == 0:
        raise ChainError("the graph is empty: add nodes with kind=... and edges between them")
    _check_names(graph)
    for u, _ in nx.selfloop_edges(graph):
        raise ChainError("links to itself (self-loop)", node=u)
    names = list(graph.nodes)
    links = _links(graph)
    link_conditions = [edge_conditions(link.a, link.b, link.attrs) for link in links]
    kinds = {n: registry.lookup(_kind_attr(graph, n), node=n)() for n in names}
    params = {n: _params(n, kinds[n], graph.nodes[n]) for n in names}
    degree = {n: 0 for n in names}
    for link in links:
        degree[link.a] += 1
        degree[link.b] += 1
    for n in names:
        _check_degree(n, kinds[n], degree[n])

    try:
        net = ipaddress.IPv4Network(pool)
    except ValueError as exc:
        raise ChainError(f"address pool {pool!r}: {exc}") from None
    addressing = assign_addresses(
        names,
        links,
        transparent={n for n in names if kinds[n].transparent},
        forwarding={n for n in names if kinds[n].transit},
        pool=net,
        prefixlen=prefixlen,
        unaddressed={n for n in names if not kinds[n].addressed},
    )
    l3 = L3Graph(
        [n for n in names if not kinds[n].transparent],
        addressing,
        transit={n for n in names if kinds[n].transit},
    )
    undirected = graph.to_undirected(as_view=True) if graph.is_directed() else graph
    resolved: dict[str, IPv4Address | None] = {}

    def resolve(node: str) -> IPv4Address | None:
        if node not in resolved:
            resolved[node] = kinds[node].address(ctxs[node])
        return resolved[node]

    ctxs = {
        n: KindContext(
            n, params[n], addressing.ports[n], undirected, addressing, l3, kinds, resolve
        )
        for n in names
    }
    for n in names:
        kinds[n].validate(ctxs[n])
    for n in names:
        for key, value in kinds[n].derive(ctxs[n]).items():
            if params[n].get(key) is None:
                params[n][key] = value
    for n in names:
        resolve(n)

    tables = _route_tables(names, kinds, ctxs, addressing, l3)
    order = [s.subnet for s in addressing.segments]
    hosts = _hosts_text(names, resolved)
    link_plans = []
    for i, link in enumerate(links):
        pa = next(p for p in addressing.ports[link.a] if p.link == i)
        pb = next(p for p in addressing.ports[link.b] if p.link == i)
        link_plans.append(
            LinkPlan(
                link.a, pa.index, link.b, pb.index, addressing.segments[pa.segment].subnet, pa.mtu,
                link_conditions[i],
            )
        )
    shaping: dict[str, dict[str, tuple[LinkConditions, int]]] = {n: {} for n in names}
    for lp in link_plans:
        for (src, _dst), cond in lp.conditions.items():
            port = lp.a_port if src == lp.a else lp.b_port
            shaping[src][f"eth{port}"] = (cond, lp.mtu)
    nodes: dict[str, NodePlan] = {}
    for n in names:
        devices = [f"eth{p.index}" for p in addressing.ports[n]]
        nodes[n] = _node_plan(n, kinds[n], ctxs[n], graph.nodes[n], tables[n], order, hosts,
                              setup_text(shaping[n], devices),
                              ipv6_default=graph.graph.get("ipv6", False),
                              ports_default=graph.graph.get("ports"))
    return ChainPlan(graph, nodes, tuple(link_plans), resolved)


def _check_names(graph: nx.Graph) -> None:
    seen: dict[str, str] = {}
    for n in graph.nodes:
        if not isinstance(n, str):
            raise ChainError(f"node {n!r}: node names must be strings")
        if not _NAME.match(n):
            raise ChainError(
                "invalid name: use letters, digits, '_', '.', '-', starting with a letter "
                "or digit, at most 40 characters",
                node=n,
            )
        if n.lower() in seen:
            raise ChainError(
                f"duplicate name: {seen[n.lower()]!r} and {n!r} differ only in case "
                "(host names are case-insensitive)",
                node=n,
            )
        seen[n.lower()] = n


def _links(graph: nx.Graph) -> list[RawLink]:
    links: list[RawLink] = []
    index: dict[frozenset[str], int] = {}
    for a, b, attrs in graph.edges(data=True):
        key = frozenset((a, b))
        if key in index:  # a DiGraph's b→a after a→b
            if dict(attrs) != dict(links[index[key]].attrs):
                raise ChainError(
                    f"link {a!r}–{b!r} is given in both directions with different attributes"
                )
            continue
        index[key] = len(links)
        links.append(RawLink(a, b, dict(attrs)))
    return links


def _kind_attr(graph: nx.Graph, node: str) -> Any:
    kind = graph.nodes[node].get("kind")
    if kind is None:
        raise ChainError("has no kind= attribute (e.g. g.add_node(name, kind='host'))", node=node)
    return kind


def _params(node: str, kind: NFKind, attrs: Mapping[str, Any]) -> dict[str, Any]:
    declared: Mapping[str, Param] = kind.params
    values: dict[str, Any] = {}
    for key, value in attrs.items():
        if key in NODE_ATTRIBUTES:
            continue
        if key in declared:
            if value is None:
                continue
            try:
                values[key] = declared[key].check(value)
            except (ValueError, TypeError) as exc:
                raise ChainError(f"parameter {key}={value!r}: {exc}", node=node) from None
        elif kind.env_params and isinstance(key, str) and _UPPER_ENV.match(key):
            values[key] = value
        else:
            known = [*declared, *NODE_ATTRIBUTES]
            listing = ", ".join(declared) or "none"
            raise ChainError(
                f"unknown parameter {key!r} for kind {kind.name!r}{suggest(str(key), known)}; "
                f"its parameters: {listing}",
                node=node,
            )
    for key, param in declared.items():
        if key not in values:
            if param.required:
                raise ChainError(
                    f"missing required parameter {key!r} of kind {kind.name!r}: {param.doc}",
                    node=node,
                )
            values[key] = copy.deepcopy(param.default)
    return {k: values[k] for k in [*declared, *(k for k in values if k not in declared)]}


def _check_degree(node: str, kind: NFKind, links: int) -> None:
    if kind.min_ports <= links <= kind.max_ports:
        return
    if kind.min_ports == kind.max_ports:
        wanted = f"exactly {kind.min_ports}"
    elif links > kind.max_ports:
        wanted = f"at most {kind.max_ports}"
    else:
        wanted = f"at least {kind.min_ports}"
    plural = "link" if links == 1 else "links"
    raise ChainError(f"a {kind.name} has {wanted} links, this one has {links} {plural}", node=node)


def _route_tables(
    names: list[str],
    kinds: Mapping[str, NFKind],
    ctxs: Mapping[str, KindContext],
    addressing: Addressing,
    l3: L3Graph,
) -> dict[str, RouteTable]:
    tables = {n: RouteTable({} if kinds[n].transparent else l3.routes(n)) for n in names}
    for n in names:
        for target, subnets in kinds[n].reply_routes(ctxs[n]).items():
            pin_through(l3, tables, n, [target], subnets)
    for n in names:
        addressed = [p for p in addressing.ports[n] if p.address is not None]
        if not kinds[n].transit and len(addressed) == 1:
            collapse_to_gateway(tables[n])
    return tables


def _hosts_text(names: list[str], resolved: Mapping[str, IPv4Address | None]) -> str:
    lines = ["127.0.0.1\tlocalhost", "::1\tlocalhost ip6-localhost ip6-loopback"]
    lines += [f"{resolved[n]}\t{n}" for n in names if resolved.get(n) is not None]
    return "\n".join(lines) + "\n"


def _node_plan(
    name: str,
    kind: NFKind,
    ctx: KindContext,
    attrs: Mapping[str, Any],
    table: RouteTable,
    order: list[IPv4Network],
    hosts: str,
    conditions_setup: str = "",
    *,
    ipv6_default: object = False,
    ports_default: object = None,
) -> NodePlan:
    routes = format_routes(table, order)
    gateway = table.gateway
    if attrs.get("routes") is not None:
        routes = explicit_routes(ctx, attrs["routes"])
    if "gateway" in attrs:
        gw = attrs["gateway"]
        gateway = None if gw in (None, "", False) else hop_address(ctx, str(gw), "gateway")
    env = {k: str(v) for k, v in kind.environment(ctx).items()}
    extra = attrs.get("env") or {}
    if not isinstance(extra, Mapping) or not all(
        isinstance(k, str) and _ENV.match(k) for k in extra
    ):
        raise ctx.error(f"env must map variable names to values, got {extra!r}")
    env.update({k: str(v) for k, v in extra.items()})
    mem = attrs.get("mem_mb", kind.mem_mb)
    ipv6 = attrs.get("ipv6", ipv6_default)
    if not isinstance(ipv6, bool):
        raise ctx.error(f"ipv6 must be True or False, got {ipv6!r}")
    try:
        vhost, offload = port_kind(attrs.get("ports", ports_default), "ports")
    except ValueError as e:
        raise ctx.error(str(e)) from None
    ports = tuple(PortSpec(p.index, p.address, p.mtu, mac=p.mac, vhost=vhost, offload=offload)
                  for p in ctx.ports)
    try:
        spec = InstanceSpec(
            name=name,
            ports=ports,
            gateway=gateway,
            routes=routes,
            setup="\n".join(t for t in (conditions_setup, kind.setup(ctx)) if t) or None,
            env=env,
            hosts=hosts,
            mem_mb=mem,
            ipv6=ipv6,
        )
    except (ValueError, TypeError) as exc:
        raise ctx.error(str(exc)) from None
    return NodePlan(name, kind, ctx.params, spec, {p.index: p.neighbour for p in ctx.ports})
