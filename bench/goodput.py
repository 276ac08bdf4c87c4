"""The paper's Figure 2: TCP goodput between two instances, as a function of the write size.

    python bench/goodput.py [--quick] [--sizes 64,1024,65536] [--mtus 65500,1500]
                            [--reps N] [--seconds S] [--paths pipe,lab,direct] [--mem MB]
                            [--small-write 1024] [--no-limit]

Paths, measured in the same run and interleaved repetition by repetition:

* ``pipe``   the paper's set-up: two ``stdpkt run`` processes, the sender's
  stdout piped to the receiver's stdin, a named pipe the other way
  (``IF0="back|/dev/stdout" stdpkt run --oneshot tx.sh | IF0="/dev/stdin|back"
  stdpkt run rx.sh``); every frame crosses two C relays and a pcap pipe.
* ``direct`` the engine's ceiling: the same two instances joined by one
  SOCK_SEQPACKET socketpair, no relay (``PortSpec(fd=...)``).
* ``limit``  the pipe's ceiling: the bare pcap pump (bench/pipe_pump.py), no
  kernels, frames of MTU + 14 bytes.
* ``lab``    what a notebook's Lab gets: the two instances joined by a Link
  (one in-process C relay, one pump per direction, no pipe); ``relay`` is an
  alias.
* ``limit``  measured for every MTU unless ``--no-limit`` (the pipe's ceiling,
  no kernels).

Every path's ports are of the default kind (``$STDPKT_PORTS``, else vhost:
virtio-net with offload); ``+vector`` paths (``pipe+vector``, ``lab+vector``,
``direct+vector``) take UML's vector driver, the default before.

iperf3 runs inside the instances (``-l`` = write size; the iperf3 server reads
with the same size). Goodput is iperf3's receiver-side figure.  After the
iperf3 sweep every session also runs ``stdpkt-blast`` (lkl/blast.c) with
``--small-write``-byte application writes: a static sender that submits 64
``IORING_OP_SEND`` per ``io_uring_enter`` (one guest system call per 64 writes,
where iperf3 makes one per write), the receiver reading 1 MiB buffers; its
figure counts only bytes the receiver got (the sender half-closes and waits
for the receiver's EOF).  Both are reported, labelled.

Writes bench/results/<out>.json (min/median/max per point) and <out>.png; the
last stdout line is one JSON object (the bench contract of issue 10)::

    {"pipe_gbps": <pipe, 64 KiB, MTU 65500>, "direct_gbps": ..., "pipe_limit_gbps": ...,
     "median_gbps": {"65500": {"pipe": {"1024": x, ...}, "lab": {...}, "direct": {...}},
                     "1500": {...}},
     "small_write": {"path": "pipe", "mtu": 65500, "write": 1024,
                     "sender": "stdpkt-blast", "gbps": x}}

(medians over ``--reps``; the headline point falls back to the largest MTU and
write size measured when 65500 / 65536 are not).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import ipaddress
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

try:
    import stdpkt_lab  # noqa: F401
except ImportError:  # run from a checkout without installing
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tqdm.auto import tqdm  # noqa: E402

from stdpkt_lab.engine.instance import Instance  # noqa: E402
from stdpkt_lab.engine.port_ends import grow_socket_buffers  # noqa: E402
from stdpkt_lab.engine.spec import InstanceSpec, PortSpec, port_kind  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from goodput_guest import (  # noqa: E402
    BLAST_BATCH,
    RX_ADDR,
    TX_ADDR,
    Collector,
    receiver_script,
    sender_script,
)
from threads import ThreadSampler  # noqa: E402

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
PAPER_GBPS = 9.1
FULL_SIZES = [64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768, 65536]
QUICK_SIZES = [64, 1024, 8192, 65536]
# ------------------------------------------------------------------ the two kernel paths


def _stdpkt_argv() -> list[str]:
    exe = Path(sys.executable).parent / "stdpkt"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "stdpkt_lab.cli"]


def run_pipe(work: Path, mtu: int, mem: int, collector: Collector, timeout: float, *,
             env: dict[str, str] | None = None, tx_prefix: tuple[str, ...] = (),
             rx_prefix: tuple[str, ...] = ()) -> None:
    """The paper's pipeline: two `stdpkt run` processes, stdout | stdin one way, a FIFO back.
    ``env``: extra environment (relay tuning); ``*_prefix``: an argv prefix (taskset)."""
    fifo = work / "back"
    tx_script, rx_script = work / "tx.sh", work / "rx.sh"
    base = {k: v for k, v in os.environ.items() if not re.match(r"^(IF|IP|NETMASK|MTU)\d+$|^GATEWAY$", k)}
    base.update(env or {})
    tx_env = {**base, "IF0": f"{fifo}|/dev/stdout", "IP0": TX_ADDR.split("/")[0], "MTU0": str(mtu)}
    rx_env = {**base, "IF0": f"/dev/stdin|{fifo}", "IP0": RX_ADDR.split("/")[0], "MTU0": str(mtu)}
    mem_args = ["--mem", str(mem)]
    tag = f"{os.getpid()}-{mtu}"
    procs: list[subprocess.Popen[bytes]] = []
    rx_log = open(work / "rx.log", "wb")  # noqa: SIM115 - closed in finally
    try:
        tx = subprocess.Popen(
            [*tx_prefix, *_stdpkt_argv(), "run", "--oneshot", "--name", f"gp-tx-{tag}", *mem_args,
             str(tx_script)],
            env=tx_env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            start_new_session=True, cwd=work,
        )
        procs.append(tx)
        rx = subprocess.Popen(
            [*rx_prefix, *_stdpkt_argv(), "run", "--name", f"gp-rx-{tag}", *mem_args,
             str(rx_script)],
            env=rx_env, stdin=tx.stdout, stdout=subprocess.DEVNULL, stderr=rx_log,
            start_new_session=True, cwd=work,
        )
        procs.append(rx)
        assert tx.stdout is not None and tx.stderr is not None
        tx.stdout.close()  # the receiver holds the read end now
        deadline = time.monotonic() + timeout
        killer = threading.Timer(timeout, lambda: _terminate(procs))
        killer.start()
        try:
            for raw in tx.stderr:
                collector.feed(raw.decode(errors="replace").rstrip("\n"))
        finally:
            killer.cancel()
        tx.wait(max(deadline - time.monotonic(), 1))
        rx.wait(30)
    finally:
        _terminate(procs)
        rx_log.close()


def _terminate(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        if p.poll() is None:
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
    for p in procs:
        try:
            p.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()


@contextlib.contextmanager
def _environ(env: dict[str, str] | None) -> Iterator[None]:
    """``env`` in os.environ for the block: instances, relays and ports read it at start."""
    saved = {k: os.environ.get(k) for k in env or {}}
    os.environ.update(env or {})
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _default_vhost(vhost: bool | None) -> bool:
    """``vhost`` as given, else what the default port kind (``$STDPKT_PORTS``) is."""
    return port_kind(None)[0] if vhost is None else vhost


def run_direct(work: Path, mtu: int, mem: int, collector: Collector, timeout: float, *,
               vhost: bool | None = None, env: dict[str, str] | None = None) -> None:
    """The same two instances joined by one SOCK_SEQPACKET socketpair: no relay at all.
    ``vhost``: virtio-net ports whose two back ends share the socketpair (None: the
    default port kind)."""
    with _environ(env):
        _run_direct(work, mtu, mem, collector, timeout, vhost=_default_vhost(vhost))


def _run_direct(work: Path, mtu: int, mem: int, collector: Collector, timeout: float, *,
                vhost: bool) -> None:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    for end in (a, b):  # the buffers the engine gives its own port sockets
        grow_socket_buffers(end)
    tag = f"{os.getpid()}-{mtu}"
    rx = Instance(InstanceSpec(
        f"gd-rx-{tag}", mem_mb=mem, script=work / "rx.sh",
        ports=(PortSpec(0, ipaddress.IPv4Interface(RX_ADDR), mtu, fd=b.fileno(), vhost=vhost),),
    ))
    tx = Instance(InstanceSpec(
        f"gd-tx-{tag}", mem_mb=mem, script=work / "tx.sh", oneshot=True,
        ports=(PortSpec(0, ipaddress.IPv4Interface(TX_ADDR), mtu, fd=a.fileno(), vhost=vhost),),
    ), on_console=collector.feed)
    try:
        rx.start()
        tx.start()
        a.close()
        b.close()
        rx.wait_ready()
        tx.wait_ready()
        if tx.wait(timeout) is None:
            raise TimeoutError(f"direct sweep at MTU {mtu} did not finish in {timeout:.0f} s")
    finally:
        a.close()
        b.close()
        tx.stop()
        rx.stop()


def run_relay(work: Path, mtu: int, mem: int, collector: Collector, timeout: float, *,
              env: dict[str, str] | None = None, vhost: bool | None = None) -> None:
    """Diagnostic: the two instances joined by one in-process C relay (a Link: one pump per
    direction, no pipe), to split the pipe path's cost between relaying and the pipe hop."""
    with _environ(env):
        vhost = _default_vhost(vhost)
    tag = f"{os.getpid()}-{mtu}"
    rx = Instance(InstanceSpec(f"gr-rx-{tag}", mem_mb=mem, script=work / "rx.sh",
                               ports=(PortSpec(0, ipaddress.IPv4Interface(RX_ADDR), mtu, vhost=vhost),)))
    tx = Instance(InstanceSpec(f"gr-tx-{tag}", mem_mb=mem, script=work / "tx.sh", oneshot=True,
                               ports=(PortSpec(0, ipaddress.IPv4Interface(TX_ADDR), mtu, vhost=vhost),)),
                  on_console=collector.feed)
    with _environ(env):  # the relay and the vhost ports read their tuning at start
        _run_link(rx, tx, mtu, timeout)


