"""Issue 10's target 5: TCP goodput through the paper's chain (client | NAT | firewall | server).

    python bench/chain.py [--seconds 10] [--reps 2] [--paths pipe,lab,direct]
                          [--ports vector,vhost] [--out chain]

Four kernels at MTU 1500, iperf3 from the client to the server for ``--seconds``
(10 s, as the issue asks; the demo's 2 s are mostly slow start), every path and
port kind interleaved repetition by repetition:

* ``pipe``   the paper's shell pipeline (``examples/paper/run-chain.sh``): four
  ``stdpkt run`` processes, stdout | stdin toward the server, named pipes back,
  NAT and firewall configured by ``examples/paper/nat-config.sh`` and
  ``firewall-config.sh``; every frame crosses two relays and a pcap pipe per hop.
* ``lab``    the same chain as a notebook builds it: ``Lab`` with the catalogue's
  ``nat`` and ``firewall`` kinds, one in-process relay per link.
* ``direct`` the ceiling: the same four instances and the same scripts as
  ``pipe``, each link one SOCK_SEQPACKET socketpair, no relay.

Port kinds: ``vector`` (UML's vector driver) and ``vhost`` (virtio-net over
vhost-user, checksum offload and TSO). The host's CPU idle share over each run
is recorded too (the chain's kernels, relays and port threads share the cores).

Writes bench/results/<out>.json and <out>.png; the last stdout line is one JSON
object: ``{"target_gbps": 2.0, "seconds": S, "reps": N, "median_gbps":
{"vhost": {"pipe": x, "lab": y, "direct": z}, "vector": {...}}, "best_pipe_gbps": x}``.
"""

from __future__ import annotations

import argparse
import functools
import ipaddress
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

try:
    import stdpkt_lab  # noqa: F401
except ImportError:  # run from a checkout without installing
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import networkx as nx  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

from stdpkt_lab.engine.instance import Instance  # noqa: E402
from stdpkt_lab.engine.port_ends import grow_socket_buffers  # noqa: E402
from stdpkt_lab.engine.spec import PORTS_VARIABLE, InstanceSpec, PortSpec  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from goodput import _environ, _stdpkt_argv, _terminate, machine, summarise  # noqa: E402
from threads import ThreadSampler  # noqa: E402

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
PAPER = HERE.parent / "examples" / "paper"
TARGET_GBPS = 2.0
SERVER = "192.168.1.2"
MARK = "CHAIN-"

CLIENT = """#!/bin/sh
# bench/chain.py's client: wait for the server's iperf3, then measure for {seconds} s.
i=0
until ping -c 1 -W 1 {server} >/dev/null 2>&1; do
    i=$((i + 1)); [ $i -ge 60 ] && {{ echo "{mark}FAIL {server} unreachable"; exit 1; }}
done
until nc -z -w 1 {server} 5201 2>/dev/null; do
    i=$((i + 1)); [ $i -ge 120 ] && {{ echo "{mark}FAIL no iperf3 server"; exit 1; }}
    sleep 0.25
done
echo "{mark}BEGIN"
iperf3 -c {server} -t {seconds} -J
echo "{mark}END"
"""


class Collector:
    """The client's console lines between the markers: iperf3's JSON report."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self._inside = False
        self._buf: list[str] = []
        self.report: str | None = None
        self.failure: str | None = None

    def feed(self, line: str) -> None:
        self.lines.append(line)
        if line.startswith(MARK + "BEGIN"):
            self._inside, self._buf = True, []
        elif line.startswith(MARK + "END"):
            self._inside, self.report = False, "\n".join(self._buf)
        elif line.startswith(MARK + "FAIL"):
            self.failure = line[len(MARK):]
        elif self._inside:
            self._buf.append(line)

    def gbps(self) -> float:
        """The receiver's goodput; a clear error if iperf3 or the chain failed."""
        if self.report is None:
            tail = "\n".join(self.lines[-15:])
            raise RuntimeError(f"the client reported no iperf3 result ({self.failure or 'no marker'});"
                               f" its console ended:\n{tail}")
        try:
            data = json.loads(self.report[self.report.find("{"):])
        except ValueError as exc:
            raise RuntimeError(f"iperf3's report is not JSON: {self.report[-300:]!r}") from exc
        if "error" in data:  # iperf3 3.12 exits 0 with -J even when it failed
            raise RuntimeError(f"iperf3 failed: {data['error']}")
        return float(data["end"]["sum_received"]["bits_per_second"]) / 1e9


