"""Netkit / Kathará lab folders → chain graphs: :func:`load_kathara`.

The formats, from Kathará's manual pages (``kathara-lab.conf(5)``, ``kathara-lab.dep(5)``,
``kathara-lab-dirs(7)``) and Netkit's ``lab.conf(5)``:

``lab.conf``
    ``DEV[N]="DOMAIN"`` or ``DEV[N]="DOMAIN/MAC"``: interface ``ethN`` of device ``DEV``
    is on collision domain ``DOMAIN`` (with that MAC).  ``DEV[option]=value`` for the
    options ``image``, ``mem``, ``ipv6``, ``sysctl`` (repeatable, ``net.*`` only),
    ``exec`` (repeatable), ``env`` (``NAME=VALUE``, repeatable), ``shell``, ``cpus``,
    ``bridged``, ``port``, ``num_terms``.  ``LAB_DESCRIPTION``, ``LAB_VERSION``,
    ``LAB_AUTHOR``, ``LAB_EMAIL``, ``LAB_WEB``, ``LAB_NAME`` are metadata.  ``#`` starts a
    comment (a whole line, or after a value).
``lab.dep``
    ``DEV: DEV1 DEV2``: ``DEV`` starts after ``DEV1`` and ``DEV2`` (here: once their
    startup has finished).
``DEV.startup``, ``DEV.shutdown``, ``shared.startup``, ``shared.shutdown``
    shell scripts run in the device at start and stop.
``DEV/``
    files copied over the device's root; ``shared/`` appears at ``/shared``.

What each device does is :class:`~stdpkt_lab.describe.devices.KatharaDevice`'s set-up.
Not supported, with a warning naming the line: ``bridged`` and ``port`` (a bridged
device gets a NAT'd interface to the host's network, and ``port`` publishes a device
port on the host: instances never reach the host network, only links of the lab),
``cpus`` (an instance is one uniprocessor kernel), ``shell`` other than bash/sh,
``num_terms`` (no terminals; use ``lab.exec`` / ``stdpkt lab exec``).  ``/shared`` is
the lab's ``shared/`` copied into each device: writes stay in that device (the guest
never writes the host filesystem).  A malformed line raises
:class:`~stdpkt_lab.errors.LabConfError` naming file and line, before anything boots.
"""

from __future__ import annotations

import base64
import io
import os
import re
import tarfile
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import networkx as nx

from ..engine.spec import MAX_PORTS
from ..errors import LabConfError
from .devices import SHUTDOWN_PATH
from .images import image_packages, known_image, missing_packages

__all__ = ["load_kathara", "parse_lab_conf", "parse_lab_dep", "KatharaLab", "KatharaWarning"]

_ASSIGN = re.compile(r"^(?P<dev>[A-Za-z0-9_][A-Za-z0-9_.-]{0,39})\[(?P<arg>[A-Za-z0-9_]+)\]\s*=\s*(?P<value>.*)$")
_META = re.compile(r"^LAB_(?P<key>[A-Z_]+)\s*=\s*(?P<value>.*)$")
_DOMAIN = re.compile(r"^[A-Za-z0-9_]+$")
_MAC = re.compile(r"^[0-9A-Fa-f]{2}(:[0-9A-Fa-f]{2}){5}$")
_META_KEYS = ("DESCRIPTION", "VERSION", "AUTHOR", "EMAIL", "WEB", "NAME")
_REPEATABLE = ("sysctl", "exec", "env")
#: option → why it is ignored
_UNSUPPORTED = {
    "bridged": "not supported: a bridged device gets a NAT'd interface to the host's network, "
               "and instances never reach the host network (only the lab's links)",
    "port": "not supported: publishing a device port on the host needs a bridged interface, "
            "and instances never reach the host network",
    "cpus": "ignored: each instance is one uniprocessor kernel",
    "num_terms": "ignored: there are no terminals (use lab.exec or `stdpkt lab exec`)",
}
_MAX_FILES = 8 << 20  # bytes of DEV/ + shared/ per device (they travel in its set-up)
DEFAULT_IMAGE = "kathara/base"


