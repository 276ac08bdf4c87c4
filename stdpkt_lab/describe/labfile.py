"""Lab files: a chain as a small YAML or JSON hand-out (like Netkit's lab.conf).

::

    stdpkt-lab: 1
    nodes:                    # in order; each maps attribute → value
      client: {kind: host}
      nat: {kind: nat, outside: fw}
      fw: {kind: firewall, allow: [tcp/80, icmp]}
      server: {kind: host, serve: http}
    links:                    # in order; a, b and any edge attributes
      - {a: client, b: nat}
      - {a: nat, b: fw, subnet: 192.168.0.0/24}
      - [fw, server]          # shorthand for {a: fw, b: server}

Optional top-level keys: ``directed: true`` (a DiGraph) and ``graph: {...}``
(graph attributes).  The format is chosen by the suffix: ``.yaml``/``.yml``
or ``.json``.  ``load_lab`` checks the structure and raises
:class:`~stdpkt_lab.errors.LabFileError` naming the file, the place (YAML
line) and the problem; whether the kinds and parameters make sense is
``build_plan``'s business.
"""

from __future__ import annotations

import ipaddress
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import networkx as nx
import yaml

from ..errors import LabFileError
from .kinds import NFKind

__all__ = ["load_lab", "save_lab", "LAB_VERSION"]

LAB_VERSION = 1
_TOP = ("stdpkt-lab", "directed", "graph", "nodes", "links")