def _client_script(work: Path, seconds: float) -> Path:
    path = work / "client.sh"
    path.write_text(CLIENT.format(server=SERVER, seconds=int(seconds), mark=MARK))
    return path


# the chain's addresses, as examples/paper/run-chain.sh gives them
ADDRS = {"client": ["10.0.0.2"], "nat": ["10.0.0.1", "192.168.0.1"],
         "firewall": ["192.168.0.2", "192.168.1.1"], "server": ["192.168.1.2"]}
GATEWAYS = {"client": "10.0.0.1", "server": "192.168.1.1"}
SCRIPTS = {"nat": PAPER / "nat-config.sh", "firewall": PAPER / "firewall-config.sh",
           "server": PAPER / "server.sh"}
ORDER = ["client", "nat", "firewall", "server"]


def run_pipe(work: Path, ports: str, seconds: float, collector: Collector, *,
             env: dict[str, str] | None = None) -> None:
    """run-chain.sh's pipeline, each stage a `stdpkt run` process (``env``: relay tuning)."""
    fifos = [work / f"p{i}" for i in (1, 2, 3)]
    for f in fifos:
        if not f.exists():
            os.mkfifo(f)
    scripts = {**SCRIPTS, "client": _client_script(work, seconds)}
    base = {k: v for k, v in os.environ.items() if not re.match(r"^(IF|IP|NETMASK|MTU)\d+$|^GATEWAY$", k)}
    base[PORTS_VARIABLE] = ports
    base.update(env or {})
    procs: list[subprocess.Popen[bytes]] = []
    logs = []
    try:
        upstream = None
        for i, name in enumerate(ORDER):
            env = dict(base)
            addrs = ADDRS[name]
            ifs = []
            if i > 0:
                ifs.append(f"/dev/stdin|{fifos[i - 1]}")
            if i < len(ORDER) - 1:
                ifs.append(f"{fifos[i]}|/dev/stdout")
            for n, (spec, ip) in enumerate(zip(ifs, addrs, strict=True)):
                env.update({f"IF{n}": spec, f"IP{n}": ip, f"NETMASK{n}": "24"})
            if name in GATEWAYS:
                env["GATEWAY"] = GATEWAYS[name]
            log = open(work / f"{name}.log", "wb")  # noqa: SIM115 - closed in finally
            logs.append(log)
            last = i == len(ORDER) - 1
            argv = [*_stdpkt_argv(), "run", "--name", f"ch-{name}-{os.getpid()}",
                    *(["--oneshot"] if name == "client" else []), str(scripts[name])]
            p = subprocess.Popen(argv, env=env, cwd=work, start_new_session=True,
                                 stdin=upstream if upstream is not None else subprocess.DEVNULL,
                                 stdout=subprocess.DEVNULL if last else subprocess.PIPE,
                                 stderr=subprocess.PIPE if name == "client" else log)
            procs.append(p)
            if upstream is not None:
                upstream.close()  # the next stage holds the read end now
            upstream = p.stdout
        client = procs[0]
        killer = threading.Timer(seconds + 120, lambda: _terminate(procs))
        killer.start()
        try:
            assert client.stderr is not None
            for raw in client.stderr:
                collector.feed(raw.decode(errors="replace").rstrip("\n"))
        finally:
            killer.cancel()
        client.wait(30)
        for p in procs[1:]:
            p.wait(30)  # the client's end closes the pipeline, stage by stage
    finally:
        _terminate(procs)
        for log in logs:
            log.close()


def run_direct(work: Path, ports: str, seconds: float, collector: Collector, *,
               env: dict[str, str] | None = None) -> None:
    """The same instances and scripts, each link a socketpair with no relay."""
    with _environ(env):
        _direct_chain(work, ports, seconds, collector)


