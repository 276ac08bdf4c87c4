"""The guest side of bench/goodput.py: the scripts its two instances run (iperf3 sweep,
stdpkt-blast) and the parser of the sender's console (results between markers)."""

from __future__ import annotations

import json
import re
from collections.abc import Callable

__all__ = ["BLAST_BATCH", "BLAST_PORT", "Collector", "RX_ADDR", "TX_ADDR", "receiver_script",
           "sender_script"]

TX_ADDR, RX_ADDR = "10.9.0.1/24", "10.9.0.2/24"
MARK = "@@GP "

BLAST_PORT = 5202
BLAST_BATCH = 64


def receiver_script(blast: str | None) -> str:
    extra = f"{blast} recv {BLAST_PORT} 1048576 </dev/null >/dev/null 2>&1 &\n" if blast else ""
    return f"""#!/bin/sh
# goodput bench: the iperf3 server (and the blast receiver); the instance forwards until
# its input ends
{extra}iperf3 -s -D
"""


def blast_lines(blast: str | None, small: int, seconds: float) -> str:
    if not blast:
        return ""
    server = RX_ADDR.split("/")[0]
    return f"""
out=$({blast} send {server} {BLAST_PORT} {seconds:g} {small} {BLAST_BATCH} 2>&1)
echo "{MARK}BLAST $out"
"""


def sender_script(sizes: list[int], seconds: float, omit: int, blast: str | None = None,
                  small: int = 1024, nodelay: bool = False) -> str:
    """The sweep, run inside the sending instance: one iperf3 -J per write size, then
    one stdpkt-blast run with ``small``-byte writes.  ``nodelay``: iperf3 -N (no Nagle)."""
    n_flag = " -N" if nodelay else ""
    server = RX_ADDR.split("/")[0]
    return f"""#!/bin/sh
# goodput bench: one iperf3 run per write size; results between markers on the console
i=0
until ping -c 1 -W 1 {server} >/dev/null 2>&1; do
    i=$((i + 1)); [ $i -ge 100 ] && {{ echo "{MARK}FAIL {server} unreachable"; exit 1; }}
done
for size in {' '.join(map(str, sizes))}; do
    n=0
    while :; do
        out=$(iperf3 -c {server} -t {seconds:g} -O {omit} -i 0 -l $size{n_flag} -J 2>&1)
        case "$out" in *'"error"'*|"") ;; *) break ;; esac
        n=$((n + 1)); [ $n -ge 60 ] && break
        sleep 0.25  # the server is not up yet, or still closing the previous test
    done
    echo "{MARK}BEGIN $size"
    echo "$out"
    echo "{MARK}END $size"
done{blast_lines(blast, small, seconds)}"""


class Collector:
    """Parses console lines of the sending instance into (size, Gbps) results."""

    def __init__(self, on_result: Callable[[int, dict], None],
                 on_blast: Callable[[dict], None] | None = None) -> None:
        self._on_result = on_result
        self._on_blast = on_blast
        self._size: int | None = None
        self._buf: list[str] = []
        self.failure: str | None = None
        self.lines: list[str] = []

    def feed(self, line: str) -> None:
        self.lines.append(line)
        if line.startswith(MARK + "BEGIN "):
            self._size, self._buf = int(line.split()[2]), []
        elif line.startswith(MARK + "END ") and self._size is not None:
            self._on_result(self._size, _parse_iperf("\n".join(self._buf)))
            self._size = None
        elif line.startswith(MARK + "BLAST "):
            text = line[len(MARK + "BLAST ") :]
            try:
                report = json.loads(text[text.find("{"):])
            except (json.JSONDecodeError, ValueError):
                report = {"gbps": None, "error": text[-300:]}
            if self._on_blast is not None:
                self._on_blast(report)
        elif line.startswith(MARK + "FAIL"):
            self.failure = line[len(MARK) :]
        elif self._size is not None:
            self._buf.append(line)


def _parse_iperf(text: str) -> dict:
    start = text.find("{")
    try:
        report = json.loads(text[start:]) if start >= 0 else {}
    except json.JSONDecodeError:
        report = {}
    if not report and start >= 0:
        # a console line mangled in transit (seen under load: a kernel message or lost
        # bytes inside the JSON): the receiver figure is still readable on its own
        m = re.search(r'"sum_received":\s*\{[^}]*?"bits_per_second":\s*([0-9.eE+]+)', text)
        if m:
            return {"gbps": float(m.group(1)) / 1e9, "parsed": "regex"}
    if "end" not in report or "error" in report:
        return {"gbps": None, "error": report.get("error") or text[-300:]}
    end = report["end"]
    sender = (end.get("streams") or [{}])[0].get("sender", {})
    return {
        "gbps": end["sum_received"]["bits_per_second"] / 1e9,
        "retransmits": end.get("sum_sent", {}).get("retransmits"),
        "mean_rtt_us": sender.get("mean_rtt"),
        "max_cwnd": sender.get("max_snd_cwnd"),
        "cpu": end.get("cpu_utilization_percent"),
    }
