"""The small rule syntax of ``firewall`` allow/deny lists and ``nat`` port forwards.

Firewall rule (one string)::

    RULE   := MATCH [ "from" PEERS ] [ "to" PEERS ]
    MATCH  := "any" | PROTO [ "/" PORTS ]
    PROTO  := "tcp" | "udp" | "icmp"
    PORTS  := PORT | PORT "-" PORT | PORTS "," PORTS         (tcp, udp)
            | ICMP-TYPE                                       (icmp: "echo-request", "8")
    PEERS  := PEER [ "," PEER ]...
    PEER   := node name (all its addresses) | 10.0.0.2 | 10.0.0.0/24

Examples: ``"tcp/80"``, ``"udp/53"``, ``"icmp"``, ``"icmp/echo-request"``,
``"tcp/1000-2000"``, ``"tcp/80,443"``, ``"tcp/22 from client"``,
``"any from 10.0.0.0/24 to server"``.  Port numbers are destination ports.

Port forward (``nat`` ``forward=``)::

    FORWARD := PROTO "/" PORT[-PORT] "->" TARGET [ ":" PORT[-PORT] ]
    TARGET  := node name | IPv4 address

``"tcp/8080->server:80"``; ``"tcp/80->server"`` keeps the port.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass

from .kinds import suggest

__all__ = ["Rule", "Forward", "parse_rule", "parse_forward", "resolve_peer"]

_PROTOS = ("tcp", "udp", "icmp")
# re.ASCII: \d would also take other scripts' digits ("icmp/١" passed the check and
# reached iptables as --icmp-type ١)
_PORT_ITEM = re.compile(r"^(\d{1,5})(?:-(\d{1,5}))?$", re.ASCII)
_ICMP_TYPE = re.compile(r"^(?:[a-z][a-z-]*|\d{1,3}(?:/\d{1,3})?)$", re.ASCII)
_FORWARD = re.compile(r"^(tcp|udp)/([0-9-]+)\s*->\s*([A-Za-z0-9_.-]+?)(?::([0-9-]+))?$")

#: peer text → address strings (raise ValueError naming the problem)
Resolver = Callable[[str], list[str]]


@dataclass(frozen=True)
class Rule:
    """A parsed firewall rule; :meth:`args` gives the iptables match arguments."""

    proto: str | None
    ports: tuple[str, ...] = ()  # iptables port items: "80", "1000:2000"
    icmp_type: str | None = None
    sources: tuple[str, ...] = ()
    destinations: tuple[str, ...] = ()

    def args(self, resolve: Resolver) -> list[str]:
        out: list[str] = []
        if self.proto:
            out += ["-p", self.proto]
        if len(self.ports) == 1 and "," not in self.ports[0]:
            out += ["--dport", self.ports[0]]
        elif self.ports:
            out += ["-m", "multiport", "--dports", ",".join(self.ports)]
        if self.icmp_type:
            out += ["--icmp-type", self.icmp_type]
        for flag, peers in (("-s", self.sources), ("-d", self.destinations)):
            if peers:
                out += [flag, ",".join(a for p in peers for a in resolve(p))]
        return out


def _port(text: str) -> int:
    number = int(text)
    if not 1 <= number <= 65535:
        raise ValueError(f"port {number} outside 1..65535")
    return number


def _port_items(text: str) -> tuple[str, ...]:
    items = []
    for item in text.split(","):
        m = _PORT_ITEM.match(item.strip())
        if not m:
            raise ValueError(f"{item!r} is not a port or a range like 1000-2000")
        lo = _port(m.group(1))
        if m.group(2):
            hi = _port(m.group(2))
            if hi < lo:
                raise ValueError(f"port range {item!r} runs backwards")
            items.append(f"{lo}:{hi}")
        else:
            items.append(str(lo))
    if len(items) > 15:
        raise ValueError("at most 15 ports or ranges in one rule (iptables multiport)")
    return tuple(items)


def parse_rule(text: str) -> Rule:
    """Parse one firewall rule; ``ValueError`` says what is wrong."""
    if not isinstance(text, str):
        raise ValueError(f"a rule is a string like 'tcp/80', got {text!r}")
    words = text.split()
    if not words:
        raise ValueError("empty rule")
    head, rest = words[0].lower(), words[1:]
    proto, _, spec = head.partition("/")
    if proto in ("any", "all"):
        if spec:
            raise ValueError(f"'{proto}' takes no ports; write tcp/{spec} or udp/{spec}")
        rule = Rule(None)
    elif proto not in _PROTOS:
        raise ValueError(f"{proto!r} is not tcp, udp, icmp or any")
    elif proto == "icmp":
        if spec and not _ICMP_TYPE.match(spec):
            raise ValueError(f"{spec!r} is not an ICMP type (e.g. echo-request, 8)")
        rule = Rule("icmp", icmp_type=spec or None)
    else:
        if "/" in head and not spec:
            raise ValueError(f"{text!r}: no port after '/'")
        rule = Rule(proto, ports=_port_items(spec) if spec else ())
    sources: list[str] = []
    destinations: list[str] = []
    while rest:
        if len(rest) < 2 or rest[0].lower() not in ("from", "to"):
            raise ValueError(
                f"expected 'from PEER' or 'to PEER' after {words[0]!r}, got {' '.join(rest)!r}"
            )
        target = sources if rest[0].lower() == "from" else destinations
        target += [p for p in rest[1].split(",") if p]
        rest = rest[2:]
    return Rule(rule.proto, rule.ports, rule.icmp_type, tuple(sources), tuple(destinations))


@dataclass(frozen=True)
class Forward:
    """A DNAT port forward: ``proto`` ``ports`` arriving → ``target`` (``to_ports``)."""

    proto: str
    ports: str  # iptables form "8080" or "8000:8010"
    target: str
    to_ports: str | None  # DNAT form "80" or "8000-8010"


def parse_forward(text: str) -> Forward:
    """Parse ``"tcp/8080->server:80"``; ``ValueError`` says what is wrong."""
    m = _FORWARD.match(text.strip()) if isinstance(text, str) else None
    if not m:
        raise ValueError(f"{text!r} is not like 'tcp/8080->server:80' or 'udp/53->10.0.1.5'")
    proto, ports, target, to_ports = m.groups()
    items = _port_items(ports)
    if len(items) != 1:
        raise ValueError(f"{text!r}: forward one port or one range")
    if to_ports is not None:
        to_items = _port_items(to_ports)
        if len(to_items) != 1:
            raise ValueError(f"{text!r}: forward to one port or one range")
        to_ports = to_items[0].replace(":", "-")
    return Forward(proto, items[0], target, to_ports)


def resolve_peer(
    text: str, addresses: Callable[[str], list[str] | None], known: list[str]
) -> list[str]:
    """A node name (its addresses), an address or a network → iptables address strings."""
    found = addresses(text)
    if found is not None:
        if not found:
            raise ValueError(f"{text!r} has no address (a bridge?)")
        return found
    try:
        return (
            [str(ipaddress.IPv4Network(text, strict=False))]
            if "/" in text
            else [str(ipaddress.IPv4Address(text))]
        )
    except ValueError:
        raise ValueError(
            f"{text!r} is neither a node nor an IPv4 address/network{suggest(text, known)}"
        ) from None
