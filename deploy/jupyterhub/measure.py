"""What one student costs: memory (PSS) and CPU of a 4-node lab run from a notebook kernel.

    .venv/bin/python deploy/jupyterhub/measure.py [--idle 20] [--traffic 20] [--json out.json]

It starts what a student's server runs: a JupyterLab server (idle, measured alone)
and a Python kernel (jupyter_client, ipykernel) in which the quickstart's chain
boots (client | nat | fw | server: four UML kernels).  It then samples, for the
kernel process and everything below it (launchers, UML kernels, their guest
processes), the proportional set size (/proc/PID/smaps_rollup) and the CPU time
(utime+stime): while idle, during classroom traffic (the quickstart's cell: wget
and ping in a loop) and during iperf3 flat out.  Prints a table and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

TICK = os.sysconf("SC_CLK_TCK")

BOOT = """\
import networkx as nx, stdpkt_lab as sl
g = nx.Graph()
g.add_node("client", kind="host")
g.add_node("nat", kind="nat", outside="fw")
g.add_node("fw", kind="firewall", allow=["tcp/80", "tcp/5201", "icmp"])
g.add_node("server", kind="host", serve=["http", "iperf3"])
g.add_edges_from([("client", "nat"), ("nat", "fw"), ("fw", "server")])
lab = sl.Lab(g, progress=False)
lab.start()
print(lab.exec("client", "wget -qO- http://server/").stdout)
"""
CLASS_TRAFFIC = """\
import time
end = time.monotonic() + {secs}
n = 0
while time.monotonic() < end:
    lab.exec("client", "wget -qO /dev/null http://server/; ping -c 2 -i 0.2 -W 1 server >/dev/null")
    n += 1
print("rounds", n)
"""
IPERF = 'print(lab.exec("client", "iperf3 -c server -t {secs} -f m | tail -3", timeout={secs} + 30).stdout)'


def tree(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                ppid = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


def pss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def cpu_ticks(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
        except (OSError, IndexError):
            pass
    return total


def cores_over(root: int, seconds: float, during=None) -> float:
    """CPU cores used by root's tree over ``seconds`` (processes that end meanwhile are lost:
    the guests' short-lived programs are undercounted, the long-lived kernels are not)."""
    before, t0 = cpu_ticks(tree(root)), time.monotonic()
    if during is not None:
        during()
    else:
        time.sleep(seconds)
    after, t1 = cpu_ticks(tree(root)), time.monotonic()
    return (after - before) / TICK / (t1 - t0)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def lab_server_pss(workdir: Path) -> int:
    """PSS of an idle JupyterLab server (what jupyterhub-singleuser runs), in KiB."""
    port, token = free_port(), secrets.token_hex(8)
    argv = [str(Path(sys.executable).parent / "jupyter-lab"), "--no-browser", "--ServerApp.ip=127.0.0.1",
            f"--ServerApp.port={port}", f"--ServerApp.token={token}", f"--ServerApp.root_dir={workdir}"]
    if os.geteuid() == 0:
        argv.append("--allow-root")
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                            env=dict(os.environ, JUPYTER_RUNTIME_DIR=str(workdir / "rt")))
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/lab?token={token}", timeout=5).read()
                break
            except OSError:
                time.sleep(0.5)
        time.sleep(2)
        return sum(pss_kib(p) for p in tree(proc.pid))
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--idle", type=float, default=20.0)
    ap.add_argument("--traffic", type=float, default=20.0)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    from jupyter_client.manager import start_new_kernel

    with tempfile.TemporaryDirectory(prefix="stdpkt-measure-") as tmp:
        server_kib = lab_server_pss(Path(tmp))
        km, kc = start_new_kernel(kernel_name="python3")
        try:
            kpid = km.provisioner.pid  # type: ignore[union-attr]
            bare_kib = pss_kib(kpid)

            def run(code: str, timeout: float = 300) -> None:
                reply = kc.execute_interactive(code, timeout=timeout, output_hook=lambda m: None)
                if reply["content"]["status"] != "ok":
                    raise SystemExit(f"kernel error: {reply['content'].get('evalue')}")

            run(BOOT)
            time.sleep(3)
            pids = tree(kpid)
            kernel_kib = pss_kib(kpid)
            lab_kib = sum(pss_kib(p) for p in pids)
            idle = cores_over(kpid, args.idle)
            busy = cores_over(kpid, args.traffic, lambda: run(CLASS_TRAFFIC.format(secs=args.traffic)))
            iperf = cores_over(kpid, args.traffic, lambda: run(IPERF.format(secs=int(args.traffic))))
            after_kib = sum(pss_kib(p) for p in tree(kpid))
            run("lab.stop()")
        finally:
            kc.stop_channels()
            km.shutdown_kernel(now=False)
    result = {
        "jupyterlab_server_pss_mib": round(server_kib / 1024, 1),
        "python_kernel_pss_mib_before_lab": round(bare_kib / 1024, 1),
        "python_kernel_pss_mib_with_lab": round(kernel_kib / 1024, 1),
        "lab_4_nodes_tree_pss_mib": round(lab_kib / 1024, 1),
        "lab_4_nodes_tree_pss_mib_after_traffic": round(after_kib / 1024, 1),
        "processes_in_tree": len(pids),
        "cores_idle": round(idle, 3),
        "cores_class_traffic": round(busy, 3),
        "cores_iperf3": round(iperf, 3),
        "host_cpus": os.cpu_count(),
        "seconds": {"idle": args.idle, "traffic": args.traffic},
    }
    for key, value in result.items():
        print(f"{key:42s} {value}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
