"""The NF kinds every lab has: host, router, nat, firewall, lb, bridge, script.

Each is a real Linux configuration run inside its instance (``iptables`` is
the legacy backend there; modules load on demand).  Parameters are
documented in each class's docstring; :data:`default_registry` holds them all.
"""

from __future__ import annotations

import re
from typing import Any, ClassVar

from .devices import CollisionDomain, KatharaDevice
from .frr import Frr
from .ipvs import LoadBalancer
from .kinds import KindContext, KindRegistry, NFKind, Param, ScriptKind, sh, str_list
from .netfilter import Firewall, Nat

__all__ = [
    "Host",
    "Router",
    "Nat",
    "Firewall",
    "LoadBalancer",
    "Bridge",
    "Filter",
    "Script",
    "CATALOGUE",
    "default_registry",
]

_SERVICE = re.compile(r"^(http|iperf3)(?::(\d{1,5}))?$")
# busybox httpd gives IPv4 peers as [::ffff:a.b.c.d]: print the plain address
_WHOAMI = (
    "#!/bin/sh\n"
    "addr=${REMOTE_ADDR#\\[}; addr=${addr%\\]}; addr=${addr#::ffff:}\n"
    'printf "Content-Type: text/plain\\r\\n\\r\\n%s\\n" "$addr"\n'
)


def _services(value: Any) -> list[str]:
    items = str_list(value)
    for item in items:
        m = _SERVICE.match(item)
        if not m or (m.group(2) and not 1 <= int(m.group(2)) <= 65535):
            raise ValueError(f"{item!r} is not 'http' or 'iperf3' (optionally ':PORT')")
    return items


class Host(NFKind):
    """End system (at most 2 links; never routes for others).

    Parameters:
        serve: what to serve: ``"http"`` — busybox httpd on port 80 serving
            /tmp/www (an index.html saying ``hello from NAME``, and
            ``/cgi-bin/whoami`` printing the client address it sees);
            ``"iperf3"`` — ``iperf3 -s -D`` (port 5201); ``"http:8080"`` /
            ``"iperf3:5202"`` choose the port; a list serves several.

    A host with one link gets a default gateway (the router on its link).
    """

    name = "host"
    min_ports, max_ports = 0, 2
    transit = False
    params = {
        "serve": Param(None, "'http', 'iperf3' (':PORT' optional) or a list", validator=_services)
    }

    def setup(self, ctx: KindContext) -> str:
        lines: list[str] = []
        for item in ctx.params["serve"] or []:
            kind, _, port = item.partition(":")
            if kind == "http":
                lines += [
                    sh("mkdir", "-p", "/tmp/www/cgi-bin"),
                    f"echo {sh('hello from ' + ctx.name)} > /tmp/www/index.html",
                    f"printf '%s' {sh(_WHOAMI)} > /tmp/www/cgi-bin/whoami",
                    sh("chmod", "755", "/tmp/www/cgi-bin/whoami"),
                    sh("busybox", "httpd", "-p", port or "80", "-h", "/tmp/www"),
                ]
            else:
                lines.append(sh("iperf3", "-s", "-D", *(["-p", port] if port else [])))
        return "\n".join(lines) + "\n" if lines else ""


class Router(NFKind):
    """IPv4 router: forwards between its ports with the static routes derived from the graph.

    No parameters; use the node attributes ``routes=[...]`` / ``gateway=`` to override routes.
    """

    name = "router"
    min_ports = 1


class Bridge(NFKind):
    """Bump in the wire: one Linux bridge ``br0`` over all its ports, no addresses.

    Addressing treats it as transparent: the links on all its sides form one
    L2 segment with one subnet.  No parameters.
    """

    name = "bridge"
    min_ports = 2
    transit = False
    transparent = True

    def setup(self, ctx: KindContext) -> str:
        lines = [
            "# bridge: one L2 segment over every port",
            sh("ip", "link", "add", "name", "br0", "type", "bridge"),
        ]
        lines += [sh("ip", "link", "set", "dev", p.device, "master", "br0") for p in ctx.ports]
        lines.append(sh("ip", "link", "set", "dev", "br0", "up"))
        return "\n".join(lines) + "\n"


class Filter(Firewall):
    """Transparent stateful firewall: a bridge (``br0`` over both ports, no addresses) whose
    bridged IPv4 traffic goes through iptables (br_netfilter; ``iptables-legacy``, since
    Debian's UML kernel has no nf_tables for IPv4 and no ``ebtables-legacy`` is installed).

    Parameters are the firewall's: ``allow``, ``deny``, ``rules`` (see ``firewall``); with
    none given everything passes (an ``allow=["any"]`` default), so it can be inserted into a
    running link and tightened later.  Replies of accepted flows pass (conntrack).
    """

    name = "filter"
    min_ports, max_ports = 2, 2
    transit = False
    transparent = True

    def derive(self, ctx: KindContext) -> dict[str, Any]:
        if ctx.params["allow"] is None and ctx.params["deny"] is None and ctx.params["rules"] is None:
            return {"allow": ["any"]}
        return {}

    def setup(self, ctx: KindContext) -> str:
        lines = [
            Bridge().setup(ctx).rstrip("\n"),
            "# filter: bridged IPv4 through iptables",
            sh("modprobe", "br_netfilter"),
            sh("sysctl", "-qw", "net.bridge.bridge-nf-call-iptables=1"),
        ]
        return "\n".join(lines) + "\n" + super().setup(ctx)


class Script(ScriptKind):
    """The user's own shell script, run as root in the instance like ``stdpkt run`` runs one.

    Parameters:
        script: host path of the script (read when the chain is planned).
        text: the script itself, instead of a path.
        UPPER_CASE extra attributes (``RATE="1mbit"``) are exported as
        environment variables, next to ``IPn``/``NETMASKn``/``MTUn``/``GATEWAY``.

    The script runs before the instance reports ready: end it, and put what
    must keep running in the background (``cmd &``).
    """

    name = "script"
    params = {
        "script": Param(None, "host path of a shell script", type=str),
        "text": Param(None, "shell script text", type=str),
    }
    _internal: ClassVar[frozenset[str]] = frozenset({"script", "text"})

    def validate(self, ctx: KindContext) -> None:
        if (ctx.params["script"] is None) == (ctx.params["text"] is None):
            raise ctx.error("script needs exactly one of script=PATH or text=SHELL_TEXT")
        self.script(ctx)  # an unreadable file fails here, before anything boots

    def script(self, ctx: KindContext) -> tuple[str, str]:
        if ctx.params["text"] is not None:
            return "text", str(ctx.params["text"])
        return self.read_script(ctx, str(ctx.params["script"]))


CATALOGUE: tuple[type[NFKind], ...] = (
    Host, Router, Nat, Firewall, LoadBalancer, Bridge, Filter, Script,
    Frr, KatharaDevice, CollisionDomain,  # routing daemons; imported Kathará labs
)

#: The registry ``build_plan`` uses unless given another (``default_registry.copy()``
#: gives a private one to extend).
default_registry = KindRegistry(CATALOGUE)