def _run_link(rx: Instance, tx: Instance, mtu: int, timeout: float) -> None:
    from stdpkt_lab.engine.links import Link

    link: Link | None = None
    try:
        rx.start()
        tx.start()
        link = Link(tx, 0, rx, 0, trace_slots=256)
        link.start()
        rx.wait_ready()
        tx.wait_ready()
        if tx.wait(timeout) is None:
            raise TimeoutError(f"relay sweep at MTU {mtu} did not finish in {timeout:.0f} s")
    finally:
        if link is not None:
            link.stop()
        tx.stop()
        rx.stop()


# ------------------------------------------------------------------ the pipe's own ceiling


def pipe_limit(frame: int, seconds: float) -> float:
    sys.path.insert(0, str(HERE))
    from pipe_pump import measure  # the bare pump: socket -> pump -> pipe -> pump -> socket

    return float(measure(frame, seconds, trace=True)["gbps"])


# ------------------------------------------------------------------ report


def summarise(values: list[float]) -> dict:
    vals = [v for v in values if v is not None]
    if not vals:
        return {"min": None, "median": None, "max": None, "n": 0, "values": values}
    return {
        "min": round(min(vals), 4),
        "median": round(statistics.median(vals), 4),
        "max": round(max(vals), 4),
        "n": len(vals),
        "values": [None if v is None else round(v, 4) for v in values],
    }


