"""The ``lb`` kind: a layer-4 load balancer with IPVS (``ipvsadm``) in masquerading mode."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from typing import Any

from .addressing import Port
from .kinds import KindContext, NFKind, Param, one_of, sh, str_list

__all__ = ["LoadBalancer"]

IPv4Address = ipaddress.IPv4Address
IPv4Network = ipaddress.IPv4Network
_SCHEDULERS = ("rr", "wrr", "lc", "wlc", "sh", "dh", "sed", "nq")


class LoadBalancer(NFKind):
    """Layer-4 load balancer: IPVS in masquerading (NAT) mode, ``ipvsadm``.

    One TCP (or UDP) connection stays on one backend (IPVS keeps a connection
    table); routing makes the backends' replies to the clients go back through
    the LB, as masquerading mode needs.  The node's name resolves to the VIP.

    Parameters:
        backends: node names of the real servers (required, non-empty, each
            reachable from the LB and not on the clients' side).
        port: the service port on the VIP and on the backends (default 80).
        proto: ``"tcp"`` (default) or ``"udp"``.
        scheduler: IPVS scheduler: ``rr`` (default), ``wrr``, ``lc``, ``wlc``,
            ``sh`` (source hash: one client, one backend), ``dh``, ``sed``, ``nq``.
        weights: ``{backend: weight}`` for ``wrr``/``wlc`` (default 1 each).
        persistent: seconds a client sticks to its backend (``ipvsadm -p``).
        front: neighbour(s) toward the clients; default: every port that is not
            the first hop toward a backend.
        vip: the virtual address; default: the LB's address on its first front
            port.  Another address in a front port's subnet is added to that port.
    """

    name = "lb"
    min_ports = 1
    params = {
        "backends": Param(
            None, "node names of the real servers", required=True, validator=str_list
        ),
        "port": Param(80, "service port", type=int),
        "proto": Param("tcp", "tcp or udp", validator=one_of("tcp", "udp")),
        "scheduler": Param("rr", "IPVS scheduler", validator=one_of(*_SCHEDULERS)),
        "weights": Param(None, "{backend: weight}", type=dict),
        "persistent": Param(None, "seconds a client sticks to a backend", type=int),
        "front": Param(None, "neighbour(s) toward the clients", validator=str_list),
        "vip": Param(None, "virtual IP (default: address on the first front port)", type=str),
    }

    def _backend_ports(self, ctx: KindContext) -> dict[str, Port]:
        found: dict[str, Port] = {}
        for b in ctx.params["backends"]:
            port = ctx.first_port(b)
            if port is None:
                raise ctx.error(f"backend {b!r} is not reachable from the load balancer")
            found[b] = port
        return found

    def _front_ports(self, ctx: KindContext) -> list[Port]:
        back = self._backend_ports(ctx)
        if ctx.params["front"]:
            front = [ctx.neighbour_port(n, "front") for n in ctx.params["front"]]
            for b, port in back.items():
                if port in front:
                    raise ctx.error(
                        f"backend {b!r} is reached through front port {port.device}: "
                        "masquerading mode needs the backends behind the LB"
                    )
            return front
        used = {p.index for p in back.values()}
        front = [p for p in ctx.ports if p.index not in used and p.address is not None]
        if not front:
            raise ctx.error("no port toward clients: every port leads to a backend (give front=)")
        return front

    def validate(self, ctx: KindContext) -> None:
        backends = ctx.params["backends"]
        if not backends:
            raise ctx.error("lb needs at least one backend (backends=[node names])")
        for b in backends:
            ctx.check_node(b, "backend")
            if b == ctx.name:
                raise ctx.error("the load balancer cannot be its own backend")
            if backends.count(b) > 1:
                raise ctx.error(f"backend {b!r} is listed twice")
            if not ctx.addresses(b):
                raise ctx.error(f"backend {b!r} has no address (a bridge, or a node without links)")
        for b, weight in (ctx.params["weights"] or {}).items():
            if b not in backends:
                raise ctx.error(f"weights names {b!r}, which is not a backend")
            if isinstance(weight, bool) or not isinstance(weight, int) or weight < 0:
                raise ctx.error(f"weight of {b!r} must be an integer >= 0, got {weight!r}")
        if not 1 <= ctx.params["port"] <= 65535:
            raise ctx.error(f"port {ctx.params['port']} outside 1..65535")
        front = self._front_ports(ctx)
        if ctx.params["vip"] is not None:
            self._vip_port(ctx, front)

    def _vip_port(self, ctx: KindContext, front: Sequence[Port]) -> tuple[IPv4Address, Port]:
        text = ctx.params["vip"]
        if text is None:
            assert front[0].address is not None
            return front[0].address.ip, front[0]
        try:
            vip = IPv4Address(text)
        except ValueError:
            raise ctx.error(f"vip {text!r} is not an IPv4 address") from None
        for port in front:
            if port.address is not None and vip in port.address.network:
                return vip, port
        raise ctx.error(f"vip {vip} is in no front port's subnet")

    def derive(self, ctx: KindContext) -> Mapping[str, Any]:
        return (
            {}
            if ctx.params["vip"]
            else {"vip": str(self._vip_port(ctx, self._front_ports(ctx))[0])}
        )

    def address(self, ctx: KindContext) -> IPv4Address | None:
        return self._vip_port(ctx, self._front_ports(ctx))[0]

    def reply_routes(self, ctx: KindContext) -> Mapping[str, Sequence[IPv4Network]]:
        clients = ctx.subnets_beyond(self._front_ports(ctx))
        return {b: clients for b in ctx.params["backends"]}

    def _real_server(self, ctx: KindContext, backend: str) -> IPv4Address:
        seg = ctx.l3.first_segment(backend, ("n", ctx.name))
        addr = ctx.addressing.address_on(backend, seg) if seg is not None else None
        return addr or ctx.addresses(backend)[0]

    def setup(self, ctx: KindContext) -> str:
        vip, port = self._vip_port(ctx, self._front_ports(ctx))
        assert port.address is not None
        p = ctx.params
        flag = "-t" if p["proto"] == "tcp" else "-u"
        service = f"{vip}:{p['port']}"
        lines = [f"# lb: IPVS {p['proto']} {service}, scheduler {p['scheduler']}, masquerading"]
        if vip != port.address.ip:
            lines.append(
                sh(
                    "ip",
                    "addr",
                    "add",
                    f"{vip}/{port.address.network.prefixlen}",
                    "dev",
                    port.device,
                )
            )
        persist = ["-p", str(p["persistent"])] if p["persistent"] else []
        lines.append(sh("ipvsadm", "-A", flag, service, "-s", p["scheduler"], *persist))
        for b in p["backends"]:
            weight = (p["weights"] or {}).get(b)
            lines.append(
                sh(
                    "ipvsadm",
                    "-a",
                    flag,
                    service,
                    "-r",
                    f"{self._real_server(ctx, b)}:{p['port']}",
                    "-m",
                    *(["-w", str(weight)] if weight is not None else []),
                )
            )
        lines.append("echo 1 > /proc/sys/net/ipv4/vs/conntrack 2>/dev/null || true")
        return "\n".join(lines) + "\n"
