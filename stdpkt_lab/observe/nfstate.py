"""Read an NF's state tables through its agent: one round trip of ``/proc`` reads, no
process in the guest; the parsing is :mod:`.state`'s."""

from __future__ import annotations

from typing import Any, Protocol

from . import state

__all__ = ["FileReader", "conntrack_table", "route_table", "address_table", "neighbour_table",
           "all_tables", "CONNTRACK_FILE"]

CONNTRACK_FILE = "/proc/net/nf_conntrack"


class FileReader(Protocol):
    """What is read from (an instance's agent: :meth:`AgentClient.read_files`)."""

    def read_files(self, paths: list[str], *, timeout: float = 5.0) -> dict[str, bytes | None]: ...


def _read(agent: FileReader, *paths: str, timeout: float) -> list[str]:
    files = agent.read_files(list(paths), timeout=timeout)
    return [(files.get(p) or b"").decode("utf-8", "replace") for p in paths]


def conntrack_table(agent: FileReader, *, timeout: float = 5.0) -> Any:
    """The connection-tracking table (empty when conntrack is not loaded in the guest:
    then nothing is tracked)."""
    (text,) = _read(agent, CONNTRACK_FILE, timeout=timeout)
    return state.table(state.parse_conntrack(text), state.CONNTRACK_COLUMNS)


def route_table(agent: FileReader, *, all: bool = False, timeout: float = 5.0) -> Any:
    """IPv4 main table and IPv6 unicast routes; ``all=True`` adds IPv6's local,
    multicast and unreachable entries."""
    v4, v6 = _read(agent, "/proc/net/route", "/proc/net/ipv6_route", timeout=timeout)
    rows = state.parse_route(v4) + [
        r for r in state.parse_ipv6_route(v6) if all or r["type"] == "unicast"]
    return state.table(rows, state.ROUTE_COLUMNS)


def address_table(agent: FileReader, *, timeout: float = 5.0) -> Any:
    """Every IPv4 and IPv6 address with its interface and prefix."""
    trie, route, inet6 = _read(agent, "/proc/net/fib_trie", "/proc/net/route", "/proc/net/if_inet6",
                               timeout=timeout)
    return state.table(state.parse_addresses(trie, route, inet6), state.ADDRESS_COLUMNS)


def neighbour_table(agent: FileReader, *, timeout: float = 5.0) -> Any:
    """The IPv4 neighbour (ARP) cache."""
    (text,) = _read(agent, "/proc/net/arp", timeout=timeout)
    return state.table(state.parse_arp(text), state.NEIGHBOUR_COLUMNS)


def all_tables(agent: FileReader, *, timeout: float = 5.0) -> dict[str, Any]:
    """The four tables from one round trip: ``connections``, ``routes``, ``addresses``,
    ``neighbours`` (what the dashboard's state tab shows)."""
    paths = [CONNTRACK_FILE, "/proc/net/route", "/proc/net/ipv6_route", "/proc/net/fib_trie",
             "/proc/net/if_inet6", "/proc/net/arp"]
    ct, v4, v6, trie, inet6, arp = _read(agent, *paths, timeout=timeout)
    return {
        "connections": state.table(state.parse_conntrack(ct), state.CONNTRACK_COLUMNS),
        "routes": state.table(state.parse_route(v4) + [
            r for r in state.parse_ipv6_route(v6) if r["type"] == "unicast"], state.ROUTE_COLUMNS),
        "addresses": state.table(state.parse_addresses(trie, v4, inet6), state.ADDRESS_COLUMNS),
        "neighbours": state.table(state.parse_arp(arp), state.NEIGHBOUR_COLUMNS),
    }
