"""Property tests (hypothesis) of lab files (stdpkt_lab.describe.labfile.load_lab).

Property: for ANY file content, YAML or JSON, load_lab returns a networkx graph or raises
LabFileError (its documented error, naming the file); never another exception, never a hang.
A graph it returns round-trips through save_lab.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import networkx as nx
import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from stdpkt_lab.describe.labfile import load_lab, save_lab
from stdpkt_lab.errors import LabFileError

from .hangs import no_hang

SETTINGS = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def load_text(text: str | bytes, suffix: str) -> nx.Graph | LabFileError:
    with tempfile.TemporaryDirectory(prefix="stdpkt-test-lab-") as tmp:
        path = Path(tmp) / f"lab{suffix}"
        if isinstance(text, bytes):
            path.write_bytes(text)
        else:
            path.write_text(text)
        with no_hang("load_lab", 10):
            try:
                g = load_lab(path)
            except LabFileError as exc:
                assert str(path) in str(exc), exc
                return exc
        assert isinstance(g, nx.Graph)
        # what loads can be saved and loads back the same (when its data is plain)
        out = Path(tmp) / f"again{suffix}"
        try:
            save_lab(g, out)
        except LabFileError:
            return g
        g2 = load_lab(out)
        assert nx.utils.graphs_equal(g, g2) or g.nodes(data=True) == g2.nodes(data=True)
        return g


scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(10**6), 10**6), st.floats(allow_nan=False),
    st.text(max_size=8), st.sampled_from(["client", "nat", "fw", "server", "a", "b", "host", "tcp/80"]),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.one_of(st.text(max_size=6), st.integers(0, 3), st.sampled_from(["a", "b", "kind"])),
                        inner, max_size=4),
    ),
    max_leaves=12,
)
node_names = st.sampled_from(["client", "nat", "fw", "server"])
docs = st.fixed_dictionaries(
    {
        "stdpkt-lab": st.one_of(st.just(1), values),
        "nodes": st.one_of(st.dictionaries(node_names, st.one_of(st.none(), values), max_size=4), values),
    },
    optional={
        "links": st.one_of(
            st.lists(st.one_of(st.lists(st.one_of(node_names, values), max_size=3),
                               st.fixed_dictionaries({"a": st.one_of(node_names, values),
                                                      "b": st.one_of(node_names, values)},
                                                     optional={"subnet": values, "x": values}),
                               values), max_size=4),
            values,
        ),
        "directed": st.one_of(st.booleans(), values),
        "graph": values,
        "extra": values,
    },
)

DEEP = "[" * 100_000 + "]" * 100_000
BIG_INT = "stdpkt-lab: " + "9" * 5000 + "\nnodes: {a: {}}\n"


@SETTINGS
@given(docs)
def test_any_yaml_document_loads_or_raises_lab_file_error(doc) -> None:
    load_text(yaml.safe_dump(doc, sort_keys=False), ".yaml")


@SETTINGS
@given(docs)
def test_any_json_document_loads_or_raises_lab_file_error(doc) -> None:
    try:
        text = json.dumps(doc)
    except (TypeError, ValueError):  # a non-string key json cannot write: not a lab file
        return
    load_text(text, ".json")


@SETTINGS
@given(st.one_of(st.text(max_size=200), st.binary(max_size=200)), st.sampled_from([".yaml", ".json"]))
@example("nodes: {a: {1: x}}\nstdpkt-lab: 1\n", ".yaml")              # non-string attribute key
@example("stdpkt-lab: 1\nnodes: {a: {}, b: {}}\nlinks: [[[1], b]]\n", ".yaml")  # unhashable end
@example('{"stdpkt-lab": 1, "nodes": {"a": {}}, "links": [{"a": {}, "b": "a"}]}', ".json")
@example(BIG_INT, ".yaml")                                            # int() refuses > 4300 digits
@example('{"stdpkt-lab": ' + "9" * 5000 + "}", ".json")
@example(DEEP, ".yaml")                                               # RecursionError
@example(DEEP, ".json")
@example(b"\xff\xfe\x00", ".yaml")
@example("\x1f", ".yaml")                                              # ReaderError in the loader's constructor
@example("stdpkt-lab: 1\nnodes: {a: {}, b: {}}\nlinks: [{a: a, b: b, 3: x}]\n", ".yaml")
def test_any_text_loads_or_raises_lab_file_error(text, suffix: str) -> None:
    load_text(text, suffix)


@pytest.mark.parametrize(
    "text, suffix, problem",
    [
        ("stdpkt-lab: 1\nnodes: {a: {1: x}}\n", ".yaml", "attribute name 1 is not a string"),
        ("stdpkt-lab: 1\nnodes: {a: {}, b: {}}\nlinks: [[[1], b]]\n", ".yaml", "is not a node"),
        ("stdpkt-lab: 1\nnodes: {a: {}, b: {}}\nlinks: [{a: a, b: b, 3: x}]\n", ".yaml",
         "attribute name 3 is not a string"),
        (BIG_INT, ".yaml", "number"),
        ('{"stdpkt-lab": ' + "9" * 5000 + "}", ".json", "number"),
        (DEEP, ".yaml", "nested too deeply"),
        (DEEP, ".json", "nested too deeply"),
        ("\x1f", ".yaml", "unacceptable character"),
    ],
)
def test_hostile_lab_files_give_a_clear_lab_file_error(text: str, suffix: str, problem: str) -> None:
    err = load_text(text, suffix)
    assert isinstance(err, LabFileError), err
    assert problem in str(err), err


def test_the_documented_example_still_loads() -> None:
    g = load_text(
        "stdpkt-lab: 1\nnodes:\n  client: {kind: host}\n  nat: {kind: nat, outside: fw}\n"
        "  fw: {kind: firewall, allow: [tcp/80, icmp]}\n  server: {kind: host, serve: http}\n"
        "links:\n  - {a: client, b: nat}\n  - {a: nat, b: fw, subnet: 192.168.0.0/24}\n  - [fw, server]\n",
        ".yaml",
    )
    assert isinstance(g, nx.Graph) and list(g.nodes) == ["client", "nat", "fw", "server"]
