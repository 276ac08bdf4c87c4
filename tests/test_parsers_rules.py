"""Property tests (hypothesis) of the firewall rule and port-forward syntax (stdpkt_lab.describe.rules).

Property: for ANY text, parse_rule / parse_forward return a Rule / Forward or raise ValueError
(their documented error); never another exception, never a hang.  What they return is
well-formed: ports within 1..65535, ranges not backwards, at most 15 items (iptables multiport).
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from stdpkt_lab.describe.rules import Forward, Rule, parse_forward, parse_rule, resolve_peer

from .hangs import no_hang

SETTINGS = settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])


numbers = st.one_of(
    st.integers(-5, 70000).map(str),
    st.text(alphabet=st.characters(categories=["Nd", "No"]), min_size=1, max_size=5),
    st.sampled_from(["9" * 5000, "00080", "0"]),
)
ports = st.lists(
    st.one_of(numbers, st.builds(lambda a, b: f"{a}-{b}", numbers, numbers)), min_size=1, max_size=18
).map(",".join)
words = st.sampled_from(["tcp", "udp", "icmp", "any", "all", "TCP", "from", "to", "sctp", "/", "->", ":"])
peers = st.one_of(
    st.sampled_from(["client", "10.0.0.2", "10.0.0.0/24", "10.0.0.0/33", "300.0.0.1", ",", "a,b", "1.2.3.4/0"]),
    st.text(max_size=12),
)
rule_texts = st.one_of(
    st.builds(lambda p, s: f"{p}/{s}", st.sampled_from(["tcp", "udp", "icmp", "any"]), ports),
    st.builds(lambda h, rest: " ".join([h, *rest]), st.one_of(words, ports),
              st.lists(st.one_of(words, peers), max_size=6)),
    st.text(max_size=40),
)
forward_texts = st.one_of(
    st.builds(lambda p, a, t, b: f"{p}/{a}->{t}{b}", st.sampled_from(["tcp", "udp", "icmp"]), ports,
              st.sampled_from(["server", "10.0.1.5", "", "a:b"]),
              st.one_of(st.just(""), ports.map(lambda s: ":" + s))),
    st.text(max_size=40),
)


def _check_ports(items: tuple[str, ...] | str) -> None:
    for item in (items,) if isinstance(items, str) else items:
        lo, _, hi = item.replace("-", ":").partition(":")
        assert 1 <= int(lo) <= 65535 and (not hi or int(lo) <= int(hi) <= 65535), item


@SETTINGS
@given(rule_texts)
@example("tcp/" + "9" * 5000)          # int() refuses > 4300 digits: ValueError (documented) all the same
@example("tcp/⑴")
@example("icmp/١")
@example("icmp/echo-request from a,b to 10.0.0.0/24")
def test_any_rule_text_parses_or_raises_value_error(text: str) -> None:
    with no_hang("parser", 5):
        try:
            rule = parse_rule(text)
        except ValueError as exc:
            assert str(exc)
            return
    assert isinstance(rule, Rule)
    assert rule.proto in (None, "tcp", "udp", "icmp")
    assert len(rule.ports) <= 15
    _check_ports(rule.ports)
    args = rule.args(lambda peer: [peer])
    assert all(isinstance(a, str) for a in args)


@SETTINGS
@given(forward_texts)
@example("tcp/⑴->server")
@example("tcp/8080->server:" + "9" * 5000)
def test_any_forward_text_parses_or_raises_value_error(text: str) -> None:
    with no_hang("parser", 5):
        try:
            fwd = parse_forward(text)
        except ValueError as exc:
            assert str(exc)
            return
    assert isinstance(fwd, Forward)
    assert fwd.proto in ("tcp", "udp")
    _check_ports(fwd.ports)
    if fwd.to_ports is not None:
        _check_ports(fwd.to_ports)


@SETTINGS
@given(peers)
def test_any_peer_resolves_or_raises_value_error(text: str) -> None:
    with no_hang("parser", 5):
        try:
            out = resolve_peer(text, lambda name: ["10.0.0.9"] if name == "client" else None, ["client"])
        except ValueError as exc:
            assert str(exc)
            return
    assert out and all(isinstance(a, str) for a in out)


@SETTINGS
@given(st.lists(st.integers(1, 65535), min_size=1, max_size=15))
def test_valid_port_lists_round_trip(numbers_: list[int]) -> None:
    rule = parse_rule("tcp/" + ",".join(map(str, numbers_)))
    assert rule.ports == tuple(map(str, numbers_))


@pytest.mark.parametrize("text", ["icmp/١", "tcp/٨٠", "udp/5٣", "tcp/80-٩٠"])
def test_ports_and_icmp_types_take_ascii_digits_only(text: str) -> None:
    # \d matched other scripts' digits: "icmp/١" passed and reached iptables as --icmp-type ١
    with pytest.raises(ValueError):
        parse_rule(text)
