"""The paper's variables (``IFn``, ``IPn``, ``NETMASKn``, ``MTUn``, ``GATEWAY``) → an instance.

``IFn`` is ``"RX|TX"`` (two paths: ``/dev/stdin``, ``/dev/stdout`` or a named
pipe, created if missing), ``tap:NAME`` (a host tap device; root only), or a
pcap stream over TCP: ``tcp:HOST:PORT`` / ``tcp-listen:[ADDR:]PORT`` (and
``tls:``/``tls-listen:``), which need ``STDPKT_LINK_TOKEN`` (engine/streams.py).
Interface ``n`` is ``eth<n>`` inside the instance.  Everything is checked
before any kernel boots; a problem raises :class:`~stdpkt_lab.errors.VariableError`
naming the variable.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from ..errors import VariableError
from .spec import DEFAULT_PORT_KIND, MAX_MTU, MAX_PORTS, PORTS_VARIABLE, InstanceSpec, PortSpec, port_kind
from .streams import TOKEN_VARIABLE, StreamEnds, parse_stream

__all__ = ["PipeEnds", "RunConfig", "parse_variables", "PAPER_VARIABLES"]

PAPER_VARIABLES = ("IFn", "IPn", "NETMASKn", "MTUn", "GATEWAY")
# ASCII digits only, whole name (str.isdigit and \d also take "²" and "١", which int() refuses
# or reads as another number; "$" would also match before a trailing newline)
_INDEXED = re.compile(r"(IF|IP|NETMASK|MTU)([0-9]+)\Z")
# at most 9 digits: int() refuses strings of over 4300 digits with a ValueError
_NUMBER = re.compile(r"[0-9]{1,9}\Z")
_TAP = re.compile(r"^tap:([A-Za-z0-9_.-]{1,15})$")


@dataclass(frozen=True)
class PipeEnds:
    """Where port ``index`` reads frames from (``rx``) and writes them to (``tx``)."""

    index: int
    rx: str
    tx: str


@dataclass(frozen=True)
class RunConfig:
    """A parsed ``stdpkt run``: the instance and the pipes of its socket ports."""

    spec: InstanceSpec
    pipes: tuple[PipeEnds, ...]
    streams: tuple[StreamEnds, ...] = ()


def has_net_admin() -> bool:
    """True if this process may create tap devices (CAP_NET_ADMIN in its effective set)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("CapEff:"):
                    return bool(int(line.split()[1], 16) & (1 << 12))
    except OSError:
        pass
    return False


def _parse_if(name: str, value: str) -> tuple[str | None, PipeEnds | StreamEnds | None]:
    stream = parse_stream(name, value)
    if stream is not None:
        return None, stream
    tap = _TAP.match(value)
    if tap:
        if not has_net_admin():
            raise VariableError(
                name, f"{value!r}: tap devices need root (CAP_NET_ADMIN); use 'RX|TX' pipes instead"
            )
        return tap.group(1), None
    if value.startswith("tap:"):
        raise VariableError(name, f"bad tap device name in {value!r} (1-15 of A-Z a-z 0-9 _ . -)")
    parts = value.split("|")
    if len(parts) != 2 or not all(p.strip() for p in parts):
        raise VariableError(
            name, f"expected 'RX|TX' (two paths joined by one '|'), 'tap:NAME', "
            f"'tcp:HOST:PORT' or 'tcp-listen:[ADDR:]PORT', got {value!r}"
        )
    return None, PipeEnds(int(name[2:]), parts[0].strip(), parts[1].strip())


def _parse_ip(name: str, value: str) -> ipaddress.IPv4Address:
    try:
        return ipaddress.IPv4Address(value.strip())
    except ValueError:
        raise VariableError(name, f"{value!r} is not an IPv4 address") from None


def _parse_prefix(name: str, value: str) -> int:
    value = value.strip()
    if _NUMBER.match(value) and 0 <= int(value) <= 32:
        return int(value)
    try:
        return ipaddress.IPv4Network(f"0.0.0.0/{value}").prefixlen
    except ValueError:
        raise VariableError(name, f"{value!r} is neither a prefix length 0-32 nor a netmask") from None