def _direct_chain(work: Path, ports: str, seconds: float, collector: Collector) -> None:
    vhost = ports == "vhost"
    pairs = [socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET) for _ in range(3)]
    for pair in pairs:
        for end in pair:
            grow_socket_buffers(end)
    scripts = {**SCRIPTS, "client": _client_script(work, seconds)}
    instances: list[Instance] = []
    try:
        for i, name in enumerate(ORDER):
            fds = ([pairs[i - 1][1].fileno()] if i > 0 else []) + \
                  ([pairs[i][0].fileno()] if i < len(ORDER) - 1 else [])
            specs = tuple(PortSpec(n, ipaddress.IPv4Interface(f"{ip}/24"), 1500, fd=fd, vhost=vhost)
                          for n, (fd, ip) in enumerate(zip(fds, ADDRS[name], strict=True)))
            gw = GATEWAYS.get(name)
            spec = InstanceSpec(f"cd-{name}-{os.getpid()}", ports=specs, script=scripts[name],
                                gateway=ipaddress.IPv4Address(gw) if gw else None,
                                oneshot=name == "client")
            inst = Instance(spec, on_console=collector.feed if name == "client" else None)
            instances.append(inst)
            inst.start()
        for a, b in pairs:
            a.close()
            b.close()
        for inst in instances:
            inst.wait_ready()
        if instances[0].wait(seconds + 120) is None:
            raise TimeoutError(f"the direct chain did not finish in {seconds + 120:.0f} s")
    finally:
        for a, b in pairs:
            a.close()
            b.close()
        for inst in reversed(instances):
            inst.stop()


def run_lab(work: Path, ports: str, seconds: float, collector: Collector, *,
            env: dict[str, str] | None = None) -> None:
    """The chain as a notebook builds it: Lab, catalogue NFs, one relay per link."""
    import stdpkt_lab as sl

    with _environ(env):  # relays and ports read their tuning when they start
        _lab_chain(sl, ports, seconds, collector)


def _lab_chain(sl: Any, ports: str, seconds: float, collector: Collector) -> None:
    g = nx.Graph(ports=ports)
    g.add_node("client", kind="host")
    g.add_node("nat", kind="nat", outside="fw")
    g.add_node("fw", kind="firewall", allow=["tcp/5201", "icmp"])
    g.add_node("server", kind="host", serve="iperf3")
    g.add_edges_from([("client", "nat"), ("nat", "fw"), ("fw", "server")])
    with sl.Lab(g, progress=False) as lab:
        collector.feed(MARK + "BEGIN")
        done = lab.exec("client", f"iperf3 -c server -t {int(seconds)} -J", timeout=seconds + 60)
        for line in done.stdout.splitlines():
            collector.feed(line)
        collector.feed(MARK + "END")


SPIN = {"STDPKT_RELAY_SPIN_US": "30"}
KBUF = {"STDPKT_TCP_BUFFERS": "kernel"}
RUNNERS: dict[str, Callable[[Path, str, float, Collector], None]] = {
    "pipe": run_pipe, "lab": run_lab, "direct": run_direct,
    # levers, as extra paths of the same interleaved run (README, "The data path")
    "pipe+spin": functools.partial(run_pipe, env=SPIN),
    "lab+spin": functools.partial(run_lab, env=SPIN),
    "pipe+batch64": functools.partial(run_pipe, env={"STDPKT_RELAY_SOCK_BATCH": "64"}),
    # the kernel's TCP buffer maxima for a 128 MB guest (0.9 MB) instead of a 1 GiB host's
    "pipe+kbuf": functools.partial(run_pipe, env=KBUF),
    "lab+kbuf": functools.partial(run_lab, env=KBUF),
    "direct+kbuf": functools.partial(run_direct, env=KBUF),
    # vhost ports: pumps read and write the guests' queues themselves (the default), or
    # the socket the port's thread serves (STDPKT_VHOST_RING=0, relay/rings.py)
    "pipe+sock": functools.partial(run_pipe, env={"STDPKT_VHOST_RING": "0"}),
    "lab+sock": functools.partial(run_lab, env={"STDPKT_VHOST_RING": "0"}),
    # each instance on one core (STDPKT_CPUS=auto, stdpkt_lab/engine/cpus.py; the default
    # since the eighth session), or left to the host scheduler (STDPKT_CPUS=off)
    "pipe+cores": functools.partial(run_pipe, env={"STDPKT_CPUS": "auto"}),
    "lab+cores": functools.partial(run_lab, env={"STDPKT_CPUS": "auto"}),
    "direct+cores": functools.partial(run_direct, env={"STDPKT_CPUS": "auto"}),
    "pipe+free": functools.partial(run_pipe, env={"STDPKT_CPUS": "off"}),
    "lab+free": functools.partial(run_lab, env={"STDPKT_CPUS": "off"}),
    "direct+free": functools.partial(run_direct, env={"STDPKT_CPUS": "off"}),
}


