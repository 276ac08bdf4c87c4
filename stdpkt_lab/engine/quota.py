"""A per-user cap on live instances and on their guest memory (a class on one host).

On a shared JupyterHub each student's server gets ``STDPKT_MAX_INSTANCES`` and/or
``STDPKT_MAX_MEM_MB`` in its environment (deploy/jupyterhub/jupyterhub_config.py).
When either is set, every :class:`~stdpkt_lab.engine.instance.Instance` takes a
*claim* before it spawns its kernel and gives it back when it is torn down.  A
claim is a small JSON file in the user's claim directory::

    $STDPKT_QUOTA_DIR            (default: <tmp>/stdpkt-quota-<uid>, mode 0700, ours)
        <pid>-<token>.claim      {"pid", "start", "created", "name", "mem_mb", "run_dir"}

A claim counts while the process that made it lives (its pid *and* its start
time, so a recycled pid does not keep a claim alive): a notebook kernel killed
with SIGKILL takes its kernels with it (the launcher watches its parent), and its
claims stop counting at once.  Counting and claiming happen under an exclusive
``flock`` on the directory's lock file, so two notebooks of one user starting labs
at the same moment cannot both slip under the cap.

The memory counted is the memory each guest is *given* (``mem_mb``, default 128):
what it may grow to, not what it uses now (about 10 MiB PSS when idle).

This is a courtesy limit with a clear message, not a security boundary: a
student may unset the variables in their own process.  The hard limit is the
spawner's (a cgroup memory limit, Kubernetes ``resources.limits``); see
deploy/jupyterhub/README.md.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import stat
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError, EnvironmentProblem, StdpktError

__all__ = ["QuotaExceeded", "Limits", "Claim", "limits_from_env", "claim", "usage", "claim_dir"]

ENV_MAX_INSTANCES = "STDPKT_MAX_INSTANCES"
ENV_MAX_MEM_MB = "STDPKT_MAX_MEM_MB"
ENV_QUOTA_DIR = "STDPKT_QUOTA_DIR"


class QuotaExceeded(StdpktError):
    """Starting one more instance would pass this user's cap (instances or guest memory)."""

    def __init__(self, message: str, *, cap: str, limit: int, used: int, node: str) -> None:
        self.cap, self.limit, self.used, self.node = cap, limit, used, node
        super().__init__(message)


@dataclass(frozen=True)
class Limits:
    max_instances: int | None = None
    max_mem_mb: int | None = None


@dataclass(frozen=True)
class Usage:
    instances: int
    mem_mb: int
    names: tuple[str, ...]


def _positive(name: str, raw: str) -> int | None:
    raw = raw.strip()
    if not raw:
        return None
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r}: expected a whole number (0 or unset: no cap)") from None
    if value < 0:
        raise ConfigError(f"{name}={raw!r}: expected a whole number (0 or unset: no cap)")
    return value or None


def limits_from_env(environ: dict[str, str] | None = None) -> Limits | None:
    """The caps set in the environment, or None when there is none."""
    env = os.environ if environ is None else environ
    limits = Limits(_positive(ENV_MAX_INSTANCES, env.get(ENV_MAX_INSTANCES, "")),
                    _positive(ENV_MAX_MEM_MB, env.get(ENV_MAX_MEM_MB, "")))
    return None if limits == Limits() else limits


def claim_dir(environ: dict[str, str] | None = None) -> Path:
    """This user's claim directory, created 0700; refused if someone else owns it."""
    env = os.environ if environ is None else environ
    path = Path(env.get(ENV_QUOTA_DIR) or Path(tempfile.gettempdir()) / f"stdpkt-quota-{os.geteuid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileExistsError):
            path.mkdir(mode=0o700)
        st = path.lstat()
    except OSError as exc:
        raise EnvironmentProblem(f"cannot make the instance-cap directory {path} (${ENV_QUOTA_DIR}): "
                                 f"{exc.strerror}") from None
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o077:
        raise EnvironmentProblem(
            f"{path} (the instance-cap directory, ${ENV_QUOTA_DIR}) must be a directory of uid "
            f"{os.geteuid()} with mode 0700; it is not: remove it or set {ENV_QUOTA_DIR}"
        )
    return path


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks (field 22 of /proc/PID/stat), None if gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    fd = os.open(directory / ".lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _live_claims(directory: Path) -> list[dict[str, object]]:
    """The claims whose owner still runs; stale ones are removed."""
    live = []
    for path in sorted(directory.glob("*.claim")):
        try:
            record = json.loads(path.read_text())
            pid, start = int(record["pid"]), str(record["start"])
        except (OSError, ValueError, KeyError, TypeError):
            with contextlib.suppress(OSError):
                path.unlink()
            continue
        if _start_time(pid) != start:
            with contextlib.suppress(OSError):
                path.unlink()
            continue
        live.append(record)
    return sorted(live, key=lambda r: float(str(r.get("created", 0))))


def _usage(records: list[dict[str, object]]) -> Usage:
    return Usage(len(records), sum(int(str(r.get("mem_mb", 0))) for r in records),
                 tuple(str(r.get("name", "?")) for r in records))


def usage(environ: dict[str, str] | None = None) -> Usage:
    """This user's live instances (all of their processes) and the guest memory they hold."""
    directory = claim_dir(environ)
    with _locked(directory):
        return _usage(_live_claims(directory))


class Claim:
    """One instance's share of the cap; :meth:`release` is idempotent."""

    def __init__(self, path: Path) -> None:
        self.path: Path | None = path

    def release(self) -> None:
        path, self.path = self.path, None
        if path is not None:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()


def _hint(what: str) -> str:
    return (f"stop a lab you no longer need (lab.stop(), or restart that notebook's kernel) "
            f"or make this one smaller ({what}); your teacher sets the cap")


def claim(name: str, mem_mb: int, *, run_dir: str = "", environ: dict[str, str] | None = None) -> Claim | None:
    """Take a claim for instance ``name`` with ``mem_mb`` of guest memory, or raise
    :class:`QuotaExceeded`.  Returns None (and does nothing) when no cap is set."""
    limits = limits_from_env(environ)
    if limits is None:
        return None
    directory = claim_dir(environ)
    with _locked(directory):
        now = _usage(_live_claims(directory))
        running = f" (running: {', '.join(now.names)})" if now.names else ""
        if limits.max_instances is not None and now.instances + 1 > limits.max_instances:
            raise QuotaExceeded(
                f"instance cap reached: node {name!r} would be instance {now.instances + 1} of this user, "
                f"the cap is {limits.max_instances} ({ENV_MAX_INSTANCES}){running}; "
                + _hint("fewer nodes"),
                cap=ENV_MAX_INSTANCES, limit=limits.max_instances, used=now.instances, node=name)
        if limits.max_mem_mb is not None and now.mem_mb + mem_mb > limits.max_mem_mb:
            raise QuotaExceeded(
                f"memory cap reached: node {name!r} asks for {mem_mb} MiB of guest memory, this user's "
                f"instances hold {now.mem_mb} MiB and the cap is {limits.max_mem_mb} MiB "
                f"({ENV_MAX_MEM_MB}){running}; " + _hint("fewer nodes or a smaller mem_mb="),
                cap=ENV_MAX_MEM_MB, limit=limits.max_mem_mb, used=now.mem_mb, node=name)
        pid = os.getpid()
        record = {"pid": pid, "start": _start_time(pid), "created": time.time(), "name": name,
                  "mem_mb": mem_mb, "run_dir": run_dir}
        path = directory / f"{pid}-{secrets.token_hex(6)}.claim"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(record, f)
    return Claim(path)
