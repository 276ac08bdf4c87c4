"""What observing a chain costs: TCP goodput with the 5 Hz sampler and tracing on vs off.

One chain (client — router — server), iperf3 inside the instances, rounds
interleaved (off, on, off, on, ...) in one run so machine noise hits both
alike. Target (issue 4): observing costs at most 5 % of goodput.

    python bench/observe_cost.py [--quick] [--rounds N] [--seconds S]

Writes bench/results/observe_cost.json; the last stdout line is one JSON
object {"off_gbps": …, "on_gbps": …, "cost_percent": …}.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

from tqdm.auto import tqdm

import stdpkt_lab as sl
from stdpkt_lab.observe import Sampler

RESULTS = Path(__file__).resolve().parent / "results"


def goodput(lab: sl.Lab, seconds: int) -> float:
    for _attempt in range(3):
        r = lab.exec("client", ["iperf3", "-c", "server", "-t", str(seconds), "-J"],
                     timeout=seconds + 30)
        report = json.loads(r.stdout or "{}")
        if "error" not in report and r.returncode == 0:
            return report["end"]["sum_received"]["bits_per_second"] / 1e9
        time.sleep(1)  # "the server is busy": the previous test is still closing
    raise RuntimeError(f"iperf3 failed: {report.get('error', r.stderr)}")


def set_observing(lab: sl.Lab, mode: str) -> None:
    """mode: off | on (sampler + traces) | trace (traces only) | sample (sampler only)."""
    for link in lab.links:
        for key in link.directions:
            link.pump(*key).trace_enabled = mode in ("on", "trace")
    lab.sampler.stop()
    if mode in ("on", "sample"):
        lab.sampler = Sampler(lab, rate_hz=5.0).start()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="3 rounds of 3 s")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--split", action="store_true",
                    help="also measure tracing alone and sampling alone")
    args = ap.parse_args()
    rounds, seconds = (3, 3) if args.quick else (args.rounds, args.seconds)
    g = sl.chain("client", "router", "server", params={"server": {"serve": "iperf3"}})
    modes = ("off", "on", "trace", "sample") if args.split else ("off", "on")
    results: dict[str, list[float]] = {m: [] for m in modes}
    with sl.Lab(g, sample_hz=None) as lab:
        goodput(lab, 1)  # warm-up
        with tqdm(total=len(modes) * rounds, desc="observe cost", unit="run") as bar:
            for _ in range(rounds):
                for mode in modes:
                    set_observing(lab, mode)
                    results[mode].append(goodput(lab, seconds))
                    bar.update(1)
        samples = len(lab.sampler.history)
    off, on = statistics.median(results["off"]), statistics.median(results["on"])
    cost = 100.0 * (off - on) / off
    summary = {"off_gbps": round(off, 3), "on_gbps": round(on, 3), "cost_percent": round(cost, 1)}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "observe_cost.json").write_text(json.dumps(
        {"rounds": results, "seconds": seconds, "samples_last_round": samples, **summary}, indent=2))
    for mode in modes:
        v = results[mode]
        print(f"observing {mode:3}: min {min(v):.3f} median {statistics.median(v):.3f} "
              f"max {max(v):.3f} Gbit/s")
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
