"""Soak: a client | NAT | firewall | server Lab under continuous mixed traffic, watched for leaks.

    python bench/soak.py [--minutes N] [--quick] [--round S] [--rate 50M] [--out PATH]

Default 60 minutes; ``--quick`` = 2 minutes.  Traffic runs in rounds of ``--round`` seconds
(default 30; 20 with --quick): in each round the client runs, at the same time, an iperf3
upload to the server (``-b --rate``, through NAT and firewall), a ping every 0.2 s and an HTTP
GET (busybox wget) every 0.5 s.  Between rounds the traffic stops and a **checkpoint** samples:

* this Python process (which holds the Lab, its sampler thread and every link's C relays):
  RSS (``VmRSS``), open descriptors (``/proc/self/fd``), threads (``/proc/self/status``);
  the kernels' summed RSS, for information (guest memory is allocated lazily up to ``mem=``:
  growth there until the limit is not a leak);
* every hop's counters: ``lab.counters()`` (one row per link direction) and, through each
  guest's agent, its ``/proc/net/dev`` and conntrack count.

**Growth** is reported from the checkpoints after the first (the first round warms caches,
ARP, conntrack): RSS as a least-squares slope in MiB per hour, descriptors and threads as
last minus first.  Any growth is a bug to find.  One growth is by design: the Lab's sampler
keeps a bounded history (600 samples, 2 minutes at 5 Hz), so RSS rises until it is full;
``--quick`` therefore shrinks that history to 50 samples (full within the warm-up round),
and checkpoints before the history is full are not used for growth (the JSON says
``warmup_incomplete`` when fewer than two remained).

**Conservation**, checked at every checkpoint for every link direction src→dst, where the
link joins src's ``eth<i>`` to dst's ``eth<j>`` through one C relay:

1. ``sent``: every frame src's kernel put on ``eth<i>`` reached the relay:
   ``tx_packets(src, eth<i>) == relay.frames + relay.drops`` (the relay counts what it
   delivered and what it read but could not deliver);
2. ``delivered``: every frame the relay delivered reached dst's kernel:
   ``relay.frames + relay.injected == rx_packets(dst, eth<j>)``.  (The vector driver counts
   rx_packets for every frame it reads; frames the stack then discards, e.g. an unknown
   ethertype, are counted again in rx_drop, so rx_drop is not added: measured, a guest showed
   rx_packets 4, rx_drop 3 for 4 frames relayed.)

What is NOT checked: frames into an NF vs frames out of it.  A NAT or firewall legitimately
drops (policy), creates (ARP, ICMP errors, TCP resets) and answers frames itself, so there
is no equality to hold there; its counters are recorded only.  The counters are compared in
a quiet moment: relay counters are read before and after the guests' counters and the
checkpoint is retried (up to 8 times, 0.5 s apart) until they did not move in between;
a checkpoint that never got quiet is counted as ``unquiet`` (not as a mismatch).

Writes bench/results/soak-quick.json (or soak.json); the last stdout line is one JSON
object: ``minutes``, ``rss_growth_mib_per_h``, ``fd_growth``, ``thread_growth``,
``counter_mismatches`` plus ``checkpoints``, ``unquiet``, ``traffic`` totals and the like.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import platform
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any

try:
    import stdpkt_lab  # noqa: F401
except ImportError:  # run from a checkout without installing
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import networkx as nx  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

from stdpkt_lab import Lab  # noqa: E402
from stdpkt_lab.observe.samples import parse_proc_net_dev  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
MARK = "@@SOAK "
CONNTRACK = "/proc/sys/net/netfilter/nf_conntrack_count"


def soak_graph() -> nx.Graph:
    g = nx.Graph()
    g.add_node("client", kind="host")
    g.add_node("nat", kind="nat", outside="fw")
    g.add_node("fw", kind="firewall", allow=["tcp/80", "tcp/5201", "icmp"])
    g.add_node("server", kind="host", serve=["http", "iperf3"])
    g.add_edges_from([("client", "nat"), ("nat", "fw"), ("fw", "server")])
    return g


def round_script(seconds: int, rate: str) -> str:
    """One traffic round inside the client: iperf3, ping and HTTP at once; one summary line."""
    pings = max(1, int(seconds / 0.2))
    return f"""
