"""Beyond one machine: what spreading a lab over Dask workers costs (issue 13).

1. Boot time and memory of N instances on one worker vs spread over W workers
   (a LocalCluster of W worker processes on this machine, all on 127.0.0.1).
2. TCP goodput (iperf3 inside the instances) of a cross-worker link (pcap
   stream over TCP) vs a local link (one in-process relay), same run,
   rounds interleaved so machine noise hits both alike.

    python bench/scale.py [--quick] [-n N] [--workers W] [--rounds R] [--seconds S]

Writes bench/results/scale.json; the last stdout line is one JSON object
{"n": …, "boot_s_one": …, "boot_s_spread": …, "pss_mib_per_instance": …,
 "local_gbps": …, "tcp_gbps": …, "tcp_over_local": …}.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import networkx as nx
from tqdm.auto import tqdm

import stdpkt_lab as sl

RESULTS = Path(__file__).resolve().parent / "results"


def pss_mib(pids: list[int]) -> float:
    """PSS of the launchers and all their descendants (the kernels and UML's helpers)."""
    parent: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
    ours, grew = set(pids), True
    while grew:
        more = {p for p, pp in parent.items() if pp in ours} - ours
        grew = bool(more)
        ours |= more
    total = 0
    for pid in ours:
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1])
        except (OSError, ValueError, IndexError):
            continue
    return total / 1024


def hosts(n: int, names: list[str]) -> nx.Graph:
    g = nx.Graph()
    g.add_node("sw", kind="bridge", host=names[0])
    for i in range(n - 1):
        g.add_node(f"h{i}", kind="host", host=names[i % len(names)])
        g.add_edge("sw", f"h{i}")
    return g


def goodput(lab, client: str, server: str, seconds: int) -> float:  # noqa: ANN001
    for _attempt in range(3):
        r = lab.exec(client, ["iperf3", "-c", server, "-t", str(seconds), "-J"], timeout=seconds + 40)
        report = json.loads(r.stdout or "{}")
        if "error" not in report and r.returncode == 0:
            return float(report["end"]["sum_received"]["bits_per_second"]) / 1e9
        time.sleep(1)
    raise RuntimeError(f"iperf3 {client} -> {server} failed: {r.stderr}")


def main() -> int:
    from distributed import Client, LocalCluster

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="n=6, 2 workers, 2 rounds of 3 s")
    ap.add_argument("-n", type=int, default=12)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--seconds", type=int, default=5)
    args = ap.parse_args()
    n, workers, rounds, seconds = (6, 2, 2, 3) if args.quick else (args.n, args.workers, args.rounds, args.seconds)
    RESULTS.mkdir(exist_ok=True)
    out: dict[str, object] = {"n": n, "workers": workers, "rounds": rounds, "seconds": seconds}
    with LocalCluster(n_workers=workers, threads_per_worker=2, processes=True, host="127.0.0.1",
                      dashboard_address=None) as cluster, Client(cluster) as client:
        names = sorted(str(w["name"]) for w in client.scheduler_info()["workers"].values())
        for label, pool in (("one", names[:1]), ("spread", names)):
            t0 = time.monotonic()
            with sl.Lab(hosts(n, pool), cluster=client, progress=False) as lab:
                out[f"boot_s_{label}"] = round(time.monotonic() - t0, 2)
                pids = [p for p in lab.pids().values() if p]
                out[f"pss_mib_{label}"] = round(pss_mib(pids), 1)
            print(f"{n} instances on {len(pool)} worker(s): ready in {out[f'boot_s_{label}']} s, "
                  f"PSS {out[f'pss_mib_{label}']} MiB")
        out["pss_mib_per_instance"] = round(float(out["pss_mib_spread"]) / n, 1)  # type: ignore[arg-type]

        g = nx.Graph()
        g.add_node("a", kind="host", host=names[0])
        g.add_node("b", kind="host", serve="iperf3", host=names[0])   # a - b: local link
        g.add_node("c", kind="host", serve="iperf3", host=names[-1])  # a - c: cross-worker
        g.add_node("sw", kind="bridge", host=names[0])
        g.add_edges_from([("a", "sw"), ("sw", "b"), ("sw", "c")])
        local, tcp = [], []
        with sl.Lab(g, cluster=client, progress=False) as lab:
            for _ in tqdm(range(rounds), desc="goodput rounds", unit="round"):
                local.append(goodput(lab, "a", "b", seconds))
                tcp.append(goodput(lab, "a", "c", seconds))
        out.update(local_gbps=round(statistics.median(local), 3), tcp_gbps=round(statistics.median(tcp), 3),
                   local_runs=local, tcp_runs=tcp)
        out["tcp_over_local"] = round(float(out["tcp_gbps"]) / float(out["local_gbps"]), 3)  # type: ignore[arg-type]
    print(f"goodput a->b local link (bridge on one worker): median {out['local_gbps']} Gbit/s; "
          f"a->c across workers (pcap over TCP): {out['tcp_gbps']} Gbit/s ({out['tcp_over_local']:.0%})")
    (RESULTS / "scale.json").write_text(json.dumps(out, indent=1))
    print(json.dumps({k: out[k] for k in ("n", "boot_s_one", "boot_s_spread", "pss_mib_per_instance",
                                          "local_gbps", "tcp_gbps", "tcp_over_local")}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
