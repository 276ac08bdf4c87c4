"""A background thread that samples every link and every instance at a steady rate.

Link counters come from the relays (memory reads, no syscalls).  Instance
counters come from the kernel's mconsole (the conntrack count, a /proc/sys
file: nothing in the guest is involved) and from each guest's resident agent
in one round trip per node (``/proc/net/dev`` and IPVS tables, which mconsole
cannot read): nothing is forked in the guests, where every exec costs tens
of milliseconds.  A bounded history
is kept and every new sample is handed to subscribers.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .samples import LinkSample, NodeSample, Sample, parse_ip_vs, parse_proc_net_dev, records

if TYPE_CHECKING:
    from .source import ChainSource

__all__ = ["Sampler", "Subscription"]

log = logging.getLogger(__name__)

CONNTRACK_COUNT = "sys/net/netfilter/nf_conntrack_count"
NODE_FILES = ("/proc/net/dev",)
IPVS_FILES = ("/proc/net/ip_vs",)


class Subscription:
    """Handle returned by :meth:`Sampler.subscribe`; ``cancel()`` stops the deliveries."""

    def __init__(self, sampler: Sampler, callback: Callable[[Sample], None]) -> None:
        self._sampler = sampler
        self.callback = callback

    def cancel(self) -> None:
        self._sampler._unsubscribe(self)

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.cancel()


class Sampler:
    """Samples ``lab`` at ``rate_hz`` (default 5) in a daemon thread; keeps ``history`` samples.

    Link counters are read every round (memory reads in the relays).  Instance
    counters cost the guests CPU (their agents answer), so they are read every
    ``node_every``-th round (default 5: once a second at 5 Hz); the rounds in
    between repeat the last instance sample.
    """

    def __init__(self, lab: ChainSource, *, rate_hz: float = 5.0, history: int = 600,
                 nodes: bool = True, node_every: int = 5) -> None:
        if rate_hz <= 0:
            raise ValueError("rate_hz must be positive")
        self.lab = lab
        self.rate_hz = rate_hz
        self.sample_nodes = nodes
        self.history: collections.deque[Sample] = collections.deque(maxlen=history)
        self._subs: list[Subscription] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._previous: dict[tuple[str, str], LinkSample] = {}
        self.node_every = max(1, node_every)
        self._round = 0
        self._last_nodes: dict[str, NodeSample] = {}

    # ------------------------------------------------------------ lifecycle
    def start(self) -> Sampler:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="stdpkt-sampler", daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def subscribe(self, callback: Callable[[Sample], None]) -> Subscription:
        """Call ``callback(sample)`` from the sampler thread after each round."""
        sub = Subscription(self, callback)
        with self._lock:
            self._subs.append(sub)
        return sub

    def _unsubscribe(self, sub: Subscription) -> None:
        with self._lock:
            if sub in self._subs:
                self._subs.remove(sub)

    @property
    def latest(self) -> Sample | None:
        return self.history[-1] if self.history else None

    def frame(self) -> Any:
        """The kept history of link samples as one table (``records``: ``time`` a datetime
        column, ``timestamp`` the raw float), oldest first."""
        return records([ls for sample in list(self.history) for ls in sample.links])

    # ------------------------------------------------------------ sampling
    def _run(self) -> None:
        period = 1.0 / self.rate_hz
        next_at = time.monotonic()
        while not self._stop.is_set():
            try:
                self.sample_once()
            except Exception:  # a sampler must outlive one bad round
                log.exception("sampling round failed")
            next_at += period
            delay = next_at - time.monotonic()
            if delay < 0:  # fell behind: skip, do not burst
                next_at = time.monotonic()
                delay = 0
            self._stop.wait(delay)

    def sample_once(self) -> Sample:
        now = time.time()
        links = tuple(self.link_samples(now))
        nodes: dict[str, NodeSample] = {}
        if self.sample_nodes:
            if self._round % self.node_every == 0 or not self._last_nodes:
                self._last_nodes = self.node_samples(now)
            nodes = self._last_nodes
        self._round += 1
        sample = Sample(now, links, nodes)
        self.history.append(sample)
        with self._lock:
            subs = list(self._subs)
        for sub in subs:
            try:
                sub.callback(sample)
            except Exception:
                log.exception("sample subscriber %r failed", sub.callback)
        return sample

    def link_samples(self, now: float) -> list[LinkSample]:
        out = []
        for link in self.lab.links:
            for (src, dst), stats in link.stats().items():
                prev = self._previous.get((src, dst))
                pps = bps = 0.0
                if prev is not None and now > prev.time:
                    dt = now - prev.time
                    pps = (stats.frames + stats.injected - prev.frames - prev.injected) / dt
                    bps = 8 * (stats.bytes - prev.bytes) / dt
                sample = LinkSample(now, f"{link.a.name}-{link.b.name}", src, dst, stats.frames,
                                    stats.bytes, stats.drops, stats.malformed, stats.injected,
                                    max(pps, 0.0), max(bps, 0.0))
                self._previous[(src, dst)] = sample
                out.append(sample)
        return out

    def node_samples(self, now: float) -> dict[str, NodeSample]:
        out: dict[str, NodeSample] = {}
        for name, instance in self.lab.instances.items():
            state = instance.state.value
            if state != "running":
                out[name] = NodeSample(now, name, state)
                continue
            paths = list(NODE_FILES)
            is_lb = self.lab.plan[name].kind.name == "lb"
            if is_lb:
                paths += IPVS_FILES
            try:
                files = instance.agent.read_files(paths, timeout=2.0)
            except Exception as exc:  # the instance may be stopping
                log.debug("node %s not sampled: %s", name, exc)
                out[name] = NodeSample(now, name, instance.state.value)
                continue
            dev = files.get("/proc/net/dev")
            try:
                count = instance.mconsole.proc(CONNTRACK_COUNT, timeout=1.0).strip()
            except Exception:  # conntrack not loaded in this guest: no such file
                count = ""
            ipvs = files.get("/proc/net/ip_vs") if is_lb else None
            out[name] = NodeSample(
                now, name, state,
                interfaces=parse_proc_net_dev(dev.decode()) if dev else {},
                conntrack_entries=int(count) if count.isdigit() else None,
                ipvs=parse_ip_vs(ipvs.decode()) if ipvs else [],
                qdiscs=self._qdiscs(name),
            )
        return out

    def _qdiscs(self, name: str) -> dict[str, list[dict[str, Any]]]:
        """Qdisc statistics through the lab's hook: one ``tc`` exec, only on nodes with
        link conditions set (an exec costs the guest ~20 ms: not on every node)."""
        hook = getattr(self.lab, "_qdisc_sample", None)
        if hook is None:
            return {}
        try:
            return dict(hook(name))
        except Exception as exc:  # the instance may be stopping
            log.debug("qdiscs of %s not sampled: %s", name, exc)
            return {}