class KatharaWarning(UserWarning):
    """Something in a Kathará lab that is ignored or only approximated (names file and line)."""


@dataclass
class Interface:
    number: int
    domain: str
    mac: str | None
    line: int


@dataclass
class Device:
    name: str
    line: int
    interfaces: dict[int, Interface] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)
    option_lines: dict[str, int] = field(default_factory=dict)


@dataclass
class KatharaLab:
    """What ``lab.conf`` (and ``lab.dep``) say, before it becomes a graph."""

    path: Path
    devices: dict[str, Device]
    meta: dict[str, str]
    depends: dict[str, list[str]]
    warnings: list[str]


def _unquote(raw: str, file: str, line: int) -> str:
    text = raw.strip()
    if text[:1] in ("'", '"'):
        quote = text[0]
        end = text.find(quote, 1)
        if end < 0:
            raise LabConfError(f"unterminated {quote}-quoted value: {raw.strip()!r}", file=file, line=line)
        rest = text[end + 1:].strip()
        if rest and not rest.startswith("#"):
            raise LabConfError(f"unexpected text after the quoted value: {rest!r}", file=file, line=line)
        return text[1:end]
    value = re.split(r"\s+#", text, maxsplit=1)[0].strip()
    if not value or " " in value:
        raise LabConfError(f"value {text!r} must be one word or quoted", file=file, line=line)
    return value


def _warn(found: list[str], message: str) -> None:
    found.append(message)
    warnings.warn(KatharaWarning(message), stacklevel=3)


def parse_lab_conf(path: str | Path) -> KatharaLab:
    """Read ``path/lab.conf``; :class:`LabConfError` names the first malformed line."""
    folder = Path(path)
    conf = folder / "lab.conf"
    if not folder.is_dir():
        raise LabConfError("is not a directory (a Kathará lab is a folder with a lab.conf)", file=str(folder))
    if not conf.is_file():
        raise LabConfError("no lab.conf in this folder", file=str(folder))
    fname = str(conf)
    try:
        text = conf.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise LabConfError(f"cannot read: {exc}", file=fname) from None
    devices: dict[str, Device] = {}
    meta: dict[str, str] = {}
    found: list[str] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        m = _META.match(line)
        if m:
            key = m.group("key")
            if key not in _META_KEYS:
                _warn(found, f"{fname}:{number}: unknown lab metadata LAB_{key} (ignored)")
            meta[key.lower()] = _unquote(m.group("value"), fname, number)
            continue
        m = _ASSIGN.match(line)
        if not m:
            raise LabConfError(f"not DEVICE[ARG]=VALUE nor LAB_*=VALUE: {line!r}", file=fname, line=number)
        name, arg = m.group("dev"), m.group("arg")
        value = _unquote(m.group("value"), fname, number)
        dev = devices.setdefault(name, Device(name, number))
        if arg.isdigit():
            _interface(dev, int(arg), value, fname, number)
        else:
            _option(dev, arg.lower(), value, fname, number, found)
    if not devices:
        raise LabConfError("declares no device", file=fname)
    for dev in devices.values():
        numbers = sorted(dev.interfaces)
        if numbers != list(range(len(numbers))):
            gaps = [i for i in range(max(numbers) + 1) if i not in dev.interfaces]
            first = dev.interfaces[numbers[-1]].line
            raise LabConfError(
                f"device {dev.name!r} has eth{numbers[-1]} but no "
                f"{', '.join(f'eth{i}' for i in gaps)}: interfaces must be numbered 0..n-1",
                file=fname, line=first)
    depends = parse_lab_dep(folder, devices)
    return KatharaLab(folder, devices, meta, depends, found)


