"""Start order and stop actions declared on a chain graph (a Kathará ``lab.dep``, shutdown scripts).

* ``g.graph["start_after"] = {"pc1": ["pc2", "pc3"]}``: ``pc1`` boots once ``pc2`` and
  ``pc3`` are ready (their set-up, e.g. a Kathará startup script, has finished).
  :func:`start_waves` turns it into waves booted one after the other; nodes of one
  wave boot concurrently.  No attribute: one wave.
* ``g.graph["on_stop"] = {"r1": "shell text"}``: run in ``r1`` before the lab stops it.
"""

from __future__ import annotations

from collections.abc import Mapping

import networkx as nx

from ..errors import ChainError

__all__ = ["start_waves", "stop_actions"]


def start_waves(graph: nx.Graph) -> list[list[str]]:
    """Nodes in boot waves (graph node order inside a wave); ChainError on cycles/unknown nodes."""
    nodes = list(graph.nodes)
    after = graph.graph.get("start_after") or {}
    if not isinstance(after, Mapping):
        raise ChainError(f"graph attribute start_after must map a node to the nodes it starts after, "
                         f"got {after!r}")
    order = nx.DiGraph()
    order.add_nodes_from(nodes)
    for node, deps in after.items():
        if node not in graph:
            raise ChainError("start_after names a node that is not in the graph", node=str(node))
        for dep in [deps] if isinstance(deps, str) else list(deps):
            if dep not in graph:
                raise ChainError(f"start_after: {dep!r} is not a node", node=str(node))
            order.add_edge(dep, node)
    try:
        generations = list(nx.topological_generations(order))
    except nx.NetworkXUnfeasible:
        cycle = nx.find_cycle(order)
        raise ChainError("start_after has a cycle: " + " -> ".join([cycle[0][0], *(v for _, v in cycle)])
                         ) from None
    rank = {n: i for i, n in enumerate(nodes)}
    return [sorted(gen, key=rank.__getitem__) for gen in generations]


def stop_actions(graph: nx.Graph) -> dict[str, str]:
    """``{node: shell text}`` to run before stopping (``g.graph["on_stop"]``)."""
    actions = graph.graph.get("on_stop") or {}
    if not isinstance(actions, Mapping) or not all(
            n in graph and isinstance(t, str) for n, t in actions.items()):
        raise ChainError(f"graph attribute on_stop must map nodes to shell text, got {actions!r}")
    return dict(actions)
