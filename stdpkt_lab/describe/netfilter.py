"""NF kinds built on netfilter (iptables-legacy in the guest): ``nat`` and ``firewall``."""

from __future__ import annotations

import ipaddress
import shlex
from collections.abc import Callable, Mapping
from typing import Any

from .kinds import KindContext, NFKind, Param, sh, str_list
from .rules import parse_forward, parse_rule, resolve_peer

__all__ = ["Nat", "Firewall"]

IPv4Address = ipaddress.IPv4Address


def _addresses_of(ctx: KindContext) -> Callable[[str], list[str] | None]:
    return lambda text: [str(a) for a in ctx.addresses(text)] if ctx.is_node(text) else None


class Nat(NFKind):
    """Source NAT (masquerade or SNAT) out of one port, plus DNAT port forwards in through it.

    Parameters:
        outside: the neighbour on the outside; default: the neighbour on the
            NAT's last port (its last link, i.e. further down a chain).
        snat: translate to this address (``-j SNAT``) instead of masquerading;
            it must lie in the outside port's subnet (added to the port if new).
        forward: port forwards arriving on the outside port:
            ``["tcp/8080->server:80", "udp/53->10.0.1.5"]`` (target: a node
            name or an address; no ``:PORT`` keeps the port).
    """

    name = "nat"
    min_ports = 2
    params = {
        "outside": Param(
            None, "neighbour on the outside (default: the last port's neighbour)", type=str
        ),
        "snat": Param(None, "SNAT to this address instead of masquerading", type=str),
        "forward": Param(None, "DNAT port forwards 'tcp/8080->server:80'", validator=str_list),
    }

    def derive(self, ctx: KindContext) -> Mapping[str, Any]:
        return {"outside": ctx.ports[-1].neighbour} if ctx.params["outside"] is None else {}

    def validate(self, ctx: KindContext) -> None:
        if ctx.params["outside"] is not None:
            ctx.neighbour_port(ctx.params["outside"], "outside")
        if ctx.params["snat"] is not None:
            try:
                IPv4Address(ctx.params["snat"])
            except ValueError:
                raise ctx.error(f"snat {ctx.params['snat']!r} is not an IPv4 address") from None
        for item in ctx.params["forward"] or []:
            try:
                target = parse_forward(item).target
                resolve_peer(target, _addresses_of(ctx), list(ctx.kinds))
            except ValueError as exc:
                raise ctx.error(f"forward {item!r}: {exc}") from None

    def setup(self, ctx: KindContext) -> str:
        out = ctx.neighbour_port(ctx.params["outside"], "outside")
        assert out.address is not None
        lines = [f"# nat: translate what leaves {out.device} (toward {ctx.params['outside']})"]
        if ctx.params["snat"] is None:
            lines.append(
                sh(
                    "iptables",
                    "-t",
                    "nat",
                    "-A",
                    "POSTROUTING",
                    "-o",
                    out.device,
                    "-j",
                    "MASQUERADE",
                )
            )
        else:
            snat = IPv4Address(ctx.params["snat"])
            if snat not in out.address.network:
                raise ctx.error(
                    f"snat {snat} is outside the outside port's subnet {out.address.network}"
                )
            if snat != out.address.ip:
                lines.append(
                    sh(
                        "ip",
                        "addr",
                        "add",
                        f"{snat}/{out.address.network.prefixlen}",
                        "dev",
                        out.device,
                    )
                )
            lines.append(
                sh(
                    "iptables",
                    "-t",
                    "nat",
                    "-A",
                    "POSTROUTING",
                    "-o",
                    out.device,
                    "-j",
                    "SNAT",
                    "--to-source",
                    snat,
                )
            )
        for item in ctx.params["forward"] or []:
            fwd = parse_forward(item)
            ip = ctx.address(fwd.target) if ctx.is_node(fwd.target) else IPv4Address(fwd.target)
            dest = f"{ip}:{fwd.to_ports}" if fwd.to_ports else str(ip)
            lines.append(
                sh(
                    "iptables",
                    "-t",
                    "nat",
                    "-A",
                    "PREROUTING",
                    "-i",
                    out.device,
                    "-p",
                    fwd.proto,
                    "--dport",
                    fwd.ports,
                    "-j",
                    "DNAT",
                    "--to-destination",
                    dest,
                )
            )
        return "\n".join(lines) + "\n"


