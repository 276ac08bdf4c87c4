"""Ports, L2 segments and IPv4 addresses, derived from the list of links.

Rules (what a user can rely on):

* **Ports.** A node's ports are numbered ``eth0, eth1, ...`` in link order
  (the order of ``graph.edges()``): its first link is ``eth0``.
* **Segments.** Every link is one L2 segment, except that a *transparent*
  node (a ``bridge``) joins all its links into one segment, so the links on
  both sides of a bridge share one subnet.  Segments are numbered by their
  first link.
* **Subnets.** Segment ``k`` gets the ``k``-th ``/24`` of ``10.0.0.0/16``
  (``10.0.k.0/24``) unless one of its links says ``subnet="192.168.1.0/24"``
  or an explicit address implies one; an automatic subnet never overlaps an
  explicit one (it moves to the next free block instead).
* **Addresses.** On each segment the forwarding nodes (routers, NATs, ...)
  come first, then end systems, each group in link order; they get ``.1``,
  ``.2``, ... of the subnet, skipping explicit addresses.  An edge attribute
  ``addr={"client": "10.0.0.9"}`` (or ``"10.0.0.9/24"``) fixes the address of
  that end of that link; two equal addresses on a segment are an error naming
  both nodes.
* **MTU.** ``mtu=`` on an edge sets both ends' MTU (default 1500).
* **Interface numbers and MACs.** ``ports={"r1": 2}`` on an edge makes that
  end ``eth2`` of ``r1`` (a node's other ports fill the free numbers in link
  order; numbers must stay 0..n-1); ``mac={"r1": "02:00:00:00:00:01"}`` fixes
  that end's MAC address (else the kernel picks one).
* **Unaddressed nodes** (kinds with ``addressed = False``, e.g. imported
  Kathará devices that configure themselves) get ports but no derived address.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..engine.spec import MAX_MTU
from ..errors import ChainError

__all__ = ["RawLink", "Port", "Segment", "Addressing", "assign_addresses", "link_name"]

IPv4Network = ipaddress.IPv4Network
IPv4Interface = ipaddress.IPv4Interface
IPv4Address = ipaddress.IPv4Address


@dataclass(frozen=True)
class RawLink:
    """An undirected link ``a``–``b`` as found in the graph, with its edge attributes."""

    a: str
    b: str
    attrs: Mapping[str, Any] = field(default_factory=dict)


def link_name(link: RawLink) -> str:
    return f"link {link.a!r}–{link.b!r}"


@dataclass(frozen=True)
class Port:
    """Interface ``eth<index>`` of ``node``: which link, which segment, which address."""

    node: str
    index: int
    neighbour: str
    link: int
    segment: int
    address: IPv4Interface | None
    mtu: int
    mac: str | None = None

    @property
    def device(self) -> str:
        return f"eth{self.index}"


@dataclass(frozen=True)
class Segment:
    """One L2 broadcast domain: its links, its subnet, its addressed ports in address order."""

    index: int
    subnet: IPv4Network
    links: tuple[int, ...]
    members: tuple[tuple[str, int], ...]


@dataclass(frozen=True)
class Addressing:
    ports: Mapping[str, tuple[Port, ...]]
    segments: tuple[Segment, ...]

    def port(self, node: str, index: int) -> Port:
        return self.ports[node][index]

    def address_on(self, node: str, segment: int) -> IPv4Address | None:
        """``node``'s address on ``segment`` (its first port there), if it has one."""
        for port in self.ports[node]:
            if port.segment == segment and port.address is not None:
                return port.address.ip
        return None

    def segments_of(self, node: str) -> set[int]:
        return {p.segment for p in self.ports[node] if p.address is not None}


def _parse_mtu(link: RawLink) -> int:
    mtu = link.attrs.get("mtu")
    if mtu is None:
        return 1500
    if isinstance(mtu, bool) or not isinstance(mtu, int) or not 68 <= mtu <= MAX_MTU:
        raise ChainError(f"{link_name(link)}: mtu {mtu!r} is not an integer in 68..{MAX_MTU}")
    return mtu


def _end_map(link: RawLink, key: str) -> Mapping[str, Any]:
    value = link.attrs.get(key)
    if value is None:
        return {}
    if not isinstance(value, Mapping) or any(end not in (link.a, link.b) for end in value):
        raise ChainError(
            f"{link_name(link)}: {key} must map an end of the link ({link.a!r} or {link.b!r}) "
            f"to a value; got {value!r}"
        )
    return value


def _order_ports(node: str, indices: list[int], links: Sequence[RawLink]) -> list[int]:
    """``indices`` (link numbers of ``node``'s ports) reordered by explicit ``ports=`` numbers."""
    fixed: dict[int, int] = {}
    for li in indices:
        want = _end_map(links[li], "ports").get(node)
        if want is None:
            continue
        if isinstance(want, bool) or not isinstance(want, int) or not 0 <= want < len(indices):
            raise ChainError(
                f"{link_name(links[li])}: ports[{node!r}]={want!r} is not an interface number "
                f"0..{len(indices) - 1} (the node has {len(indices)} links)",
                node=node,
            )
        if want in fixed:
            raise ChainError(
                f"eth{want} given to two links: {link_name(links[fixed[want]])} and "
                f"{link_name(links[li])}",
                node=node,
            )
        fixed[want] = li
    if not fixed:
        return indices
    rest = iter(li for li in indices if li not in fixed.values())
    return [fixed[i] if i in fixed else next(rest) for i in range(len(indices))]