def _interface(dev: Device, number: int, value: str, fname: str, line: int) -> None:
    if number >= MAX_PORTS:
        raise LabConfError(f"{dev.name}[{number}]: at most {MAX_PORTS} interfaces (eth0..eth{MAX_PORTS - 1})",
                           file=fname, line=line)
    domain, _, mac = value.partition("/")
    if not _DOMAIN.match(domain):
        raise LabConfError(f"{dev.name}[{number}]: collision domain {domain!r} must be letters, digits, '_'",
                           file=fname, line=line)
    if mac and not _MAC.match(mac):
        raise LabConfError(f"{dev.name}[{number}]: MAC {mac!r} is not six hex bytes a:b:c:d:e:f",
                           file=fname, line=line)
    if mac and int(mac[:2], 16) & 1:
        raise LabConfError(f"{dev.name}[{number}]: MAC {mac!r} is a multicast address", file=fname, line=line)
    if number in dev.interfaces:
        raise LabConfError(f"{dev.name}[{number}] given twice (first on line {dev.interfaces[number].line})",
                           file=fname, line=line)
    dev.interfaces[number] = Interface(number, domain, mac.lower() or None, line)


def _bool(value: str, what: str, fname: str, line: int) -> bool:
    low = value.lower()
    if low in ("true", "yes", "1", "on"):
        return True
    if low in ("false", "no", "0", "off"):
        return False
    raise LabConfError(f"{what}={value!r}: expected true or false", file=fname, line=line)


def _mem_mb(value: str, dev: str, fname: str, line: int, found: list[str]) -> int:
    m = re.match(r"^(\d+)\s*([bkmgBKMG]?)$", value)
    if not m:
        raise LabConfError(f"{dev}[mem]={value!r}: expected a number with b, k, m or g (e.g. 128m)",
                           file=fname, line=line)
    scale = {"": 1 << 20, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}[m.group(2).lower()]
    mib = int(m.group(1)) * scale // (1 << 20)
    if mib < 64:
        _warn(found, f"{fname}:{line}: {dev}[mem]={value}: raised to 64 MiB (the least an instance boots with)")
        return 64
    if mib > 4096:
        _warn(found, f"{fname}:{line}: {dev}[mem]={value}: lowered to 4096 MiB (an instance's maximum)")
        return 4096
    return mib


def _option(dev: Device, arg: str, value: str, fname: str, line: int, found: list[str]) -> None:
    opts = dev.options
    if arg in _REPEATABLE:
        if arg == "sysctl":
            key, eq, val = value.partition("=")
            key = key.strip()
            if not eq or not key:
                raise LabConfError(f"{dev.name}[sysctl]={value!r}: expected net.NAME=VALUE", file=fname, line=line)
            if not key.startswith("net."):
                raise LabConfError(f"{dev.name}[sysctl]: {key!r}: only net.* sysctls may be set (as in Kathará)",
                                   file=fname, line=line)
            opts.setdefault("sysctl", {})[key] = val.strip()
        elif arg == "env":
            key, eq, val = value.partition("=")
            if not eq or not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", key):
                raise LabConfError(f"{dev.name}[env]={value!r}: expected NAME=VALUE", file=fname, line=line)
            opts.setdefault("env", {})[key] = val
        else:
            opts.setdefault("exec", []).append(value)
        return
    if arg in opts:
        _warn(found, f"{fname}:{line}: {dev.name}[{arg}] given again (line {dev.option_lines[arg]}); "
                     "the later value wins")
    dev.option_lines[arg] = line
    if arg == "image":
        opts["image"] = value
    elif arg == "mem":
        opts["mem_mb"] = _mem_mb(value, dev.name, fname, line, found)
    elif arg == "ipv6":
        opts["ipv6"] = _bool(value, f"{dev.name}[ipv6]", fname, line)
    elif arg == "shell":
        if os.path.basename(value) not in ("bash", "sh"):
            _warn(found, f"{fname}:{line}: {dev.name}[shell]={value}: ignored, startup files run with bash")
    elif arg in _UNSUPPORTED:
        _warn(found, f"{fname}:{line}: {dev.name}[{arg}]={value}: {_UNSUPPORTED[arg]}")
    else:
        _warn(found, f"{fname}:{line}: {dev.name}[{arg}]: unknown option (ignored)")


