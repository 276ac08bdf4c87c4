"""The notebook face of a lab: nodes with kind, state and addresses, and its links."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .engine.instance_view import STATE_COLOURS
from .htmltable import Cell, html_table

if TYPE_CHECKING:
    from .lab import Lab

__all__ = ["lab_html"]


def lab_html(lab: Lab) -> str:
    """A table of nodes (kind, instance state, each port's address and neighbour) and a
    line of links."""
    rows = []
    instances = lab.instances
    for name, node in lab.plan.nodes.items():
        instance = instances.get(name)
        state = instance.state.value if instance is not None else lab.state.value
        if lab.state.value == "stopped" and state == "running":
            state = "stopped"
        ports = []
        for port in node.spec.ports:
            peer = node.neighbors.get(port.index, "")
            addr = f" {port.address}" if port.address is not None else ""
            ports.append(f"{port.device}{addr} → {peer}" if peer else f"{port.device}{addr}")
        rows.append([name, node.kind.name, Cell(state, colour=STATE_COLOURS.get(state, "")),
                     "; ".join(ports) or "(none)", "on" if node.spec.ipv6 else "off"])
    links = ", ".join(f"{lp.a} ⟷ {lp.b} ({lp.subnet})" for lp in lab.plan.links)
    return html_table(("node", "kind", "state", "ports (address → neighbour)", "IPv6"), rows,
                      title=f"Lab: {len(rows)} nodes, {lab.state.value}", note=f"links: {links}",
                      css_class="stdpkt-lab")
