"""Network-function kinds: shape and parameters as data, behaviour in two methods.

A kind is a subclass of :class:`NFKind` that declares::

    class Shaper(NFKind):
        '''Token-bucket rate limit on every port. rate: tc rate ("10mbit").'''
        name = "shaper"
        min_ports, max_ports = 2, 2
        params = {"rate": Param("10mbit", "tc rate of each direction", type=str)}

        def setup(self, ctx):
            return "\\n".join(sh("tc", "qdisc", "add", "dev", p.device, "root", "tbf",
                                 "rate", ctx.params["rate"], "burst", "32k", "latency", "50ms")
                              for p in ctx.ports)

and is registered on a :class:`KindRegistry` (``register_kind(Shaper)`` adds
it to the default registry; ``default_registry.copy()`` gives a private one).
``validate(ctx)`` checks the graph around the node (raise ``ctx.error(...)``);
``setup(ctx)`` returns the shell text run as root inside the instance before
it reports ready.  Optional hooks: ``derive`` fills parameters left ``None``,
``address`` picks the address the node's name resolves to, ``reply_routes``
asks routing for symmetric return paths, ``environment`` exports variables.

:class:`ScriptKind` (and :func:`script_kind`) make a kind from a user's shell
script, run like ``stdpkt run`` runs one, with its parameters as environment
variables.
"""

from __future__ import annotations

import difflib
import ipaddress
import json
import re
import shlex
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from ..engine.spec import MAX_PORTS
from ..errors import ChainError
from .addressing import Addressing, Port

if TYPE_CHECKING:
    import networkx as nx

    from .routing import L3Graph

__all__ = [
    "Param",
    "NFKind",
    "KindContext",
    "KindRegistry",
    "ScriptKind",
    "script_kind",
    "register_kind",
    "sh",
    "suggest",
    "one_of",
    "str_list",
]

IPv4Address = ipaddress.IPv4Address
IPv4Network = ipaddress.IPv4Network
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def sh(*argv: object) -> str:
    """One shell command line from an argument vector (each word quoted as needed)."""
    return shlex.join(str(a) for a in argv)


def suggest(word: str, choices: Sequence[str]) -> str:
    """`` (did you mean 'x'?)`` for close matches, else ``""``."""
    close = difflib.get_close_matches(word, list(choices), n=3, cutoff=0.6)
    return f" (did you mean {' or '.join(map(repr, close))}?)" if close else ""


@dataclass(frozen=True)
class Param:
    """One parameter of a kind.

    ``default`` ``None`` means "derived at plan time" (or simply absent);
    ``required`` parameters must be given; ``type`` is checked with
    ``isinstance`` (``bool`` is not an ``int``); ``validator(value)`` returns
    the normalised value or raises ``ValueError`` with a message.
    """

    default: Any = None
    doc: str = ""
    required: bool = False
    type: type | tuple[type, ...] | None = None
    validator: Callable[[Any], Any] | None = None

    def check(self, value: Any) -> Any:
        """Normalise ``value``; ``ValueError`` says what is wrong with it."""
        if self.type is not None:
            types = self.type if isinstance(self.type, tuple) else (self.type,)
            if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
                names = " or ".join(t.__name__ for t in types)
                raise ValueError(f"expected {names}, got {type(value).__name__} {value!r}")
        return self.validator(value) if self.validator is not None else value


def one_of(*choices: str) -> Callable[[Any], str]:
    def check(value: Any) -> str:
        if value not in choices:
            raise ValueError(
                f"{value!r} is not one of {', '.join(choices)}" + suggest(str(value), choices)
            )
        return str(value)

    return check


