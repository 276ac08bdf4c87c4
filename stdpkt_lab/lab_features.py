"""The feature methods of :class:`~stdpkt_lab.Lab`, one mixin per capability.

Each method is a thin delegation to the module that does the work
(``observe.nfstate``, ``conditions``, ``live``), kept out of ``lab.py`` so that
the lab's own life cycle stays readable there.  ``self`` is always a ``Lab``.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol, cast

if TYPE_CHECKING:
    from .conditions import LinkConditioner
    from .engine.instance import Instance
    from .engine.links import Link
    from .lab import Lab
    from .live import LiveChains


class _Lab(Protocol):
    """What the mixins use of the :class:`~stdpkt_lab.Lab` they are part of."""

    _lock: threading.RLock
    _live: LiveChains | None

    def __getitem__(self, node: str) -> Instance: ...

    def _require_running(self) -> None: ...


class _ConditionedLab(_Lab, Protocol):
    @property
    def _conditioner(self) -> LinkConditioner: ...


class _LiveLab(_Lab, Protocol):
    @property
    def live(self) -> LiveChains: ...

LinkRef = tuple[str, str]

__all__ = ["StateTables", "LinkConditions", "LiveChainOps"]


class StateTables:
    """Tables of a running NF's kernel state (``observe.state`` parses them)."""

    # --- state tables ---
    def conntrack(self: _Lab, node: str) -> Any:
        """``node``'s connection-tracking table as a DataFrame: protocol, state, original and
        reply tuples, packets/bytes per direction, timeout, mark, status, ``nat``."""
        from .observe.nfstate import conntrack_table

        self._require_running()
        return conntrack_table(self[node].agent)

    def routes(self: _Lab, node: str, *, all: bool = False) -> Any:
        """``node``'s routes (IPv4 main table, IPv6 unicast; ``all=True``: every IPv6 entry)."""
        from .observe.nfstate import route_table

        self._require_running()
        return route_table(self[node].agent, all=all)

    def addresses(self: _Lab, node: str) -> Any:
        """``node``'s IPv4 and IPv6 addresses with interface, prefix length and scope."""
        from .observe.nfstate import address_table

        self._require_running()
        return address_table(self[node].agent)

    def neighbours(self: _Lab, node: str) -> Any:
        """``node``'s IPv4 neighbour (ARP) cache."""
        from .observe.nfstate import neighbour_table

        self._require_running()
        return neighbour_table(self[node].agent)


class LinkConditions:
    """Delay, loss, rate... on links, live (``stdpkt_lab.conditions``)."""

    # --- link conditions ---
    @property
    def _conditioner(self: _ConditionedLab) -> LinkConditioner:
        from .conditions import LinkConditioner

        with self._lock:
            found = self.__dict__.get("_link_conditioner")
            if found is None:
                found = self.__dict__["_link_conditioner"] = LinkConditioner(cast("Lab", self))
            return cast("LinkConditioner", found)

    def set_link(self: _ConditionedLab, link: LinkRef, *, direction: LinkRef | str | None = None,
                 update: bool = False, **conditions: Any) -> dict[str, dict[str, Any]]:
        """Set ``link``'s conditions live (``delay="50ms"``, ``jitter``, ``loss=0.02`` or ``"2%"``,
        ``rate="10mbit"``, ``reorder``, ``duplicate``, ``corrupt``, ``limit``), on both directions or
        ``direction=(sender, receiver)``; ``update=True`` changes only the keys given.  No restart:
        the sender's egress qdisc is replaced in place.  Returns :meth:`link_conditions`.
        See :mod:`stdpkt_lab.describe.conditions` for the semantics."""
        self._require_running()
        return self._conditioner.set(link, direction=direction, update=update, **conditions)

    def link_conditions(self: _ConditionedLab, link: LinkRef) -> dict[str, dict[str, Any]]:
        """What is set on ``link``, per direction: ``{"a->b": {"delay": "20ms"}, "b->a": {}}``."""
        return self._conditioner.get(link)

    def clear_link(self: _ConditionedLab, link: LinkRef, *, direction: LinkRef | str | None = None) -> None:
        """Remove ``link``'s conditions (both directions, or one)."""
        self._require_running()
        self._conditioner.clear(link, direction=direction)

    def qdisc_stats(self: _ConditionedLab, node: str) -> dict[str, list[dict[str, Any]]]:
        """``node``'s egress qdiscs per interface with bytes, packets, drops, backlog, qlen."""
        self._require_running()
        return self._conditioner.qdisc_stats(node)

    def _qdisc_sample(self: _ConditionedLab, node: str) -> dict[str, list[dict[str, Any]]]:
        """The sampler's hook: qdisc statistics of a node with conditions set, else nothing."""
        conditioner = self._conditioner
        return conditioner.qdisc_stats(node, timeout=2.0) if conditioner.conditioned(node) else {}


class LiveChainOps:
    """Re-wiring the running chain (``stdpkt_lab.live``)."""

    _live: LiveChains | None  # made on first use (Lab.__init__ sets None)

    # --- live chains --- (stdpkt_lab.live: re-wire the running chain)
    @property
    def live(self: _LiveLab) -> LiveChains:
        """The live-change controller: history, detours, warm pool (:mod:`stdpkt_lab.live`)."""
        found = self._live
        if found is None:
            from .live import LiveChains

            found = self._live = LiveChains(cast("Lab", self))
        return found

    def insert(self: _LiveLab, link: LinkRef, node: str, *, kind: Any, **params: Any) -> Instance:
        """Boot ``node`` and splice it into the running ``link`` (see :mod:`stdpkt_lab.live`)."""
        return self.live.insert(link, node, kind=kind, **params)

    def add(self: _LiveLab, node: str, *, kind: Any, **params: Any) -> Instance:
        """Boot a transparent ``node`` on no path yet (a detour for :meth:`steer`)."""
        return self.live.add(node, kind=kind, **params)

    def remove(self: _LiveLab, node: str) -> None:
        """Stop ``node``; the link it sat on heals."""
        self.live.remove(node)

    def replace(self: _LiveLab, node: str, *, kind: Any, **params: Any) -> Instance:
        """Boot a new ``node`` first, carry its conntrack state, then move its links."""
        return self.live.replace(node, kind=kind, **params)

    def connect(self: _LiveLab, a: str, b: str, **attrs: Any) -> Link:
        """A new link between running ``a`` and ``b`` (hot-plugged ports)."""
        return self.live.connect(a, b, **attrs)

    def disconnect(self: _LiveLab, a: str, b: str) -> None:
        """Remove the link between ``a`` and ``b``."""
        self.live.disconnect(a, b)

    def steer(self: _LiveLab, link: LinkRef, match: str, *, via: Sequence[str]) -> Any:
        """New flows on ``link`` matching ``match`` (pcap filter) traverse the detours ``via``
        (booted with :meth:`add`); returns the :class:`~stdpkt_lab.steering.SteerRule`."""
        return self.live.steer(link, match, via=via)

    def unsteer(self: _LiveLab, rule: Any) -> None:
        """Remove a steering rule (its established flows fall back to the default path)."""
        self.live.unsteer(rule)
