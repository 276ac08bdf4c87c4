"""Helpers that build common graphs, and the `stdpkt run` pipeline of a linear chain."""

from __future__ import annotations

import shlex
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import networkx as nx

from ..errors import ChainError

if TYPE_CHECKING:
    from .plan import ChainPlan

__all__ = ["chain", "linear_order", "shell_pipeline"]


def chain(
    *names: str,
    kinds: Mapping[str, Any] | None = None,
    params: Mapping[str, Mapping[str, Any]] | None = None,
    links: Mapping[tuple[str, str], Mapping[str, Any]] | None = None,
    directed: bool = False,
) -> nx.Graph:
    """A linear chain ``names[0] — names[1] — …`` as a networkx graph.

    ``kinds`` maps names to kinds (default: ``host`` at both ends, ``router``
    in between); ``params`` maps names to their parameters; ``links`` maps a
    pair of neighbours to edge attributes (``subnet``, ``mtu``, ``addr``).
    ``directed=True`` returns a DiGraph pointing down the chain.
    """
    if not names:
        raise ChainError("chain() needs at least one node name")
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise ChainError("appears twice in the chain", node=dup)
    kinds, params, links = dict(kinds or {}), dict(params or {}), dict(links or {})
    for what, mapping in (("kinds", kinds), ("params", params)):
        for key in mapping:
            if key not in names:
                raise ChainError(f"chain(): {what} names {key!r}, which is not in the chain")
    g: nx.Graph = nx.DiGraph() if directed else nx.Graph()
    last = len(names) - 1
    for i, name in enumerate(names):
        default = "host" if i in (0, last) else "router"
        g.add_node(name, kind=kinds.get(name, default), **dict(params.get(name, {})))
    pairs = list(zip(names, names[1:], strict=False))
    for a, b in pairs:
        g.add_edge(a, b, **dict(links.get((a, b)) or links.get((b, a)) or {}))
    for a, b in links:
        if (a, b) not in pairs and (b, a) not in pairs:
            raise ChainError(
                f"chain(): links names {a!r}–{b!r}, which are not neighbours in the chain"
            )
    return g


def linear_order(graph: nx.Graph) -> list[str]:
    """The nodes of a linear chain from one end to the other; ChainError for any other shape."""
    und = graph.to_undirected(as_view=True) if graph.is_directed() else graph
    if und.number_of_nodes() == 0:
        raise ChainError("the graph is empty")
    for node in und.nodes:
        if und.degree(node) > 2:
            raise ChainError(
                f"not a linear chain: it has {und.degree(node)} links "
                "(a shell pipeline needs every node to have at most 2)",
                node=node,
            )
    if not nx.is_connected(und):
        raise ChainError("not a linear chain: the graph is not connected")
    if und.number_of_edges() != und.number_of_nodes() - 1:
        raise ChainError("not a linear chain: the graph has a cycle")
    ends = [n for n in und.nodes if und.degree(n) <= 1]
    start = ends[0]
    if graph.is_directed():
        sources = [n for n in ends if graph.in_degree(n) == 0]
        start = sources[0] if sources else start
    order = [start]
    while len(order) < und.number_of_nodes():
        order.append(next(n for n in und.neighbors(order[-1]) if n not in order))
    return order


def _node_script(plan: ChainPlan, name: str) -> str:
    spec = plan.nodes[name].spec
    lines = [f"# {name}: {plan.nodes[name].kind.name}"]
    lines += [f"export {k}={shlex.quote(v)}" for k, v in spec.env.items()]
    if spec.hosts:
        lines += [
            f"printf '%s' {shlex.quote(spec.hosts)} > /run/stdpkt/hosts",
            "mount --bind /run/stdpkt/hosts /etc/hosts",
        ]
    lines += [f"ip route add {r}" for r in spec.routes]
    text = "\n".join(lines) + "\n" + (spec.setup or "")
    end = "STDPKT_END"
    while end in text.splitlines():
        end += "_"
    return f"cat > {name}.sh <<'{end}'\n{text}{end}\n"


def shell_pipeline(plan: ChainPlan) -> str:
    """A bash script running the chain as a `stdpkt run` pipeline, as in the paper.

    stdin/stdout carry frames from the first node toward the last, named pipes
    ``p1, p2, …`` carry the other direction.  Each stage runs a script holding
    its /etc/hosts, routes and kind set-up; stop the pipeline with Ctrl-C.
    """
    order = linear_order(plan.graph)
    fifos = [f"p{i}" for i in range(1, len(order))]
    out = [
        "#!/bin/bash",
        f"# The chain {' | '.join(order)} as a `stdpkt run` pipeline: stdin/stdout carry",
        "# frames down the chain, the named pipes p1, p2, ... carry them back. Ctrl-C stops it.",
        "set -u",
        "STDPKT=${STDPKT:-stdpkt}",
        "work=$(mktemp -d)",
        "trap 'rm -rf \"$work\"' EXIT",
        'cd "$work"',
    ]
    if fifos:
        out.append("mkfifo " + " ".join(fifos))
    out += [_node_script(plan, name).rstrip("\n") for name in order]
    stages = []
    for i, name in enumerate(order):
        node = plan.nodes[name]
        env: list[tuple[str, str]] = []
        if i > 0:
            env.append((f"IF{node.port_of(order[i - 1])}", f"/dev/stdin|{fifos[i - 1]}"))
        if i < len(order) - 1:
            env.append((f"IF{node.port_of(order[i + 1])}", f"{fifos[i]}|/dev/stdout"))
        env.sort()
        for port in node.spec.ports:
            if port.address is not None:
                env += [
                    (f"IP{port.index}", str(port.address.ip)),
                    (f"NETMASK{port.index}", str(port.address.network.prefixlen)),
                ]
            if port.mtu != 1500:
                env.append((f"MTU{port.index}", str(port.mtu)))
        if node.spec.gateway is not None:
            env.append(("GATEWAY", str(node.spec.gateway)))
        words = [f"{k}={shlex.quote(v)}" for k, v in env]
        mem = [] if node.spec.mem_mb == 128 else ["--mem", str(node.spec.mem_mb)]
        cmd = [
            "$STDPKT",
            "run",
            *mem,
            "--name",
            shlex.quote(name),
            "--prefix",
            shlex.quote(f"{name}.sh"),
        ]
        stages.append(" ".join(words) + " \\\n    " + " ".join(cmd))
    out.append(" \\\n| ".join(stages))
    return "\n".join(out) + "\n"