def parse_lab_dep(folder: str | Path, devices: Iterable[str]) -> dict[str, list[str]]:
    """``lab.dep`` → ``{device: [devices it starts after]}`` (empty without a lab.dep)."""
    dep = Path(folder) / "lab.dep"
    known = set(devices)
    if not dep.is_file():
        return {}
    fname = str(dep)
    out: dict[str, list[str]] = {}
    for number, raw in enumerate(dep.read_text(encoding="utf-8", errors="replace").splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        head, colon, tail = line.partition(":")
        head = head.strip()
        if not colon or not head or " " in head:
            raise LabConfError(f"not DEVICE: DEVICE1 DEVICE2 ...: {raw.strip()!r}", file=fname, line=number)
        for name in [head, *tail.split()]:
            if name not in known:
                raise LabConfError(f"{name!r} is not a device of lab.conf", file=fname, line=number)
        if head in tail.split():
            raise LabConfError(f"{head!r} depends on itself", file=fname, line=number)
        out.setdefault(head, []).extend(d for d in tail.split() if d not in out.get(head, []))
    order = nx.DiGraph([(d, n) for n, ds in out.items() for d in ds])
    try:
        cycle = nx.find_cycle(order)
    except nx.NetworkXNoCycle:
        return out
    raise LabConfError("dependency cycle: " + " -> ".join([cycle[0][0], *(v for _, v in cycle)]), file=fname)


def _pack(folder: Path, device: str, fname: str) -> str | None:
    """base64 gzip tar of ``DEV/`` (at /) and ``shared/`` (at /shared), or None if neither."""
    sources = [(folder / device, ""), (folder / "shared", "shared")]
    sources = [(p, prefix) for p, prefix in sources if p.is_dir()]
    if not sources:
        return None
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz", compresslevel=6) as tar:
        for src, prefix in sources:
            for entry in sorted(src.rglob("*")):
                rel = entry.relative_to(src).as_posix()
                arcname = f"{prefix}/{rel}" if prefix else rel
                info = tar.gettarinfo(str(entry), arcname=arcname)
                info.uid = info.gid = 0
                info.uname = info.gname = "root"
                if info.isfile():
                    with open(entry, "rb") as fh:
                        tar.addfile(info, fh)
                elif info.isdir() or info.issym():
                    tar.addfile(info)
    data = buf.getvalue()
    if len(data) > _MAX_FILES:
        raise LabConfError(f"{device}/ and shared/ are {len(data) >> 20} MiB compressed; at most "
                           f"{_MAX_FILES >> 20} MiB travel into a device", file=fname)
    return base64.encodebytes(data).decode("ascii").strip()


def _read(folder: Path, name: str) -> str | None:
    path = folder / name
    if not path.is_file():
        return None
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise LabConfError(f"cannot read: {exc}", file=str(path)) from None


def load_kathara(path: str | Path) -> nx.Graph:
    """A Netkit/Kathará lab folder as a chain graph for :class:`stdpkt_lab.Lab`.

    Devices become ``kind="kathara"`` nodes (addresses come from their startup scripts,
    not from the graph); a collision domain with two devices becomes a link, one with
    1 or 3+ devices a ``kind="domain"`` node (an L2 bridge instance) linked to each.
    ``g.graph["kathara"]`` holds the lab's metadata and the warnings; ``lab.dep``
    becomes ``g.graph["start_after"]``, shutdown scripts ``g.graph["on_stop"]``.
    Warnings (:class:`KatharaWarning`) name file and line; a malformed lab raises
    :class:`~stdpkt_lab.errors.LabConfError` before anything boots.
    """
    lab = parse_lab_conf(path)
    folder = lab.path
    conf = str(folder / "lab.conf")
    reserved = {"shared", "_test"}
    for entry in sorted(folder.iterdir()):
        # as Kathará's LabParser: with a lab.conf, only its devices start
        if entry.is_dir() and entry.name not in lab.devices and entry.name not in reserved \
                and not entry.name.startswith("."):
            _warn(lab.warnings, f"{folder / entry.name}/: not a device of lab.conf (ignored)")
    g = nx.Graph()
    shared_startup = _read(folder, "shared.startup")
    shared_shutdown = _read(folder, "shared.shutdown")
    on_stop: dict[str, str] = {}
    for dev in lab.devices.values():
        opts = dev.options
        image = opts.get("image", DEFAULT_IMAGE)
        _check_image(image, dev, conf, lab.warnings)
        attrs: dict[str, Any] = {
            "kind": "kathara",
            "image": image,
            "ipv6": bool(opts.get("ipv6", False)),
            "startup": _read(folder, f"{dev.name}.startup"),
            "shutdown": _read(folder, f"{dev.name}.shutdown"),
            "shared_startup": shared_startup,
            "shared_shutdown": shared_shutdown,
            "exec": opts.get("exec"),
            "sysctl": opts.get("sysctl"),
            "files": _pack(folder, dev.name, conf),
        }
        if "mem_mb" in opts:
            attrs["mem_mb"] = opts["mem_mb"]
        if "env" in opts:
            attrs["env"] = opts["env"]
        g.add_node(dev.name, **{k: v for k, v in attrs.items() if v is not None})
        if attrs["shutdown"] or shared_shutdown:
            on_stop[dev.name] = f"[ -x {SHUTDOWN_PATH} ] && {SHUTDOWN_PATH}"
    _add_domains(g, lab)
    g.graph["kathara"] = {"path": str(folder), "meta": dict(lab.meta), "warnings": list(lab.warnings)}
    g.graph["name"] = lab.meta.get("name") or folder.name
    if lab.depends:
        g.graph["start_after"] = {k: list(v) for k, v in lab.depends.items()}
    if on_stop:
        g.graph["on_stop"] = on_stop
    return g


def _check_image(image: str, dev: Device, conf: str, found: list[str]) -> None:
    line = dev.option_lines.get("image", dev.line)
    where = f"{conf}:{line}" if line else conf
    if not known_image(image):
        _warn(found, f"{where}: {dev.name}[image]={image}: unknown image; the host's programs are used")
        return
    packages = image_packages(image)
    if packages is None:
        _warn(found, f"{where}: {dev.name}[image]={image}: this image's programs are not provided on "
                     "this host; the host's programs are used")
        return
    missing = missing_packages(packages)
    if missing:
        _warn(found, f"{where}: {dev.name}[image]={image}: the host lacks the Debian packages "
                     f"{' '.join(missing)} (apt-get install {' '.join(missing)})")


def _add_domains(g: nx.Graph, lab: KatharaLab) -> None:
    members: dict[str, list[tuple[str, Interface]]] = {}
    for dev in lab.devices.values():
        for iface in sorted(dev.interfaces.values(), key=lambda i: i.number):
            members.setdefault(iface.domain, []).append((dev.name, iface))
    lowered = {n.lower() for n in g.nodes}
    for domain, ends in members.items():
        pair = len(ends) == 2 and ends[0][0] != ends[1][0] and not g.has_edge(ends[0][0], ends[1][0])
        if pair:
            (a, ia), (b, ib) = ends
            g.add_edge(a, b, ports={a: ia.number, b: ib.number}, domain=domain,
                       **_macs({a: ia.mac, b: ib.mac}))
            continue
        node = f"cd-{domain}"
        while node.lower() in lowered:
            node += "_"
        lowered.add(node.lower())
        g.add_node(node, kind="domain", label=domain)
        for dev_name, iface in ends:
            if g.has_edge(dev_name, node):
                raise LabConfError(f"device {dev_name!r} has two interfaces on collision domain {domain!r} "
                                   "(a loop on one segment is not supported)",
                                   file=str(lab.path / "lab.conf"), line=iface.line)
            g.add_edge(dev_name, node, ports={dev_name: iface.number}, domain=domain,
                       **_macs({dev_name: iface.mac}))


def _macs(macs: dict[str, str | None]) -> dict[str, Any]:
    given = {k: v for k, v in macs.items() if v}
    return {"mac": given} if given else {}