def _cpu_idle() -> tuple[int, int]:
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return fields[3] + fields[4], sum(fields)


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    paths = result["paths"]
    width = 0.8 / max(len(result["ports"]), 1)
    for k, ports in enumerate(result["ports"]):
        meds = [result["runs"][ports][p]["median"] or 0 for p in paths]
        xs = [i + k * width for i in range(len(paths))]
        ax.bar(xs, meds, width, label=f"{ports} ports")
        for x, p in zip(xs, paths, strict=True):
            for v in result["runs"][ports][p]["values"]:
                if v is not None:
                    ax.plot(x, v, "k.", markersize=4)
    ax.axhline(TARGET_GBPS, color="black", linestyle="-.", linewidth=1, label="issue 10 target: 2 Gbit/s")
    ax.set_xticks([i + width * (len(result["ports"]) - 1) / 2 for i in range(len(paths))], paths)
    ax.set_ylabel("TCP goodput (Gbit/s)")
    m = result["machine"]
    ax.set_title(f"client | NAT | firewall | server, MTU 1500, {result['seconds']:g} s iperf3 "
                 f"({m['cores']} cores)", fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(True, axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--paths", default="pipe,lab,direct")
    ap.add_argument("--ports", default="vector,vhost")
    ap.add_argument("--out", default="chain")
    args = ap.parse_args()
    paths = [p for p in args.paths.split(",") if p]
    ports_kinds = [p for p in args.ports.split(",") if p]
    for p in paths:
        if p not in RUNNERS:
            ap.error(f"--paths: unknown path {p!r} (one of {', '.join(RUNNERS)})")
    for p in ports_kinds:
        if p not in ("vector", "vhost"):
            ap.error(f"--ports: unknown port kind {p!r} (vector or vhost)")
    values: dict[str, dict[str, list[float | None]]] = {k: {p: [] for p in paths} for k in ports_kinds}
    idle: dict[str, dict[str, list[float]]] = {k: {p: [] for p in paths} for k in ports_kinds}
    cores: dict[str, dict[str, list[dict[str, float]]]] = {k: {p: [] for p in paths} for k in ports_kinds}
    errors: list[str] = []
    info = machine()
    runs = [(rep, k, p) for rep in range(args.reps) for k in ports_kinds for p in paths]
    with tempfile.TemporaryDirectory(prefix="stdpkt-chain-") as tmp:
        for rep, kind, path in tqdm(runs, desc="paper chain", unit="run"):
            work = Path(tmp) / f"{path}-{kind}-{rep}"
            work.mkdir()
            collector = Collector()
            idle0, total0 = _cpu_idle()
            sampler = ThreadSampler()
            try:
                RUNNERS[path](work, kind, args.seconds, collector)
                gbps: float | None = collector.gbps()
            except Exception as exc:  # noqa: BLE001 - one failed run is a gap, reported
                gbps = None
                errors.append(f"{path}/{kind} rep {rep}: {type(exc).__name__}: {exc}"[:600])
            idle1, total1 = _cpu_idle()
            cores[kind][path].append(sampler.stop())
            values[kind][path].append(gbps)
            idle[kind][path].append(round((idle1 - idle0) / max(total1 - total0, 1), 3))
            print(f"{path:>6} {kind:>6} rep {rep}: "
                  f"{'failed' if gbps is None else f'{gbps:.2f} Gbit/s'}"
                  f" (host idle {idle[kind][path][-1]:.0%})", flush=True)

    result = {"machine": {**info, "loadavg_end": os.getloadavg()}, "seconds": args.seconds,
              "reps": args.reps, "paths": paths, "ports": ports_kinds, "target_gbps": TARGET_GBPS,
              "runs": {k: {p: {**summarise(values[k][p]), "host_idle": idle[k][p],
                                   "cores_by_thread": cores[k][p]} for p in paths}
                       for k in ports_kinds},
              "errors": errors}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.out}.json").write_text(json.dumps(result, indent=1) + "\n")
    plot(result, RESULTS / f"{args.out}.png")
    for e in errors:
        print("error:", e, file=sys.stderr)
    medians = {k: {p: result["runs"][k][p]["median"] for p in paths} for k in ports_kinds}
    pipes = [m["pipe"] for m in medians.values() if m.get("pipe") is not None]
    print(json.dumps({"target_gbps": TARGET_GBPS, "seconds": args.seconds, "reps": args.reps,
                      "median_gbps": medians, "best_pipe_gbps": max(pipes) if pipes else None}))
    return 1 if errors and not any(v is not None for k in values for p in values[k]
                                   for v in values[k][p]) else 0


if __name__ == "__main__":
    sys.exit(main())
