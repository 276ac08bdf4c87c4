"""``frr``: a router running the host's FRRouting daemons (zebra, ospfd, bgpd, ripd, ...).

::

    g.add_node("r1", kind="frr", ospf=True)            # OSPF area 0 on every attached subnet
    g.add_node("r2", kind="frr", config=FRR_CONF_TEXT)  # your own frr.conf

The instance gets a writable root (:mod:`~stdpkt_lab.describe.guestfs`), so
``/etc/frr``, ``/var/run/frr``, ``/var/log/frr`` and ``/var/tmp`` are writable; its
``/etc/frr/daemons`` turns on the daemons the configuration needs, and ``systemctl
start frr`` (the ``systemctl`` shim, lkl/guest-bin/stdpkt-service) starts them.
``lab.exec("r1", "vtysh -c 'show ip ospf neighbor'")`` works.  With ``ospf=True`` the
static routes derived from the graph are removed before the daemons start (OSPF is to
learn them); ``keep_static=True`` keeps them.
"""

from __future__ import annotations

import re
from typing import Any

from .guestfs import heredoc, service_shims, writable_root
from .kinds import KindContext, NFKind, Param

__all__ = ["Frr", "DAEMONS"]

#: FRR daemons /etc/frr/daemons knows, and the config words that need each.
DAEMONS: dict[str, str] = {
    "bgpd": r"^\s*router bgp\b",
    "ospfd": r"^\s*router ospf\b(?!6)",
    "ospf6d": r"^\s*router ospf6\b",
    "ripd": r"^\s*router rip\b(?!ng)",
    "ripngd": r"^\s*router ripng\b",
    "isisd": r"^\s*router isis\b",
    "bfdd": r"^\s*bfd\b",
}


def _daemons_file(needed: set[str]) -> str:
    lines = [f"{d}={'yes' if d in needed else 'no'}" for d in DAEMONS]
    lines += [
        "vtysh_enable=yes",
        'zebra_options="  -A 127.0.0.1 -s 90000000"',
        *(f'{d}_options="  -A 127.0.0.1"' for d in ("bgpd", "ospfd", "ripd", "isisd", "staticd", "bfdd")),
        'ospf6d_options=" -A ::1"',
        'ripngd_options=" -A ::1"',
    ]
    return "\n".join(lines) + "\n"


class Frr(NFKind):
    """IPv4 router whose routes come from FRR (zebra + ospfd/bgpd/ripd/... as configured).

    Parameters:
        ospf: True: generate an frr.conf running OSPF area 0 on every attached subnet.
        config: frr.conf text instead (``router ospf``/``router bgp``/... turn on the
            matching daemons).
        router_id: OSPF router id (default: the node's address).
        keep_static: keep the graph's derived static routes (default: only when neither
            ospf nor a config with a routing protocol is given).
        passive: interfaces (``eth1``) or neighbour names OSPF must not speak on.
    """

    name = "frr"
    min_ports = 1
    mem_mb = 160
    params = {
        "ospf": Param(False, "OSPF area 0 on every attached subnet", type=bool),
        "config": Param(None, "frr.conf text", type=str),
        "router_id": Param(None, "OSPF router id", type=str),
        "keep_static": Param(None, "keep the derived static routes", type=bool),
        "passive": Param(None, "interfaces or neighbours OSPF stays passive on", type=list),
    }

    def validate(self, ctx: KindContext) -> None:
        if ctx.params["ospf"] and ctx.params["config"] is not None:
            raise ctx.error("give ospf=True or config=..., not both")

    def config_text(self, ctx: KindContext) -> str:
        if ctx.params["config"] is not None:
            return str(ctx.params["config"])
        lines = [f"hostname {ctx.name}", "log file /var/log/frr/frr.log", "!"]
        if ctx.params["ospf"]:
            # interfaces first: their timers must hold before OSPF starts on them (else the
            # 40 s default wait timer runs); a direct link to one router is point-to-point
            # (no DR election, adjacency in about a second)
            for port in ctx.ports:
                if port.address is None:
                    continue
                lines += [f"interface {port.device}", " ip ospf hello-interval 1",
                          " ip ospf dead-interval 4"]
                if not ctx.kinds[port.neighbour].transparent:
                    lines.append(" ip ospf network point-to-point")
                lines.append("!")
            rid = ctx.params["router_id"] or (str(ctx.address(ctx.name) or ""))
            lines.append("router ospf")
            if rid:
                lines.append(f" ospf router-id {rid}")
            passive = set(ctx.params["passive"] or [])
            for port in ctx.ports:
                if port.address is None:
                    continue
                lines.append(f" network {port.address.network} area 0")
                if port.device in passive or port.neighbour in passive:
                    lines.append(f" passive-interface {port.device}")
            lines.append("!")
        return "\n".join(lines) + "\n"

    def setup(self, ctx: KindContext) -> str:
        conf = self.config_text(ctx)
        needed = {d for d, pattern in DAEMONS.items() if re.search(pattern, conf, re.M)}
        keep: Any = ctx.params["keep_static"]
        if keep is None:
            keep = not needed
        out = [f"# frr router {ctx.name}: daemons zebra staticd {' '.join(sorted(needed))}\n",
               writable_root(), service_shims(),
               "mkdir -p /etc/frr /var/log/frr /var/tmp/frr /run/frr\n",
               heredoc("/etc/frr/frr.conf", conf),
               heredoc("/etc/frr/daemons", _daemons_file(needed)),
               heredoc("/etc/frr/vtysh.conf", "service integrated-vtysh-config\n"),
               "chown -R frr:frr /etc/frr /var/log/frr /var/tmp/frr /run/frr; chmod 640 /etc/frr/*\n"]
        if not keep:
            out.append("ip route flush proto boot 2>/dev/null\n")
        out.append("systemctl start frr >/var/log/frr/start.log 2>&1 || "
                   f"echo '@@STDPKT WARN {ctx.name}: FRR did not start (see /var/log/frr/start.log)'\n")
        return "".join(out)