def _parse_subnet(link: RawLink) -> IPv4Network | None:
    value = link.attrs.get("subnet")
    if value is None:
        return None
    try:
        return ipaddress.IPv4Network(str(value), strict=True)
    except ValueError as exc:
        raise ChainError(
            f"{link_name(link)}: subnet {value!r} is not an IPv4 network ({exc})"
        ) from None


def _parse_addr(
    link: RawLink, transparent: Collection[str]
) -> dict[str, IPv4Interface | IPv4Address]:
    value = link.attrs.get("addr")
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ChainError(
            f"{link_name(link)}: addr must map an end of the link to its address, "
            f"e.g. addr={{{link.a!r}: '10.0.0.2/24'}}; got {value!r}"
        )
    found: dict[str, IPv4Interface | IPv4Address] = {}
    for end, text in value.items():
        if end not in (link.a, link.b):
            raise ChainError(
                f"{link_name(link)}: addr names {end!r}, which is not an end of this link"
            )
        if end in transparent:
            raise ChainError(f"{link_name(link)}: a bridge has no addresses", node=end)
        try:
            found[end] = (
                ipaddress.IPv4Interface(str(text))
                if "/" in str(text)
                else ipaddress.IPv4Address(str(text))
            )
        except ValueError:
            raise ChainError(f"{link_name(link)}: address {text!r} is not IPv4", node=end) from None
    return found


class _Segments:
    """Union-find over link indices."""

    def __init__(self, n: int) -> None:
        self.parent = list(range(n))

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, i: int, j: int) -> None:
        ri, rj = self.find(i), self.find(j)
        if ri != rj:
            self.parent[max(ri, rj)] = min(ri, rj)


def assign_addresses(
    nodes: Sequence[str],
    links: Sequence[RawLink],
    *,
    transparent: Collection[str],
    forwarding: Collection[str],
    pool: IPv4Network,
    prefixlen: int,
    unaddressed: Collection[str] = (),
) -> Addressing:
    """Number ports, group links into segments, give segments subnets and ports addresses."""
    port_links: dict[str, list[int]] = {n: [] for n in nodes}
    for i, link in enumerate(links):
        port_links[link.a].append(i)
        port_links[link.b].append(i)
    for node in nodes:
        port_links[node] = _order_ports(node, port_links[node], links)

    uf = _Segments(len(links))
    for node in transparent:
        for i in port_links[node][1:]:
            uf.union(port_links[node][0], i)
    groups: dict[int, list[int]] = {}
    for i in range(len(links)):
        groups.setdefault(uf.find(i), []).append(i)
    seg_links = sorted(groups.values(), key=lambda ls: ls[0])
    seg_of_link = {i: k for k, ls in enumerate(seg_links) for i in ls}
    _check_l2_loops(links, seg_links, transparent)

    explicit = [_explicit_subnet(links, ls, transparent) for ls in seg_links]
    subnets = _allocate(explicit, seg_links, links, pool, prefixlen)

    addresses: dict[tuple[str, int], IPv4Interface] = {}
    members_of: list[tuple[tuple[str, int], ...]] = []
    for k, ls in enumerate(seg_links):
        members_of.append(
            _address_segment(
                k, ls, links, subnets[k], port_links, transparent, forwarding, addresses,
                unaddressed,
            )
        )

    ports: dict[str, tuple[Port, ...]] = {}
    for node in nodes:
        built = []
        for index, li in enumerate(port_links[node]):
            link = links[li]
            built.append(
                Port(
                    node=node,
                    index=index,
                    neighbour=link.b if link.a == node else link.a,
                    link=li,
                    segment=seg_of_link[li],
                    address=addresses.get((node, index)),
                    mtu=_parse_mtu(link),
                    mac=_parse_mac(link, node),
                )
            )
        ports[node] = tuple(built)
    segments = tuple(
        Segment(k, subnets[k], tuple(ls), members_of[k]) for k, ls in enumerate(seg_links)
    )
    return Addressing(ports, segments)


def _parse_mac(link: RawLink, node: str) -> str | None:
    value = _end_map(link, "mac").get(node)
    if value is None:
        return None
    text = str(value).lower()
    parts = text.split(":")
    if len(parts) != 6 or not all(len(p) == 2 and all(c in "0123456789abcdef" for c in p)
                                  for p in parts):
        raise ChainError(f"{link_name(link)}: MAC {value!r} is not six hex bytes a:b:c:d:e:f",
                         node=node)
    if int(parts[0], 16) & 1:
        raise ChainError(f"{link_name(link)}: MAC {value!r} is a multicast address", node=node)
    return text