def _format(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix in (".yaml", ".yml"):
        return "yaml"
    if suffix == ".json":
        return "json"
    raise LabFileError(
        f"{path}: unknown lab file type {suffix or '(none)'!r}; use .yaml, .yml or .json"
    )


def _plain(value: Any, where: str) -> Any:
    """``value`` as YAML/JSON data (tuples → lists, addresses → strings, kinds → names)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [_plain(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, Mapping):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise LabFileError(f"{where}: key {k!r} is not a string")
            out[k] = _plain(v, f"{where}.{k}")
        return out
    if isinstance(value, (ipaddress.IPv4Address, ipaddress.IPv4Network, ipaddress.IPv4Interface)):
        return str(value)
    if isinstance(value, type) and issubclass(value, NFKind):
        return value.name
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    raise LabFileError(f"{where}: {type(value).__name__} {value!r} cannot be written to a lab file")


def save_lab(g: nx.Graph, path: str | os.PathLike[str]) -> Path:
    """Write ``g`` as a lab file (format by suffix); returns the path."""
    path = Path(path)
    fmt = _format(path)
    if g.is_multigraph():
        raise LabFileError(f"{path}: a MultiGraph cannot be saved as a lab file")
    doc: dict[str, Any] = {"stdpkt-lab": LAB_VERSION}
    if g.is_directed():
        doc["directed"] = True
    if g.graph:
        doc["graph"] = _plain(dict(g.graph), "graph")
    nodes: dict[str, Any] = {}
    for n, attrs in g.nodes(data=True):
        if not isinstance(n, str):
            raise LabFileError(f"{path}: node {n!r}: node names must be strings")
        nodes[n] = _plain(dict(attrs), f"nodes.{n}")
    doc["nodes"] = nodes
    links = []
    for i, (a, b, attrs) in enumerate(g.edges(data=True)):
        if "a" in attrs or "b" in attrs:
            raise LabFileError(
                f"{path}: link {a!r}–{b!r}: edge attributes 'a' and 'b' are reserved"
            )
        links.append({"a": a, "b": b, **_plain(dict(attrs), f"links[{i}]")})
    doc["links"] = links
    if fmt == "yaml":
        text = yaml.safe_dump(doc, sort_keys=False, default_flow_style=None, allow_unicode=True)
    else:
        text = json.dumps(doc, indent=2, ensure_ascii=False) + "\n"
    try:
        path.write_text(text)
    except OSError as exc:
        raise LabFileError(f"{path}: cannot write: {exc.strerror or exc}") from None
    return path


class _MarkedLoader(yaml.SafeLoader):
    """A safe loader that remembers the line of every mapping and list it builds."""

    def __init__(self, stream: Any) -> None:
        super().__init__(stream)
        self.lines: dict[int, int] = {}

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        obj = super().construct_object(node, deep=deep)
        if isinstance(obj, (dict, list)):
            self.lines[id(obj)] = node.start_mark.line + 1
        return obj


class _Reader:
    def __init__(self, path: Path, lines: Mapping[int, int]) -> None:
        self.path, self.lines = path, lines

    def fail(self, where: str, problem: str, obj: Any = None) -> LabFileError:
        line = self.lines.get(id(obj)) if obj is not None else None
        at = f" line {line}" if line else ""
        return LabFileError(f"{self.path}{at} ({where}): {problem}")

    def graph(self, doc: Any) -> nx.Graph:
        if not isinstance(doc, dict):
            raise self.fail("top level", "expected a mapping with keys stdpkt-lab, nodes, links")
        for key in doc:
            if key not in _TOP:
                raise self.fail(str(key), f"unknown key {key!r}; expected {', '.join(_TOP)}", doc)
        if doc.get("stdpkt-lab") != LAB_VERSION:
            raise self.fail(
                "stdpkt-lab",
                f"expected 'stdpkt-lab: {LAB_VERSION}', got {doc.get('stdpkt-lab')!r}",
                doc,
            )
        directed = doc.get("directed", False)
        if not isinstance(directed, bool):
            raise self.fail("directed", f"expected true or false, got {directed!r}", doc)
        g: nx.Graph = nx.DiGraph() if directed else nx.Graph()
        attrs = doc.get("graph") or {}
        if not isinstance(attrs, dict):
            raise self.fail("graph", "expected a mapping of graph attributes", doc)
        self._names("graph", attrs)
        g.graph.update(attrs)
        nodes = doc.get("nodes")
        if not isinstance(nodes, dict) or not nodes:
            raise self.fail("nodes", "expected a non-empty mapping of node name → attributes", doc)
        for name, node_attrs in nodes.items():
            if not isinstance(name, str):
                raise self.fail(
                    f"nodes.{name}", f"node name {name!r} is not a string (quote it)", nodes
                )
            if node_attrs is None:
                node_attrs = {}
            if not isinstance(node_attrs, dict):
                raise self.fail(
                    f"nodes.{name}", f"expected a mapping of attributes, got {node_attrs!r}", nodes
                )
            self._names(f"nodes.{name}", node_attrs)
            g.add_node(name, **node_attrs)
        links = doc.get("links") or []
        if not isinstance(links, list):
            raise self.fail("links", "expected a list of links", doc)
        for i, link in enumerate(links):
            self._link(g, i, link, links)
        return g

    def _names(self, where: str, attrs: dict[Any, Any], obj: Any = None) -> None:
        """Attribute names must be strings: networkx takes them as keyword arguments."""
        for key in attrs:
            if not isinstance(key, str):
                raise self.fail(where, f"attribute name {key!r} is not a string (quote it)",
                                attrs if obj is None else obj)

    def _link(self, g: nx.Graph, i: int, link: Any, links: list[Any]) -> None:
        where = f"links[{i}]"
        if isinstance(link, list):
            if len(link) != 2:
                raise self.fail(where, f"a short link is [a, b], got {link!r}", link)
            link = {"a": link[0], "b": link[1]}
        if not isinstance(link, dict):
            raise self.fail(
                where, f"expected {{a: NODE, b: NODE, ...}} or [a, b], got {link!r}", links
            )
        attrs = dict(link)
        ends = []
        for key in ("a", "b"):
            if key not in attrs:
                raise self.fail(where, f"missing '{key}' (the link's ends are a and b)", link)
            end = attrs.pop(key)
            if end not in g:
                raise self.fail(
                    f"{where}.{key}", f"{end!r} is not a node declared under nodes", link
                )
            ends.append(end)
        self._names(where, attrs, link)
        a, b = ends
        if a == b:
            raise self.fail(where, f"links {a!r} to itself", link)
        if g.has_edge(a, b) or (g.is_directed() and g.has_edge(b, a) and attrs != g.edges[b, a]):
            raise self.fail(where, f"duplicate link {a!r}–{b!r}", link)
        g.add_edge(a, b, **attrs)


def load_lab(path: str | os.PathLike[str]) -> nx.Graph:
    """Read a lab file (YAML or JSON, by suffix) into a networkx Graph (DiGraph if ``directed``)."""
    path = Path(path)
    fmt = _format(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise LabFileError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise LabFileError(f"{path}: not a text file") from None
    lines: dict[int, int] = {}
    if fmt == "json":
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as exc:
            raise LabFileError(
                f"{path} line {exc.lineno} column {exc.colno}: invalid JSON: {exc.msg}"
            ) from None
        except ValueError as exc:  # int() refuses numbers of over 4300 digits
            raise LabFileError(f"{path}: invalid JSON: a number with too many digits ({exc})") from None
        except RecursionError:
            raise LabFileError(f"{path}: invalid JSON: lists or mappings nested too deeply") from None
    else:
        loader: _MarkedLoader | None = None
        try:
            loader = _MarkedLoader(text)  # checks the characters: may raise ReaderError
            doc = loader.get_single_data()
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            at = f" line {mark.line + 1} column {mark.column + 1}" if mark else ""
            raise LabFileError(f"{path}{at}: invalid YAML: {exc.problem or exc}") from None
        except yaml.YAMLError as exc:
            raise LabFileError(f"{path}: invalid YAML: {exc}") from None
        except ValueError as exc:  # the int constructor: int() refuses over 4300 digits
            raise LabFileError(f"{path}: invalid YAML: a number with too many digits ({exc})") from None
        except RecursionError:
            raise LabFileError(f"{path}: invalid YAML: lists or mappings nested too deeply") from None
        finally:
            if loader is not None:
                loader.dispose()
        assert loader is not None
        lines = loader.lines
    return _Reader(path, lines).graph(doc)
