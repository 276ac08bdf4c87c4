"""The files a guest reads from its run directory: its configuration, scripts, programs.

The guest init binds the instance's run directory at :data:`GUEST_RUN_DIR` (hostfs). A
host file the guest cannot reach by its own path (under a directory the guest covers
with its own tmpfs, or unreadable to an unprivileged kernel) is copied in.
"""

from __future__ import annotations

import os
import shlex
import shutil
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import EnvironmentProblem
from .ipv6 import ipv6_setup
from .paths import helper, lkl_dir
from .spec import InstanceSpec, tcp_buffers

if TYPE_CHECKING:
    from .confine import Confinement

__all__ = ["GUEST_RUN_DIR", "copy_into", "guest_file", "guest_init", "guest_view", "hidden_in_guest",
           "world_readable", "write_guest_files"]

#: Where the guest init binds the instance's run directory (lkl/init.sh).
GUEST_RUN_DIR = "/run/stdpkt/host"


def guest_init() -> str:
    """The guest's PID 1: ``stdpkt-init`` (lkl/init.c: the same steps as lkl/init.sh with
    system calls instead of programs, so tens of ms faster under ptrace) when it is built,
    else ``lkl/init.sh``.  ``$STDPKT_INIT`` = ``shell`` or ``c`` chooses explicitly."""
    choice = os.environ.get("STDPKT_INIT", "auto").lower()
    if choice not in ("auto", "c", "shell"):
        raise EnvironmentProblem(f"STDPKT_INIT={choice!r}: expected auto, c or shell")
    if choice != "shell":
        try:
            return helper("stdpkt-init")
        except EnvironmentProblem:
            if choice == "c":
                raise
    return str(lkl_dir() / "init.sh")


def write_guest_files(
    spec: InstanceSpec,
    run_dir: Path,
    confinement: Confinement,
    *,
    conf_name: str = "guest.env",
    boot_ipv6: bool,
    pooled_blank: bool = False,
) -> tuple[str, str]:
    """Write what the guest init reads for ``spec`` into ``run_dir``; return the init's host
    path and the configuration file's.  ``boot_ipv6``: what the kernel command line set;
    ``pooled_blank``: a pooled instance still waiting for its configuration."""
    init = guest_init()
    agent = helper("stdpkt-agent") if spec.agent else ""
    # The script is copied: the guest's own tmpfs hides the host's /tmp, and the
    # kernel's user may not be able to read the original.
    script = copy_into(str(spec.script.resolve()), run_dir) if spec.script else ""
    if confinement.needs_private_copies and not world_readable(init):
        raise EnvironmentProblem(
            f"{init} is not readable by the unprivileged kernel user: install stdpkt-lab "
            "under a world-readable path, or use a host kernel with Landlock"
        )
    if agent and (confinement.needs_private_copies or hidden_in_guest(agent)):
        agent = copy_into(agent, run_dir)
    values: dict[str, str] = {
        "STDPKT_NAME": spec.name,
        "STDPKT_NIF": str(len(spec.ports)),
        "STDPKT_SCRIPT": script,
        "STDPKT_ONESHOT": "1" if spec.oneshot else "0",
        "STDPKT_AGENT": agent,
        "STDPKT_CWD": spec.cwd or os.getcwd(),
        # ports that announce themselves (gratuitous ARP) when they come up: not taps,
        # whose kernel end errors out for good if written before the host side is up
        "STDPKT_ANNOUNCE": " ".join(str(p.index) for p in spec.ports if p.tap is None),
        "STDPKT_VHOST": " ".join(str(p.index) for p in spec.ports if p.vhost),
        "STDPKT_TCP_BUFFERS": tcp_buffers(),
    }
    for port in spec.ports:
        if port.address is not None:
            values[f"IP{port.index}"] = str(port.address.ip)
            values[f"NETMASK{port.index}"] = str(port.address.network.prefixlen)
        values[f"MTU{port.index}"] = str(port.mtu)
    if spec.gateway is not None:
        values["GATEWAY"] = str(spec.gateway)
    if spec.hosts is not None:
        guest_file(run_dir / "hosts", spec.hosts)
        values["STDPKT_HOSTS"] = f"{GUEST_RUN_DIR}/hosts"
    if spec.routes:
        guest_file(run_dir / "routes", "".join(f"route add {r}\n" for r in spec.routes))
        values["STDPKT_ROUTES"] = f"{GUEST_RUN_DIR}/routes"
    setup = ipv6_setup(spec.ipv6, booted_with=boot_ipv6) + (spec.setup or "")
    if setup:
        guest_file(run_dir / "setup.sh", setup)
        values["STDPKT_SETUP"] = f"{GUEST_RUN_DIR}/setup.sh"
    if pooled_blank:
        values["STDPKT_POOL"] = "1"
    for key, value in spec.env.items():
        values.setdefault(key, value)
    conf = run_dir / conf_name
    guest_file(conf, "".join(f"export {k}={shlex.quote(v)}\n" for k, v in values.items()))
    return init, str(conf)


def copy_into(path: str, run_dir: Path) -> str:
    """Copy a host file into the run directory; return its path as the guest sees it.

    A copy that is already there (same size and modification time: ``copy2`` keeps the
    source's) is kept: a pooled instance's configuration asks again for the agent it runs.
    A copy made again replaces the old one by renaming a new file over it: the guest may
    be running the old one, and rewriting it in place changed the program under a process
    still loading it (the pooled agent, started at boot), which died without a word."""
    name = "guest-" + os.path.basename(path)
    there, source = run_dir / name, os.stat(path)
    try:
        have = there.stat()
        if (have.st_size, have.st_mtime_ns) == (source.st_size, source.st_mtime_ns):
            return f"{GUEST_RUN_DIR}/{name}"
    except FileNotFoundError:
        pass
    fresh = run_dir / f".{name}.{os.getpid()}.{threading.get_ident()}"
    try:
        shutil.copy2(path, fresh)
        os.replace(fresh, there)
    except BaseException:
        fresh.unlink(missing_ok=True)
        raise
    return f"{GUEST_RUN_DIR}/{name}"


#: Host directories the guest covers with its own tmpfs (lkl/init.sh) or devtmpfs.
_GUEST_MOUNTS = ("/tmp", "/run", "/root", "/var/lib", "/var/log", "/dev")


def guest_view(path: str | Path, run_dir: Path, confinement: Confinement) -> str:
    """Where a guest sees the host file ``path``: the path itself, or a copy in its run
    directory when the guest's mounts hide it or the kernel's user could not read it."""
    host = str(Path(path).resolve())
    if not hidden_in_guest(host) and not confinement.needs_private_copies:
        return host
    guest = copy_into(host, run_dir)
    confinement.prepare_run_dir(run_dir)
    return guest


def hidden_in_guest(path: str) -> bool:
    """True if the guest cannot see ``path`` once its init has mounted its own filesystems
    (a checkout under /tmp, say): such files are handed over through the run directory."""
    return any(path == m or path.startswith(m + "/") for m in _GUEST_MOUNTS)


def world_readable(path: str) -> bool:
    """True if any user can reach and read ``path`` (the kernel execs init by its host path,
    before the run directory is mounted, so an unprivileged kernel must be able to read it)."""
    p = Path(path)
    if not p.stat().st_mode & 0o004:
        return False
    return all(parent.stat().st_mode & 0o001 for parent in p.parents)


def guest_file(path: Path, text: str) -> None:
    """A file the guest reads through hostfs: 0644 whatever the umask (a umask of 077 made
    /etc/hosts unreadable to guest programs; the run directory itself is 0700)."""
    path.write_text(text)
    path.chmod(0o644)