def str_list(value: Any) -> list[str]:
    """A string or a list of strings → a list of strings."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        return list(value)
    raise ValueError(f"expected a string or a list of strings, got {value!r}")


@dataclass
class KindContext:
    """What a kind sees of the plan for one node: its parameters, ports and the network."""

    name: str
    params: dict[str, Any]
    ports: tuple[Port, ...]
    graph: nx.Graph  # undirected view of the planned graph
    addressing: Addressing
    l3: L3Graph
    kinds: Mapping[str, NFKind]
    resolve: Callable[[str], IPv4Address | None]

    def error(self, message: str) -> ChainError:
        return ChainError(message, node=self.name)

    @property
    def neighbours(self) -> list[str]:
        return [p.neighbour for p in self.ports]

    def is_node(self, name: object) -> bool:
        return isinstance(name, str) and name in self.kinds

    def check_node(self, name: Any, what: str) -> str:
        """``name`` if it names a node, else a ChainError with close matches."""
        if not self.is_node(name):
            raise self.error(
                f"{what} {name!r} is not a node" + suggest(str(name), list(self.kinds))
            )
        return str(name)

    def address(self, node: str) -> IPv4Address | None:
        """The address ``node``'s name resolves to (None for a bridge)."""
        return self.resolve(node)

    def addresses(self, node: str) -> list[IPv4Address]:
        """Every address of ``node``, in port order."""
        return [p.address.ip for p in self.addressing.ports[node] if p.address is not None]

    def port_toward(self, node: str) -> Port | None:
        """The port linked to ``node``, or sharing an L2 segment with it (through bridges)."""
        for port in self.ports:
            if port.neighbour == node:
                return port
        theirs = self.addressing.segments_of(node)
        return next((p for p in self.ports if p.segment in theirs and p.address is not None), None)

    def neighbour_port(self, name: Any, what: str) -> Port:
        """The port toward neighbour ``name``, or a ChainError saying ``what`` is wrong."""
        self.check_node(name, what)
        port = self.port_toward(name)
        if port is None:
            raise self.error(
                f"{what} {name!r} is not a neighbour (neighbours: {', '.join(self.neighbours)})"
            )
        return port

    def path(self, node: str) -> list[str] | None:
        """Nodes on a shortest routed path from this node to ``node`` (None if unreachable)."""
        return self.l3.path(self.name, node)

    def first_port(self, node: str) -> Port | None:
        """The port this node's shortest path to ``node`` leaves through."""
        seg = self.l3.first_segment(self.name, ("n", node))
        return next((p for p in self.ports if p.segment == seg and p.address is not None), None)

    def subnets_beyond(self, ports: Sequence[Port]) -> list[IPv4Network]:
        """Subnets on ``ports`` or reached by shortest paths leaving through them."""
        segs = {p.segment for p in ports}
        found = []
        for seg in self.addressing.segments:
            first = (
                seg.index
                if seg.index in segs
                else self.l3.first_segment(self.name, ("s", seg.index))
            )
            if first in segs:
                found.append(seg.subnet)
        return found


class NFKind:
    """Base of every network-function kind (see the module docstring)."""

    name: ClassVar[str] = ""
    min_ports: ClassVar[int] = 0
    max_ports: ClassVar[int] = MAX_PORTS
    params: ClassVar[Mapping[str, Param]] = {}
    #: Forwards packets between its ports: routes may pass through it.
    transit: ClassVar[bool] = True
    #: Layer 2 only: no addresses, and its links form one segment.
    transparent: ClassVar[bool] = False
    #: Gets derived addresses on its ports (False: the instance configures its own).
    addressed: ClassVar[bool] = True
    #: Parameters named like environment variables (``UPPER_CASE``) beyond ``params`` are accepted.
    env_params: ClassVar[bool] = False
    mem_mb: ClassVar[int] = 128

    def validate(self, ctx: KindContext) -> None:
        """Check the graph around the node; raise ``ctx.error(...)``."""

    def derive(self, ctx: KindContext) -> Mapping[str, Any]:
        """Values for parameters left ``None`` (shown in ``NodePlan.params``)."""
        return {}

    def setup(self, ctx: KindContext) -> str:
        """Shell text run as root in the instance before it reports ready."""
        return ""

    def address(self, ctx: KindContext) -> IPv4Address | None:
        """The address the node's name resolves to: its first addressed port's."""
        return next((p.address.ip for p in ctx.ports if p.address is not None), None)

    def reply_routes(self, ctx: KindContext) -> Mapping[str, Sequence[IPv4Network]]:
        """``{node: subnets}``: routing makes ``node`` reach ``subnets`` through this node."""
        return {}

    def environment(self, ctx: KindContext) -> Mapping[str, str]:
        """Variables exported in the guest to setup and script."""
        return {}

    def __repr__(self) -> str:
        return f"<NFKind {self.name!r}>"


def _env_value(value: Any) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, (list, tuple)):
        return " ".join(str(v) for v in value)
    if isinstance(value, Mapping):
        return json.dumps(value)
    return str(value)


class ScriptKind(NFKind):
    """A kind whose behaviour is a user's shell script (a host path or text).

    The script runs with ``/bin/sh`` as root inside the instance, after the
    interfaces, routes and /etc/hosts are set up and before the instance
    reports ready (so background anything that must keep running: ``cmd &``).
    ``IPn``, ``NETMASKn``, ``MTUn``, ``GATEWAY`` are set as under ``stdpkt
    run``; every parameter (and every ``UPPER_CASE`` extra attribute) is
    exported as an environment variable of the same name.
    """

    script_path: ClassVar[str | None] = None
    script_text: ClassVar[str | None] = None
    env_params = True
    _internal: ClassVar[frozenset[str]] = frozenset()

    def script(self, ctx: KindContext) -> tuple[str, str]:
        """``(origin, text)`` of the script to run."""
        if self.script_text is not None:
            return "text", self.script_text
        if self.script_path is not None:
            return self.read_script(ctx, self.script_path)
        raise ctx.error("script kind has neither script_path nor script_text")

    @staticmethod
    def read_script(ctx: KindContext, path: str) -> tuple[str, str]:
        """``(absolute path, text)`` of the script file at ``path``."""
        file = Path(path).expanduser()
        try:
            return str(file.resolve()), file.read_text()
        except OSError as exc:
            raise ctx.error(f"cannot read script {path!r}: {exc.strerror or exc}") from None
        except UnicodeDecodeError:
            raise ctx.error(f"script {path!r} is not text") from None

    def environment(self, ctx: KindContext) -> Mapping[str, str]:
        env = {}
        for key, value in ctx.params.items():
            if key in self._internal or value is None:
                continue
            if not _ENV_NAME.match(key):
                raise ctx.error(f"parameter {key!r} cannot be an environment variable name")
            env[key] = _env_value(value)
        return env

    def setup(self, ctx: KindContext) -> str:
        origin, text = self.script(ctx)
        if not text.endswith("\n"):
            text += "\n"
        end = "STDPKT_SCRIPT_END"
        while end in text.splitlines():
            end += "_"
        target = f"/run/stdpkt/nf-{ctx.name}.sh"
        return (
            f"# {self.name}: user script from {origin}\n"
            f"cat > {target} <<'{end}'\n{text}{end}\n"
            f"/bin/sh {target}\n"
        )


