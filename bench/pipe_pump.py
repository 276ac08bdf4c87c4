"""Throughput of the pcap pipe path: socketpair -> pump -> OS pipe -> pump -> socketpair.

    python bench/pipe_pump.py [--quick] [--sizes 64,1514,65536] [--seconds 1.0] [--no-trace]
                              [--direct]

A C sender (sendmmsg) feeds one socketpair, a C receiver (recvmmsg) drains the
other; both pumps are the real relay (``--direct``: one socket -> socket pump,
no pipe).  Prints a table (Gbps of frame bytes, Mpps, and CPU seconds the
whole process spent per GB moved, sender and receiver included) per frame
size and, as the last line, one JSON object whose ``pipe_limit_gbps_64k`` is
the 64 KiB-frame figure.  The host's cores are shared by the four threads
(sender, two pumps, receiver), so on a 2-core host the figures move with
whatever else runs.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import struct
import sys
import threading
import time
from pathlib import Path

try:
    import stdpkt_lab  # noqa: F401
except ImportError:  # run from a checkout without installing
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from stdpkt_lab.relay import Endpoint, Pump  # noqa: E402
from stdpkt_lab.relay.pump import ffi, lib  # noqa: E402

FULL_SIZES = [64, 256, 1514, 9014, 16384, 65536]
QUICK_SIZES = [64, 1514, 65536]


def run_once(
    size: int, count: int, *, trace: bool, direct: bool = False
) -> tuple[float, int, int, float, tuple]:
    """Moves ``count`` frames of ``size`` bytes.

    Returns (seconds, frames received, bytes received, CPU seconds, (tx stats, rx stats))."""
    a0, a1 = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    b0, b1 = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    b1.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", 2, 0))
    slots = 1024 if trace else 0
    if direct:
        tx = Pump(Endpoint.socket(a1), Endpoint.socket(b0), name="tx", trace_slots=slots)
        rx = tx
    else:
        r, w = os.pipe()
        tx = Pump(Endpoint.socket(a1), Endpoint.pcap(w, close=True), name="tx", trace_slots=slots)
        rx = Pump(Endpoint.pcap(r, close=True), Endpoint.socket(b0), name="rx", trace_slots=slots)
    got_bytes = ffi.new("uint64_t *")
    result: dict[str, int] = {}

    def receive() -> None:
        result["frames"] = lib.relay_bench_recv(b1.fileno(), count, got_bytes)

    try:
        tx.start()
        if rx is not tx:
            rx.start()
        receiver = threading.Thread(target=receive, daemon=True)
        receiver.start()
        c0 = time.process_time()
        t0 = time.perf_counter()
        sent = lib.relay_bench_send(a0.fileno(), size, count)
        receiver.join()
        elapsed = time.perf_counter() - t0
        cpu = time.process_time() - c0
    finally:
        tx.stop()
        rx.stop()
        for s in (a0, a1, b0, b1):
            s.close()
    if sent != count:
        raise RuntimeError(f"sender stopped after {sent} of {count} frames")
    stats = (tx.stats, rx.stats)
    return elapsed, result.get("frames", 0), got_bytes[0], cpu, stats


def measure(size: int, seconds: float, *, trace: bool, direct: bool = False) -> dict:
    # calibrate on a short run, then size the real one to last about `seconds`
    probe = max(200, min(20000, (64 << 20) // size))
    t, frames, _, _, _ = run_once(size, probe, trace=trace, direct=direct)
    rate = frames / t if t > 0 else 1e6
    count = max(probe, int(rate * seconds))
    t, frames, nbytes, cpu, (tx, rx) = run_once(size, count, trace=trace, direct=direct)
    return {
        "size": size,
        "frames": frames,
        "lost": count - frames,
        "seconds": round(t, 4),
        "gbps": nbytes * 8 / t / 1e9,
        "mpps": frames / t / 1e6,
        "cpu_s_per_gb": cpu / (nbytes / 1e9) if nbytes else float("nan"),
        "drops": tx.drops + rx.drops,
        "malformed": rx.malformed,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="three sizes, short runs")
    ap.add_argument("--sizes", help="comma-separated frame sizes (64..65550)")
    ap.add_argument("--seconds", type=float, help="target duration of each run")
    ap.add_argument("--no-trace", action="store_true", help="pumps without a trace ring")
    ap.add_argument("--direct", action="store_true", help="one socket->socket pump, no pipe")
    args = ap.parse_args()
    sizes = (
        [int(s) for s in args.sizes.split(",")]
        if args.sizes
        else (QUICK_SIZES if args.quick else FULL_SIZES)
    )
    seconds = args.seconds or (0.4 if args.quick else 1.5)
    rows = []
    path = "socket -> pump -> socket" if args.direct else "socket -> pump -> pipe -> pump -> socket"
    print(f"{path}, trace {'off' if args.no_trace else 'on'}")
    print(
        f"{'frame':>7} {'Gbps':>8} {'Mpps':>8} {'CPU s/GB':>9} {'frames':>10} {'lost':>6} {'s':>7}"
    )
    for size in sizes:
        row = measure(size, seconds, trace=not args.no_trace, direct=args.direct)
        rows.append(row)
        print(
            f"{size:>7} {row['gbps']:>8.2f} {row['mpps']:>8.3f} {row['cpu_s_per_gb']:>9.3f} "
            f"{row['frames']:>10} {row['lost']:>6} {row['seconds']:>7.3f}",
            flush=True,
        )
    big = [r for r in rows if r["size"] >= 65536]
    summary = {
        "pipe_limit_gbps_64k": round(big[-1]["gbps"], 2) if big else None,
        "path": "direct" if args.direct else "pipe",
        "trace": not args.no_trace,
        "gbps": {str(r["size"]): round(r["gbps"], 3) for r in rows},
        "mpps": {str(r["size"]): round(r["mpps"], 4) for r in rows},
        "cpu_s_per_gb": {str(r["size"]): round(r["cpu_s_per_gb"], 3) for r in rows},
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
