"""The per-user cap on instances and guest memory (stdpkt_lab/engine/quota.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import networkx as nx
import pytest

from stdpkt_lab.engine import quota
from stdpkt_lab.errors import ConfigError, EnvironmentProblem, StdpktError


def _env(tmp_path: Path, **caps: str) -> dict[str, str]:
    return {"STDPKT_QUOTA_DIR": str(tmp_path / "q"), **caps}


def test_no_cap_set_means_no_claim_and_no_directory(tmp_path: Path) -> None:
    assert quota.limits_from_env({}) is None
    assert quota.claim("a", 128, environ=_env(tmp_path)) is None
    assert not (tmp_path / "q").exists()
    assert quota.limits_from_env({"STDPKT_MAX_INSTANCES": "0"}) is None  # 0: no cap


def test_bad_cap_values_name_the_variable() -> None:
    for raw in ("many", "-3", "1.5"):
        with pytest.raises(ConfigError, match=f"STDPKT_MAX_MEM_MB={raw!r}"):
            quota.limits_from_env({"STDPKT_MAX_MEM_MB": raw})


def test_instance_cap_counts_live_claims_and_release_frees(tmp_path: Path) -> None:
    env = _env(tmp_path, STDPKT_MAX_INSTANCES="2")
    a = quota.claim("a", 128, environ=env)
    b = quota.claim("b", 128, environ=env)
    assert a is not None and b is not None
    assert (tmp_path / "q").stat().st_mode & 0o777 == 0o700
    with pytest.raises(quota.QuotaExceeded) as info:
        quota.claim("c", 128, environ=env)
    err = info.value
    assert isinstance(err, StdpktError) and err.cap == "STDPKT_MAX_INSTANCES" and err.used == 2
    text = str(err)
    assert "instance cap reached" in text and "'c'" in text and "instance 3" in text
    assert "the cap is 2 (STDPKT_MAX_INSTANCES)" in text and "running: a, b" in text and "lab.stop()" in text
    a.release()
    a.release()  # idempotent
    c = quota.claim("c", 128, environ=env)
    assert c is not None and sorted(quota.usage(env).names) == ["b", "c"]
    b.release()
    c.release()
    assert quota.usage(env).instances == 0


def test_memory_cap_sums_guest_memory(tmp_path: Path) -> None:
    env = _env(tmp_path, STDPKT_MAX_MEM_MB="300")
    first = quota.claim("a", 128, environ=env)
    second = quota.claim("b", 128, environ=env)
    with pytest.raises(quota.QuotaExceeded, match=r"memory cap reached: node 'c' asks for 64 MiB.*hold 256 MiB"
                                                  r" and the cap is 300 MiB \(STDPKT_MAX_MEM_MB\)"):
        quota.claim("c", 64, environ=env)
    assert quota.claim("d", 32, environ=env) is not None  # 288 <= 300
    assert quota.usage(env).mem_mb == 288
    assert first and second


def test_claims_of_a_dead_process_do_not_count(tmp_path: Path) -> None:
    """A notebook kernel killed outright leaves its claim files: they stop counting."""
    env = dict(os.environ, **_env(tmp_path, STDPKT_MAX_INSTANCES="1"))
    code = ("from stdpkt_lab.engine import quota; c = quota.claim('x', 128); "
            "print(c.path); import os; os._exit(0)")  # exits without releasing
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert Path(out.stdout.strip()).exists()
    again = quota.claim("y", 128, environ=env)  # the stale claim is ignored and removed
    assert again is not None and not Path(out.stdout.strip()).exists()


def test_a_claim_directory_not_ours_or_not_private_is_refused(tmp_path: Path) -> None:
    shared = tmp_path / "q"
    shared.mkdir(mode=0o755)
    shared.chmod(0o755)
    with pytest.raises(EnvironmentProblem, match="mode 0700"):
        quota.claim("a", 128, environ=_env(tmp_path, STDPKT_MAX_INSTANCES="3"))


@pytest.mark.uml
def test_a_lab_over_the_cap_fails_with_the_cap_named_and_leaves_nothing(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    import stdpkt_lab as sl

    monkeypatch.setenv("STDPKT_QUOTA_DIR", str(tmp_path / "q"))
    monkeypatch.setenv("STDPKT_MAX_INSTANCES", "1")
    g = nx.Graph()
    g.add_node("a", kind="host")
    g.add_node("b", kind="host")
    g.add_edge("a", "b")
    with pytest.raises(quota.QuotaExceeded, match=r"node 'b' would be instance 2 .*the cap is 1 "
                                                  r"\(STDPKT_MAX_INSTANCES\) \(running: a\)"):
        sl.Lab(g).start()
    assert quota.usage().instances == 0  # the first instance was stopped and gave its claim back
    monkeypatch.setenv("STDPKT_MAX_INSTANCES", "2")
    with sl.Lab(g) as lab:
        assert "0% packet loss" in lab.exec("a", "ping -c 1 -W 5 b").stdout
        assert quota.usage().instances == 2
    assert quota.usage().instances == 0
