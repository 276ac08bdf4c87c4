"""``stdpkt lab``: Kathará-style lab commands that outlive the shell command.

::

    stdpkt lab start DIR            # boot a Kathará/Netkit lab folder (or a YAML/JSON lab file)
    stdpkt lab exec DEV -- CMD ...  # run CMD in device DEV of the running lab
    stdpkt lab status               # the running labs and their devices
    stdpkt lab check DIR            # run DIR/checks.yaml against the lab (boots it if not running)
    stdpkt lab stop                 # stop it (runs the shutdown scripts)

``start`` leaves a background *owner* process that holds the :class:`~stdpkt_lab.Lab`
(the instances are its children: the launcher ends them if the owner dies) and answers
on a unix socket in a per-user state directory (``$XDG_RUNTIME_DIR`` or the temp dir,
``stdpkt-labs-UID/NAME/``, mode 700).  ``stop`` asks it to stop the lab and exit; it also
stops on SIGTERM/SIGINT/SIGHUP.  Every command first sweeps stale entries (an owner that
is gone: its state directory and run directory are removed).  Exit status: the command's
own for ``exec``; 0/1 PASS/FAIL for ``check``; 2 for bad input.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path
from typing import Any

from .errors import ConfigError, StdpktError

__all__ = ["add_lab_parser", "state_root", "sweep_stale"]

_OWNER_MARK = "stdpkt_lab.cli_lab"
_NAME = re.compile(r"[^A-Za-z0-9_.-]")


def state_root() -> Path:
    base = os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir()
    root = Path(base) / f"stdpkt-labs-{os.getuid()}"
    root.mkdir(mode=0o700, exist_ok=True)
    if root.stat().st_uid != os.getuid():
        raise StdpktError(f"{root} belongs to another user: remove it or set XDG_RUNTIME_DIR")
    return root


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return _OWNER_MARK.encode() in fh.read()
    except OSError:
        return False


def _entries() -> dict[str, dict[str, Any]]:
    found = {}
    for d in sorted(state_root().iterdir()):
        try:
            found[d.name] = json.loads((d / "owner.json").read_text())
        except (OSError, ValueError):
            found[d.name] = {}
    return found


def sweep_stale() -> list[str]:
    """Remove the state (and run directory) of labs whose owner process is gone."""
    removed = []
    root = state_root()
    for name, info in _entries().items():
        pid = int(info.get("pid", 0) or 0)
        if pid and _alive(pid):
            continue
        if not pid and time.time() - (root / name).stat().st_mtime < 120:
            continue  # an owner still starting (no owner.json yet)
        run_root = info.get("run_root")
        if run_root and Path(run_root).name.startswith("stdpkt-lab-"):
            shutil.rmtree(run_root, ignore_errors=True)
        shutil.rmtree(root / name, ignore_errors=True)
        removed.append(name)
    return removed


def _request(name: str, payload: dict[str, Any], timeout: float | None = None) -> dict[str, Any]:
    path = state_root() / name / "control.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        try:
            s.connect(str(path))
        except OSError as exc:
            raise StdpktError(f"lab {name!r} does not answer ({exc.strerror}); "
                              "`stdpkt lab stop` cleans up") from None
        s.sendall(json.dumps(payload).encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = s.recv(1 << 16)
            if not chunk:
                break
            data += chunk
    if not data:
        raise StdpktError(f"lab {name!r}: the owner closed the connection")
    reply: dict[str, Any] = json.loads(data)
    if "error" in reply:
        exc_type = ConfigError if reply.get("code") == 2 else StdpktError
        raise exc_type(reply["error"])
    return reply


def _pick(name: str | None) -> str:
    running = [n for n, info in _entries().items() if info.get("pid")]
    if name:
        if name not in running:
            raise ConfigError(f"no running lab {name!r} (running: {', '.join(running) or 'none'})")
        return name
    if not running:
        raise ConfigError("no lab is running (start one with `stdpkt lab start DIR`)")
    if len(running) > 1:
        raise ConfigError(f"several labs are running ({', '.join(running)}): choose one with --lab NAME")
    return running[0]


def _load(path: Path) -> Any:
    import stdpkt_lab as sl

    if path.is_dir():
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            g = sl.load_kathara(path)
        for w in caught:
            print(f"stdpkt: warning: {w.message}", file=sys.stderr)
        return g
    if path.is_file():
        return sl.load_lab(path)
    raise ConfigError(f"{path}: no such lab folder or lab file")


# ------------------------------------------------------------------ commands
def cmd_start(args: argparse.Namespace) -> int:
    for gone in sweep_stale():
        print(f"stdpkt: removed stale lab {gone!r} (its owner had ended)", file=sys.stderr)
    path = Path(args.dir).resolve()
    _load(path)  # errors (malformed lab.conf...) now, before anything starts
    name = args.name or _NAME.sub("-", path.stem if path.is_file() else path.name)[:40] or "lab"
    state = state_root() / name
    try:
        state.mkdir(mode=0o700)
    except FileExistsError:
        raise ConfigError(f"lab {name!r} is already running (`stdpkt lab stop --lab {name}` first, "
                          "or --name another)") from None
    ready_r, ready_w = os.pipe()
    log = open(state / "owner.log", "wb")
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", _OWNER_MARK, "--owner", str(state), str(path), str(ready_w),
             str(args.boot_timeout)],
            stdin=subprocess.DEVNULL, stdout=log, stderr=log, pass_fds=[ready_w],
            start_new_session=True, close_fds=True)
    finally:
        os.close(ready_w)
        log.close()
    from tqdm.auto import tqdm

    bar = None
    with os.fdopen(ready_r, "r") as ready:
        for line in ready:
            word, _, rest = line.strip().partition(" ")
            if word == "PROGRESS":
                done, total = map(int, rest.split())
                if bar is None:
                    bar = tqdm(total=total, desc=f"starting {name}", unit="device", file=sys.stderr)
                bar.update(done - bar.n)
            elif word == "OK":
                if bar is not None:
                    bar.close()
                print(f"lab {name!r} running ({rest} devices); owner pid {proc.pid}. "
                      f"`stdpkt lab exec DEV -- CMD`, `stdpkt lab stop`")
                return 0
            elif word == "ERR":
                if bar is not None:
                    bar.close()
                proc.wait(30)
                shutil.rmtree(state, ignore_errors=True)
                raise StdpktError(rest.replace("\\n", "\n"))
    proc.wait(30)
    tail = (state / "owner.log").read_text(errors="replace")[-2000:] if (state / "owner.log").exists() else ""
    shutil.rmtree(state, ignore_errors=True)
    raise StdpktError(f"the lab owner ended during start-up:\n{tail}")


def cmd_exec(args: argparse.Namespace) -> int:
    sweep_stale()
    words = list(args.cmd)
    if words and words[0] == "--":
        words = words[1:]
    if not words:
        raise ConfigError("nothing to run: stdpkt lab exec DEV -- CMD ...")
    cmd: str | list[str] = words[0] if len(words) == 1 else words
    reply = _request(_pick(args.lab), {"op": "exec", "node": args.device, "cmd": cmd, "timeout": args.timeout})
    sys.stdout.write(reply["stdout"])
    sys.stderr.write(reply["stderr"])
    return int(reply["rc"]) if reply["rc"] >= 0 else 128 - int(reply["rc"])


def cmd_stop(args: argparse.Namespace) -> int:
    for gone in sweep_stale():
        print(f"stdpkt: removed stale lab {gone!r} (its owner had ended)", file=sys.stderr)
    names = [n for n, i in _entries().items() if i.get("pid")] if args.all else [_pick(args.lab)]
    for name in names:
        info = _entries().get(name, {})
        with contextlib.suppress(StdpktError):
            _request(name, {"op": "stop"}, timeout=120)
        pid = int(info.get("pid", 0) or 0)
        deadline = time.monotonic() + 60
        while pid and _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if pid and _alive(pid):
            os.kill(pid, signal.SIGTERM)
        sweep_stale()
        print(f"lab {name!r} stopped")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    for gone in sweep_stale():
        print(f"stdpkt: removed stale lab {gone!r} (its owner had ended)", file=sys.stderr)
    entries = {n: i for n, i in _entries().items() if i.get("pid")}
    if not entries:
        print("no lab is running")
        return 0
    for name in entries:
        reply = _request(name, {"op": "status"}, timeout=30)
        print(f"{name}: {reply['path']} (owner pid {entries[name]['pid']})")
        for node, state in reply["nodes"].items():
            print(f"  {node:<20} {state}")
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from . import check as ck

    sweep_stale()
    path = Path(args.dir).resolve()
    checks_file = Path(args.checks) if args.checks else next(
        (path / f for f in ("checks.yaml", "checks.yml", "checks.json") if (path / f).is_file()), None)
    if checks_file is None:
        raise ConfigError(f"{path}: no checks.yaml (or give --checks FILE)")
    ck.load_checks(checks_file)  # malformed: exit 2 before anything boots
    running = {n: i for n, i in _entries().items() if i.get("pid") and i.get("path") == str(path)}
    if running:
        reply = _request(next(iter(running)), {"op": "check", "file": str(checks_file.resolve())}, timeout=None)
        print(reply["report"])
        return 0 if reply["passed"] else 1
    import stdpkt_lab as sl

    with sl.Lab(_load(path), boot_timeout=args.boot_timeout) as lab:
        report = ck.run(lab, ck.load_checks(checks_file), progress=True)
    print(report)
    return 0 if report.passed else 1


def add_lab_parser(sub: Any) -> None:
    """Add ``stdpkt lab ...`` to the ``stdpkt`` parser's subcommands."""
    lab = sub.add_parser("lab", help="run Kathará/Netkit labs in the background (start, exec, check, stop)",
                         description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    cmds = lab.add_subparsers(dest="lab_command", required=True)
    start = cmds.add_parser("start", help="boot a lab folder (lab.conf) or lab file and keep it running")
    start.add_argument("dir", metavar="DIR")
    start.add_argument("--name", help="the lab's name (default: the folder's name)")
    start.add_argument("--boot-timeout", type=float, default=180.0, metavar="S")
    start.set_defaults(func=cmd_start)
    ex = cmds.add_parser("exec", help="run a command in a device of the running lab")
    ex.add_argument("device", metavar="DEV")
    ex.add_argument("cmd", nargs=argparse.REMAINDER, metavar="-- CMD")
    ex.add_argument("--lab", help="which running lab (when several run)")
    ex.add_argument("--timeout", type=float, default=60.0, metavar="S")
    ex.set_defaults(func=cmd_exec)
    stop = cmds.add_parser("stop", help="stop the running lab (its shutdown scripts run first)")
    stop.add_argument("--lab", help="which running lab")
    stop.add_argument("--all", action="store_true", help="stop every running lab of this user")
    stop.set_defaults(func=cmd_stop)
    status = cmds.add_parser("status", help="the running labs and their devices")
    status.set_defaults(func=cmd_status)
    chk = cmds.add_parser("check", help="run a lab folder's checks.yaml and print a PASS/FAIL report")
    chk.add_argument("dir", metavar="DIR")
    chk.add_argument("--checks", metavar="FILE", help="checks file (default DIR/checks.yaml)")
    chk.add_argument("--boot-timeout", type=float, default=180.0, metavar="S")
    chk.set_defaults(func=cmd_check)


# ------------------------------------------------------------------ the owner process
def _owner(state: Path, path: Path, ready_fd: int, boot_timeout: float) -> int:
    import stdpkt_lab as sl

    from . import check as ck

    ready = os.fdopen(ready_fd, "w", buffering=1)
    stop = threading.Event()

    def on_signal(signum: int, _frame: Any) -> None:
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, on_signal)
    lab = None
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            lab = sl.Lab(_load(path), boot_timeout=boot_timeout, progress=False)
        total = len(lab.plan.nodes)
        ready.write(f"PROGRESS 0 {total}\n")
        watching = threading.Event()

        def progress() -> None:
            last = -1
            while not watching.wait(0.2):
                done = sum(1 for i in lab.instances.values() if i.ready)
                if done != last:
                    last = done
                    with contextlib.suppress(OSError, ValueError):
                        ready.write(f"PROGRESS {done} {total}\n")

        watcher = threading.Thread(target=progress, daemon=True)
        watcher.start()
        try:
            lab.start()
        finally:
            watching.set()
            watcher.join()
        listener.bind(str(state / "control.sock"))
        listener.listen(16)
        listener.settimeout(0.5)
        info = {"pid": os.getpid(), "path": str(path), "started": time.time(),
                "run_root": str(lab._run_root) if lab._run_root else None}
        (state / "owner.json.tmp").write_text(json.dumps(info))
        os.replace(state / "owner.json.tmp", state / "owner.json")
        ready.write(f"PROGRESS {total} {total}\nOK {total}\n")
        ready.close()
    except BaseException as exc:
        with contextlib.suppress(OSError, ValueError):
            ready.write("ERR " + str(exc).replace("\n", "\\n") + "\n")
            ready.close()
        if lab is not None:
            lab.stop()
        listener.close()
        return 1
    try:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                break
            threading.Thread(target=_serve, args=(conn, lab, ck, stop), daemon=True).start()
    finally:
        listener.close()
        lab.stop()
        shutil.rmtree(state, ignore_errors=True)
    return 0


