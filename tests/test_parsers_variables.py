"""Property tests (hypothesis) of the paper's variables parser (stdpkt_lab.engine.variables).

Property: for ANY environment, parse_variables returns a RunConfig or raises VariableError
(its documented error, naming the variable); never another exception, never a hang.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from stdpkt_lab.engine.variables import RunConfig, parse_variables
from stdpkt_lab.errors import VariableError

from .hangs import no_hang

SETTINGS = settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# values: near-misses of valid ones (digits of every script, separators, spaces) and any text
digits = st.text(alphabet=st.characters(categories=["Nd", "No"]), min_size=1, max_size=6)
near = st.one_of(
    st.sampled_from(["", " ", "|", "||", "a|b", " a | b ", "a|b|c", "tap:", "tap:x", "tap:" + "x" * 16,
                     "10.0.0.1", "300.1.1.1", "10.0.0", "255.255.255.0", "255.0.255.0", "24", "33",
                     "-1", "0", "32", "68", "67", "65534", "65535", "1500", " 1500 ", "0x10", "1e3"]),
    digits,
    st.integers(1, 6000).map(lambda n: "9" * n),
    st.from_regex(r"\A[0-9.]{1,16}\Z"),
    st.text(max_size=30),
)
keys = st.one_of(
    st.sampled_from(["GATEWAY", "PATH", "HOME"]),
    st.builds(lambda p, n: f"{p}{n}", st.sampled_from(["IF", "IP", "NETMASK", "MTU"]),
              st.one_of(st.integers(0, 9).map(str), digits,
                        st.sampled_from(["00", "99999999999999999999", "9" * 4400]))),
    st.text(min_size=1, max_size=12),
)
envs = st.dictionaries(keys, near, max_size=8)


def _check(env: dict[str, str], script: Path | None) -> None:
    with no_hang("parser", 5):
        try:
            cfg = parse_variables(env, name="fuzz", script=script)
        except VariableError as exc:
            assert exc.variable and str(exc).startswith(exc.variable)
            return
    assert isinstance(cfg, RunConfig)
    for port in cfg.spec.ports:
        assert 68 <= port.mtu <= 65534
        assert port.address is None or isinstance(port.address, ipaddress.IPv4Interface)
        assert f"IF{port.index}" in env


@SETTINGS
@given(envs)
@example({"IF0": "a|b", "MTU0": "²"})        # str.isdigit() but int() refuses it: ValueError
@example({"IF0": "a|b", "IP0": "10.0.0.1", "NETMASK0": "²"})
@example({"IF0": "a|b", "MTU0": "١٥٠٠"})     # Arabic-Indic digits: not an MTU
@example({"IF0": "a|b", "MTU0": "9" * 5000})  # int() refuses > 4300 digits: ValueError
@example({"IF0": "a|b", "IP0": "10.0.0.1", "NETMASK0": "9" * 5000})
@example({"IF" + "9" * 5000: "a|b"})
def test_any_environment_parses_or_raises_variable_error(env: dict[str, str]) -> None:
    _check(env, None)


@SETTINGS
@given(st.dictionaries(st.sampled_from(["IP0", "NETMASK0", "MTU0", "GATEWAY", "IF1", "IP1"]), near, max_size=5))
def test_variables_around_a_valid_interface(extra: dict[str, str]) -> None:
    _check({"IF0": "/dev/stdin|/dev/stdout", **extra}, None)


@pytest.mark.parametrize("value", ["²", "١٥٠٠", "۱۵۰۰", "15²"])
def test_non_ascii_digits_are_not_an_mtu(value: str) -> None:
    with pytest.raises(VariableError, match="MTU0"):
        parse_variables({"IF0": "a|b", "MTU0": value}, name="x", script=None)


@pytest.mark.parametrize("value", ["²", "٢٤", "2²"])
def test_non_ascii_digits_are_not_a_prefix(value: str) -> None:
    with pytest.raises(VariableError, match="NETMASK0"):
        parse_variables({"IF0": "a|b", "IP0": "10.0.0.1", "NETMASK0": value}, name="x", script=None)


@pytest.mark.parametrize("key", ["IF٠", "IF0\n"])
def test_indexed_names_take_ascii_digits_only(key: str) -> None:
    # not a paper variable: ignored like any other environment variable, not interface 0
    cfg = parse_variables({key: "a|b"}, name="x", script=None)
    assert cfg.spec.ports == ()


def test_valid_variables_still_parse() -> None:
    cfg = parse_variables(
        {"IF0": "a|b", "IP0": "10.0.0.2", "NETMASK0": "255.255.255.0", "MTU0": " 9000 ",
         "IF1": "c|d", "IP1": "10.1.0.1", "NETMASK1": "16", "GATEWAY": "10.0.0.1"},
        name="x", script=None,
    )
    assert [str(p.address) for p in cfg.spec.ports] == ["10.0.0.2/24", "10.1.0.1/16"]
    assert cfg.spec.ports[0].mtu == 9000


def test_huge_numbers_are_variable_errors() -> None:
    with pytest.raises(VariableError, match="MTU0"):
        parse_variables({"IF0": "a|b", "MTU0": "9" * 5000}, name="x", script=None)
    with pytest.raises(VariableError, match="NETMASK0"):
        parse_variables({"IF0": "a|b", "IP0": "10.0.0.1", "NETMASK0": "9" * 5000}, name="x", script=None)
    with pytest.raises(VariableError, match="only IF0..IF7 exist"):
        parse_variables({"IF" + "9" * 5000: "a|b"}, name="x", script=None)
