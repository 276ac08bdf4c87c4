"""Graph surgery for live chains: the chain as it will be after an insert, remove, add.

Pure description (no process starts here).  A running instance's ports are
fixed, and ports are numbered in link order (:mod:`.addressing`), so every
rewrite keeps each surviving node's links in the same order: a link
``a``–``b`` that gets a node spliced in becomes ``a``–``n`` at the same place
in ``a``'s list and ``n``–``b`` at the same place in ``b``'s.  Addresses and
subnets of the running chain are pinned on the edges (``subnet=``,
``addr=``) so re-planning cannot move them; :func:`check_kept` verifies that a
new plan leaves every running node's ports as they are, before anything is
touched.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import networkx as nx

from ..errors import ChainError
from .plan import ChainPlan

__all__ = [
    "pinned_graph",
    "splice",
    "unsplice",
    "with_node",
    "without_node",
    "with_link",
    "without_link",
    "check_kept",
    "node_changes",
]

Edge = tuple[str, str]


def pinned_graph(plan: ChainPlan) -> nx.Graph:
    """``plan.graph`` with every link's subnet and every end's address written on its edge."""
    g = plan.graph.copy()
    for lp in plan.links:
        attrs = g.edges[lp.a, lp.b]
        attrs.setdefault("subnet", str(lp.subnet))
        addr = dict(attrs.get("addr") or {})
        for end, index in ((lp.a, lp.a_port), (lp.b, lp.b_port)):
            port = plan.nodes[end].spec.ports[index]
            if port.address is not None and end not in addr:
                addr[end] = str(port.address)
        if addr:
            attrs["addr"] = addr
        if g.is_directed() and g.has_edge(lp.b, lp.a):
            g.edges[lp.b, lp.a].update(attrs)
    return g


def _emits(g: nx.Graph) -> tuple[list[str], dict[str, list[tuple[str, dict[str, Any], bool]]]]:
    """Node order and, per node, the links it emits in ``g.edges()`` order
    (``(other end, attributes, both directions)``)."""
    order = list(g.nodes)
    emits: dict[str, list[tuple[str, dict[str, Any], bool]]] = {n: [] for n in order}
    seen: set[frozenset[str]] = set()
    for u, v, attrs in g.edges(data=True):
        key = frozenset((u, v))
        if key in seen:
            continue
        seen.add(key)
        both = g.is_directed() and g.has_edge(v, u)
        emits[u].append((v, dict(attrs), both))
    return order, emits


def _build(like: nx.Graph, order: list[str], nodes: Mapping[str, Mapping[str, Any]],
           emits: Mapping[str, list[tuple[str, dict[str, Any], bool]]]) -> nx.Graph:
    g = like.__class__()
    g.graph.update(like.graph)
    for n in order:
        g.add_node(n, **dict(nodes[n]))
    for u in order:
        for v, attrs, both in emits[u]:
            g.add_edge(u, v, **attrs)
            if both:
                g.add_edge(v, u, **attrs)
    return g


def _find(emits: Mapping[str, list[tuple[str, dict[str, Any], bool]]], a: str, b: str
          ) -> tuple[str, int]:
    for u, v in ((a, b), (b, a)):
        for i, (w, _, _) in enumerate(emits.get(u, [])):
            if w == v:
                return u, i
    raise ChainError(f"no link between {a!r} and {b!r}")


def splice(g: nx.Graph, link: Edge, node: str, attrs: Mapping[str, Any],
           *, keep_addresses: bool = True) -> nx.Graph:
    """``g`` with ``node`` (attributes ``attrs``) spliced into ``link`` = (a, b).

    The new edges carry the old one's attributes; with ``keep_addresses``
    (a transparent node: one segment) both keep its subnet and the ends'
    addresses; otherwise the ``a`` side keeps them and the ``b`` side is
    left to be numbered anew (a routing node makes a new segment).
    """
    a, b = link
    if node in g:
        raise ChainError("a node of that name is already in the chain", node=node)
    order, emits = _emits(g)
    nodes = {n: dict(g.nodes[n]) for n in order}
    owner, i = _find(emits, a, b)
    other = b if owner == a else a
    _, old, both = emits[owner][i]
    near, far = dict(old), dict(old)
    addr = dict(old.get("addr") or {})
    for attrs_, end in ((near, owner), (far, other)):  # each edge pins only its own end
        attrs_.pop("addr", None)
        if end in addr:
            attrs_["addr"] = {end: addr[end]}
    if not keep_addresses:  # a routing node: the b side becomes a new segment
        renumber = far if owner == a else near
        renumber.pop("subnet", None)
        renumber.pop("addr", None)
    emits[owner][i] = (node, near, both)
    emits[node] = [(other, far, both)]
    nodes[node] = dict(attrs)
    order.insert(order.index(owner) + 1, node)
    return _build(g, order, nodes, emits)


def unsplice(g: nx.Graph, node: str, *, keep_addresses: bool = True) -> tuple[nx.Graph, Edge]:
    """``g`` without ``node`` (which has exactly two links), its two neighbours joined
    directly; returns the graph and the healed link ``(x, y)``.  Without
    ``keep_addresses`` (``node`` routed between two subnets) the healed link keeps
    ``x``'s side and ``y`` is left to be renumbered into it."""
    if node not in g:
        raise ChainError("no such node in the chain", node=node)
    order, emits = _emits(g)
    ends = [(u, i) for u in order for i, (v, _, _) in enumerate(emits[u]) if v == node]
    ends += [(node, i) for i in range(len(emits[node]))]
    if len(ends) != 2:
        raise ChainError(f"has {len(ends)} links; only a node on exactly two can be removed "
                         "with its link healed (disconnect the others first)", node=node)
    nodes = {n: dict(g.nodes[n]) for n in order if n != node}
    (u1, i1), (u2, i2) = ends
    x = emits[u1][i1][0] if u1 == node else u1
    y = emits[u2][i2][0] if u2 == node else u2
    if x == y:
        raise ChainError(f"both its links lead to {x!r}", node=node)
    if g.has_edge(x, y):
        raise ChainError(f"{x!r} and {y!r} are already linked: removing it would make a second "
                         "link between them", node=node)
    # the healed link takes the place of the first of the two links in emission order
    first, second = sorted(ends, key=lambda e: (order.index(e[0]), e[1]))
    attrs = dict(emits[first[0]][first[1]][1])
    attrs.pop("addr", None)
    addr: dict[str, Any] = {}
    for u, i in ends:
        for k, v in (emits[u][i][1].get("addr") or {}).items():
            if k != node:
                addr[k] = v
    if not keep_addresses:
        addr = {k: v for k, v in addr.items() if k == x}
        x_side = next(emits[u][i][1] for u, i in ends if x in (u, emits[u][i][0]))
        attrs.pop("subnet", None)
        if "subnet" in x_side:
            attrs["subnet"] = x_side["subnet"]
    if addr:
        attrs["addr"] = addr
    both = emits[first[0]][first[1]][2]
    emitter = first[0] if first[0] != node else None
    new_emits = {n: list(emits[n]) for n in order if n != node}
    if emitter is None:  # the node emitted both: the earlier neighbour emits the healed link
        emitter = x if order.index(x) < order.index(y) else y
        new_emits[emitter].append((y if emitter == x else x, attrs, both))
    else:
        far = y if emitter == x else x
        new_emits[emitter][first[1]] = (far, attrs, both)
        if second[0] != node:
            del new_emits[second[0]][second[1]]
    order = [n for n in order if n != node]
    return _build(g, order, nodes, new_emits), (x, y)


