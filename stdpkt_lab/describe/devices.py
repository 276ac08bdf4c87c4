"""The NF kinds of an imported Netkit/Kathará lab: ``kathara`` devices and collision ``domain``s.

A ``kathara`` device configures itself, as in Kathará: no address, route or gateway is
derived for it (``addressed = False``); its startup script does ``ip addr add``.  Its
set-up, run as root in the instance before it reports ready, does what Kathará's
container start does (``Kathara/manager/docker/DockerMachine.py``), in this order:

1. the writable root (:func:`~stdpkt_lab.describe.guestfs.writable_root`), then the
   device's folder ``DEV/`` and the lab's ``shared/`` (at ``/shared``) unpacked into it;
   ``/etc/hosts`` = localhost unless ``DEV/etc/hosts`` exists;
2. Kathará's defaults: IPv4 forwarding on, ``rp_filter`` 0 (all, default, lo and every
   interface), ``icmp_ratelimit`` 0; IPv6 off unless ``ipv6=True`` (then forwarding
   on, ``accept_ra`` 0); then the lab's ``sysctl`` lines;
3. ``systemctl``/``service`` (the host's daemons) first on PATH; ``/etc/frr`` owned by
   frr and ``/var/www`` world-writable as Kathará does;
4. ``shared.startup`` (log: /var/log/shared.log), ``DEV.startup`` (/var/log/startup.log),
   each with ``set -x`` and the device shell (bash), then each ``exec`` command, then
   ``touch /tmp/EOS``.  A startup still running after ``startup_timeout`` seconds is
   left running in the background with a warning (Kathará runs it detached).

``DEV.shutdown`` / ``shared.shutdown`` are written to ``/run/stdpkt/kathara/shutdown``;
the lab runs it before stopping the instance (graph attribute ``on_stop``).

A ``domain`` is a collision domain shared by 1 or 3+ devices: an instance that is one
Linux bridge over all its ports (IPv6 off so it sends nothing of its own).  A domain
with exactly two devices is a plain link.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping
from typing import Any

from .guestfs import heredoc, service_shims, writable_root
from .kinds import KindContext, NFKind, Param, sh, str_list

__all__ = ["KatharaDevice", "CollisionDomain", "SHUTDOWN_PATH"]

SHUTDOWN_PATH = "/run/stdpkt/kathara/shutdown"
_DIR = "/run/stdpkt/kathara"


def _sysctls(value: Any) -> dict[str, str]:
    if not isinstance(value, Mapping):
        raise ValueError(f"expected a mapping of sysctl names to values, got {value!r}")
    out = {}
    for key, val in value.items():
        key = str(key)
        if not key.startswith("net.") or not all(p and p.replace("_", "a").replace("-", "a").isalnum()
                                                 for p in key.split(".")):
            raise ValueError(f"sysctl {key!r}: only net.* names are allowed (as in Kathará)")
        out[key] = str(val)
    return out


def _write_sysctl(key: str, value: str, *, quiet: bool = False) -> str:
    path = "/proc/sys/" + key.replace(".", "/")
    if quiet:  # absent (IPv6 not loaded): nothing to turn off
        return f"[ -e {path} ] && echo {shlex.quote(value)} > {path} 2>/dev/null\n"
    return (f"[ -e {path} ] && echo {shlex.quote(value)} > {path} 2>/dev/null || "
            f"echo {shlex.quote(f'@@STDPKT WARN sysctl {key}={value} could not be set')}\n")


def _script_runner(name: str, path: str, log: str, timeout: int) -> str:
    """Run a startup file like Kathará (``set -x``, bash, output to ``log``), bounded wait."""
    body = (
        f"printf 'set -x\\n\\n' | cat - {path}.src > {path}; chmod u+x {path}\n"
        f"timeout_s={timeout}\n"
        f"bash -c 'bash \"$1\" >> \"$2\" 2>&1 </dev/null & sp=$!; sleep \"$3\" & wp=$!\n"
        "wait -n $sp $wp; st=$?; if kill -0 $sp 2>/dev/null; then exit 124; fi\n"
        f"kill $wp 2>/dev/null; exit $st' _ {path} {log} \"$timeout_s\"\n"
        "rc=$?\n"
        f"if [ $rc = 124 ]; then echo \"@@STDPKT WARN {name} still running after $timeout_s s: "
        "left running in the background\"\n"
        f"elif [ $rc != 0 ]; then echo \"@@STDPKT WARN {name} exited with status $rc (see {log})\"; fi\n"
    )
    return body


class KatharaDevice(NFKind):
    """A device of an imported Netkit/Kathará lab (see :func:`stdpkt_lab.load_kathara`).

    Parameters (filled by the importer; usable by hand too):
        image: the lab's ``DEV[image]`` (informational: the host's programs are used).
        startup / shutdown: the ``DEV.startup`` / ``DEV.shutdown`` text.
        shared_startup / shared_shutdown: ``shared.startup`` / ``shared.shutdown`` text.
        exec: ``DEV[exec]`` commands, run after the startup.
        sysctl: ``{"net.ipv4.x": "1"}`` from ``DEV[sysctl]`` lines.
        ipv6: ``DEV[ipv6]``: IPv6 on (default off, as Kathará).
        files: base64 of a gzip tar of ``DEV/`` (and ``shared/`` under ``shared/``),
            unpacked over the writable root.
        startup_timeout: seconds to wait for the startup before leaving it in the background.
    """

    name = "kathara"
    addressed = False
    params = {
        "image": Param(None, "Kathará image name (informational)", type=str),
        "startup": Param(None, "DEV.startup text", type=str),
        "shutdown": Param(None, "DEV.shutdown text", type=str),
        "shared_startup": Param(None, "shared.startup text", type=str),
        "shared_shutdown": Param(None, "shared.shutdown text", type=str),
        "exec": Param(None, "DEV[exec] commands", validator=str_list),
        "sysctl": Param(None, "net.* sysctls", validator=_sysctls),
        "ipv6": Param(False, "IPv6 on", type=bool),
        "files": Param(None, "base64 gzip tar of DEV/ (and shared/)", type=str),
        "startup_timeout": Param(60, "seconds before a running startup is left in the background",
                                 type=int),
    }

    def setup(self, ctx: KindContext) -> str:
        p = ctx.params
        out = [f"# kathara device {ctx.name} (image {p['image'] or 'default'})\n", writable_root()]
        out.append(f"mkdir -p {_DIR}\n")
        if p["files"]:
            out.append("# DEV/ and shared/ from the lab folder\n")
            out.append(f"base64 -d > {_DIR}/files.tgz <<'STDPKT_FILES'\n{p['files']}\nSTDPKT_FILES\n")
            out.append(f"tar xzf {_DIR}/files.tgz -C / --no-same-owner --no-same-permissions "
                       f"|| echo '@@STDPKT WARN {ctx.name}: unpacking DEV/ failed'\n")
        out.append("[ -d /shared ] || mkdir -p /shared\n")
        out.append("# Kathará's defaults\n")
        defaults = {
            "net.ipv4.ip_forward": "1",
            "net.ipv4.icmp_ratelimit": "0",
            "net.ipv4.conf.all.rp_filter": "0",
            "net.ipv4.conf.default.rp_filter": "0",
            "net.ipv4.conf.lo.rp_filter": "0",
        }
        for port in ctx.ports:
            defaults[f"net.ipv4.conf.{port.device}.rp_filter"] = "0"
        quiet: set[str] = set()
        if p["ipv6"]:
            out.append("modprobe ipv6 2>/dev/null\n")
            defaults.update({"net.ipv6.conf.all.disable_ipv6": "0",
                             "net.ipv6.conf.default.disable_ipv6": "0",
                             "net.ipv6.conf.all.forwarding": "1",
                             "net.ipv6.conf.all.accept_ra": "0",
                             "net.ipv6.icmp.ratelimit": "0"})
        else:
            quiet = {"net.ipv6.conf.all.disable_ipv6", "net.ipv6.conf.default.disable_ipv6",
                     "net.ipv6.conf.all.forwarding"}
            defaults.update({"net.ipv6.conf.all.disable_ipv6": "1",
                             "net.ipv6.conf.default.disable_ipv6": "1",
                             "net.ipv6.conf.all.forwarding": "0"})
        defaults.update(p["sysctl"] or {})
        out += [_write_sysctl(k, v, quiet=k in quiet) for k, v in defaults.items()]
        out.append(service_shims())
        out.append("[ -d /etc/frr ] && { chown -R frr:frr /etc/frr; chmod 640 /etc/frr/*; } 2>/dev/null\n")
        out.append("[ -d /var/www ] && chmod -R 777 /var/www/* 2>/dev/null\n")
        out.append("cd /\n")
        timeout = int(p["startup_timeout"])
        for label, text, log in (("shared.startup", p["shared_startup"], "/var/log/shared.log"),
                                 (f"{ctx.name}.startup", p["startup"], "/var/log/startup.log")):
            if text:
                path = f"{_DIR}/{label}"
                out.append(heredoc(f"{path}.src", text))
                out.append(_script_runner(label, path, log, timeout))
        for command in p["exec"] or []:
            out.append(f"echo {shlex.quote('++ ' + command)} >> /var/log/startup.log\n")
            out.append(f"bash -c {shlex.quote(command)} >> /var/log/startup.log 2>&1 </dev/null\n")
        shutdown = "".join(f"bash -c {shlex.quote(t)} >> /var/log/shutdown.log 2>&1\n"
                           for t in (p["shutdown"], p["shared_shutdown"]) if t)
        if shutdown:
            out.append(heredoc(SHUTDOWN_PATH, "#!/bin/sh\ncd /\n" + shutdown + "true", mode="755"))
        out.append("touch /tmp/EOS\n")
        return "".join(out)


class CollisionDomain(NFKind):
    """A Kathará collision domain with 1 or 3+ devices: one Linux bridge over every port.

    Transparent (its links form one L2 segment); IPv6 is off so it sends nothing itself.
    """

    name = "domain"
    min_ports = 1
    transit = False
    transparent = True
    mem_mb = 64

    def setup(self, ctx: KindContext) -> str:
        lines = [
            "# collision domain: one L2 segment over every port",
            "echo 1 > /proc/sys/net/ipv6/conf/all/disable_ipv6",
            "echo 1 > /proc/sys/net/ipv6/conf/default/disable_ipv6",
            sh("ip", "link", "add", "name", "br0", "type", "bridge", "forward_delay", "0"),
        ]
        lines += [sh("ip", "link", "set", "dev", p.device, "master", "br0") for p in ctx.ports]
        lines.append(sh("ip", "link", "set", "dev", "br0", "up"))
        return "\n".join(lines) + "\n"
