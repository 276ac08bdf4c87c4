"""Cores each thread name uses while a bench runs (bench/chain.py, bench/goodput.py --threads).

The relay's pumps are named ``stdpkt-pump``, the vhost-user port threads ``stdpkt-vhost``,
the kernels ``linux.uml``: the split says which part of a path is busy and which waits.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path


def _thread_cpu() -> dict[tuple[int, int], tuple[str, int]]:
    """(pid, tid) -> (thread name, utime + stime in clock ticks) of every thread on the host."""
    out: dict[tuple[int, int], tuple[str, int]] = {}
    for task in Path("/proc").glob("[0-9]*/task/[0-9]*/stat"):
        try:
            text = task.read_text()
        except OSError:
            continue
        name = text[text.find("(") + 1:text.rfind(")")]
        fields = text[text.rfind(")") + 2:].split()
        out[(int(task.parts[2]), int(task.parts[4]))] = (name, int(fields[11]) + int(fields[12]))
    return out


class ThreadSampler:
    """Cores each thread name uses during a run, sampled every ``period`` s (threads that
    start during the run count from zero; one that ends loses at most a period)."""

    def __init__(self, period: float = 0.5) -> None:
        self.period = period
        self._first = _thread_cpu()
        self._last = dict(self._first)
        self._t0 = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.period):
            self._last.update(_thread_cpu())

    def stop(self) -> dict[str, float]:
        self._stop.set()
        self._thread.join()
        self._last.update(_thread_cpu())
        seconds = time.monotonic() - self._t0
        tick = os.sysconf("SC_CLK_TCK")
        use: dict[str, float] = {}
        for key, (name, t) in self._last.items():
            used = t - self._first.get(key, (name, 0))[1]
            if used > 0:
                use[name] = use.get(name, 0.0) + used / tick / seconds
        return {k: round(v, 3) for k, v in sorted(use.items(), key=lambda kv: -kv[1])[:10]}