def script_kind(
    name: str,
    *,
    path: str | Path | None = None,
    text: str | None = None,
    params: Mapping[str, Param] | None = None,
    min_ports: int = 0,
    max_ports: int = MAX_PORTS,
    doc: str | None = None,
) -> type[ScriptKind]:
    """A new kind ``name`` that runs the script at ``path`` (read when planned) or ``text``."""
    if (path is None) == (text is None):
        raise ChainError(f"script_kind {name!r}: give exactly one of path= or text=")
    attrs: dict[str, Any] = {
        "name": name,
        "min_ports": min_ports,
        "max_ports": max_ports,
        "params": dict(params or {}),
        "script_path": None if path is None else str(path),
        "script_text": text,
        "__doc__": doc
        or f"User kind {name!r}: runs {path or 'its script text'}; parameters are "
        "exported as environment variables.",
    }
    return type(f"ScriptKind_{name}", (ScriptKind,), attrs)


class KindRegistry(Mapping[str, type[NFKind]]):
    """Kind name → kind class.  Mutable only through :meth:`register_kind`."""

    def __init__(self, kinds: Sequence[type[NFKind]] = ()) -> None:
        self._kinds: dict[str, type[NFKind]] = {}
        for kind in kinds:
            self.register_kind(kind)

    def register_kind(self, kind: type[NFKind], *, replace: bool = False) -> type[NFKind]:
        """Add ``kind`` (usable as a class decorator); a name taken needs ``replace=True``."""
        if not (isinstance(kind, type) and issubclass(kind, NFKind)):
            raise ChainError(f"register_kind: {kind!r} is not an NFKind subclass")
        _check_declaration(kind)
        if kind.name in self._kinds and not replace and self._kinds[kind.name] is not kind:
            raise ChainError(
                f"kind {kind.name!r} is already registered (pass replace=True to override)"
            )
        self._kinds[kind.name] = kind
        return kind

    def lookup(self, name: Any, *, node: str) -> type[NFKind]:
        """The kind called ``name``, or a ChainError for ``node`` listing the known ones."""
        if isinstance(name, type) and issubclass(name, NFKind):
            _check_declaration(name)
            return name
        if isinstance(name, str) and name in self._kinds:
            return self._kinds[name]
        raise ChainError(
            f"unknown kind {name!r}{suggest(str(name), list(self._kinds))}; "
            f"known kinds: {', '.join(sorted(self._kinds))}",
            node=node,
        )

    def copy(self) -> KindRegistry:
        return KindRegistry(list(self._kinds.values()))

    def __getitem__(self, name: str) -> type[NFKind]:
        return self._kinds[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._kinds)

    def __len__(self) -> int:
        return len(self._kinds)

    def __repr__(self) -> str:
        return f"KindRegistry({', '.join(self._kinds)})"


def _check_declaration(kind: type[NFKind]) -> None:
    where = f"kind {kind.__name__}"
    if not isinstance(kind.name, str) or not re.match(r"^[A-Za-z][A-Za-z0-9_-]*$", kind.name):
        raise ChainError(f"{where}: name {kind.name!r} must be a word (letters, digits, '_', '-')")
    if not 0 <= kind.min_ports <= kind.max_ports <= MAX_PORTS:
        raise ChainError(f"{where}: need 0 <= min_ports <= max_ports <= {MAX_PORTS}")
    for pname, param in kind.params.items():
        if not isinstance(param, Param):
            raise ChainError(f"{where}: params[{pname!r}] is not a Param")


def register_kind(
    kind: type[NFKind], *, registry: KindRegistry | None = None, replace: bool = False
) -> type[NFKind]:
    """Register ``kind`` on ``registry`` (default: the default registry)."""
    if registry is None:
        from .catalogue import default_registry

        registry = default_registry
    return registry.register_kind(kind, replace=replace)
