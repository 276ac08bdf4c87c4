"""``no_hang``: a parser under property testing must return, not loop (SIGALRM guard)."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def no_hang(what: str, seconds: int = 5) -> Iterator[None]:
    """Fail the test if the block does not finish within ``seconds``."""
    def alarm(signum: int, frame: object) -> None:  # pragma: no cover - only on a hang
        raise AssertionError(f"{what} did not return within {seconds} s")

    old = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
