#!/usr/bin/env python3
"""Build and run the libFuzzer harnesses of fuzz/ (used by ``make fuzz`` and tests/test_fuzz.py).

Each harness is built with Debian's clang from ALL of ``stdpkt_lab/relay/*.c`` (a glob, so a
split of relay.c into several files needs no change here) plus ``fuzz/<harness>.c``, with
``-fsanitize=fuzzer,address,undefined`` and UBSan made fatal.  It runs for ``--seconds`` on
the committed seeds of ``fuzz/corpus/<harness>/``; inputs it discovers go to
``fuzz/build/corpus/<harness>/`` (not committed), crashes to ``fuzz/crashes/<harness>/``
(ignored by git).  The exit status is 1 if any harness crashed, hung, leaked or tripped a
sanitizer, 2 if a harness could not be built, else 0.

Usage: python fuzz/run.py [--seconds N] [--json PATH] [--merge] [HARNESS ...]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

FUZZ = Path(__file__).resolve().parent
ROOT = FUZZ.parent
RELAY = ROOT / "stdpkt_lab" / "relay"
BUILD = FUZZ / "build"
CRASHES = FUZZ / "crashes"

# harness: (libFuzzer options besides the common ones)
HARNESSES: dict[str, list[str]] = {
    "pcap_stream": ["-max_len=140000", "-timeout=20"],
    "bpf": ["-max_len=4096", "-timeout=10"],
    "vhost": ["-max_len=70000", "-timeout=10"],
    "pcap_rx": ["-max_len=140000", "-timeout=20"],
    "vhost_proto": ["-max_len=16384", "-timeout=10"],
}
CFLAGS = [
    "-g", "-O1", "-std=gnu11", "-pthread",
    "-fsanitize=fuzzer,address,undefined", "-fno-sanitize-recover=all",
    "-fno-omit-frame-pointer",
]
SANITIZER_MARKS = ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:",
                   "ERROR: libFuzzer", "invariant:", "==ERROR")


def compiler() -> str | None:
    for name in ("clang", "clang-14"):
        path = shutil.which(name)
        if path:
            return path
    return None


def build(name: str, cc: str, log) -> Path:
    """Compiles one harness; returns the binary.  Raises CalledProcessError."""
    BUILD.mkdir(parents=True, exist_ok=True)
    sources = sorted(str(p) for p in RELAY.glob("*.c"))
    out = BUILD / name
    cmd = [cc, *CFLAGS, "-I", str(RELAY), "-o", str(out), str(FUZZ / f"{name}.c"), *sources, "-ldl"]
    log.write(" ".join(cmd) + "\n")
    log.flush()
    subprocess.run(cmd, check=True, stdout=log, stderr=subprocess.STDOUT)
    return out


def run(name: str, binary: Path, seconds: int, log) -> dict:
    """Runs one harness for `seconds`; returns its figures."""
    seeds = FUZZ / "corpus" / name
    work = BUILD / "corpus" / name
    crashes = CRASHES / name
    for d in (work, crashes):
        d.mkdir(parents=True, exist_ok=True)
    cmd = [
        str(binary), f"-max_total_time={seconds}", "-print_final_stats=1",
        f"-artifact_prefix={crashes}/", "-rss_limit_mb=2048", *HARNESSES[name],
        str(work), str(seeds),
    ]
    env = dict(os.environ)
    # detect_leaks: a harness that leaks per input is a bug too; abort_on_error gives a core-free abort
    env.setdefault("ASAN_OPTIONS", "detect_leaks=1:abort_on_error=0:allocator_may_return_null=0")
    env.setdefault("UBSAN_OPTIONS", "print_stacktrace=1:halt_on_error=1")
    t0 = time.monotonic()
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
                          timeout=seconds + 300, check=False)
    elapsed = time.monotonic() - t0
    text = proc.stdout.decode(errors="replace")
    log.write(f"$ {' '.join(cmd)}\n{text}\n")
    log.flush()
    execs = re.search(r"stat::number_of_executed_units:\s*(\d+)", text)
    if execs is None:
        hashes = re.findall(r"^#(\d+)\s", text, re.M)
        execs_n = int(hashes[-1]) if hashes else 0
    else:
        execs_n = int(execs.group(1))
    cov = re.findall(r"cov: (\d+) ft: (\d+)", text)
    corpus = re.findall(r"corp: (\d+)/", text)
    marks = [m for m in SANITIZER_MARKS if m in text]
    artifacts = sorted(str(p.relative_to(ROOT)) for p in crashes.iterdir())
    return {
        "harness": name,
        "seconds": round(elapsed, 1),
        "execs": execs_n,
        "execs_per_s": round(execs_n / elapsed) if elapsed else 0,
        "coverage_edges": int(cov[-1][0]) if cov else 0,
        "features": int(cov[-1][1]) if cov else 0,
        "corpus": int(corpus[-1]) if corpus else 0,
        "seeds": len(list(seeds.iterdir())) if seeds.is_dir() else 0,
        "exit_code": proc.returncode,
        "sanitizer_reports": marks,
        "crash_files": artifacts,
        "ok": proc.returncode == 0 and not marks,
        "tail": "" if proc.returncode == 0 and not marks else text[-4000:],
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=int, default=int(os.environ.get("FUZZ_SECONDS", "180")),
                    help="run time per harness (default $FUZZ_SECONDS or 180)")
    ap.add_argument("--json", type=Path, help="write the figures here as JSON")
    ap.add_argument("--merge", action="store_true",
                    help="instead of fuzzing: add the inputs of fuzz/build/corpus/<harness>/ that bring new "
                         "coverage to the committed seeds fuzz/corpus/<harness>/ (libFuzzer -merge=1)")
    ap.add_argument("harness", nargs="*", help=f"default: all of {', '.join(HARNESSES)}")
    args = ap.parse_args(argv)
    names = args.harness or list(HARNESSES)
    for n in names:
        if n not in HARNESSES:
            ap.error(f"unknown harness {n!r} (known: {', '.join(HARNESSES)})")
    cc = compiler()
    if cc is None:
        print("fuzz: clang not found (apt-get install clang libclang-rt-14-dev)", file=sys.stderr)
        return 2
    BUILD.mkdir(parents=True, exist_ok=True)
    log_path = BUILD / "fuzz.log"
    results = []
    with open(log_path, "w") as log:
        for name in names:
            try:
                binary = build(name, cc, log)
            except subprocess.CalledProcessError:
                print(f"fuzz: building {name} failed; see {log_path}", file=sys.stderr)
                return 2
            if args.merge:
                seeds, work = FUZZ / "corpus" / name, BUILD / "corpus" / name
                before = len(list(seeds.iterdir()))
                subprocess.run([str(binary), "-merge=1", "-max_len=140000", str(seeds), str(work)],
                               stdout=log, stderr=subprocess.STDOUT, check=True)
                print(f"fuzz {name}: merged, seeds {before} -> {len(list(seeds.iterdir()))}")
                continue
            res = run(name, binary, args.seconds, log)
            results.append(res)
            state = "ok" if res["ok"] else "FAILED"
            print(f"fuzz {name}: {res['execs']} inputs in {res['seconds']} s "
                  f"({res['execs_per_s']}/s), {res['coverage_edges']} edges, corpus {res['corpus']}: "
                  f"{state}", flush=True)
            if not res["ok"]:
                print(res["tail"], file=sys.stderr)
                print(f"fuzz {name}: crash inputs: {res['crash_files']}", file=sys.stderr)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"clang": cc, "results": results}, indent=2) + "\n")
    print(f"fuzz: full log in {log_path.relative_to(ROOT)}")
    return 0 if all(r["ok"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