def _check_l2_loops(
    links: Sequence[RawLink], seg_links: list[list[int]], transparent: Collection[str]
) -> None:
    for ls in seg_links:
        ends = {e for i in ls for e in (links[i].a, links[i].b)}
        if len(ls) >= len(ends):  # a connected graph with as many edges as vertices has a cycle
            bridges = sorted(e for e in ends if e in transparent)
            raise ChainError(
                f"bridges {', '.join(map(repr, bridges))} form an L2 loop "
                "(frames would circle forever)",
                node=bridges[0],
            )


def _explicit_subnet(
    links: Sequence[RawLink], ls: list[int], transparent: Collection[str]
) -> IPv4Network | None:
    chosen: IPv4Network | None = None
    chosen_by = ""
    for i in ls:
        link = links[i]
        candidates: list[tuple[IPv4Network, str]] = []
        subnet = _parse_subnet(link)
        if subnet is not None:
            candidates.append((subnet, f"{link_name(link)} (subnet=)"))
        for end, addr in _parse_addr(link, transparent).items():
            if isinstance(addr, ipaddress.IPv4Interface):
                candidates.append((addr.network, f"{link_name(link)} (address of {end!r})"))
        for net, by in candidates:
            if chosen is None:
                chosen, chosen_by = net, by
            elif net != chosen:
                raise ChainError(
                    f"one L2 segment, two subnets: {chosen} from {chosen_by}, {net} from {by}"
                )
    return chosen


def _allocate(
    explicit: list[IPv4Network | None],
    seg_links: list[list[int]],
    links: Sequence[RawLink],
    pool: IPv4Network,
    prefixlen: int,
) -> list[IPv4Network]:
    fixed = [(k, n) for k, n in enumerate(explicit) if n is not None]
    for x, (k1, n1) in enumerate(fixed):
        for k2, n2 in fixed[x + 1 :]:
            if n1.overlaps(n2):
                raise ChainError(
                    f"subnets overlap: {n1} on {link_name(links[seg_links[k1][0]])} and "
                    f"{n2} on {link_name(links[seg_links[k2][0]])}"
                )
    try:
        blocks = list(pool.subnets(new_prefix=prefixlen))
    except ValueError as exc:
        raise ChainError(f"address pool {pool} cannot be cut into /{prefixlen}s: {exc}") from None
    taken = [n for _, n in fixed]
    result: list[IPv4Network] = []
    for k, net in enumerate(explicit):
        if net is None:
            order = blocks[k:] + blocks[:k] if k < len(blocks) else blocks
            net = next((b for b in order if not any(b.overlaps(t) for t in taken)), None)
            if net is None:
                raise ChainError(
                    f"address pool {pool} has no free /{prefixlen} left for "
                    f"{link_name(links[seg_links[k][0]])}"
                )
            taken.append(net)
        result.append(net)
    return result


def _address_segment(
    k: int,
    ls: list[int],
    links: Sequence[RawLink],
    subnet: IPv4Network,
    port_links: Mapping[str, list[int]],
    transparent: Collection[str],
    forwarding: Collection[str],
    out: dict[tuple[str, int], IPv4Interface],
    unaddressed: Collection[str] = (),
) -> tuple[tuple[str, int], ...]:
    ends: list[tuple[str, int]] = []  # (node, port) in link order, a before b
    fixed: dict[tuple[str, int], IPv4Address] = {}
    for i in ls:
        link = links[i]
        given = _parse_addr(link, transparent)
        for end in (link.a, link.b):
            if end in transparent or end in unaddressed:
                continue
            key = (end, port_links[end].index(i))
            ends.append(key)
            if end in given:
                addr = given[end]
                ip = addr.ip if isinstance(addr, ipaddress.IPv4Interface) else addr
                if ip not in subnet:
                    raise ChainError(
                        f"{link_name(link)}: address {ip} is outside the segment's subnet {subnet}",
                        node=end,
                    )
                if subnet.prefixlen < 31 and ip in (
                    subnet.network_address,
                    subnet.broadcast_address,
                ):
                    raise ChainError(
                        f"{link_name(link)}: {ip} is the network or broadcast address of {subnet}",
                        node=end,
                    )
                fixed[key] = ip
    owner: dict[IPv4Address, str] = {}
    for (node, _), ip in fixed.items():
        if ip in owner:
            raise ChainError(f"address {ip} given to both {owner[ip]!r} and {node!r}", node=node)
        owner[ip] = node
    members = sorted(ends, key=lambda e: (e[0] not in forwarding, ends.index(e)))
    free = (h for h in subnet.hosts() if h not in owner)
    for key in members:
        chosen: IPv4Address | None = fixed.get(key)
        if chosen is None:
            chosen = next(free, None)
            if chosen is None:
                raise ChainError(
                    f"subnet {subnet} has too few addresses for the {len(members)} ports "
                    f"on its segment",
                    node=key[0],
                )
        out[key] = ipaddress.IPv4Interface(f"{chosen}/{subnet.prefixlen}")
    return tuple(members)
