"""A running NF's state as tables, parsed from what its kernel writes in ``/proc``.

Pure functions (text in, rows out), so they are tested on captured real outputs
(``tests/data/state/``); :class:`~stdpkt_lab.lab.Lab` reads the files through
each guest's agent in one round trip (no process started in the guest):

* connections: ``/proc/net/nf_conntrack`` (the same line format as
  ``conntrack -L -o extended``) → :func:`parse_conntrack`;
* routes: ``/proc/net/route`` and ``/proc/net/ipv6_route`` → :func:`parse_route`,
  :func:`parse_ipv6_route`;
* addresses: IPv4 from ``/proc/net/fib_trie`` (local addresses and their
  connected prefixes) with the interface from ``/proc/net/route``, IPv6 from
  ``/proc/net/if_inet6`` → :func:`parse_addresses`; ``ip -j addr`` output
  (:func:`parse_ip_json`) gives the same rows, at the cost of a process;
* neighbours: ``/proc/net/arp`` → :func:`parse_arp` (IPv6 neighbours are not in
  ``/proc``).
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

__all__ = [
    "CONNTRACK_COLUMNS", "ROUTE_COLUMNS", "ADDRESS_COLUMNS", "NEIGHBOUR_COLUMNS",
    "parse_conntrack", "parse_route", "parse_ipv6_route", "parse_fib_trie_local",
    "parse_if_inet6", "parse_addresses", "parse_ip_json", "parse_arp", "table",
]

CONNTRACK_COLUMNS = (  # what a person reads first, then each tuple's fields for filtering
    "protocol", "state", "original", "reply", "packets", "bytes", "reply_packets", "reply_bytes",
    "timeout", "status", "nat", "mark", "zone", "family", "src", "dst", "sport", "dport",
    "reply_src", "reply_dst", "reply_sport", "reply_dport",
)
ROUTE_COLUMNS = ("family", "destination", "gateway", "interface", "metric", "type", "route_flags")
ADDRESS_COLUMNS = ("interface", "family", "address", "prefixlen", "cidr", "scope", "addr_flags")
# (no column is called "flags": ``row.flags`` is pandas' own attribute)
NEIGHBOUR_COLUMNS = ("address", "lladdr", "interface", "state", "hw_type")


#: integer columns that may be missing (None): pandas' nullable Int64, not float NaN
_INT_COLUMNS = frozenset({"sport", "dport", "reply_sport", "reply_dport", "packets", "bytes",
                          "reply_packets", "reply_bytes", "timeout", "mark", "zone", "metric",
                          "prefixlen"})


def table(rows: Iterable[Mapping[str, Any]], columns: Sequence[str]) -> Any:
    """Rows → a pandas DataFrame with exactly ``columns`` (also when empty; counts as
    nullable integers); a list of dicts without pandas."""
    rows = [dict(r) for r in rows]
    try:
        import pandas as pd
    except ImportError:
        return rows
    frame = pd.DataFrame(rows, columns=list(columns))
    for name in frame.columns:
        if name in _INT_COLUMNS:
            frame[name] = frame[name].astype("Int64")
    return frame


# ---------------------------------------------------------------- conntrack
_L3 = {"ipv4", "ipv6"}


def _endpoint(addr: Any, port: Any) -> str:
    if addr is None:
        return ""
    text = f"[{addr}]" if ":" in str(addr) else str(addr)
    return f"{text}:{port}" if port is not None else text


def _tuple_text(t: Mapping[str, str]) -> str:
    """``"10.0.0.2:5123 → 10.0.1.2:80"``; ICMP: ``"10.0.0.2 → 10.0.1.2 echo id=89"``
    (``type=3 code=1`` for types without a name here)."""
    if not t:
        return ""
    text = f"{_endpoint(t.get('src'), t.get('sport'))} → {_endpoint(t.get('dst'), t.get('dport'))}"
    if "type" not in t:
        return text
    name = _ICMP_NAMES.get((t.get("type", ""), t.get("code", "")))
    icmp = name or " ".join(f"{k}={t[k]}" for k in ("type", "code") if k in t)
    return f"{text} {icmp}" + (f" id={t['id']}" if "id" in t else "")


#: ICMP (type, code) names in tuple texts (others show as type=… code=…)
_ICMP_NAMES = {("8", "0"): "echo", ("0", "0"): "echo-reply", ("128", "0"): "echo",
               ("129", "0"): "echo-reply"}


def parse_conntrack(text: str) -> list[dict[str, Any]]:
    """``/proc/net/nf_conntrack`` (or ``conntrack -L [-o extended]``) → one row per
    connection: the original and reply tuples (``original`` = ``"src:sport → dst:dport"``
    and each field), state (TCP; "" for the others), timeout (s), mark, zone, status (``ASSURED``,
    ``UNREPLIED``), packets/bytes per direction when accounting is on (else None),
    and ``nat``: whether the reply tuple is not the mirrored original (a NAT rewrote it).

    ICMP has no ports (None); its ``type``/``code``/``id`` are in the tuple texts.
    """
    rows = []
    for line in text.splitlines():
        words = line.split()
        if not words or words[0].startswith("conntrack"):  # "conntrack v1.4.7 ...: N flow entries"
            continue
        i = 0
        family = "ipv4"
        if words[0] in _L3:  # /proc and `-o extended`: "ipv4 2 tcp 6 ..."
            family, i = words[0], 2
        if len(words) < i + 3:
            continue
        protocol = words[i]
        try:
            timeout: int | None = int(words[i + 2])
        except ValueError:
            timeout = None
        i += 3
        state = None
        if i < len(words) and "=" not in words[i] and not words[i].startswith("["):
            state = words[i]
            i += 1
        tuples: list[dict[str, str]] = [{}]
        flags: list[str] = []
        extra: dict[str, str] = {}
        for word in words[i:]:
            if word.startswith("[") and word.endswith("]"):
                flags.append(word[1:-1])
                continue
            key, sep, value = word.partition("=")
            if not sep:
                continue
            if key == "src" and "src" in tuples[-1]:
                tuples.append({})
            if key in ("src", "dst", "sport", "dport", "type", "code", "id", "packets", "bytes") \
                    and len(tuples) <= 2:
                tuples[-1][key] = value
            else:
                extra[key] = value
        orig = tuples[0]
        reply = tuples[1] if len(tuples) > 1 else {}

        sport, dport = _int(orig.get("sport")), _int(orig.get("dport"))
        rsport, rdport = _int(reply.get("sport")), _int(reply.get("dport"))
        if "type" in orig:  # icmp: the reply's type differs by design; compare addresses and id
            mirrored = (orig.get("src"), orig.get("dst"), orig.get("id")) == (
                reply.get("dst"), reply.get("src"), reply.get("id"))
        else:
            mirrored = (orig.get("src"), orig.get("dst"), sport, dport) == (
                reply.get("dst"), reply.get("src"), rdport, rsport)
        rows.append({
            "family": family,
            "protocol": protocol,
            "state": state or "",  # TCP (and SCTP, DCCP) only
            "original": _tuple_text(orig),
            "reply": _tuple_text(reply),
            "src": orig.get("src"), "dst": orig.get("dst"), "sport": sport, "dport": dport,
            "reply_src": reply.get("src"), "reply_dst": reply.get("dst"),
            "reply_sport": rsport, "reply_dport": rdport,
            "packets": _int(orig.get("packets")), "bytes": _int(orig.get("bytes")),
            "reply_packets": _int(reply.get("packets")), "reply_bytes": _int(reply.get("bytes")),
            "timeout": timeout,
            "mark": _int(extra.get("mark")),
            "zone": _int(extra.get("zone")),
            "status": ",".join(flags),
            "nat": bool(reply) and not mirrored,
        })
    return rows


def _int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


# ---------------------------------------------------------------- routes
_RTF_UP, _RTF_GATEWAY, _RTF_HOST, _RTF_REJECT = 0x1, 0x2, 0x4, 0x200
_RTF_LOCAL = 0x80000000


def _flag_text(flags: int) -> str:
    return "".join(c for bit, c in ((_RTF_UP, "U"), (_RTF_GATEWAY, "G"), (_RTF_HOST, "H"),
                                    (_RTF_REJECT, "!")) if flags & bit)


def _hex_ipv4(text: str) -> ipaddress.IPv4Address:
    return ipaddress.IPv4Address(bytes.fromhex(text)[::-1])  # little-endian in /proc


def parse_route(text: str) -> list[dict[str, Any]]:
    """``/proc/net/route`` (the main IPv4 table) → destination (CIDR), gateway, interface."""
    rows = []
    for line in text.splitlines()[1:]:
        f = line.split()
        if len(f) < 8:
            continue
        try:
            dest, gw, mask = _hex_ipv4(f[1]), _hex_ipv4(f[2]), _hex_ipv4(f[7])
            flags, metric = int(f[3], 16), int(f[6])
        except ValueError:
            continue
        net = ipaddress.IPv4Network(f"{dest}/{mask}", strict=False)
        rows.append({
            "family": "ipv4", "destination": "default" if net.prefixlen == 0 else str(net),
            "gateway": str(gw) if flags & _RTF_GATEWAY else None, "interface": f[0],
            "metric": metric, "type": "unreachable" if flags & _RTF_REJECT else "unicast",
            "route_flags": _flag_text(flags),
        })
    return rows


def _hex_ipv6(text: str) -> ipaddress.IPv6Address:
    return ipaddress.IPv6Address(bytes.fromhex(text))


def parse_ipv6_route(text: str) -> list[dict[str, Any]]:
    """``/proc/net/ipv6_route`` (every table) → rows; ``type`` tells ``unicast`` routes
    from ``local`` (the node's own addresses), ``multicast`` and ``unreachable`` ones."""
    rows = []
    for line in text.splitlines():
        f = line.split()
        if len(f) < 10:
            continue
        try:
            dest, plen = _hex_ipv6(f[0]), int(f[1], 16)
            hop = _hex_ipv6(f[4])
            metric, flags = int(f[5], 16), int(f[8], 16)
        except ValueError:
            continue
        net = ipaddress.IPv6Network(f"{dest}/{plen}", strict=False)
        if flags & _RTF_REJECT:
            kind = "unreachable"
        elif flags & _RTF_LOCAL:
            kind = "local"
        elif net.subnet_of(ipaddress.IPv6Network("ff00::/8")):
            kind = "multicast"
        else:
            kind = "unicast"
        rows.append({
            "family": "ipv6", "destination": "default" if plen == 0 else str(net),
            "gateway": str(hop) if flags & _RTF_GATEWAY else None, "interface": f[9],
            "metric": metric, "type": kind, "route_flags": _flag_text(flags),
        })
    return rows


# ---------------------------------------------------------------- addresses
_IFA_FLAGS = ((0x01, "temporary"), (0x02, "nodad"), (0x04, "optimistic"), (0x08, "dadfailed"),
              (0x10, "homeaddress"), (0x20, "deprecated"), (0x40, "tentative"), (0x80, "permanent"))
_SCOPES = {0x00: "global", 0x10: "host", 0x20: "link", 0x40: "site"}


def parse_if_inet6(text: str) -> list[dict[str, Any]]:
    """``/proc/net/if_inet6`` → one row per IPv6 address (empty when IPv6 is off)."""
    rows = []
    for line in text.splitlines():
        f = line.split()
        if len(f) < 6:
            continue
        try:
            addr, plen, scope, flags = _hex_ipv6(f[0]), int(f[2], 16), int(f[3], 16), int(f[4], 16)
        except ValueError:
            continue
        rows.append({
            "interface": f[5], "family": "ipv6", "address": str(addr), "prefixlen": plen,
            "cidr": f"{addr}/{plen}", "scope": _SCOPES.get(scope & 0xF0, hex(scope)),
            "addr_flags": ",".join(name for bit, name in _IFA_FLAGS if flags & bit),
        })
    return rows


_TRIE_NODE = re.compile(r"^\s*\|-- (\d+\.\d+\.\d+\.\d+)\s*$")
_TRIE_LEAF = re.compile(r"^\s*/(\d+) (\w+) (\w+)")


def parse_fib_trie_local(text: str) -> list[tuple[str, int, str, str]]:
    """``/proc/net/fib_trie`` → (address, prefixlen, scope, type) of every leaf, once
    (the file lists each table; ``Local:`` repeats ``Main:``'s leaves)."""
    seen: dict[tuple[str, int, str], str] = {}
    current = None
    for line in text.splitlines():
        node = _TRIE_NODE.match(line)
        if node:
            current = node.group(1)
            continue
        leaf = _TRIE_LEAF.match(line)
        if leaf and current is not None:
            key = (current, int(leaf.group(1)), leaf.group(3))
            seen.setdefault(key, leaf.group(2))
    return [(a, p, scope, kind) for (a, p, kind), scope in seen.items()]


def parse_addresses(fib_trie: str, route: str, if_inet6: str = "") -> list[dict[str, Any]]:
    """Every address of a node: IPv4 local addresses from ``fib_trie``, each with the
    prefix of its connected route and that route's interface (``/proc/net/route``;
    ``lo`` for the loopback range), then IPv6 from ``if_inet6``."""
    leaves = parse_fib_trie_local(fib_trie)
    local = [ipaddress.IPv4Address(a) for a, p, _, kind in leaves if p == 32 and kind == "LOCAL"]
    # connected prefixes: link-scope unicast in Main, host-scope LOCAL ranges (127/8) in Local
    connected = [ipaddress.IPv4Network(f"{a}/{p}", strict=False) for a, p, scope, kind in leaves
                 if p < 32 and ((kind == "UNICAST" and scope == "link") or kind == "LOCAL")]
    iface_of: dict[ipaddress.IPv4Network, str] = {}
    for r in parse_route(route):
        if r["gateway"] is None and r["destination"] != "default":
            iface_of.setdefault(ipaddress.IPv4Network(r["destination"]), r["interface"])
    rows = []
    for addr in local:
        nets = sorted((n for n in connected if addr in n), key=lambda n: n.prefixlen, reverse=True)
        net = nets[0] if nets else ipaddress.IPv4Network(f"{addr}/32")
        iface = iface_of.get(net) or ("lo" if addr.is_loopback else "")
        rows.append({
            "interface": iface, "family": "ipv4", "address": str(addr), "prefixlen": net.prefixlen,
            "cidr": f"{addr}/{net.prefixlen}", "scope": "host" if addr.is_loopback else "global",
            "addr_flags": "",
        })
    rows.sort(key=lambda r: (r["interface"] != "lo", r["interface"], ipaddress.IPv4Address(r["address"])))
    return rows + parse_if_inet6(if_inet6)


def parse_ip_json(text: str) -> list[dict[str, Any]]:
    """``ip -j addr`` → the same rows as :func:`parse_addresses` (addr_flags empty for IPv4)."""
    rows = []
    for link in json.loads(text or "[]"):
        for info in link.get("addr_info", []):
            family = {"inet": "ipv4", "inet6": "ipv6"}.get(info.get("family"))
            if family is None:
                continue
            flags = [name for _, name in _IFA_FLAGS if info.get(name)]
            if family == "ipv6" and info.get("valid_life_time") == 4294967295:
                flags.append("permanent")
            rows.append({
                "interface": link.get("ifname", ""), "family": family, "address": info["local"],
                "prefixlen": int(info["prefixlen"]), "cidr": f"{info['local']}/{info['prefixlen']}",
                "scope": info.get("scope", ""),
                "addr_flags": ",".join(n for _, n in _IFA_FLAGS if n in flags) if family == "ipv6" else "",
            })
    return rows


# ---------------------------------------------------------------- neighbours
_ARP_FLAGS = {0x0: "incomplete", 0x2: "reachable", 0x4: "permanent", 0x6: "permanent"}


def parse_arp(text: str) -> list[dict[str, Any]]:
    """``/proc/net/arp`` → one row per IPv4 neighbour (``state``: reachable once resolved;
    the kernel's finer NUD states are only visible over netlink)."""
    rows = []
    for line in text.splitlines()[1:]:
        f = line.split()
        if len(f) < 6:
            continue
        try:
            flags, hw_type = int(f[2], 16), int(f[1], 16)
        except ValueError:
            continue
        rows.append({
            "address": f[0], "lladdr": None if f[3] == "00:00:00:00:00:00" else f[3],
            "interface": f[5], "state": _ARP_FLAGS.get(flags & 0x6, hex(flags)),
            "hw_type": "ether" if hw_type == 1 else hex(hw_type),
        })
    return rows


def parse_iptables_save(text: str) -> list[dict[str, Any]]:
    """``iptables-save -c`` → one row per rule and per chain policy, with its counters."""
    rows: list[dict[str, Any]] = []
    table = ""
    for line in text.splitlines():
        if line.startswith("*"):
            table = line[1:]
        elif line.startswith(":"):
            name, policy, counts = (line[1:].split() + ["", ""])[:3]
            pk, _, by = counts.strip("[]").partition(":")
            if pk.isdigit():
                rows.append({"table": table, "chain": name, "rule": f"policy {policy}",
                             "packets": int(pk), "bytes": int(by)})
        elif line.startswith("["):
            counts, _, rule = line.partition("] ")
            pk, _, by = counts.strip("[").partition(":")
            parts = rule.split(None, 2)
            rows.append({"table": table, "chain": parts[1] if len(parts) > 1 else "",
                         "rule": parts[2] if len(parts) > 2 else "",
                         "packets": int(pk), "bytes": int(by)})
    return rows
