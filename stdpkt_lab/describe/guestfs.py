"""Shell text that gives an instance a writable root and the host's services.

Every instance boots with the host's filesystem as a read-only root and tmpfs on
/run, /tmp, /root, /var/lib, /var/log (lkl/init.c).  Kinds that need more (FRR writes
/etc/frr and /var/tmp/frr, a Kathará lab copies files anywhere and wants /shared)
put :func:`writable_root` in their set-up: an overlayfs whose lower layer is the
host root (hostfs, read-only) and whose upper layer is guest tmpfs, made the root of
every process with ``pivot_root`` (which also moves the already-running agent).  The
guest writes only its own memory; the host's files are never written.

:func:`service_shims` installs ``systemctl`` and ``service`` (lkl/guest-bin/stdpkt-service)
first on the guest's PATH.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from ..engine.paths import helper, lkl_dir
from ..errors import EnvironmentProblem

__all__ = ["writable_root", "service_shims", "heredoc", "SHIM_DIR"]

#: The directory lkl/init.c puts first on every guest's PATH.
SHIM_DIR = "/run/stdpkt/bin"

# mounts lkl/init.c makes; they move into the new root (submounts move with them)
_MOVED = ("/proc", "/sys", "/dev", "/run", "/tmp", "/root", "/var/lib", "/var/log")


def _rootswitch() -> str | None:
    """Host path of stdpkt-rootswitch (lkl/rootswitch.c) if built."""
    try:
        return helper("stdpkt-rootswitch")
    except EnvironmentProblem:
        return None


def writable_root() -> str:
    """Set-up text: the root becomes an overlay (host root below, guest tmpfs above).

    ``stdpkt-rootswitch`` does it with system calls (~1.4 s less per instance under
    ptrace); the shell steps below are its fallback when the guest cannot reach it (a
    checkout under /tmp, say, which the guest's own tmpfs hides)."""
    moves = "; ".join(f"mount -n --move {m} /mnt/new{m}" for m in _MOVED)
    fast = _rootswitch()
    first = f"[ -x {fast} ] && {fast} ||\n" if fast else ""
    return (
        "# writable root: overlayfs (lower: the host root, read-only; upper: guest tmpfs)\n"
        + first
        + "if ! grep -q ' / overlay ' /proc/mounts; then\n"
        "  modprobe overlay\n"
        "  umount -n /etc/hosts 2>/dev/null\n"
        "  mount -n -t tmpfs -o mode=755 stdpkt-root /mnt &&\n"
        "  mkdir -p /mnt/upper /mnt/work /mnt/new &&\n"
        "  mount -n -t overlay -o lowerdir=/,upperdir=/mnt/upper,workdir=/mnt/work stdpkt-root /mnt/new &&\n"
        f"  {{ {moves}; true; }} &&\n"
        "  cd /mnt/new && mkdir -p .oldroot && pivot_root . .oldroot && cd / &&\n"
        "  umount -n -l /.oldroot && rmdir /.oldroot ||\n"
        "  echo '@@STDPKT WARN writable root failed: the root stays read-only'\n"
        "  [ -f /run/stdpkt/host/hosts ] && cat /run/stdpkt/host/hosts > /etc/hosts\n"
        "fi\n"
    )


@lru_cache(maxsize=1)
def _shim_text() -> str:
    base = lkl_dir()
    for path in (base / "guest-bin" / "stdpkt-service", base / "stdpkt-service"):
        if path.is_file():
            return path.read_text()
    raise EnvironmentProblem("lkl/guest-bin/stdpkt-service is missing: reinstall stdpkt-lab")


def heredoc(target: str, text: str, *, mode: str | None = None) -> str:
    """Shell text writing ``text`` to ``target`` (quoted here-document)."""
    if not text.endswith("\n"):
        text += "\n"
    end = "STDPKT_EOF"
    while end in text.splitlines():
        end += "_"
    out = f"cat > {target} <<'{end}'\n{text}{end}\n"
    if mode:
        out += f"chmod {mode} {target}\n"
    return out


def service_shims() -> str:
    """Set-up text installing ``systemctl`` and ``service`` in :data:`SHIM_DIR`."""
    target = f"{SHIM_DIR}/stdpkt-service"
    return (
        "# systemctl / service without systemd (lkl/guest-bin/stdpkt-service)\n"
        + heredoc(target, _shim_text(), mode="755")
        + f"ln -sf {target} {SHIM_DIR}/systemctl; ln -sf {target} {SHIM_DIR}/service\n"
        # Netkit-era startups call /etc/init.d/quagga or /etc/init.d/zebra (writable root only)
        + "if grep -q ' / overlay ' /proc/mounts; then for s in quagga zebra; do\n"
        + f"  [ -e /etc/init.d/$s ] || ln -s {target} /etc/init.d/$s; done; fi\n"
    )


def shim_source() -> Path:
    """Where the shim's source is (for documentation and tests)."""
    return lkl_dir() / "guest-bin" / "stdpkt-service"