def _parse_mtu(name: str, value: str) -> int:
    if not _NUMBER.match(value.strip()) or not 68 <= int(value) <= MAX_MTU:
        raise VariableError(name, f"{value!r} is not an MTU between 68 and {MAX_MTU}")
    return int(value)


def parse_variables(
    env: Mapping[str, str],
    *,
    name: str,
    script: Path | None,
    oneshot: bool = False,
    mem_mb: int = 128,
) -> RunConfig:
    """Check the paper's variables in ``env`` and build the instance they describe."""
    indexed: dict[str, dict[int, str]] = {"IF": {}, "IP": {}, "NETMASK": {}, "MTU": {}}
    for key, value in env.items():
        match = _INDEXED.match(key)
        if match:
            digits = match.group(2)
            prefix, number = match.group(1), int(digits) if len(digits) <= 9 else MAX_PORTS
            if number >= MAX_PORTS:
                raise VariableError(key, f"only {prefix}0..{prefix}{MAX_PORTS - 1} exist")
            indexed[prefix][number] = value
    ifs = indexed["IF"]
    for number in sorted(ifs):
        if number > 0 and number - 1 not in ifs:
            raise VariableError(f"IF{number}", f"is set but IF{number - 1} is not (number them from 0)")
    for prefix in ("IP", "NETMASK", "MTU"):
        for number in indexed[prefix]:
            if number not in ifs:
                raise VariableError(f"{prefix}{number}", f"is set but IF{number} is not")

    ports: list[PortSpec] = []
    pipes: list[PipeEnds] = []
    streams: list[StreamEnds] = []
    for number in sorted(ifs):
        tap, ends = _parse_if(f"IF{number}", ifs[number])
        address = None
        if number in indexed["IP"]:
            ip = _parse_ip(f"IP{number}", indexed["IP"][number])
            prefix = _parse_prefix(f"NETMASK{number}", indexed["NETMASK"].get(number, "24"))
            address = ipaddress.IPv4Interface(f"{ip}/{prefix}")
        elif number in indexed["NETMASK"]:
            raise VariableError(f"NETMASK{number}", f"is set but IP{number} is not")
        mtu = _parse_mtu(f"MTU{number}", indexed["MTU"][number]) if number in indexed["MTU"] else 1500
        vhost, offload = (False, True) if tap is not None else _port_kind(env)
        ports.append(PortSpec(number, address, mtu, tap=tap, vhost=vhost, offload=offload))
        if isinstance(ends, StreamEnds):
            if not env.get(TOKEN_VARIABLE):
                raise VariableError(f"IF{number}", f"{ifs[number]!r} needs {TOKEN_VARIABLE}: the same "
                                    "secret on both ends of the link authenticates it")
            streams.append(ends)
        elif ends is not None:
            pipes.append(ends)

    gateway = _parse_ip("GATEWAY", env["GATEWAY"]) if env.get("GATEWAY") else None
    if script is not None:
        if not script.exists():
            raise VariableError("SCRIPT", f"{script}: no such file")
        if not script.is_file():
            raise VariableError("SCRIPT", f"{script}: not a regular file")
        try:
            script.open("rb").close()
        except OSError as exc:
            raise VariableError("SCRIPT", f"{script}: cannot read ({exc.strerror})") from None
    passthrough = {
        k: v for k, v in env.items()
        if re.match(r"(IP|NETMASK|MTU)[0-9]+\Z|GATEWAY\Z", k)
    }
    try:
        spec = InstanceSpec(
            name=name,
            ports=tuple(ports),
            gateway=gateway,
            script=script,
            oneshot=oneshot,
            env=passthrough,
            mem_mb=mem_mb,
        )
    except ValueError as exc:
        raise VariableError("instance", str(exc)) from None
    return RunConfig(spec, tuple(pipes), tuple(streams))


def _port_kind(env: Mapping[str, str]) -> tuple[bool, bool]:
    try:
        return port_kind(env.get(PORTS_VARIABLE) or DEFAULT_PORT_KIND)
    except ValueError as e:
        raise VariableError(PORTS_VARIABLE, str(e).split(": ", 1)[1]) from None
