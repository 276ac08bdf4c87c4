"""Steering (RFC 7665 classifier) on a running lab's links, built on the relay's flow table.

``lab.steer(("nat", "fw"), "tcp port 80", via=["ids"])``: on the link
nat–fw, every *new* flow from nat toward fw whose first frame matches the
pcap filter is recorded in the link's flow table with the rule, and its
frames go into the detour instead: nat → ids:eth0, ids bridges them out of
ids:eth1 → fw; fw's replies take the same detour back (ids:eth1 → ids:eth0 →
nat).  Several ``via`` NFs are chained in order (eth1 of one into eth0 of the
next).  Flows already running keep their path; when a rule is removed its
flows take the default path from the next frame, so an established flow
outlives a policy change.  A detour is an instance booted with
``lab.add(name, kind="bridge"|"filter")``; it serves one link at a time.

A rule lives as long as its link: an insert, remove or replace that re-makes
the link drops its rules (their flows go on by the default path; the change is
in ``lab.live.history``), and removing a detour drops the rules through it.

Counters: :meth:`Steering.table` — one row per rule: link, match, via,
flows, frames (both directions), bytes, drops.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .errors import ChainError, StateError
from .relay import Endpoint, Pump

if TYPE_CHECKING:
    from .engine.instance import Instance
    from .engine.links import Link
    from .live import LiveChains

__all__ = ["Steering", "SteerRule"]

_ids = itertools.count(1)


@dataclass
class SteerRule:
    """One classifier rule: new flows ``a → b`` on ``link`` matching ``match`` go via ``via``."""

    id: int
    link: tuple[str, str]
    match: str
    via: tuple[str, ...]
    _link: Link = field(repr=False)

    @property
    def name(self) -> str:
        return f"steer-{self.id}"


@dataclass
class _Path:
    """The pumps that carry a detour's output: via[i]:eth1 → next, via[i]:eth0 → previous."""

    link: Link
    via: tuple[str, ...]
    pumps: list[Pump]
    users: set[int] = field(default_factory=set)


