"""A short coverage-guided fuzzing run of the relay's C parsers (fuzz/run.py), part of `make test`.

Each libFuzzer harness (ASan + UBSan, built from every stdpkt_lab/relay/*.c) runs for
FUZZ_TEST_SECONDS (default 25) on the committed seeds; any crash, hang, leak, sanitizer
report or broken invariant fails the test with libFuzzer's report and the saved input.
`make fuzz` runs the same harnesses longer.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SECONDS = int(os.environ.get("FUZZ_TEST_SECONDS", "25"))


@pytest.mark.skipif(
    shutil.which("clang") is None and shutil.which("clang-14") is None,
    reason="clang is not installed (scripts/install-system-packages.sh installs clang and libclang-rt-14-dev)",
)
@pytest.mark.parametrize("harness", ["pcap_stream", "bpf", "vhost", "pcap_rx", "vhost_proto"])
def test_fuzz_harness_finds_nothing(harness: str, tmp_path: Path) -> None:
    out = tmp_path / "fuzz.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "fuzz" / "run.py"), "--seconds", str(SECONDS), "--json", str(out), harness],
        capture_output=True,
        text=True,
        timeout=SECONDS + 240,
        check=False,
    )
    assert proc.returncode != 2, f"building the {harness} harness failed:\n{proc.stdout}\n{proc.stderr}"
    results = json.loads(out.read_text())["results"]
    (res,) = results
    assert res["ok"], (
        f"fuzzing {harness} found a problem (input saved in {res['crash_files']}):\n{res['tail']}"
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # the run really fuzzed: libFuzzer executed inputs beyond the seeds and covered code
    assert res["execs"] > res["seeds"] + 100, res
    assert res["coverage_edges"] > 100, res
