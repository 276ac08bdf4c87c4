"""How an instance's kernel is kept from writing the host filesystem.

UML's hostfs performs the guest's file operations with the kernel process's
own host credentials: ``ro`` on the command line is only the guest's mount
option, and a guest that remounts can write whatever that process may write.
``stdpkt-launch`` (lkl/launch.c) wraps the kernel:

* ``landlock`` (default when the host kernel has it, root or not): every
  write-type filesystem right is denied except beneath the instance's own run
  directory;
* ``uid`` (fallback for host root without Landlock): the kernel runs as
  ``nobody``; the run directory is handed to that user;
* ``none``: no confinement (a warning says so); only used when neither works.

``$STDPKT_CONFINE`` = auto | landlock | uid | none chooses explicitly.
"""

from __future__ import annotations

import ctypes
import os
import pwd
import warnings
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from ..errors import EnvironmentProblem
from .paths import helper

__all__ = ["Confinement", "choose_confinement", "landlock_abi"]

_SYS_LANDLOCK_CREATE_RULESET = 444
_LANDLOCK_CREATE_RULESET_VERSION = 1


@lru_cache(maxsize=1)
def landlock_abi() -> int:
    """The host kernel's Landlock ABI version, 0 when unavailable."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        abi = libc.syscall(_SYS_LANDLOCK_CREATE_RULESET, None, 0, _LANDLOCK_CREATE_RULESET_VERSION)
    except (OSError, AttributeError):
        return 0
    return max(int(abi), 0)


@dataclass(frozen=True)
class Confinement:
    """A chosen confinement mode and how to apply it to one kernel."""

    mode: str  # "landlock" | "uid" | "none"
    uid: int = -1
    gid: int = -1

    def launcher_argv(self, run_dir: Path, *, parent_pid: int, cpu: int | None = None,
                      cpu_lock: int = -1) -> list[str]:
        """``cpu``: the core the kernel and its processes run on (engine/cpus.py);
        ``cpu_lock``: the descriptor of its shared lock, passed to the launcher."""
        argv = [helper("stdpkt-launch"), "--no-aslr", "--parent", str(parent_pid),
                "--cleanup", str(run_dir)]
        if cpu is not None:
            argv += ["--cpu", str(cpu)]
            if cpu_lock >= 0:
                argv += ["--cpu-lock", str(cpu_lock)]
        if self.mode == "landlock":
            argv += ["--require-landlock", "--rw", str(run_dir)]
        elif self.mode == "uid":
            argv += ["--drop-to", f"{self.uid}:{self.gid}"]
        return argv + ["--"]

    def prepare_run_dir(self, run_dir: Path) -> None:
        """Give the run directory to the kernel's user (uid mode)."""
        if self.mode != "uid":
            return
        for path in [run_dir, *run_dir.rglob("*")]:
            os.chown(path, self.uid, self.gid)

    @property
    def needs_private_copies(self) -> bool:
        """True when guest files must be copied into the run directory to be readable."""
        return self.mode == "uid"


def choose_confinement(requested: str | None = None) -> Confinement:
    mode = (requested or os.environ.get("STDPKT_CONFINE") or "auto").lower()
    if mode not in {"auto", "landlock", "uid", "none"}:
        raise EnvironmentProblem(f"STDPKT_CONFINE={mode!r}: expected auto, landlock, uid or none")
    if mode == "auto":
        if landlock_abi() >= 1:
            mode = "landlock"
        elif os.geteuid() == 0:
            mode = "uid"
        else:
            warnings.warn(
                "this host kernel has no Landlock: guests can write files your user may write "
                "if they remount their root read-write",
                RuntimeWarning,
                stacklevel=2,
            )
            mode = "none"
    if mode == "landlock" and landlock_abi() < 1:
        raise EnvironmentProblem("STDPKT_CONFINE=landlock but the host kernel has no Landlock")
    if mode == "uid":
        if os.geteuid() != 0:
            raise EnvironmentProblem("STDPKT_CONFINE=uid needs host root (it drops to 'nobody')")
        nobody = pwd.getpwnam("nobody")
        return Confinement("uid", nobody.pw_uid, nobody.pw_gid)
    return Confinement(mode)
