"""stdpkt-blast (lkl/blast.c), the goodput bench's batched small-write sender, between
two real instances on a Lab link: it delivers, and the relay counted what it claims."""

from __future__ import annotations

import json
import subprocess
import time

import pytest

import stdpkt_lab as sl
from stdpkt_lab.engine.paths import helper


def test_blast_usage_errors_exit_2() -> None:
    blast = helper("stdpkt-blast")
    for argv in ([], ["send", "127.0.0.1"], ["send", "127.0.0.1", "1", "0"], ["bogus", "1"]):
        r = subprocess.run([blast, *argv], capture_output=True, text=True, timeout=10)
        assert r.returncode == 2 and "usage" in r.stderr, argv


@pytest.mark.uml
def test_blast_between_two_instances_counts_delivered_bytes() -> None:
    with sl.Lab(sl.chain("a", "b"), progress=False) as lab:
        # a checkout under /tmp or /root is hidden in the guests: run the copy they can see
        blast_b = lab["b"].guest_path(helper("stdpkt-blast"))
        blast = lab["a"].guest_path(helper("stdpkt-blast"))
        b_ip = str(lab.plan.address("b"))
        lab.exec("b", f"{blast_b} recv 5202 </dev/null >/dev/null 2>&1 &").check()
        link = lab.link("a", "b")
        fwd = link.pump(link.a.name, link.b.name)
        for _ in range(50):  # the receiver is listening once a connect succeeds
            r = lab.exec("a", [blast, "send", b_ip, "5202", "1", "1024", "64"], timeout=60)
            if r.returncode == 0:
                break
            time.sleep(0.2)
        assert r.returncode == 0, r
        report = json.loads(r.stdout.strip().splitlines()[-1])
        assert report["sender"] == "stdpkt-blast" and report["write"] == 1024
        assert report["bytes"] > 1_000_000 and report["gbps"] > 0
        sends = report["bytes"] // 1024
        assert report["enters"] * 8 < sends  # batched: far fewer system calls than writes
        # every delivered byte crossed the relay inside a frame
        assert fwd.stats.bytes > report["bytes"]