def with_node(g: nx.Graph, node: str, attrs: Mapping[str, Any]) -> nx.Graph:
    if node in g:
        raise ChainError("a node of that name is already in the chain", node=node)
    h = g.copy()
    h.add_node(node, **dict(attrs))
    return h


def without_node(g: nx.Graph, node: str) -> nx.Graph:
    if node not in g:
        raise ChainError("no such node in the chain", node=node)
    order, emits = _emits(g)
    nodes = {n: dict(g.nodes[n]) for n in order if n != node}
    kept = {u: [e for e in emits[u] if e[0] != node] for u in order if u != node}
    return _build(g, [n for n in order if n != node], nodes, kept)


def with_link(g: nx.Graph, a: str, b: str, attrs: Mapping[str, Any] | None = None) -> nx.Graph:
    """``g`` plus a link ``a``–``b``, last in both nodes' link lists."""
    for n in (a, b):
        if n not in g:
            raise ChainError("no such node in the chain", node=n)
    if g.has_edge(a, b) or g.has_edge(b, a):
        raise ChainError(f"{a!r} and {b!r} are already linked")
    order, emits = _emits(g)
    nodes = {n: dict(g.nodes[n]) for n in order}
    # emitted by the later of the two so it comes last for both
    late, early = (a, b) if order.index(a) > order.index(b) else (b, a)
    emits[late].append((early, dict(attrs or {}), False))
    h = _build(g, order, nodes, emits)
    return h


