"""The paper's Figure 3: boot time to the first transmitted packet, N instances kept alive.

    python bench/boot.py [--quick] [-n N] [--mem MB] [--no-agent] [--pool K]

Instances are started one after the other (the next once the previous is
up: agent answering, "@@STDPKT READY") and kept running. For each, the
clock starts when ``Instance.start()`` is called (run directory, guest files,
launcher, kernel: everything the engine does) and stops when the first frame
arrives on the host end of its port socket: the guest's gratuitous ARP as its
interface comes up with its address (lkl/init.c, lkl/init.sh: arp_notify).
Also recorded: from the kernel's spawn to that frame, and to the "@@STDPKT
READY" marker (agent up, setup done). Memory per live instance is the PSS
summed over every process of the instance (/proc/PID/smaps_rollup: the
launcher's process group and the kernel's own session),
read once all N are up.

``--pool K`` also measures a warm pool: K instances booted ahead with no
configuration (stdpkt_lab.engine.pool), then handed one each; the time from
``take()`` to the configured NF's first frame and to READY.

Writes bench/results/boot.json and boot.png; the last stdout line is one JSON
object {"n", "first_boot_ms", "median_boot_ms", "last_boot_ms",
"pss_mib_per_instance"} (plus "pool_up_ms" with --pool).
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import select
import socket
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

try:
    import stdpkt_lab  # noqa: F401
except ImportError:  # run from a checkout without installing
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tqdm.auto import tqdm  # noqa: E402

from stdpkt_lab.engine.instance import Instance  # noqa: E402
from stdpkt_lab.engine.spec import InstanceSpec, PortSpec  # noqa: E402

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
PAPER_FIRST_MS = 47.4


def spec_for(i: int, mem: int, agent: bool) -> InstanceSpec:
    addr = ipaddress.IPv4Interface(f"10.{(i >> 8) & 255}.{i & 255}.1/24")
    return InstanceSpec(f"b{i}", ports=(PortSpec(0, addr),), mem_mb=mem, agent=agent)


def first_frame(inst: Instance, t0: float, timeout: float) -> float:
    """Seconds from t0 until the instance's port delivers a frame."""
    sock = inst.port(0)
    poller = select.poll()  # not select(): a thousand instances hold descriptors past 1024
    poller.register(sock, select.POLLIN)
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"{inst.name}: no frame {timeout:.0f} s after start")
        if poller.poll(min(left, 0.5) * 1000):
            now = time.monotonic()
            sock.recv(65536, socket.MSG_DONTWAIT)
            return now - t0
        if inst.exited:
            raise RuntimeError(f"{inst.name} ended during boot:\n{inst.console_tail(15)}")