def machine() -> dict:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        commit = subprocess.run(["git", "-C", str(HERE), "rev-parse", "--short", "HEAD"],
                                capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "host_kernel": platform.release(),
        "mem_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "loadavg_start": os.getloadavg(),
        "commit": commit,
    }


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    styles = {"pipe": "-o", "direct": "--s", "lab": ":^"}
    colours = {65500: "tab:blue", 1500: "tab:orange"}
    for mtu_key, per_path in result["goodput"].items():
        mtu = int(mtu_key)
        colour = colours.get(mtu)
        for kind, per_size in per_path.items():
            sizes = sorted(int(s) for s in per_size if per_size[s]["median"] is not None)
            if not sizes:
                continue
            med = [per_size[str(s)]["median"] for s in sizes]
            lo = [per_size[str(s)]["min"] for s in sizes]
            hi = [per_size[str(s)]["max"] for s in sizes]
            ax.plot(sizes, med, styles.get(kind, "-"), color=colour, label=f"{kind}, MTU {mtu}")
            ax.fill_between(sizes, lo, hi, color=colour, alpha=0.15)
        limit = result.get("pipe_limit", {}).get(mtu_key)
        if limit and limit["median"] is not None:
            ax.axhline(limit["median"], color=colour, linestyle=":", linewidth=1,
                       label=f"bare pcap pipe pump, {mtu + 14} B frames")
    ax.axhline(PAPER_GBPS, color="black", linestyle="-.", linewidth=1, label="paper (LKL, 4 cores): 9.1 Gbps")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("write size (bytes, iperf3 -l)")
    ax.set_ylabel("TCP goodput (Gbit/s)")
    m = result["machine"]
    ax.set_title(f"Goodput between two instances ({m['cores']} cores, {m['cpu'][:30]})", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ------------------------------------------------------------------ main


# Levers measured as extra paths of the same interleaved run (README, Performance).
SPIN = {"STDPKT_RELAY_SPIN_US": "30"}
BATCH64 = {"STDPKT_RELAY_SOCK_BATCH": "64"}
_taskset = shutil.which("taskset")
LEVER_RUNNERS: dict[str, Callable[..., None]] = {
    "pipe+spin": functools.partial(run_pipe, env=SPIN),
    "lab+spin": functools.partial(run_relay, env=SPIN),
    "pipe+batch64": functools.partial(run_pipe, env=BATCH64),
    "lab+batch64": functools.partial(run_relay, env=BATCH64),
    "lab+1thread": functools.partial(run_relay, env={"STDPKT_LINK_THREADS": "one"}),
    # UML's vector driver (STDPKT_PORTS=vector; the default port kind until vhost took over)
    "pipe+vector": functools.partial(run_pipe, env={"STDPKT_PORTS": "vector"}),
    "lab+vector": functools.partial(run_relay, vhost=False),
    "direct+vector": functools.partial(run_direct, vhost=False),
    **{f"{p}+vector+cores": functools.partial(run, vhost=False, env={"STDPKT_CPUS": "auto"})
       for p, run in (("lab", run_relay), ("direct", run_direct))},
    "pipe+vector+cores": functools.partial(run_pipe, env={"STDPKT_PORTS": "vector", "STDPKT_CPUS": "auto"}),
    # virtio-net over vhost-user with checksum offload and TSO (stdpkt_lab/engine/vhost.py)
    "pipe+vhost": functools.partial(run_pipe, env={"STDPKT_PORTS": "vhost"}),
    "lab+vhost": functools.partial(run_relay, vhost=True),
    "direct+vhost": functools.partial(run_direct, vhost=True),
    # the pumps read the socket the port's thread fills instead of the guest's transmit
    # queue (STDPKT_VHOST_RING=0: how vhost ports worked before relay/vhost_ring.c)
    "lab+vhost+sock": functools.partial(run_relay, vhost=True, env={"STDPKT_VHOST_RING": "0"}),
    "pipe+vhost+sock": functools.partial(run_pipe, env={"STDPKT_PORTS": "vhost", "STDPKT_VHOST_RING": "0"}),
    # the direct paths of relay/vhost_pcap.c (STDPKT_RELAY_DIRECT, default 4: transmit
    # frames spliced into a pipe whose reader is a relay, relay/vhost_splice.c).  0: the
    # general path, every frame copied twice on the way in (the default until the tenth
    # session); 1: the sending relay writes pcap records into the pipe from guest memory;
    # 3: the receiving one also reads large records straight into guest memory; 7: 3 and
    # splicing
    "pipe+copy": functools.partial(run_pipe, env={"STDPKT_RELAY_DIRECT": "0"}),
    "pipe+txdirect": functools.partial(run_pipe, env={"STDPKT_RELAY_DIRECT": "1"}),
    "pipe+rxdirect": functools.partial(run_pipe, env={"STDPKT_RELAY_DIRECT": "3"}),
    "pipe+splice": functools.partial(run_pipe, env={"STDPKT_RELAY_DIRECT": "7"}),
    # 4 frames per relay batch instead of 16 (a pipe's two ends hold its lock 4x shorter)
    "pipe+batch4": functools.partial(run_pipe, env={"STDPKT_RELAY_SOCK_BATCH": "4"}),
    # the vhost port interrupts the guest every N received frames (default 32)
    "lab+vhost+sig4": functools.partial(run_relay, vhost=True, env={"STDPKT_VHOST_RX_SIGNAL": "4"}),
    "lab+vhost+sig128": functools.partial(run_relay, vhost=True, env={"STDPKT_VHOST_RX_SIGNAL": "128"}),
    "pipe+vhost+sig4": functools.partial(run_pipe, env={"STDPKT_PORTS": "vhost", "STDPKT_VHOST_RX_SIGNAL": "4"}),
    # the kernel's own TCP buffer maxima, scaled to the guest's memory (0.9 MB at 128 MB)
    # instead of a 1 GiB host's (STDPKT_TCP_BUFFERS; the default since this was measured)
    **{f"{p}+kbuf": functools.partial(run, env={"STDPKT_TCP_BUFFERS": "kernel"})
       for p, run in (("pipe", run_pipe), ("lab", run_relay), ("direct", run_direct))},
    **{f"{p}+vhost+kbuf": functools.partial(run, env={"STDPKT_TCP_BUFFERS": "kernel",
                                                        "STDPKT_PORTS": "vhost"})
       for p, run in (("pipe", run_pipe),)},
    "lab+vhost+kbuf": functools.partial(run_relay, vhost=True, env={"STDPKT_TCP_BUFFERS": "kernel"}),
    # 16 MiB maxima: more in flight than a 1 GiB host's defaults
    **{f"{p}+16m": functools.partial(run, env={"STDPKT_TCP_BUFFERS": "16777216,16777216"})
       for p, run in (("pipe", run_pipe), ("lab", run_relay), ("direct", run_direct))},
    "pipe+vhost+16m": functools.partial(run_pipe, env={"STDPKT_TCP_BUFFERS": "16777216,16777216",
                                                       "STDPKT_PORTS": "vhost"}),
    # 2 MiB maxima: between the kernel's 0.9 MB and a 1 GiB host's 6 / 4 MiB
    "lab+vhost+2m": functools.partial(run_relay, vhost=True, env={"STDPKT_TCP_BUFFERS": "2097152,2097152"}),
    "pipe+vhost+2m": functools.partial(run_pipe, env={"STDPKT_TCP_BUFFERS": "2097152,2097152",
                                                      "STDPKT_PORTS": "vhost"}),
    "direct+vhost+kbuf": functools.partial(run_direct, vhost=True, env={"STDPKT_TCP_BUFFERS": "kernel"}),
    # the host scheduler places every kernel and guest process (STDPKT_CPUS=off: how it was
    # before stdpkt_lab/engine/cpus.py pinned each instance to a core of its own)
    **{f"{p}+free": functools.partial(run, env={"STDPKT_CPUS": "off"})
       for p, run in (("pipe", run_pipe), ("lab", run_relay), ("direct", run_direct))},
    # each instance on a core of its own (STDPKT_CPUS=auto: the default when
    # goodput-pinned.json was measured, opt-in for two sessions, the default again: README)
    **{f"{p}+cores": functools.partial(run, env={"STDPKT_CPUS": "auto"})
       for p, run in (("pipe", run_pipe), ("lab", run_relay), ("direct", run_direct))},
    "pipe+vhost+cores": functools.partial(run_pipe, env={"STDPKT_PORTS": "vhost", "STDPKT_CPUS": "auto"}),
    "lab+vhost+cores": functools.partial(run_relay, vhost=True, env={"STDPKT_CPUS": "auto"}),
    "direct+vhost+cores": functools.partial(run_direct, vhost=True, env={"STDPKT_CPUS": "auto"}),
    "pipe+vhost+free": functools.partial(run_pipe, env={"STDPKT_PORTS": "vhost", "STDPKT_CPUS": "off"}),
    "lab+vhost+free": functools.partial(run_relay, vhost=True, env={"STDPKT_CPUS": "off"}),
    "direct+vhost+free": functools.partial(run_direct, vhost=True, env={"STDPKT_CPUS": "off"}),
    # each `stdpkt run` (its kernel, guest processes and relays) on a core of its own
    "pipe+pin": functools.partial(run_pipe, tx_prefix=(str(_taskset), "-c", "0"),
                                  rx_prefix=(str(_taskset), "-c", "1")),
    # the same on vhost ports: each `stdpkt run`'s relays share the core of its kernel
    "pipe+vhost+pin": functools.partial(run_pipe, env={"STDPKT_PORTS": "vhost", "STDPKT_CPUS": "auto"},
                                        tx_prefix=(str(_taskset), "-c", "0"),
                                        rx_prefix=(str(_taskset), "-c", "1")),
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="4 sizes, 1 repetition, 2 s runs (under 2 minutes)")
    ap.add_argument("--sizes", help="comma-separated write sizes in bytes")
    ap.add_argument("--mtus", default="65500,1500")
    ap.add_argument("--reps", type=int)
    ap.add_argument("--seconds", type=float)
    ap.add_argument("--paths", default="pipe,lab,direct",
                    help="kernel paths: pipe, lab (alias relay), direct; 'limit' is accepted "
                         "and measured anyway unless --no-limit")
    ap.add_argument("--small-write", type=int, default=1024,
                    help="application write size of the stdpkt-blast run (0: no blast run)")
    ap.add_argument("--no-limit", action="store_true", help="skip the bare pipe pump")
    ap.add_argument("--nodelay", action="store_true",
                    help="iperf3 -N: TCP_NODELAY on the sender (a write's tail is not held back by Nagle)")
    ap.add_argument("--mem", type=int, default=InstanceSpec.__dataclass_fields__["mem_mb"].default,
                    help="guest memory in MB (default: the engine's)")
    ap.add_argument("--out", default="goodput", help="results file stem under bench/results/")
    ap.add_argument("--threads", action="store_true",
                    help="record the cores each thread name used per session (bench/threads.py)")
    args = ap.parse_args()

    sizes = [int(s) for s in args.sizes.split(",")] if args.sizes else (QUICK_SIZES if args.quick else FULL_SIZES)
    mtus = [int(m) for m in args.mtus.split(",")]
    reps = args.reps or (1 if args.quick else 3)
    seconds = args.seconds or (2.0 if args.quick else 3.0)
    omit = 0 if args.quick else 1
    paths = list(dict.fromkeys("lab" if p == "relay" else p for p in args.paths.split(",") if p))
    runners = {"pipe": run_pipe, "direct": run_direct, "lab": run_relay}
    runners.update(LEVER_RUNNERS)
    unknown = [p for p in paths if p not in runners and p != "limit"]
    if unknown:
        print(f"goodput.py: unknown path(s) {', '.join(unknown)}; known: "
              f"{', '.join([*runners, 'limit'])}", file=sys.stderr)
        return 2
    kernel_paths = [p for p in paths if p in runners]
    if not args.no_limit and "limit" not in paths:
        paths.append("limit")
    if args.no_limit and "limit" in paths:
        paths.remove("limit")
    blast = None
    if args.small_write:
        from stdpkt_lab.engine.paths import helper

        try:
            blast = helper("stdpkt-blast")
        except Exception as exc:
            print(f"goodput.py: no small-write run: {exc}", file=sys.stderr)

    result: dict = {
        "machine": machine(),
        "params": {"sizes": sizes, "mtus": mtus, "reps": reps, "seconds": seconds, "omit": omit,
                   "mem_mb": args.mem, "quick": args.quick, "paths": paths,
                   "small_write": args.small_write, "blast_batch": BLAST_BATCH,
                   "nodelay": args.nodelay},
        "goodput": {str(m): {p: {str(s): [] for s in sizes} for p in kernel_paths} for m in mtus},
        "blast": {str(m): {p: [] for p in kernel_paths} for m in mtus},
        "pipe_limit": {},
        "errors": [],
        "runs": [],
    }
    details = result["runs"]
    raw = result["goodput"]
    total = len(mtus) * len(kernel_paths) * reps * len(sizes) + (len(mtus) if "limit" in paths else 0)
    timeout = 120 + len(sizes) * (seconds + omit + 15)
    work = Path(tempfile.mkdtemp(prefix="stdpkt-goodput-"))
    try:
        (work / "rx.sh").write_text(receiver_script(blast))
        (work / "tx.sh").write_text(sender_script(sizes, seconds, omit, blast, args.small_write,
                                                      args.nodelay))
        with tqdm(total=total, desc="goodput", unit="run") as bar:
            if "limit" in paths:
                for mtu in mtus:
                    bar.set_postfix_str(f"pipe pump, {mtu + 14} B frames")
                    values = [pipe_limit(mtu + 14, 1.0 if args.quick else 2.0) for _ in range(reps)]
                    result["pipe_limit"][str(mtu)] = summarise(values)
                    bar.update(1)
            for rep in range(reps):
                for mtu in mtus:
                    for path in kernel_paths:  # interleaved: noise hits every path alike
                        bar.set_postfix_str(f"rep {rep + 1}, MTU {mtu}, {path}")

                        def got(size: int, r: dict, mtu: int = mtu, path: str = path, rep: int = rep) -> None:
                            raw[str(mtu)][path][str(size)].append(r["gbps"])
                            details.append({"mtu": mtu, "path": path, "size": size, "rep": rep, **r})
                            if r["gbps"] is None:
                                result["errors"].append(f"MTU {mtu} {path} {size}: {r.get('error')}")
                            bar.update(1)

                        def blasted(r: dict, mtu: int = mtu, path: str = path, rep: int = rep) -> None:
                            result["blast"][str(mtu)][path].append(r.get("gbps"))
                            details.append({"mtu": mtu, "path": path, "size": args.small_write,
                                            "rep": rep, "tool": "stdpkt-blast", **r})
                            if r.get("gbps") is None:
                                result["errors"].append(f"MTU {mtu} {path} blast: {r.get('error')}")

                        collector = Collector(got, blasted)
                        sampler = ThreadSampler() if args.threads else None
                        try:
                            runners[path](work, mtu, args.mem, collector, timeout)
                        except Exception as exc:  # one failed session must not lose the others
                            result["errors"].append(f"MTU {mtu} {path} rep {rep}: {exc!r}")
                            tqdm.write(f"goodput: MTU {mtu} {path}: {exc!r}; console tail:\n"
                                       + "\n".join(collector.lines[-10:]), file=sys.stderr)
                        finally:
                            if sampler is not None:
                                details.append({"mtu": mtu, "path": path, "rep": rep,
                                                "cores_by_thread": sampler.stop()})
                        if collector.failure:
                            result["errors"].append(f"MTU {mtu} {path}: {collector.failure}")
    finally:
        shutil.rmtree(work, ignore_errors=True)

    result["machine"]["loadavg_end"] = os.getloadavg()
    for per_path in raw.values():
        for per_size in per_path.values():
            for size, values in per_size.items():
                per_size[size] = summarise(values)
    for per_path in result["blast"].values():
        for path, values in per_path.items():
            per_path[path] = summarise(values)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.out}.json").write_text(json.dumps(result, indent=1))
    plot(result, RESULTS / f"{args.out}.png")

    for mtu_key, per_path in raw.items():
        limit = result["pipe_limit"].get(mtu_key, {}).get("median")
        print(f"MTU {mtu_key}" + (f"  (bare pipe pump: {limit:.2f} Gbit/s)" if limit else ""))
        print(f"{'write':>7} " + " ".join(f"{p + ' min/med/max':>24}" for p in per_path))
        for size in sizes:
            cells = []
            for p in per_path:
                s = per_path[p][str(size)]
                cells.append(f"{_f(s['min'])}/{_f(s['median'])}/{_f(s['max'])}".rjust(24))
            print(f"{size:>7} " + " ".join(cells))
    for err in result["errors"]:
        print(f"error: {err}", file=sys.stderr)

    for mtu_key, per_path in result["blast"].items():
        for p, cell in per_path.items():
            print(f"MTU {mtu_key} {p}: stdpkt-blast {args.small_write} B writes x{BLAST_BATCH} "
                  f"per io_uring_enter: {_f(cell['min'])}/{_f(cell['median'])}/{_f(cell['max'])}")

    head_mtu = "65500" if "65500" in raw else str(max(mtus))
    head_size = "65536" if 65536 in sizes else str(max(sizes))

    def med(cell: dict | None) -> float | None:
        return None if not cell or cell.get("median") is None else round(cell["median"], 3)

    limit = result["pipe_limit"].get(head_mtu, {}).get("median")
    small_path = "pipe" if "pipe" in kernel_paths else (kernel_paths[0] if kernel_paths else None)
    small_mtu = head_mtu
    line = {
        "pipe_gbps": med(raw.get(head_mtu, {}).get("pipe", {}).get(head_size)),
        "direct_gbps": med(raw.get(head_mtu, {}).get("direct", {}).get(head_size)),
        "pipe_limit_gbps": None if limit is None else round(limit, 2),
        "median_gbps": {m: {p: {sz: med(c) for sz, c in per_size.items()}
                            for p, per_size in per_path.items()}
                        for m, per_path in raw.items()},
        "small_write": {
            "path": small_path, "mtu": int(small_mtu), "write": args.small_write,
            "sender": "stdpkt-blast" if blast else None,
            "gbps": med(result["blast"].get(small_mtu, {}).get(small_path or "")),
        },
    }
    result["summary"] = line
    (RESULTS / f"{args.out}.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(line))
    return 0 if not result["errors"] else 1


def _f(v: float | None) -> str:
    return "-" if v is None else f"{v:.3f}"


if __name__ == "__main__":
    sys.exit(main())