class Steering:
    """Steering rules of one lab (``lab.live.steering``)."""

    def __init__(self, live: LiveChains) -> None:
        self.live = live
        self.rules: dict[int, SteerRule] = {}
        self._paths: dict[tuple[int, tuple[str, ...]], _Path] = {}
        self._lock = threading.RLock()

    def _detour(self, name: str) -> Instance:
        inst = self.live.detours.get(name)
        if inst is None:
            known = ", ".join(self.live.detours) or "none"
            raise ChainError(f"steer via {name!r}: not a detour booted with lab.add() "
                             f"(detours: {known})", node=name)
        return inst

    def steer(self, link: tuple[str, str], match: str, *, via: Sequence[str]) -> SteerRule:
        if isinstance(via, str):
            via = [via]
        via_t = tuple(via)
        if not via_t:
            raise ChainError("steer needs at least one NF in via=[...]")
        if len(set(via_t)) != len(via_t):
            raise ChainError(f"via {list(via_t)} names an NF twice")
        if not isinstance(match, str) or not match.strip():
            raise ChainError(f"steer match must be a pcap filter expression, got {match!r}")
        a, b = link
        with self._lock:
            found = self.live._link(a, b)  # noqa: SLF001 - ChainError naming the links
            detours = [self._detour(n) for n in via_t]
            for other in self._paths.values():
                clash = set(other.via) & set(via_t)
                if clash and (other.link is not found or other.via != via_t):
                    raise ChainError(f"{sorted(clash)[0]!r} already carries another detour "
                                     f"({other.link.name} via {list(other.via)})")
            key = (id(found), via_t)
            path = self._paths.get(key)
            made = path is None
            if path is None:
                path = self._wire(found, a, b, via_t, detours)
            rule = SteerRule(next(_ids), (a, b), match, via_t, found)
            try:
                found.add_steer(rule.id, match, forward=Endpoint.socket(detours[0].port(0)),
                                reverse=Endpoint.socket(detours[-1].port(1)), direction=(a, b))
            except BaseException:
                if made:
                    for pump in path.pumps:
                        pump.stop()
                raise
            path.users.add(rule.id)
            self._paths[key] = path
            self.rules[rule.id] = rule
            return rule

    def _wire(self, link: Link, a: str, b: str, via: tuple[str, ...],
              detours: list[Instance]) -> _Path:
        ends = {link.a.name: (link.a, link.a_port), link.b.name: (link.b, link.b_port)}
        (ia, pa), (ib, pb) = ends[a], ends[b]
        pumps: list[Pump] = []
        try:
            for i, inst in enumerate(detours):
                nxt = (ib, pb) if i == len(detours) - 1 else (detours[i + 1], 0)
                prv = (ia, pa) if i == 0 else (detours[i - 1], 1)
                for port, (to, to_port) in ((1, nxt), (0, prv)):
                    pump = Pump(Endpoint.socket(inst.port(port)), Endpoint.socket(to.port(to_port)),
                                name=f"{inst.name}:eth{port}->{to.name}", trace_slots=0)
                    pumps.append(pump)
                    pump.start()
        except BaseException:
            for pump in pumps:
                pump.stop()
            raise
        return _Path(link, via, pumps)

    def unsteer(self, rule: int | str | SteerRule, *, drain: bool = True) -> None:
        """Remove a rule; when its detour carries no other rule, wait for the frames still in
        it to come out (``drain``), then stop the detour's pumps."""
        rid = _rule_id(rule)
        with self._lock:
            found = self.rules.pop(rid, None)
            if found is None:
                raise ChainError(f"no steering rule {rule!r} (rules: "
                                 f"{', '.join(r.name for r in self.rules.values()) or 'none'})")
            try:
                found._link.remove_steer(rid)  # noqa: SLF001
            except Exception:  # noqa: BLE001 - the link may have been stopped already
                pass
            for key, path in list(self._paths.items()):
                path.users.discard(rid)
                if not path.users:
                    if drain:
                        _drain(path.pumps)
                    for pump in path.pumps:
                        pump.stop()
                    del self._paths[key]

    def drop_link(self, link: Link) -> None:
        """Rules on ``link`` (about to be replaced) are removed."""
        for rule in [r for r in self.rules.values() if r._link is link]:  # noqa: SLF001
            self.unsteer(rule.id)

    def drop_via(self, node: str) -> None:
        for rule in [r for r in self.rules.values() if node in r.via]:
            self.unsteer(rule.id)

    def close(self) -> None:
        for rid in list(self.rules):
            self.unsteer(rid, drain=False)

    def stats(self, rule: int | str | SteerRule) -> dict[str, int]:
        rid = _rule_id(rule)
        found = self.rules.get(rid)
        if found is None:
            raise StateError(f"no steering rule {rule!r}")
        out = {"flows": 0, "frames": 0, "bytes": 0, "drops": 0}
        for per in found._link.steer_stats().values():  # noqa: SLF001
            st = per.get(rid)
            if st is not None:
                out["flows"] += st.flows
                out["frames"] += st.frames
                out["bytes"] += st.bytes
                out["drops"] += st.drops
        return out

    def table(self) -> list[dict[str, Any]]:
        """One row per rule: id, link, match, via, flows, frames, bytes, drops."""
        rows = []
        for rule in list(self.rules.values()):
            rows.append({"id": rule.id, "link": f"{rule.link[0]}->{rule.link[1]}",
                         "match": rule.match, "via": " > ".join(rule.via), **self.stats(rule.id)})
        return rows


def _drain(pumps: Sequence[Pump], *, quiet_s: float = 0.06, limit_s: float = 1.0) -> None:
    """Wait until the detour's output pumps have carried nothing for ``quiet_s`` (frames
    still inside the detour get out instead of being dropped), at most ``limit_s``."""
    deadline = time.monotonic() + limit_s
    last = [p.stats.frames for p in pumps]
    quiet_since = time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.02)
        now = [p.stats.frames for p in pumps]
        if now != last:
            last, quiet_since = now, time.monotonic()
        elif time.monotonic() - quiet_since >= quiet_s:
            return


def _rule_id(rule: int | str | SteerRule) -> int:
    if isinstance(rule, SteerRule):
        return rule.id
    if isinstance(rule, str) and rule.startswith("steer-") and rule[6:].isdigit():
        return int(rule[6:])
    if isinstance(rule, int) and not isinstance(rule, bool):
        return rule
    raise ChainError(f"a steering rule is a SteerRule, its id or 'steer-N', not {rule!r}")
