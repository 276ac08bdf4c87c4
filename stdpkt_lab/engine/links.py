"""A link: two instance ports joined by a relay, one pump per direction.

The relay counts frames, bytes, drops and keeps a ring of recent frames for
each direction; a link can be stopped and its ports re-joined elsewhere (the
pumps own nothing but their threads: the sockets belong to the instances).

Its two pumps share one :class:`~stdpkt_lab.relay.FlowTable` from the start, so
that steering rules added later (``Link.add_steer``) leave the flows that were
already running on their path, and a steered flow's replies take the detour
back (docs/links.md).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable

from ..errors import ConfigError
from ..relay import Endpoint, FlowTable, Pump, PumpResult, PumpStats, SteerStats, start_together
from .instance import Instance
from .vhost import VhostPort

__all__ = ["Link", "offload_port"]


class Link:
    """``a`` port ``a_port`` ⟷ ``b`` port ``b_port``."""

    def __init__(
        self,
        a: Instance,
        a_port: int,
        b: Instance,
        b_port: int,
        *,
        trace_slots: int = 1024,
        trace_snap: int = 256,
        on_end: Callable[[Link, str], None] | None = None,
        one_thread: bool | None = None,
    ) -> None:
        """``one_thread``: both pumps in one thread (one event loop, C relay_run_group)
        instead of a thread each; None: ``$STDPKT_LINK_THREADS == "one"``."""
        self.a, self.a_port, self.b, self.b_port = a, a_port, b, b_port
        self._trace = (trace_slots, trace_snap)
        self._on_end = on_end
        self._pumps: dict[tuple[str, str], Pump] = {}
        self._lock = threading.Lock()
        self._stopped = False
        self.flow_table = FlowTable()
        if one_thread is None:
            one_thread = os.environ.get("STDPKT_LINK_THREADS", "") == "one"
        self.one_thread = one_thread

    @property
    def name(self) -> str:
        return f"{self.a.name}:eth{self.a_port}<->{self.b.name}:eth{self.b_port}"

    @property
    def directions(self) -> tuple[tuple[str, str], tuple[str, str]]:
        return (self.a.name, self.b.name), (self.b.name, self.a.name)

    def start(self) -> None:
        sa = self.a.port(self.a_port).fileno()
        sb = self.b.port(self.b_port).fileno()
        self._match_offload()
        slots, snap = self._trace
        for (src, dst), (fin, fout) in zip(self.directions, ((sa, sb), (sb, sa)), strict=True):
            pump = Pump(Endpoint.socket(fin), Endpoint.socket(fout), name=f"{src}->{dst}",
                        trace_slots=slots, trace_snap=snap, flow_table=self.flow_table)
            pump.on_exit = self._pump_ended
            self._pumps[(src, dst)] = pump
        if self.one_thread:
            start_together(list(self._pumps.values()), name=self.name)
            return
        for pump in self._pumps.values():
            pump.start()

    def pump(self, src: str, dst: str) -> Pump:
        return self._pumps[(src, dst)]

    def stats(self) -> dict[tuple[str, str], PumpStats]:
        return {key: pump.stats for key, pump in self._pumps.items()}

    def _pump_ended(self, pump: Pump, result: PumpResult) -> None:
        if self._stopped or result is PumpResult.STOPPED or self._on_end is None:
            return
        self._on_end(self, f"{pump.name}: {result.name.lower()} {pump.stats.last_error}".strip())

    def stop(self, timeout: float = 2.0) -> None:
        self._stopped = True
        for pump in self._pumps.values():
            pump.stop(timeout)

    def _match_offload(self, *, plain: bool = False) -> None:
        """A vhost port with offload sends partial checksums and TCP super-frames; a
        vector port (or a detour to one) cannot take them: then the vhost side
        finishes its frames in software (engine/vhost.py).  ``plain``: finish on both
        sides whatever the peer (a steering detour may lead anywhere)."""
        ends = [offload_port(self.a, self.a_port), offload_port(self.b, self.b_port)]
        both = all(e is not None for e in ends)
        for end in ends:
            if end is not None:
                end.set_finish(plain or not both)

    # --- steering (docs/links.md) ---

    def _direction(self, direction: tuple[str, str] | None) -> tuple[str, str]:
        d = direction or self.directions[0]
        if d not in self._pumps:
            raise ConfigError(f"link {self.name} has no direction {d[0]}->{d[1]}")
        return d

    def add_steer(
        self,
        rule_id: int,
        filter_expr: str | None,
        *,
        forward: Endpoint,
        reverse: Endpoint | None = None,
        direction: tuple[str, str] | None = None,
    ) -> None:
        """New flows of ``direction`` (default a->b) matching ``filter_expr`` go to
        ``forward``; their replies (the other direction) go to ``reverse``, or take
        the default path when it is None."""
        fwd = self._direction(direction)
        self._match_offload(plain=True)
        self._pumps[fwd].add_steer(rule_id, filter_expr, forward)
        if reverse is not None:
            try:
                self._pumps[(fwd[1], fwd[0])].add_steer(rule_id, None, reverse)
            except BaseException:
                self._pumps[fwd].remove_steer(rule_id)
                raise

    def remove_steer(self, rule_id: int) -> None:
        """Removes the rule from both directions (flows take the default path)."""
        found = False
        for pump in self._pumps.values():
            if rule_id in pump.steer_rules:
                pump.remove_steer(rule_id)
                found = True
        if not found:
            raise ConfigError(f"link {self.name} has no steering rule {rule_id}")

    def steer_stats(self) -> dict[tuple[str, str], dict[int, SteerStats]]:
        return {key: pump.steer_stats() for key, pump in self._pumps.items()}

    def __repr__(self) -> str:
        return f"<Link {self.name}>"


def offload_port(inst: Instance, index: int) -> VhostPort | None:
    """The vhost back end of ``inst``'s port ``index`` if it offloads, else None."""
    vport = inst.vhost_ports().get(index)
    return vport if vport is not None and vport.offload else None