def pss_by_launcher(launchers: list[int]) -> dict[int, int]:
    """PSS (KiB) of each instance: every process in the launcher's process group and in the
    kernel's (linux.uml makes its own session; its helpers and guest processes share it)."""
    procs: dict[int, tuple[int, int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                procs[int(entry)] = (int(fields[1]), int(fields[2]))  # ppid, pgid
            except (OSError, ValueError, IndexError):
                continue
    groups: dict[int, int] = {}  # pgid -> launcher
    for launcher in launchers:
        groups[launcher] = launcher
        for pid, (ppid, _pgid) in procs.items():
            if ppid == launcher:
                groups[procs[pid][1]] = launcher
    pss: dict[int, int] = {}
    seen: set[tuple[int, str]] = set()
    for pid, (_ppid, pgid) in procs.items():
        launcher = groups.get(pgid)
        if launcher is None:
            continue
        try:
            with open(f"/proc/{pid}/smaps_rollup") as f:
                rollup = f.read().split("\n", 1)[1]
        except (OSError, IndexError):
            continue
        # UML's helper processes share the kernel's address space (clone(CLONE_VM)):
        # one address space, several pids with the same rollup; count it once
        if (pgid, rollup) in seen:
            continue
        seen.add((pgid, rollup))
        for line in rollup.splitlines():
            if line.startswith("Pss:"):
                pss[launcher] = pss.get(launcher, 0) + int(line.split()[1])
                break
    return pss


def machine() -> dict:
    sys.path.insert(0, str(HERE))
    from goodput import machine as goodput_machine

    return goodput_machine()


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["instances"]
    ids = [r["id"] for r in rows]
    fig, (ax, bx) = plt.subplots(2, 1, figsize=(8, 6.5), sharex=True,
                                 gridspec_kw={"height_ratios": [3, 1.3]})
    ax.plot(ids, [r["start_to_frame_ms"] for r in rows], ".", ms=3, label="Instance.start() → first frame")
    ax.plot(ids, [r["spawn_to_frame_ms"] for r in rows], ".", ms=2, alpha=0.5,
            label="kernel spawn → first frame")
    ready = [(r["id"], r["ready_ms"]) for r in rows if r.get("ready_ms") is not None]
    if ready:
        ax.plot(*zip(*ready, strict=True), ".", ms=2, alpha=0.5, label="spawn → READY (agent up)")
    ax.axhline(PAPER_FIRST_MS, color="black", linestyle="-.", linewidth=1,
               label=f"paper: first instance {PAPER_FIRST_MS} ms (LKL)")
    pool = result.get("pool")
    if pool:
        ax.axhline(pool["up_ms"]["median"], color="tab:green", linestyle=":",
                   label=f"warm pool: take() → first frame, median {pool['up_ms']['median']:.1f} ms")
    ax.set_ylabel("boot time (ms)")
    ax.set_yscale("log")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    m = result["machine"]
    ax.set_title(f"Boot to first packet, {len(rows)} instances kept alive "
                 f"({m['cores']} cores, {m['cpu'][:30]})", fontsize=10)
    pss = [(r["id"], r["pss_mib"]) for r in rows if r.get("pss_mib") is not None]
    if pss:
        bx.plot(*zip(*pss, strict=True), ".", ms=3, color="tab:purple")
    bx.set_ylabel("PSS (MiB)")
    bx.set_xlabel("instance id (started in this order)")
    bx.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def summary_ms(values: list[float]) -> dict:
    return {
        "min": round(min(values), 2),
        "median": round(statistics.median(values), 2),
        "max": round(max(values), 2),
        "n": len(values),
    }


def measure_pool(k: int, mem: int, agent: bool, bar: tqdm) -> dict:
    from stdpkt_lab.engine.pool import InstancePool

    up, ready = [], []
    with InstancePool(k, ports=1, mem_mb=mem, agent=agent, refill=False) as pool:
        pool.wait_filled(120)
        taken = []
        try:
            for i in range(k):
                spec = spec_for(50000 + i, mem, agent)
                t0 = time.monotonic()
                inst = pool.take(spec)
                taken.append(inst)
                up.append(first_frame(inst, t0, 30) * 1000)
                inst.wait_ready(30)
                ready.append((inst.boot_seconds or float("nan")) * 1000)
                bar.update(1)
        finally:
            for inst in taken:
                inst.stop()
    return {"k": k, "up_ms": summary_ms(up), "ready_ms": summary_ms(ready),
            "values_up_ms": [round(v, 2) for v in up]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="20 instances (under two minutes)")
    ap.add_argument("-n", type=int, help="instances to start and keep alive (default 100; quick 20)")
    ap.add_argument("--mem", type=int, default=InstanceSpec.__dataclass_fields__["mem_mb"].default,
                    help="guest memory in MB (default: the engine's)")
    ap.add_argument("--no-agent", action="store_true", help="instances without the exec agent")
    ap.add_argument("--pool", type=int, metavar="K", help="also measure a warm pool of K (quick: 5)")
    ap.add_argument("--timeout", type=float, default=60.0, help="per-instance boot timeout (s)")
    ap.add_argument("--out", default="boot", help="results file stem under bench/results/")
    args = ap.parse_args()
    n = args.n or (20 if args.quick else 100)
    agent = not args.no_agent
    pool_k = args.pool if args.pool is not None else (5 if args.quick else 0)

    result: dict = {
        "machine": machine(),
        "params": {"n": n, "mem_mb": args.mem, "agent": agent, "quick": args.quick,
                   "init": os.environ.get("STDPKT_INIT", "auto")},
        "instances": [],
    }
    live: list[Instance] = []
    rows = result["instances"]
    try:
        with tqdm(total=n + pool_k, desc="boot", unit="inst") as bar:
            for i in range(n):
                inst = Instance(spec_for(i, args.mem, agent))
                t0 = time.monotonic()
                inst.start()
                started = time.monotonic()
                live.append(inst)
                frame_s = first_frame(inst, t0, args.timeout)
                assert inst.boot_started is not None
                # in sequence: the next starts once this one is up (agent, READY)
                inst.wait_ready(args.timeout)
                rows.append({
                    "id": i,
                    "start_to_frame_ms": round(frame_s * 1000, 2),
                    "spawn_to_frame_ms": round((t0 + frame_s - inst.boot_started) * 1000, 2),
                    "start_call_ms": round((started - t0) * 1000, 2),  # our side: files, launcher spawn
                    "ready_ms": round((inst.boot_seconds or float("nan")) * 1000, 2),
                    "pid": inst.pid,
                })
                bar.update(1)
                bar.set_postfix_str(f"last {frame_s * 1000:.0f} ms")
            time.sleep(1.0)  # let the last ones settle before memory is read
            pss = pss_by_launcher([r["pid"] for r in rows])
            for row in rows:
                kib = pss.get(row.pop("pid"))
                row["pss_mib"] = None if kib is None else round(kib / 1024, 2)
            result["machine"]["loadavg_all_up"] = os.getloadavg()
            if pool_k:
                bar.set_postfix_str("warm pool")
                result["pool"] = measure_pool(pool_k, args.mem, agent, bar)
    finally:
        with ThreadPoolExecutor(8) as ex:
            list(ex.map(lambda x: x.stop(), live))

    boots = [r["start_to_frame_ms"] for r in rows]
    pss_vals = [r["pss_mib"] for r in rows if r.get("pss_mib") is not None]
    result["summary"] = {
        "start_to_frame_ms": summary_ms(boots),
        "spawn_to_frame_ms": summary_ms([r["spawn_to_frame_ms"] for r in rows]),
        "ready_ms": summary_ms([r["ready_ms"] for r in rows]),
        "pss_mib": summary_ms(pss_vals) if pss_vals else None,
        "pss_total_gib": round(sum(pss_vals) / 1024, 2),
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.out}.json").write_text(json.dumps(result, indent=1))
    plot(result, RESULTS / f"{args.out}.png")

    s = result["summary"]
    for key in ("start_to_frame_ms", "spawn_to_frame_ms", "ready_ms"):
        v = s[key]
        print(f"{key:18} min {v['min']:8.1f}  median {v['median']:8.1f}  max {v['max']:8.1f} ms")
    if s["pss_mib"]:
        print(f"{'PSS per instance':18} median {s['pss_mib']['median']:.1f} MiB, total {s['pss_total_gib']} GiB")
    headline = {
        "n": n,
        "first_boot_ms": boots[0],
        "median_boot_ms": round(statistics.median(boots), 2),
        "last_boot_ms": boots[-1],
        "pss_mib_per_instance": s["pss_mib"]["median"] if s["pss_mib"] else None,
    }
    if "pool" in result:
        p = result["pool"]
        print(f"{'warm pool take()':18} first frame median {p['up_ms']['median']:.2f} ms, "
              f"READY median {p['ready_ms']['median']:.2f} ms (k={p['k']})")
        headline["pool_up_ms"] = p["up_ms"]["median"]
    print(json.dumps(headline))
    return 0


if __name__ == "__main__":
    sys.exit(main())
