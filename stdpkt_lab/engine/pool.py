"""A warm pool: instances booted ahead of need, handed a configuration on demand.

A cold boot costs tens of milliseconds of kernel start-up and guest init; a
pooled instance has done all of it (kernel, mounts, modules tree, ports
renamed, agent started) and waits, blank, for :meth:`Instance.configure`.
:meth:`InstancePool.take` hands one a spec (addresses, routes, hosts, setup,
script): the network function is up a few milliseconds later, and the pool
boots a replacement in the background::

    with InstancePool(4, ports=(1500, 1500)) as pool:
        nat = pool.take(InstanceSpec("nat", ports=(PortSpec(0, a), PortSpec(1, b)), setup=...))
        nat.wait_ready()
        ...
        nat.stop()  # the taken instance is the caller's

The pool's instances all have the same shape: port count and MTUs (fixed on
the kernel command line), memory, agent. Needs the C guest init (lkl/init.c).
"""

from __future__ import annotations

import itertools
import os
import threading
from collections import deque
from collections.abc import Callable, Sequence

from ..errors import ConfigError, StateError
from .instance import Instance
from .spec import InstanceSpec, PortSpec, pool_mismatch
from .spec import port_kind as spec_port_kind

__all__ = ["InstancePool"]

_serial = itertools.count()


class InstancePool:
    """``size`` blank instances kept booted; :meth:`take` configures one.

    ``port_kind`` (``"vhost"``, ``"vector"``, ``"vhost-plain"``) is the kind of the blank
    instances' ports; None keeps :class:`PortSpec`'s default, UML's vector driver.  A spec
    whose ports are of another kind does not fit (:meth:`take` says so).
    """

    def __init__(
        self,
        size: int,
        *,
        ports: int | Sequence[int] = 1,
        mem_mb: int = 128,
        agent: bool = True,
        refill: bool = True,
        boot_timeout: float = 60.0,
        port_kind: str | None = None,
    ) -> None:
        if size < 1:
            raise ValueError("a pool holds at least one instance")
        mtus = [1500] * ports if isinstance(ports, int) else list(ports)
        self.size = size
        # None: PortSpec's own default (UML's vector driver), as for any hand-made spec
        vhost, offload = (False, True) if port_kind is None else spec_port_kind(port_kind, "port_kind")
        self._ports = tuple(PortSpec(i, mtu=m, vhost=vhost, offload=offload) for i, m in enumerate(mtus))
        self._shape = InstanceSpec("shape", ports=self._ports, mem_mb=mem_mb, agent=agent)
        self._mem_mb = mem_mb
        self._agent = agent
        self._refill = refill
        self._timeout = boot_timeout
        self._tag = f"pool{os.getpid()}-{next(_serial)}"
        self._ready: deque[Instance] = deque()
        self._booting: list[Instance] = []
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closed = False
        self.errors: list[str] = []

    def _blank(self) -> Instance:
        spec = InstanceSpec(f"{self._tag}-{next(_serial)}", ports=self._ports,
                            mem_mb=self._mem_mb, agent=self._agent)
        return Instance(spec, pooled=True)

    # ------------------------------------------------------------ life cycle
    def start(self) -> InstancePool:
        """Start filling the pool in the background (one boot at a time)."""
        with self._cond:
            if self._thread is not None:
                raise StateError("pool already started")
            self._thread = threading.Thread(target=self._fill, name=f"stdpkt-{self._tag}", daemon=True)
            self._thread.start()
        return self

    def _fill(self) -> None:
        failures = 0
        while True:
            with self._cond:
                while not self._closed and len(self._ready) + len(self._booting) >= self.size:
                    self._cond.wait()
                if self._closed:
                    return
                inst = self._blank()
                self._booting.append(inst)
            try:
                inst.start()
                inst.wait_pooled(self._timeout)
                failures = 0
            except Exception as exc:  # recorded; the pool keeps trying a few times
                inst.stop()
                with self._cond:
                    self._booting.remove(inst)
                    self.errors.append(f"{inst.name}: {exc}")
                    failures += 1
                    self._cond.notify_all()
                    if failures >= 3:
                        self._closed = True
                        return
                continue
            with self._cond:
                self._booting.remove(inst)
                if self._closed:
                    inst.stop()
                    return
                self._ready.append(inst)
                self._cond.notify_all()

    def wait_filled(self, timeout: float | None = None) -> None:
        """Block until ``size`` instances wait for a configuration."""
        with self._cond:
            if not self._cond.wait_for(lambda: len(self._ready) >= self.size or self._closed, timeout):
                raise TimeoutError(f"pool not filled in {timeout} s ({len(self._ready)}/{self.size})")
            if len(self._ready) < self.size:
                raise StateError(f"pool closed while filling: {'; '.join(self.errors[-3:])}")

    def take(
        self,
        spec: InstanceSpec,
        *,
        on_console: Callable[[str], None] | None = None,
        timeout: float | None = None,
    ) -> Instance:
        """A pooled instance configured as ``spec`` (returns at once; ``wait_ready()`` on it
        waits for the NF), its console lines from now on going to ``on_console``.
        The instance is the caller's to stop."""
        mismatch = pool_mismatch(self._shape, spec)
        if mismatch:
            raise ConfigError(f"instance {spec.name!r} does not fit pool {self._tag}: {mismatch}")
        with self._cond:
            if self._thread is None:
                raise StateError("pool not started")
            while True:
                while self._ready and not self._ready[0].waiting_for_config:
                    self._ready.popleft().stop()  # died while pooled
                if self._ready:
                    inst = self._ready.popleft()
                    break
                if self._closed:
                    raise StateError(f"pool closed: {'; '.join(self.errors[-3:])}")
                if not self._cond.wait(timeout):
                    raise TimeoutError(f"no pooled instance within {timeout} s")
            if self._refill:
                self._cond.notify_all()
            else:
                self.size -= 1
        inst._on_console = on_console  # noqa: SLF001 - the pool made it, the taker gets its console
        try:
            inst.configure(spec)
        except BaseException:
            inst.stop()
            raise
        return inst

    @property
    def available(self) -> int:
        with self._cond:
            return len(self._ready)

    def stop(self) -> None:
        """Stop the instances still in the pool (taken ones are their takers'). Idempotent."""
        with self._cond:
            self._closed = True
            left = list(self._ready)
            self._ready.clear()
            self._cond.notify_all()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(self._timeout + 10)
        for inst in left:
            inst.stop()

    def __enter__(self) -> InstancePool:
        if self._thread is None:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<InstancePool {self._tag} {len(self._ready)}/{self.size} ready>"