class Firewall(NFKind):
    """Stateful firewall on the FORWARD path (iptables-legacy).

    Replies of accepted flows pass (``ESTABLISHED,RELATED``); a new flow
    passes only if an ``allow`` rule matches and no ``deny`` rule does
    (deny rules are checked first); everything else is dropped (policy DROP).

    Parameters:
        allow: rules for new flows to accept: ``["tcp/80", "udp/53", "icmp",
            "tcp/1000-2000", "tcp/80,443", "tcp/22 from client",
            "any from 10.0.0.0/24 to server"]``.  Syntax:
            ``PROTO[/PORTS] [from PEERS] [to PEERS]`` with PROTO ``tcp``,
            ``udp``, ``icmp`` (``icmp/echo-request``) or ``any``; PORTS
            destination ports, ranges ``a-b``, lists ``a,b``; PEERS node names
            (all their addresses), addresses or networks, comma-separated.
        deny: rules in the same syntax whose new flows are dropped before any allow.
        rules: raw ``iptables`` argument strings appended last, for experts:
            ``["-A FORWARD -p tcp --dport 22 -j ACCEPT"]``.
    """

    name = "firewall"
    min_ports = 2
    params = {
        "allow": Param(
            None,
            "rules for new flows to accept ('tcp/80', 'icmp', 'tcp/22 from client')",
            validator=str_list,
        ),
        "deny": Param(
            None, "rules for new flows to drop, checked before allow", validator=str_list
        ),
        "rules": Param(None, "raw iptables argument strings, appended last", validator=str_list),
    }

    def _compiled(self, ctx: KindContext, key: str) -> list[list[str]]:
        out = []
        for item in ctx.params[key] or []:
            try:
                rule = parse_rule(item)
                out.append(
                    rule.args(lambda p: resolve_peer(p, _addresses_of(ctx), list(ctx.kinds)))
                )
            except ValueError as exc:
                raise ctx.error(f"{key} rule {item!r}: {exc}") from None
        return out

    def _raw(self, ctx: KindContext) -> list[list[str]]:
        out = []
        for item in ctx.params["rules"] or []:
            try:
                words = shlex.split(item)
            except ValueError as exc:
                raise ctx.error(f"raw rule {item!r}: {exc}") from None
            if words[:1] in (["iptables"], ["iptables-legacy"]):
                words = words[1:]
            if not words:
                raise ctx.error("raw rule is empty")
            out.append(words)
        return out

    def validate(self, ctx: KindContext) -> None:
        self._compiled(ctx, "allow")
        self._compiled(ctx, "deny")
        self._raw(ctx)

    def setup(self, ctx: KindContext) -> str:
        new = ["-m", "conntrack", "--ctstate", "NEW"]
        lines = [
            "# firewall: stateful; new flows need an allow rule",
            sh("iptables", "-P", "FORWARD", "DROP"),
            sh(
                "iptables",
                "-A",
                "FORWARD",
                "-m",
                "conntrack",
                "--ctstate",
                "ESTABLISHED,RELATED",
                "-j",
                "ACCEPT",
            ),
        ]
        lines += [
            sh("iptables", "-A", "FORWARD", *m, *new, "-j", "DROP")
            for m in self._compiled(ctx, "deny")
        ]
        lines += [
            sh("iptables", "-A", "FORWARD", *m, *new, "-j", "ACCEPT")
            for m in self._compiled(ctx, "allow")
        ]
        lines += [sh("iptables", *words) for words in self._raw(ctx)]
        return "\n".join(lines) + "\n"