iperf3 -c server -t {seconds} -b {rate} -J > /tmp/iperf.json 2>&1 &
ip=$!
ping -q -c {pings} -i 0.2 -W 2 server > /tmp/ping.txt 2>&1 &
pp=$!
ok=0; n=0; end=$(( $(date +%s) + {seconds} ))
while [ "$(date +%s)" -lt "$end" ]; do
    n=$((n + 1))
    wget -qO /dev/null -T 5 http://server/ && ok=$((ok + 1))
    sleep 0.5
done
wait $ip; irc=$?
wait $pp
sent=$(grep -o '"bytes":[[:space:]]*[0-9]*' /tmp/iperf.json | tail -1 | grep -o '[0-9]*$')
loss=$(grep -o '[0-9.]*% packet loss' /tmp/ping.txt | grep -o '^[0-9.]*')
echo "{MARK}iperf_rc=$irc iperf_bytes=${{sent:-0}} ping_loss=${{loss:-100}} http_ok=$ok http_n=$n"
"""


def parse_round(stdout: str) -> dict[str, float]:
    for line in stdout.splitlines():
        if line.startswith(MARK):
            return {k: float(v) for k, v in (kv.split("=") for kv in line[len(MARK):].split())}
    raise RuntimeError(f"traffic round printed no summary: {stdout[-500:]!r}")


def process_metrics() -> dict[str, float]:
    status = Path("/proc/self/status").read_text()
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    return {
        "rss_mib": int(fields["VmRSS"].split()[0]) / 1024,
        "fds": len(os.listdir("/proc/self/fd")),
        "threads": int(fields["Threads"]),
    }


def kernels_rss_mib(lab: Lab) -> float:
    """Summed RSS of the launchers and all their descendants (every linux.uml of the lab)."""
    parent: dict[int, int] = {}
    rss: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            status = Path(f"/proc/{entry}/status").read_text()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        parent[int(entry)] = int(fields.get("PPid", "0").strip() or 0)
        rss[int(entry)] = int(fields["VmRSS"].split()[0]) if "VmRSS" in fields else 0
    roots = {inst.pid for inst in lab.instances.values() if inst.pid}
    total = 0
    for pid in rss:
        p, seen = pid, 0
        while p and p not in roots and seen < 64:
            p, seen = parent.get(p, 0), seen + 1
        if p in roots:
            total += rss[pid]
    return total / 1024


def relay_counters(lab: Lab) -> dict[tuple[str, str], dict[str, int]]:
    out = {}
    for link in lab.links:
        for (src, dst), st in link.stats().items():
            out[(src, dst)] = {"frames": st.frames, "drops": st.drops, "injected": st.injected,
                               "malformed": st.malformed}
    return out


def guest_counters(lab: Lab) -> dict[str, dict[str, Any]]:
    out = {}
    for name, inst in lab.instances.items():
        files = inst.agent.read_files(["/proc/net/dev", CONNTRACK], timeout=10.0)
        dev, count = files.get("/proc/net/dev"), files.get(CONNTRACK)
        out[name] = {
            "dev": parse_proc_net_dev(dev.decode()) if dev else {},
            "conntrack": int(count) if count and count.strip().isdigit() else None,
        }
    return out


def conservation(lab: Lab, relays: dict, guests: dict) -> list[dict[str, Any]]:
    """The two checks of the module docstring for every link direction; the failing ones."""
    bad = []
    for link in lab.links:
        ends = {link.a.name: link.a_port, link.b.name: link.b_port}
        for (src, dst) in link.directions:
            r = relays[(src, dst)]
            tx = guests[src]["dev"].get(f"eth{ends[src]}", {})
            rx = guests[dst]["dev"].get(f"eth{ends[dst]}", {})
            sent = tx.get("tx_packets", -1)
            read = r["frames"] + r["drops"]
            arrived = rx.get("rx_packets", -1)
            delivered = r["frames"] + r["injected"]
            if sent != read:
                bad.append({"direction": f"{src}->{dst}", "check": "sent", "guest_tx_packets": sent,
                            "relay_frames_plus_drops": read})
            if delivered != arrived:
                bad.append({"direction": f"{src}->{dst}", "check": "delivered",
                            "relay_frames_plus_injected": delivered, "guest_rx_packets": arrived})
    return bad


def checkpoint(lab: Lab, t0: float) -> dict[str, Any]:
    """A quiet-moment sample (retried until the relay counters hold still across it)."""
    quiet = False
    for _ in range(8):
        before = relay_counters(lab)
        guests = guest_counters(lab)
        after = relay_counters(lab)
        if before == after:
            quiet = True
            break
        time.sleep(0.5)
    rows = lab.counters()
    rows = rows.to_dict("records") if hasattr(rows, "to_dict") else rows
    return {
        "t_s": round(time.monotonic() - t0, 1),
        **process_metrics(),
        "kernels_rss_mib": round(kernels_rss_mib(lab), 1),
        "quiet": quiet,
        "sampler_history": len(lab.sampler.history),
        "mismatches": conservation(lab, after, guests) if quiet else [],
        "relays": {f"{s}->{d}": v for (s, d), v in after.items()},
        "conntrack": {n: g["conntrack"] for n, g in guests.items()},
        "interfaces": {n: {dev: {k: c[k] for k in ("rx_packets", "tx_packets", "rx_drop", "tx_drop")}
                           for dev, c in g["dev"].items() if dev.startswith("eth")}
                       for n, g in guests.items()},
        "lab_counters": [{k: v for k, v in row.items() if k not in ("time",)} for row in rows],
    }


def python_growth(snap0: tracemalloc.Snapshot) -> dict[str, Any]:
    """Where Python memory grew since snap0 (steady state), leaving out this bench's own records."""
    snap1 = tracemalloc.take_snapshot()
    tracemalloc.stop()
    here = Path(__file__).name
    filters = [tracemalloc.Filter(False, f"*{here}"), tracemalloc.Filter(False, tracemalloc.__file__),
               tracemalloc.Filter(False, json.__file__.replace("__init__.py", "*"))]
    stats = snap1.filter_traces(filters).compare_to(snap0.filter_traces(filters), "traceback")
    total = sum(st.size_diff for st in stats)
    top = []
    for st in sorted(stats, key=lambda x: x.size_diff, reverse=True)[:6]:
        frames = [f"{Path(f.filename).name}:{f.lineno}" for f in st.traceback]
        top.append({"kib": round(st.size_diff / 1024, 1), "count": st.count_diff, "where": frames[-4:][::-1]})
    return {"kib": round(total / 1024, 1), "top": top}


