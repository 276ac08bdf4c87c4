"""stdpkt_lab.check without kernels: reports, check files, a failing guest command."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from stdpkt_lab import check as ck
from stdpkt_lab.errors import ConfigError, ExecTimeout


class FakeLab:
    """Answers exec() from a table: enough to test how checks read command output."""

    def __init__(self, answers: dict[tuple[str, str], tuple[int, str]]) -> None:
        self.answers = answers
        self.plan = SimpleNamespace(nodes={"a": None, "b": None})

    def exec(self, node: str, cmd: Any, timeout: float | None = None) -> Any:
        for (n, prefix), (rc, out) in self.answers.items():
            if n == node and str(cmd).startswith(prefix):
                if rc == -99:
                    raise ExecTimeout("took too long", name=node)
                return SimpleNamespace(returncode=rc, stdout=out, stderr="")
        return SimpleNamespace(returncode=127, stdout="", stderr="not found")


def test_report_table_verdict_and_hints() -> None:
    lab = FakeLab({
        ("a", "ping"): (0, "2 packets transmitted, 2 received, 0% packet loss"),
        ("a", "ip route show exact 10.0.3.0/24"): (0, "10.0.3.0/24 via 10.0.12.2 dev eth1 proto ospf metric 20"),
        ("a", "nc -z"): (1, ""),
        ("b", "ip route show exact"): (-99, ""),
    })
    report = ck.run(lab, [  # type: ignore[arg-type]
        ck.reachable("a", "10.0.0.2", hint="h-reach"),
        ck.route("a", "10.0.3.0/24", via="10.0.12.2", proto="ospf", hint="h-route"),
        ck.route("a", "10.0.3.0/24", via="10.0.99.1", hint="h-wrong-via"),
        ck.port_open("a", "10.0.0.2", 80, hint="h-port"),
        ck.port_closed("a", "10.0.0.2", 22, hint="h-closed"),
        ck.no_route("b", "10.9.0.0/24", hint="h-timeout"),
    ])
    got = {r.name: r.passed for r in report.results}
    assert list(got.values()) == [True, True, False, False, True, False]
    text = str(report)
    assert text.splitlines()[-1] == "FAIL: 3/6 checks passed"
    assert "h-wrong-via" in text and "h-port" in text and "h-reach" not in text  # hints only on FAIL
    assert "error: instance 'b': took too long" in text  # a guest error is a FAIL, not an exception
    assert not report.passed and "<table>" in report._repr_html_()


def test_empty_report_is_not_a_pass() -> None:
    assert not ck.Report().passed


def test_check_file(tmp_path: Path) -> None:
    f = tmp_path / "checks.yaml"
    f.write_text("- reachable: {from: a, to: b}\n  hint: go\n- port_closed: {from: a, to: b, port: 22}\n"
                 "- traverses: {from: a, to: b, via: c, proto: tcp, port: 80}\n")
    checks = ck.load_checks(f)
    assert [c.name for c in checks] == ["a reaches b", "a → b tcp/22 closed", "a → b (tcp) crosses c"]
    assert checks[0].hint == "go"


@pytest.mark.parametrize("text, message", [
    ("- reachable: {from: a}\n", r"check 1: reachable: missing to"),
    ("- reachable: {from: a, to: b, colour: red}\n", r"check 1: reachable: unknown colour"),
    ("- route: {node: a, prefix: x}\n- pingable: {from: a}\n", r"check 2: expected exactly one of"),
    ("- traverses: {from: a, to: b, via: c, proto: sctp}\n", r"check 1: .*sctp"),
    ("reachable: 1\n", r"non-empty list"),
    ("- [unclosed\n", r"not valid YAML"),
])
def test_bad_check_files_name_the_entry(tmp_path: Path, text: str, message: str) -> None:
    f = tmp_path / "checks.yaml"
    f.write_text(text)
    with pytest.raises(ConfigError, match=message):
        ck.load_checks(f)
