"""The notebook face of one instance: a compact HTML table (``Instance._repr_html_``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..htmltable import Cell, html_table

if TYPE_CHECKING:
    from .instance import Instance

__all__ = ["instance_html", "STATE_COLOURS"]

#: the dashboard's colours for instance states, as text colours
STATE_COLOURS = {"running": "#2a9d3c", "booting": "#d08c00", "failed": "#c0392b",
                 "exited": "#777", "stopped": "#777", "created": "#777"}


def port_text(instance: Instance) -> list[str]:
    """``"eth0 10.0.0.1/24"`` per port (``mtu`` when not 1500, ``tap:NAME`` for taps)."""
    out = []
    for port in instance.spec.ports:
        text = port.device + (f" {port.address}" if port.address is not None else "")
        if port.mtu != 1500:
            text += f" mtu {port.mtu}"
        if port.tap:
            text += f" tap:{port.tap}"
        out.append(text)
    return out


def instance_html(instance: Instance) -> str:
    state = instance.state.value
    boot = f"{instance.boot_seconds * 1e3:.0f} ms" if instance.boot_seconds is not None else ""
    row = [instance.name, Cell(state, colour=STATE_COLOURS.get(state, "")),
           instance.pid or "", "; ".join(port_text(instance)) or "(no ports)",
           "on" if instance.spec.ipv6 else "off", boot]
    return html_table(("instance", "state", "pid", "ports", "IPv6", "boot"), [row],
                      css_class="stdpkt-instance")