def without_link(g: nx.Graph, a: str, b: str) -> nx.Graph:
    order, emits = _emits(g)
    owner, i = _find(emits, a, b)
    del emits[owner][i]
    nodes = {n: dict(g.nodes[n]) for n in order}
    return _build(g, order, nodes, emits)


def check_kept(old: ChainPlan, new: ChainPlan, running: Iterable[str],
               renamed: Mapping[tuple[str, str], str] | None = None,
               *, renumbered: Iterable[str] = ()) -> None:
    """Raise ChainError unless every ``running`` node keeps its ports (count, order, MTU,
    and the address unless the node is in ``renumbered``) in ``new``; ``renamed[(node,
    old neighbour)]`` is the neighbour that port leads to now."""
    renamed = dict(renamed or {})
    again = set(renumbered)
    for n in running:
        if n not in new.nodes:
            continue
        before, after = old.nodes[n], new.nodes[n]
        if len(before.spec.ports) > len(after.spec.ports):
            raise ChainError("would lose a port of a running instance", node=n)
        for p_old in before.spec.ports:
            p_new = after.spec.ports[p_old.index]
            if p_old.mtu != p_new.mtu:
                raise ChainError(f"eth{p_old.index}: MTU would change {p_old.mtu} -> {p_new.mtu} "
                                 "(fixed in a running kernel)", node=n)
            if n not in again and p_old.address != p_new.address:
                raise ChainError(f"eth{p_old.index}: address would change {p_old.address} -> "
                                 f"{p_new.address}", node=n)
        for index, nb in before.neighbors.items():
            want = renamed.get((n, nb), nb)
            if want is None:
                continue
            got = after.neighbors.get(index)
            if got != want:
                raise ChainError(f"eth{index} would lead to {got!r} instead of {want!r}: the "
                                 "rewiring would renumber this running instance's ports", node=n)


def node_changes(old: ChainPlan, new: ChainPlan, node: str) -> dict[str, Any]:
    """What differs for a running ``node`` between two plans: addresses per port, routes,
    gateway, /etc/hosts (only the keys that changed)."""
    a, b = old.nodes[node].spec, new.nodes[node].spec
    out: dict[str, Any] = {}
    addrs = {p.index: (p.address, b.ports[p.index].address) for p in a.ports
             if p.index < len(b.ports) and p.address != b.ports[p.index].address}
    if addrs:
        out["addresses"] = addrs
    if a.routes != b.routes:
        out["routes"] = (a.routes, b.routes)
    if a.gateway != b.gateway:
        out["gateway"] = (a.gateway, b.gateway)
    if a.hosts != b.hosts:
        out["hosts"] = b.hosts
    return out
