"""The ``stdpkt`` command.

``stdpkt run [--oneshot] SCRIPT`` boots one network-function instance configured by the
paper's variables and relays its interfaces to pcap-framed pipes, so instances
compose in a shell pipeline::

    IF0="p1|/dev/stdout" IP0=10.0.0.2 NETMASK0=24 GATEWAY=10.0.0.1 stdpkt run --oneshot client.sh \\
    | IF0="/dev/stdin|p1" IP0=10.0.0.1 NETMASK0=24 stdpkt run server.sh

Exit status: the script's (``--oneshot``); 0 when a forwarding instance ends
because an input ended or it was asked to stop (SIGINT/SIGTERM/SIGHUP: 130/143/129);
1 when the instance fails (boot failure, relay error); 2 for bad input.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

from .errors import ConfigError, StdpktError

RUN_HELP = """\
Boot one network-function instance (a User-Mode Linux kernel) and run SCRIPT in it.

Variables (as in the stdpkt paper), n = 0..7:
  IFn="RX|TX"     interface n (eth<n> inside): read frames from RX, write frames
                  to TX. Each is /dev/stdin, /dev/stdout, a named pipe (created
                  if missing) or a file (a pcap file replays; a new file records).
                  Frames on every pipe are a pcap stream (LINKTYPE_ETHERNET), so
                  tee, tcpdump -r - and scapy can sit anywhere in a pipeline.
  IFn="tap:NAME"  attach eth<n> to host tap device NAME (needs root).
  IFn="tcp:HOST:PORT"          eth<n> over a TCP connection to HOST:PORT (retried
  IFn="tcp-listen:[ADDR:]PORT" until --connect-timeout), or accepting one peer on
                  ADDR:PORT (default 127.0.0.1). Both directions on one connection,
                  each a pcap stream as on a pipe; the connection's end is an EOF.
                  Both ends must set STDPKT_LINK_TOKEN to the same secret: a
                  peer that does not prove it (HMAC challenge) is refused and
                  cannot inject frames. The token authenticates, it does not
                  encrypt: tls:HOST:PORT / tls-listen:[ADDR:]PORT add TLS
                  (STDPKT_TLS_CA, and STDPKT_TLS_CERT + STDPKT_TLS_KEY to listen).
  IPn, NETMASKn   IPv4 address and prefix length (or dotted mask; default 24).
  MTUn            MTU of eth<n> (68..65534, default 1500).
  GATEWAY         default route.
  DELAYn, JITTERn, LOSSn, RATEn   link conditions on what leaves eth<n> (netem/tbf
                  in the instance): DELAY0=20ms JITTER0=2ms LOSS0=1% (or 0.01) RATE0=50mbit;
                  also REORDERn, DUPLICATEn, CORRUPTn (probabilities), LIMITn (frames).
  STDPKT_PORTS    vhost (default: virtio-net over vhost-user with checksum
                  offload and TSO: TCP super-frames of up to 64 KiB cross the
                  pipes whole, their TCP checksum holds only the pseudo-header sum,
                  as captures on a host with offload show; the far end must be a
                  vhost port too), vector (UML's vector driver, plain frames), or
                  vhost-plain (virtio-net, plain frames). STDPKT_VHOST_FINISH=1
                  makes vhost ports send plain frames (checksums done, super-frames
                  cut) to any peer. The relays read and write a vhost port's
                  queues themselves (STDPKT_VHOST_RING=0:
                  through the port's socket, as before).
  STDPKT_TCP_BUFFERS  host (default: TCP buffer maxima of a 1 GiB host, 6 MiB
                  receive, 4 MiB send) or kernel (what the kernel gives the guest's
                  memory: 0.9 MB at 128 MB, which caps a flow's window), or
                  RMEM,WMEM in bytes.
  STDPKT_CPUS     auto (default: each instance's kernel, guest processes and relays
                  run on one core, the least used on this machine, so the `stdpkt
                  run`s of a pipeline spread over the cores: 3-4x the goodput at
                  64 KiB writes, 8x at 1 KiB), off (the host scheduler places
                  everything), or a list of cores such as 0,2-3.

SCRIPT runs as root inside the instance (its own kernel: iptables, ip, sysctl,
conntrack, ipvsadm work; modules load on demand; `iptables` is the legacy
backend because Debian's UML kernel has no nf_tables for IPv4) with the host's
programs on a read-only root; the guest writes only tmpfs. SCRIPT's output
goes to stderr: stdout stays the packet channel.

Without --oneshot the instance keeps forwarding after SCRIPT returns, until an
input pipe reaches EOF or stdpkt gets SIGINT/SIGTERM; with --oneshot it ends
when SCRIPT ends and stdpkt exits with SCRIPT's status.
"""


def _say(message: str) -> None:
    try:
        sys.stderr.write(message + "\n")
        sys.stderr.flush()
    except (OSError, ValueError):
        pass


def _default_name(script: Path) -> str:
    stem = "".join(c if c.isalnum() or c in "_.-" else "-" for c in script.stem)[:24] or "nf"
    return f"{stem}-{os.getpid()}"


def cmd_run(args: argparse.Namespace) -> int:
    from .conditions import conditions_from_env
    from .engine.cpus import join_core
    from .engine.instance import Instance
    from .engine.pipes import PipePort, StdStreams
    from .engine.streams import StreamPort, link_token
    from .engine.variables import parse_variables

    script = Path(args.script)
    config = parse_variables(
        os.environ,
        name=args.name or _default_name(script),
        script=script,
        oneshot=args.oneshot,
        mem_mb=args.mem,
    )
    config = replace(config, spec=conditions_from_env(os.environ, config.spec))  # DELAYn, LOSSn, ...
    streams = StdStreams()
    streams.take()
    stop = threading.Event()
    reasons: list[str] = []
    signals: list[int] = []

    def on_signal(signum: int, _frame: object) -> None:
        signals.append(signum)
        stop.set()

    # SIGHUP (the terminal closed) too: a clean stop; SIGKILL is the launcher's
    # and the owner files' business (engine/ownership.py)
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, on_signal)
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)

    def on_end(_port: PipePort | StreamPort, why: str) -> None:
        reasons.append(why)
        stop.set()

    prefix = f"[{config.spec.name}] " if args.prefix else ""
    instance = Instance(config.spec, on_console=lambda line: _say(prefix + line))
    ports: list[PipePort | StreamPort] = []
    malformed_seen: dict[str, int] = {}
    status = 0
    control = None
    try:
        instance.start()
        join_core(instance.cpu)  # the relays beside their kernel (engine/cpus.py)
        for ends in config.pipes:
            port = PipePort(ends, instance.port(ends.index), streams=streams, on_end=on_end,
                            ledger=instance.run_dir)
            ports.append(port)
            port.start()
        for stream in config.streams:
            sport = StreamPort(stream, instance.port(stream.index), token=link_token(),
                               on_end=on_end, connect_timeout=args.connect_timeout,
                               on_refused=lambda msg: _say(f"stdpkt: {config.spec.name}: {msg}"))
            ports.append(sport)
            sport.start()
        if args.name:  # new channels: stdpkt attach/detach NAME (engine/control.py)
            from .engine.control import start_control

            control = start_control(instance, ports, streams=streams, say=_say)
        deadline = time.monotonic() + args.boot_timeout
        while not stop.is_set() and not instance.exited:
            if not instance.ready and time.monotonic() > deadline:
                instance.wait_ready(0)  # raises BootError with the console tail
            _report_malformed(ports, malformed_seen)
            stop.wait(0.1)
        _report_malformed(ports, malformed_seen)
        if instance.exited and not instance.ready:
            instance.wait_ready(0)  # died during boot: raises BootError
        if any(getattr(port, "failed", False) for port in ports):
            status = 1  # a stream link that could not be made is a failure, not an input's end
        elif args.oneshot and instance.exited:
            code = instance.wait(0)
            status = code if code is not None else 1
        elif signals:
            status = 128 + signals[0]
        elif instance.exited:
            why = instance.death_reason
            _say(f"stdpkt: {config.spec.name}: the instance ended unexpectedly"
                 + (f": {why}" if why else ""))
            tail = instance.console_tail(15)
            if tail:
                _say(tail)
            status = 1
        ended_normally = args.oneshot and instance.exited and status == 0
        for why in reasons[:1]:
            if args.verbose or not ended_normally:
                _say(f"stdpkt: {config.spec.name}: stopping: {why}")
    finally:
        if control is not None:
            control.stop()
        for served in ports:
            served.stop()
        port_stats = {}
        if args.verbose:  # before the instance stops: that closes its vhost ports
            for index, vport in instance.vhost_ports().items():
                try:
                    port_stats[index] = vport.stats
                except StdpktError:
                    pass
        instance.stop()
        if args.verbose:
            for index, vstats in port_stats.items():
                _say(f"stdpkt: {config.spec.name} eth{index} port: {vstats}")
            for served in ports:
                for direction, stats in served.stats().items():
                    if stats is not None:
                        _say(f"stdpkt: {config.spec.name} {served.device} {direction}: {stats}")
    return status


def _report_malformed(ports: list, seen: dict[str, int]) -> None:
    for port in ports:
        if port.rx is None:
            continue
        stats = port.rx.stats
        key = port.device
        if stats.malformed > seen.get(key, 0):
            seen[key] = stats.malformed
            _say(f"stdpkt: {port.device} rx: {stats.last_error} (malformed records so far: "
                 f"{stats.malformed}, bytes skipped: {stats.skipped_bytes})")


def cmd_check(_args: argparse.Namespace) -> int:
    from .engine.confine import choose_confinement, landlock_abi
    from .engine.paths import helper, kernel_binary, make_run_root

    print(f"kernel:      {kernel_binary()}")
    print(f"launcher:    {helper('stdpkt-launch')}")
    print(f"agent:       {helper('stdpkt-agent')}")
    print(f"landlock:    ABI {landlock_abi()}")
    print(f"confinement: {choose_confinement().mode}")
    from .engine.ownership import remove_run_dir

    run_root = make_run_root(prefix="stdpkt-check-")
    print(f"run dir:     {run_root.parent}")
    remove_run_dir(run_root)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="stdpkt", description="Pipelined Linux network functions.")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser(
        "run", help="boot one network-function instance in a pipeline",
        description=RUN_HELP, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run.add_argument("script", metavar="SCRIPT", help="shell script run inside the instance")
    run.add_argument("--oneshot", action="store_true", help="end when SCRIPT ends; exit with its status")
    run.add_argument("--name", help="instance name (hostname inside; default: script name + pid); "
                     "a named instance accepts new channels: stdpkt attach/detach NAME")
    run.add_argument("--mem", type=int, default=128, metavar="MB", help="guest memory (default 128)")
    run.add_argument("--boot-timeout", type=float, default=60.0, metavar="S",
                     help="give up if the instance has not booted after S seconds (default 60)")
    run.add_argument("--connect-timeout", type=float, default=30.0, metavar="S",
                     help="tcp:/tls: ports retry connecting for S seconds (default 30)")
    run.add_argument("--prefix", action="store_true", help="prefix SCRIPT's output lines with [name]")
    run.add_argument("-v", "--verbose", action="store_true", help="say why the instance stopped; print counters")
    run.set_defaults(func=cmd_run)
    check = sub.add_parser("check", help="check that this host can run instances")
    check.set_defaults(func=cmd_check)
    from .cli_control import add_control_commands

    add_control_commands(sub)

    from .cli_lab import add_lab_parser  # --- classroom labs: stdpkt lab ... ---

    add_lab_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except ConfigError as exc:
        _say(f"stdpkt: {exc}")
        return 2
    except StdpktError as exc:
        _say(f"stdpkt: {exc}")
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
