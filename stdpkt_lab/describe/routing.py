"""Static routes from networkx shortest paths over the L3 graph.

The L3 graph is bipartite: one vertex per addressed node, one per segment
(bridges are already contracted into their segments by
:mod:`~stdpkt_lab.describe.addressing`), an edge where a node has an address on
a segment.  Only forwarding nodes (``transit`` kinds) may sit in the middle
of a path; end systems (``host``) are only its ends.

For every node and every subnet it is not attached to, the route is
``SUBNET via NEXT_HOP`` where ``NEXT_HOP`` is the address, on the first
segment of the shortest path, of the next node on it.  An end system with one
addressed port instead gets a default gateway (the next hop most of its
routes use) plus routes only for the subnets reached through another
neighbour.  :func:`pin_through` then bends routes so that some nodes reach
some subnets through a given node (a load balancer's replies).
"""

from __future__ import annotations

import ipaddress
from collections import Counter
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import networkx as nx

from .addressing import Addressing
from .kinds import KindContext, suggest

__all__ = [
    "L3Graph",
    "RouteTable",
    "pin_through",
    "collapse_to_gateway",
    "format_routes",
    "hop_address",
    "explicit_routes",
]

IPv4Address = ipaddress.IPv4Address
IPv4Network = ipaddress.IPv4Network

Vertex = tuple[str, object]  # ("n", node name) or ("s", segment index)


@dataclass
class RouteTable:
    """One node's routes: subnet → next-hop address, and a default gateway."""

    routes: dict[IPv4Network, IPv4Address]
    gateway: IPv4Address | None = None


class L3Graph:
    """Who can reach which segment through whom."""

    def __init__(
        self, nodes: Sequence[str], addressing: Addressing, transit: Collection[str]
    ) -> None:
        self.addressing = addressing
        self.transit = set(transit)
        g: nx.Graph = nx.Graph()
        for node in nodes:
            g.add_node(("n", node))
        for seg in addressing.segments:
            g.add_node(("s", seg.index))
        for node in nodes:
            for port in addressing.ports[node]:
                if port.address is not None:
                    g.add_edge(("n", node), ("s", port.segment))
        self.graph = g
        self._cache: dict[tuple[tuple[str, ...], str], dict[Vertex, list[Vertex]]] = {}

    def _view(self, *ends: str) -> nx.Graph:
        allowed = set(ends)

        def keep(v: Vertex) -> bool:
            return v[0] == "s" or v[1] in self.transit or v[1] in allowed

        return nx.subgraph_view(self.graph, filter_node=keep)

    def _bfs(self, ends: list[str], src: str) -> dict[Vertex, list[Vertex]]:
        key = (tuple(ends), src)
        if key not in self._cache:
            view = self._view(*ends)
            self._cache[key] = (
                nx.single_source_shortest_path(view, ("n", src)) if ("n", src) in view else {}
            )
        return self._cache[key]

    def paths_from(self, node: str) -> dict[Vertex, list[Vertex]]:
        """Shortest paths from ``node`` to every vertex reachable without crossing an end system."""
        return self._bfs([node], node)

    def path(self, src: str, dst: str) -> list[str] | None:
        """Nodes on a shortest path ``src`` … ``dst`` (no segments), None if unreachable."""
        full = self._bfs([src, dst], src).get(("n", dst))
        if full is None:
            return None
        return [str(v[1]) for v in full if v[0] == "n"]

    def hop(self, here: str, there: str) -> IPv4Address:
        """Address of neighbour ``there`` on a segment it shares with ``here``."""
        shared = sorted(self.addressing.segments_of(here) & self.addressing.segments_of(there))
        addr = self.addressing.address_on(there, shared[0])
        assert addr is not None
        return addr

    def first_segment(self, node: str, target: Vertex) -> int | None:
        """The segment through which ``node``'s shortest path to ``target`` leaves."""
        ends = [node, str(target[1])] if target[0] == "n" else [node]
        path = self._bfs(ends, node).get(target)
        if path is None or len(path) < 2:
            return None
        return int(path[1][1])  # type: ignore[call-overload]

    def routes(self, node: str) -> dict[IPv4Network, IPv4Address]:
        """Subnet → next hop for every reachable subnet ``node`` is not attached to."""
        attached = self.addressing.segments_of(node)
        paths = self.paths_from(node)
        table: dict[IPv4Network, IPv4Address] = {}
        for seg in self.addressing.segments:
            path = paths.get(("s", seg.index))
            if seg.index in attached or path is None or len(path) < 4:
                continue
            # path: (n, node), (s, first), (n, next), ..., (s, seg)
            first, nxt = int(path[1][1]), str(path[2][1])  # type: ignore[call-overload]
            addr = self.addressing.address_on(nxt, first)
            assert addr is not None
            table[seg.subnet] = addr
        return table