def slope_per_hour(ts: list[float], ys: list[float]) -> float:
    n = len(ts)
    if n < 2:
        return 0.0
    mt, my = sum(ts) / n, sum(ys) / n
    var = sum((t - mt) ** 2 for t in ts)
    if var == 0:
        return 0.0
    return sum((t - mt) * (y - my) for t, y in zip(ts, ys, strict=True)) / var * 3600


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=60.0)
    ap.add_argument("--quick", action="store_true", help="2 minutes, 20 s rounds")
    ap.add_argument("--round", type=int, default=None, help="seconds of traffic per round")
    ap.add_argument("--rate", default="50M", help="iperf3 -b (default 50M: the machine is shared)")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--tracemalloc", action="store_true",
                    help="trace Python allocations from the first steady checkpoint and name where Python "
                         "memory grew (costs RSS itself: RSS growth is then not comparable)")
    args = ap.parse_args(argv)
    minutes = 2.0 if args.quick else args.minutes
    round_s = args.round or (20 if args.quick else 30)
    out = args.out or RESULTS / ("soak-quick.json" if args.quick else "soak.json")

    traffic = {"rounds": 0, "iperf_failures": 0, "iperf_bytes": 0.0, "http_ok": 0, "http_tries": 0,
               "ping_loss_max_pct": 0.0}
    # every checkpoint goes to a JSON-lines file at once; only a few numbers stay in memory,
    # so that the bench's own records do not show as the process's growth (they did: ~20 KiB
    # per checkpoint in a 20-minute run, 1 MiB/h)
    log_path = out.with_suffix(".points.jsonl")
    log_path.parent.mkdir(parents=True, exist_ok=True)
    points: list[dict[str, Any]] = []
    log_file = log_path.open("w")  # closed by the with block below

    def record(point: dict[str, Any]) -> None:
        log_file.write(json.dumps(point) + "\n")
        log_file.flush()
        points.append({k: point[k] for k in ("t_s", "rss_mib", "fds", "threads", "kernels_rss_mib",
                                             "quiet", "sampler_history")}
                      | {"mismatches": len(point["mismatches"])})
    started = time.time()
    lab = Lab(soak_graph(), progress=True)
    if args.quick:  # see the module docstring: the sampler history must be full after warm-up
        lab.sampler.history = collections.deque(maxlen=50)
    with log_file, lab:
        t0 = time.monotonic()
        record(checkpoint(lab, t0))
        deadline = t0 + minutes * 60
        bar = tqdm(total=round(minutes * 60), desc="soak", unit="s")
        snap0: tracemalloc.Snapshot | None = None
        traced_at = 0.0
        while time.monotonic() + round_s / 2 < deadline:
            secs = max(5, min(round_s, int(deadline - time.monotonic())))
            res = lab.exec("client", round_script(secs, args.rate), timeout=secs + 90)
            r = parse_round(res.stdout)
            traffic["rounds"] += 1
            traffic["iperf_failures"] += int(r["iperf_rc"] != 0)
            traffic["iperf_bytes"] += r["iperf_bytes"]
            traffic["http_ok"] += int(r["http_ok"])
            traffic["http_tries"] += int(r["http_n"])
            traffic["ping_loss_max_pct"] = max(traffic["ping_loss_max_pct"], r["ping_loss"])
            time.sleep(1.0)  # let the last frames land
            record(checkpoint(lab, t0))
            # tracemalloc sees only what is allocated after it starts: start it at the first
            # steady checkpoint, take the reference snapshot once the sampler history has been
            # refilled (by then every bounded structure holds traced objects only)
            if args.tracemalloc and snap0 is None:
                refill = (lab.sampler.history.maxlen or 0) / lab.sampler.rate_hz + 5
                if tracemalloc.is_tracing() and time.monotonic() - traced_at > refill:
                    snap0 = tracemalloc.take_snapshot()
                elif (not tracemalloc.is_tracing()
                      and points[-1]["sampler_history"] == lab.sampler.history.maxlen):
                    tracemalloc.start(8)
                    traced_at = time.monotonic()
            bar.n = min(bar.total, round(time.monotonic() - t0))
            bar.set_postfix(rss=f"{points[-1]['rss_mib']:.1f}M", fds=points[-1]["fds"],
                            thr=points[-1]["threads"])
            bar.refresh()
        bar.close()
        growth_sites = python_growth(snap0) if snap0 is not None else None
        if tracemalloc.is_tracing():
            tracemalloc.stop()
    elapsed_min = (time.time() - started) / 60
    full_points = [json.loads(line) for line in log_path.read_text().splitlines()]
    log_path.unlink()

    # steady state: after the warm-up round and once the sampler's bounded history is full
    full = lab.sampler.history.maxlen
    steady = [p for p in points[1:] if p["sampler_history"] == full]
    warmup_incomplete = len(steady) < 2
    if warmup_incomplete:
        steady = points[1:] if len(points) > 2 else points
    ts = [p["t_s"] for p in steady]
    summary = {
        "minutes": round(minutes, 2),
        "elapsed_minutes": round(elapsed_min, 2),
        "checkpoints": len(points),
        "rss_growth_mib_per_h": round(slope_per_hour(ts, [p["rss_mib"] for p in steady]), 2),
        "rss_mib_first_last": [round(steady[0]["rss_mib"], 1), round(steady[-1]["rss_mib"], 1)],
        "fd_growth": steady[-1]["fds"] - steady[0]["fds"],
        "thread_growth": steady[-1]["threads"] - steady[0]["threads"],
        "kernels_rss_mib_first_last": [steady[0]["kernels_rss_mib"], steady[-1]["kernels_rss_mib"]],
        "conntrack_last": full_points[-1]["conntrack"],
        "counter_mismatches": sum(p["mismatches"] for p in points),
        "steady_checkpoints": len(steady),
        "warmup_incomplete": warmup_incomplete,
        "unquiet": sum(not p["quiet"] for p in points),
        "frames_relayed": sum(v["frames"] for v in full_points[-1]["relays"].values()),
        "traffic": {**traffic, "iperf_bytes": int(traffic["iperf_bytes"])},
        "python_growth": growth_sites,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"summary": summary, "machine": platform.node(), "cpus": os.cpu_count(),
                               "rate": args.rate, "round_s": round_s, "points": full_points}, indent=1) + "\n")
    print(f"soak: {len(points)} checkpoints over {elapsed_min:.1f} min; details in {out}", file=sys.stderr)
    for p in full_points:
        for m in p["mismatches"]:
            print(f"soak: at {p['t_s']} s mismatch {m}", file=sys.stderr)
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
