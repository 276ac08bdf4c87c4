"""All kernel processes are spawned from one long-lived thread.

stdpkt-launch arms PR_SET_PDEATHSIG so a kernel dies with whoever started it.
Linux ties that signal to the *thread* that forked, so spawning from a
short-lived worker thread would stop the guest when the worker ends; one
daemon thread that lives as long as the process avoids that.
"""

from __future__ import annotations

import queue
import subprocess
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

__all__ = ["spawn"]

_jobs: queue.SimpleQueue[tuple[Callable[[], Any], Future[Any]]] = queue.SimpleQueue()
_thread: threading.Thread | None = None
_lock = threading.Lock()


def _serve() -> None:
    while True:
        job, future = _jobs.get()
        if future.set_running_or_notify_cancel():
            try:
                future.set_result(job())
            except BaseException as exc:  # handed to the caller, re-raised there
                future.set_exception(exc)


def spawn(argv: list[str], **popen_kwargs: Any) -> subprocess.Popen[bytes]:
    """``subprocess.Popen(argv, **popen_kwargs)`` run on the spawner thread."""
    global _thread
    with _lock:
        if _thread is None or not _thread.is_alive():
            _thread = threading.Thread(target=_serve, name="stdpkt-spawner", daemon=True)
            _thread.start()
    future: Future[subprocess.Popen[bytes]] = Future()
    _jobs.put((lambda: subprocess.Popen(argv, **popen_kwargs), future))
    return future.result()