def pin_through(
    l3: L3Graph,
    tables: dict[str, RouteTable],
    via: str,
    sources: Iterable[str],
    subnets: Collection[IPv4Network],
) -> None:
    """Make every node on the way from each source to ``via`` route ``subnets`` toward ``via``."""
    for source in sources:
        path = l3.path(source, via)
        if path is None:
            continue
        for here in path[:-1]:
            own = l3.path(here, via) or path
            nxt = own[1]
            attached = {l3.addressing.segments[s].subnet for s in l3.addressing.segments_of(here)}
            for subnet in subnets:
                if subnet not in attached:
                    tables[here].routes[subnet] = l3.hop(here, nxt)


def collapse_to_gateway(table: RouteTable) -> None:
    """An end system's routes become a default gateway plus the exceptions to it."""
    if not table.routes:
        return
    counts = Counter(table.routes.values())
    first_seen = list(dict.fromkeys(table.routes.values()))
    gateway = max(first_seen, key=lambda hop: counts[hop])  # ties: the first seen
    table.gateway = gateway
    table.routes = {net: hop for net, hop in table.routes.items() if hop != gateway}


def format_routes(table: RouteTable, order: Sequence[IPv4Network]) -> tuple[str, ...]:
    """``ip route add`` arguments, in segment order."""
    rank = {net: i for i, net in enumerate(order)}
    nets = sorted(table.routes, key=lambda n: rank.get(n, len(rank)))
    return tuple(f"{net} via {table.routes[net]}" for net in nets)


def hop_address(ctx: KindContext, text: str, what: str) -> IPv4Address:
    """An address, or a neighbour's address on the segment shared with this node."""
    try:
        return IPv4Address(text)
    except ValueError:
        pass
    if ctx.is_node(text):
        port = ctx.port_toward(text)
        shared = ctx.addressing.address_on(text, port.segment) if port is not None else None
        if shared is None:
            raise ctx.error(f"{what}: {text!r} shares no subnet with this node")
        return shared
    raise ctx.error(
        f"{what}: {text!r} is neither an IPv4 address nor a node{suggest(text, list(ctx.kinds))}"
    )


def explicit_routes(ctx: KindContext, value: Any) -> tuple[str, ...]:
    if isinstance(value, str) or not isinstance(value, (list, tuple)):
        raise ctx.error(f"routes must be a list of 'ip route' argument strings, got {value!r}")
    out = []
    for route in value:
        words = str(route).split()
        if not words:
            raise ctx.error("routes: empty route")
        if words[0] != "default":
            try:
                IPv4Network(words[0])
            except ValueError:
                raise ctx.error(
                    f"routes: {route!r} does not start with a network or 'default'"
                ) from None
        for i, word in enumerate(words[:-1]):
            if word == "via":
                words[i + 1] = str(hop_address(ctx, words[i + 1], f"route {route!r}"))
        out.append(" ".join(words))
    return tuple(out)