def _serve(conn: socket.socket, lab: Any, ck: Any, stop: threading.Event) -> None:
    with conn:
        try:
            data = b""
            while not data.endswith(b"\n"):
                chunk = conn.recv(1 << 16)
                if not chunk:
                    return
                data += chunk
            req = json.loads(data)
            op = req.get("op")
            if op == "exec":
                node = req.get("node")
                if node not in lab.plan.nodes:
                    reply: dict[str, Any] = {"error": f"no device {node!r} in this lab (devices: "
                                             f"{', '.join(lab.plan.nodes)})", "code": 2}
                else:
                    r = lab.exec(node, req["cmd"], timeout=req.get("timeout") or 60)
                    reply = {"rc": r.returncode, "stdout": r.stdout, "stderr": r.stderr}
            elif op == "status":
                reply = {"path": str(lab.graph.graph.get("kathara", {}).get("path", "")),
                         "nodes": {n: i.state.value for n, i in lab.instances.items()}}
            elif op == "check":
                report = ck.run(lab, ck.load_checks(req["file"]))
                reply = {"report": str(report), "passed": report.passed}
            elif op == "stop":
                reply = {"ok": True}
                stop.set()
            else:
                reply = {"error": f"unknown request {op!r}", "code": 2}
        except ConfigError as exc:
            reply = {"error": str(exc), "code": 2}
        except Exception as exc:
            reply = {"error": str(exc), "code": 1}
        with contextlib.suppress(OSError):
            conn.sendall(json.dumps(reply).encode() + b"\n")


if __name__ == "__main__":
    if len(sys.argv) == 6 and sys.argv[1] == "--owner":
        sys.exit(_owner(Path(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])))
    print("stdpkt_lab.cli_lab is started by `stdpkt lab start`", file=sys.stderr)
    sys.exit(2)
