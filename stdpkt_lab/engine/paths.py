"""Where things are on the host: the UML kernel, our guest-side helpers, a run directory."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from ..errors import EnvironmentProblem

__all__ = ["kernel_binary", "helper", "lkl_dir", "make_run_root", "run_dir_bases", "DEBIAN_PACKAGES"]

#: What the engine needs on the host, by Debian package name (for error messages).
DEBIAN_PACKAGES = (
    "user-mode-linux iproute2 iptables nftables conntrack ipvsadm iperf3 tcpdump "
    "curl wget netcat-openbsd busybox iputils-ping"
)

_PACKAGE_DIR = Path(__file__).resolve().parent.parent


def lkl_dir() -> Path:
    """The guest-side sources (init, boot profile) shipped with the package or the checkout."""
    # a checkout's lkl/ first (edited files take effect at once), then the installed copy
    for candidate in (_PACKAGE_DIR.parent / "lkl", _PACKAGE_DIR / "_bin"):
        if (candidate / "boot-profile").is_file():
            return candidate
    raise EnvironmentProblem(
        "the guest files (init.sh, boot-profile) are missing: reinstall with `make setup` "
        "or `pip install -e .` from the checkout"
    )


def kernel_binary() -> str:
    """Absolute path of the User-Mode Linux kernel (``$STDPKT_KERNEL`` overrides)."""
    path = os.environ.get("STDPKT_KERNEL") or shutil.which("linux.uml") or shutil.which("linux")
    if not path or not os.access(path, os.X_OK):
        raise EnvironmentProblem(
            "no User-Mode Linux kernel found (linux.uml): install the Debian package "
            f"user-mode-linux (all needed: apt-get install {DEBIAN_PACKAGES})"
        )
    return path


def helper(name: str) -> str:
    """Absolute path of a compiled helper (``stdpkt-launch``, ``stdpkt-agent``) or guest file."""
    for directory in (_PACKAGE_DIR / "_bin", _PACKAGE_DIR.parent / "lkl" / "build"):
        path = directory / name
        if path.is_file():
            return str(path)
    raise EnvironmentProblem(
        f"{name} is not built: run `make setup` (or `pip install -e .`) in the checkout"
    )


def _usable_for_guest_memory(directory: str, need_bytes: int) -> bool:
    """True if UML can keep guest memory files here: writable, exec-mappable, roomy."""
    try:
        st = os.statvfs(directory)
    except OSError:
        return False
    if st.f_flag & os.ST_NOEXEC or st.f_flag & os.ST_RDONLY:
        return False
    if not os.access(directory, os.W_OK | os.X_OK):
        return False
    return st.f_bavail * st.f_frsize >= need_bytes


def run_dir_bases() -> list[str]:
    """Where run directories may live, in order of preference."""
    bases = [os.environ.get("STDPKT_RUNDIR"), "/dev/shm", tempfile.gettempdir(), "/tmp"]
    return [b for b in dict.fromkeys(bases) if b]


def make_run_root(prefix: str = "stdpkt-", *, need_bytes: int = 512 << 20) -> Path:
    """Create a private directory for one run (instances' memory files, sockets, logs).

    ``$STDPKT_RUNDIR`` wins; otherwise /dev/shm when it is exec-mappable and roomy
    (Binder's is small or noexec), else ``$TMPDIR`` or /tmp.  A tmpfs that fills
    up kills its guests, so the check asks for room, not just existence.

    The directory has an owner file (this process) from before it exists, and
    stale run directories of this user whose owners are gone are swept first:
    see :mod:`stdpkt_lab.engine.ownership`.
    """
    from .ownership import create_owned_dir, sweep

    candidates = run_dir_bases()
    sweep(candidates)
    for base in candidates:
        if _usable_for_guest_memory(base, need_bytes):
            return create_owned_dir(base, prefix)
    raise EnvironmentProblem(
        "no usable directory for guest memory (needs write+exec and "
        f"{need_bytes >> 20} MiB free): tried {', '.join(c for c in candidates if c)}; "
        "set STDPKT_RUNDIR"
    )
