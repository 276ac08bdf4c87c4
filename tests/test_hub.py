"""A class on one JupyterHub (deploy/jupyterhub/): three students, their labs, isolation, caps.

Root only (it creates Unix accounts and runs the hub, which switches to them).  The hub
listens on 127.0.0.1 (random ports) with the test authenticator; an admin service token
drives its REST API: create the users, start their servers, get each a token ("log
in").  Through each student's own server (kernels REST API + the kernel websocket) a
small lab boots and carries ping and HTTP.  Then student B's kernel tries to list,
read, signal and ptrace what belongs to A (run directories, pcap, UML kernels, A's
Jupyter kernel) and B's token tries A's server; student C hits the memory and the
instance cap and gets the cap's message.  Everything (servers, hub, proxy, accounts,
directories) is removed in ``finally`` blocks, also when an assertion fails.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import REPO

pytestmark = [pytest.mark.uml, pytest.mark.root]

HUB_DIR = REPO / "deploy" / "jupyterhub"
CAP_INSTANCES, CAP_MEM_MB = 3, 448

LAB = """\
import json, os, networkx as nx, stdpkt_lab as sl
g = nx.Graph()
g.add_node("client", kind="host")
g.add_node("server", kind="host", serve="http")
g.add_edge("client", "server")
lab = sl.Lab(g, progress=False)
lab.start()
http = lab.exec("client", "wget -qO- http://server/").stdout
ping = lab.exec("client", "ping -c 3 -W 5 server").stdout
pcap = os.path.expanduser("~/trace.pcap")
saved = lab.save_pcap(("client", "server"), pcap)
print("RESULT " + json.dumps({"uid": os.getuid(), "kernel_pid": os.getpid(), "run_root": str(lab._run_root),
      "rundir_env": os.environ.get("STDPKT_RUNDIR"), "pids": [i.pid for i in lab.instances.values()],
      "http": http, "ping": ping, "pcap": pcap, "saved": saved}))
"""

PROBES = """\
import ctypes, json, os, signal
A = json.loads({a!r})
libc = ctypes.CDLL(None, use_errno=True)
res = {{}}
def probe(name, fn):
    try:
        fn()
        res[name] = "ALLOWED"
    except OSError as e:
        res[name] = e.errno
def ptrace(pid):
    if libc.ptrace(16, pid, None, None) != 0:  # PTRACE_ATTACH
        raise OSError(ctypes.get_errno(), "ptrace")
    libc.ptrace(17, pid, None, None)  # PTRACE_DETACH
probe("list A's run directory", lambda: os.listdir(A["run_root"]))
probe("list A's STDPKT_RUNDIR", lambda: os.listdir(A["rundir_env"]))
probe("list the hub's run base", lambda: os.listdir(os.path.dirname(A["rundir_env"])))
probe("read A's pcap", lambda: open(A["pcap"], "rb").read(1))
probe("list A's home", lambda: os.listdir(os.path.dirname(A["pcap"])))
for pid in [*A["pids"], A["kernel_pid"]]:
    probe(f"signal {{pid}}", lambda: os.kill(pid, signal.SIGCONT))
    probe(f"ptrace {{pid}}", lambda: ptrace(pid))
    probe(f"environ {{pid}}", lambda: open(f"/proc/{{pid}}/environ", "rb").read(1))
    probe(f"fds {{pid}}", lambda: os.listdir(f"/proc/{{pid}}/fd"))
    probe(f"mem {{pid}}", lambda: open(f"/proc/{{pid}}/mem", "rb").read(1))
print("PROBES " + json.dumps(res))
"""

CAPS = """\
import networkx as nx, stdpkt_lab as sl
from stdpkt_lab.engine.quota import QuotaExceeded
def chain(*nodes, **attrs):
    g = nx.Graph()
    for n in nodes:
        g.add_node(n, kind="host", **attrs)
    g.add_edges_from(zip(nodes, nodes[1:]))
    return g
first = sl.Lab(chain("a1", "a2"), progress=False).start()   # 2 instances, 256 MiB
for g in (chain("big", mem_mb=256), chain("b1", "b2", mem_mb=64)):
    try:
        sl.Lab(g, progress=False).start()
    except QuotaExceeded as e:
        print("CAP " + str(e))
first.stop()
again = sl.Lab(chain("b1", "b2", mem_mb=64), progress=False).start()  # fits once the first is gone
print("AFTER", again.exec("b1", "ping -c 1 -W 5 b2").stdout.count("1 received"))
again.stop()
sl.Lab(chain("x1", "x2", "x3", "x4"), progress=False).start()  # raised into the notebook
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Hub:
    def __init__(self, url: str, token: str) -> None:
        self.url, self.token = url, token

    def api(self, method: str, path: str, body: object = None, *, token: str | None = None) -> tuple[int, object]:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(f"{self.url}{path}", data=data, method=method,
                                     headers={"Authorization": f"token {token or self.token}",
                                              "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=60) as resp:
                raw, status = resp.read(), resp.status
        except urllib.error.HTTPError as exc:
            raw, status = exc.read(), exc.code
        try:
            return status, json.loads(raw) if raw else None
        except ValueError:
            return status, raw.decode(errors="replace")


def _uids_processes(uids: set[int]) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                status = Path(f"/proc/{entry}/status").read_text()
            except OSError:
                continue
            uid = next((int(line.split()[1]) for line in status.splitlines() if line.startswith("Uid:")), -1)
            if uid in uids:
                pids.append(int(entry))
    return pids


def _proc_uid(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return next(int(line.split()[1]) for line in status.splitlines() if line.startswith("Uid:"))


async def _run_code(ws_url: str, token: str, code: str, timeout: float) -> tuple[str, dict | None]:
    """Execute ``code`` in a kernel over its websocket: (stdout+stderr text, error content or None)."""
    from tornado.httpclient import HTTPRequest
    from tornado.websocket import websocket_connect

    conn = await websocket_connect(HTTPRequest(ws_url, headers={"Authorization": f"token {token}"},
                                               request_timeout=60, connect_timeout=60))
    msg_id, session = uuid.uuid4().hex, uuid.uuid4().hex
    conn.write_message(json.dumps({
        "header": {"msg_id": msg_id, "session": session, "username": "test", "msg_type": "execute_request",
                   "version": "5.3", "date": ""},
        "parent_header": {}, "metadata": {}, "channel": "shell", "buffers": [],
        "content": {"code": code, "silent": False, "store_history": False, "user_expressions": {},
                    "allow_stdin": False, "stop_on_error": True}}))
    text: list[str] = []
    error = None
    deadline = time.monotonic() + timeout
    replied = idle = False
    try:
        while not (replied and idle):
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"kernel did not finish in {timeout:.0f} s; output so far:\n{''.join(text)}")
            raw = await asyncio.wait_for(conn.read_message(), left)
            if raw is None:
                raise ConnectionError("kernel websocket closed; output so far:\n" + "".join(text))
            msg = json.loads(raw)
            if msg.get("parent_header", {}).get("msg_id") != msg_id:
                continue
            kind = msg["header"]["msg_type"]
            if kind == "stream":
                text.append(msg["content"]["text"])
            elif kind == "error":
                error = msg["content"]
            elif kind == "execute_reply":
                replied = True
            elif kind == "status" and msg["content"]["execution_state"] == "idle":
                idle = True
    finally:
        conn.close()
    return "".join(text), error


class Student:
    def __init__(self, hub: Hub, name: str) -> None:
        self.hub, self.name = hub, name
        self.uid = -1
        self.token = ""
        self.kernel = ""

    def start_server(self) -> None:
        status, body = self.hub.api("POST", f"/hub/api/users/{self.name}/server")
        assert status in (201, 202), (status, body)

    def wait_ready(self, timeout: float = 240) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status, body = self.hub.api("GET", f"/hub/api/users/{self.name}")
            server = (body or {}).get("servers", {}).get("") if isinstance(body, dict) else None
            if server and server.get("ready"):
                return
            if isinstance(body, dict) and not body.get("pending") and not server:
                raise AssertionError(f"{self.name}'s server failed to start: {body}")
            time.sleep(1)
        raise AssertionError(f"{self.name}'s server not ready after {timeout:.0f} s")

    def login(self) -> None:
        status, body = self.hub.api("POST", f"/hub/api/users/{self.name}/tokens",
                                    {"note": "test_hub", "expires_in": 3600})
        assert status == 201, (status, body)
        self.token = body["token"]  # type: ignore[index]

    def server_api(self, method: str, path: str, *, token: str | None = None) -> tuple[int, object]:
        return self.hub.api(method, f"/user/{self.name}{path}", {} if method == "POST" else None,
                            token=token or self.token)

    def open_kernel(self) -> None:
        status, body = self.server_api("POST", "/api/kernels")
        assert status == 201, (status, body)
        self.kernel = body["id"]  # type: ignore[index]

    def run(self, code: str, timeout: float = 300) -> tuple[str, dict | None]:
        ws = self.hub.url.replace("http://", "ws://") + f"/user/{self.name}/api/kernels/{self.kernel}/channels"
        return asyncio.run(_run_code(ws, self.token, code, timeout))


def _marker(text: str, tag: str) -> dict:
    line = next((ln for ln in text.splitlines() if ln.startswith(tag + " ")), None)
    assert line is not None, f"no {tag} line in the kernel's output:\n{text[-3000:]}"
    return json.loads(line[len(tag) + 1:])


@pytest.fixture
def class_hub(tmp_path: Path) -> Iterator[tuple[Hub, list[Student], Path]]:
    if os.geteuid() != 0:
        pytest.skip("needs root: creates Unix accounts and runs JupyterHub, which switches to them")
    for tool in ("useradd", "userdel", "runuser"):
        if not shutil.which(tool):
            pytest.skip(f"{tool} missing")
    setup = subprocess.run(["bash", str(HUB_DIR / "setup.sh")], capture_output=True, text=True, timeout=600)
    if setup.returncode == 3:  # e.g. a checkout under /root (0700): the students cannot run its code
        pytest.skip(setup.stderr.strip()[-300:])
    assert setup.returncode == 0, setup.stdout + setup.stderr
    tag = secrets.token_hex(2)
    names = [f"stdpkt{tag}{who}" for who in "abc"]
    state = tmp_path / "hub-state"
    state.mkdir(mode=0o700)
    run_base = Path(f"/dev/shm/stdpkt-hubtest-{os.getpid()}-{tag}")
    created: list[str] = []
    hub_proc: subprocess.Popen | None = None
    port = 0
    token = secrets.token_hex(24)
    students: list[Student] = []
    log = open(tmp_path / "hub.log", "wb")
    try:
        for name in names:
            subprocess.run(["useradd", "--create-home", "--shell", "/bin/bash", name], check=True,
                           capture_output=True)
            created.append(name)
        # the checkout must be reachable by the students (their servers run its venv)
        python = (HUB_DIR / "student-venv" / "bin" / "python" if (HUB_DIR / "student-venv.used").exists()
                  else Path(sys.executable))  # what setup.sh chose for the students' servers
        probe = subprocess.run(["runuser", "-u", names[0], "--", str(python), "-c",
                                "import stdpkt_lab, jupyterhub"], capture_output=True, text=True)
        if probe.returncode != 0:
            pytest.skip(f"the checkout's venv is not usable by other accounts: {probe.stderr.strip()[-300:]}")
        port = _free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("STDPKT_")}
        env.update(STDPKT_HUB_IP="127.0.0.1", STDPKT_HUB_PORT=str(port), STDPKT_HUB_API_PORT=str(_free_port()),
                   STDPKT_HUB_PROXY_API_PORT=str(_free_port()), STDPKT_HUB_AUTH="dummy",
                   STDPKT_HUB_STATE=str(state), STDPKT_HUB_RUNDIR=str(run_base),
                   STDPKT_HUB_ADMIN_TOKEN=token, STDPKT_HUB_USERS=",".join(names),
                   STDPKT_MAX_INSTANCES=str(CAP_INSTANCES), STDPKT_MAX_MEM_MB=str(CAP_MEM_MB))
        hub_proc = subprocess.Popen([str(Path(sys.executable).parent / "jupyterhub"), "-f",
                                     str(HUB_DIR / "jupyterhub_config.py")], cwd=state, env=env,
                                    stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        hub = Hub(f"http://127.0.0.1:{port}", token)
        deadline = time.monotonic() + 120
        while True:
            try:
                if hub.api("GET", "/hub/api/")[0] == 200:
                    break
            except OSError:
                pass
            if hub_proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError("the hub did not start:\n" + (tmp_path / "hub.log").read_text()[-4000:])
            time.sleep(0.5)
        for name in names:
            status, body = hub.api("POST", f"/hub/api/users/{name}")
            assert status in (201, 409), (status, body)
            student = Student(hub, name)
            student.uid = int(subprocess.run(["id", "-u", name], capture_output=True, text=True,
                                             check=True).stdout)
            students.append(student)
        yield hub, students, run_base
    finally:
        try:
            if hub_proc is not None and hub_proc.poll() is None:
                hub = Hub(f"http://127.0.0.1:{port}", token)
                for student in students:
                    try:
                        hub.api("DELETE", f"/hub/api/users/{student.name}/server")
                    except OSError:
                        pass
        finally:
            _stop_hub(hub_proc, state)
            uids = {s.uid for s in students}
            _kill_leftovers(uids)
            for name in created:
                subprocess.run(["userdel", "--remove", name], capture_output=True)
            shutil.rmtree(run_base, ignore_errors=True)
            log.close()


def _stop_hub(proc: subprocess.Popen | None, state: Path) -> None:
    if proc is None:
        return
    for sig, wait in ((signal.SIGTERM, 60), (signal.SIGKILL, 10)):
        if proc.poll() is not None:
            break
        os.killpg(proc.pid, sig)
        try:
            proc.wait(wait)
        except subprocess.TimeoutExpired:
            continue
    pid_file = state / "proxy.pid"  # the proxy runs in a session of its own
    try:
        os.kill(int(pid_file.read_text().strip()), signal.SIGTERM)
    except (OSError, ValueError):
        pass


def _kill_leftovers(uids: set[int]) -> None:
    """Processes of the test accounts still there after their servers stopped: killed by pid."""
    deadline = time.monotonic() + 30
    while _uids_processes(uids) and time.monotonic() < deadline:
        time.sleep(0.5)
    for _ in range(3):
        pids = _uids_processes(uids)
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        if not pids:
            break
        time.sleep(0.5)


def _pss_kib(pid: int) -> int:
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return 0
    return next((int(ln.split()[1]) for ln in text.splitlines() if ln.startswith("Pss:")), 0)


def _record_per_student(student: Student, what: str) -> None:
    """What one student costs on the hub (every process of their uid), kept in artifacts/hub/."""
    pids = _uids_processes({student.uid})
    out = REPO / "artifacts" / "hub"
    out.mkdir(parents=True, exist_ok=True)
    record = {"what": what, "processes": len(pids), "pss_mib": round(sum(map(_pss_kib, pids)) / 1024, 1)}
    (out / "per-student.json").write_text(json.dumps(record, indent=1) + "\n")
    print("per student:", record)


def test_three_students_on_one_hub_isolated_and_capped(class_hub) -> None:
    hub, (a, b, c), run_base = class_hub
    for s in (a, b, c):
        s.start_server()
    for s in (a, b, c):
        s.wait_ready()
        s.login()
        s.open_kernel()
    # a lab in each of A and B, at the same time as C's below
    out_a, err_a = a.run(LAB)
    assert err_a is None, (err_a, out_a)
    res_a = _marker(out_a, "RESULT")
    out_b, err_b = b.run(LAB)
    assert err_b is None, (err_b, out_b)
    res_b = _marker(out_b, "RESULT")
    for student, res in ((a, res_a), (b, res_b)):
        assert res["uid"] == student.uid and res["http"] == "hello from server\n", res
        assert " 0% packet loss" in res["ping"] and res["saved"] > 0, res
        assert res["rundir_env"] == str(run_base / student.name) and res["run_root"].startswith(res["rundir_env"])
        for pid in res["pids"]:  # every UML kernel and the notebook kernel run as the student
            assert _proc_uid(pid) == student.uid, (student.name, pid)
        assert _proc_uid(res["kernel_pid"]) == student.uid
        mine = os.stat(res["rundir_env"])
        assert (mine.st_mode & 0o777, mine.st_uid) == (0o700, student.uid)
        assert os.stat(res["run_root"]).st_mode & 0o777 == 0o700
        home = Path(res["pcap"]).parent
        assert os.stat(home).st_mode & 0o777 == 0o700, oct(os.stat(home).st_mode)  # singleuser.py made it so
    assert os.stat(run_base).st_mode & 0o777 == 0o711 and os.stat(run_base).st_uid == 0
    # the students' JupyterLab has the classroom-quiet defaults (deploy/jupyterlab/)
    status, setting = a.server_api("GET", "/lab/api/settings/@jupyterlab/apputils-extension:notification")
    assert status == 200, (status, setting)
    defaults = {k: v.get("default") for k, v in setting["schema"]["properties"].items()}  # type: ignore[index]
    assert defaults["fetchNews"] == "false" and defaults["checkForUpdates"] is False, defaults
    _record_per_student(a, "server + Python kernel + a 2-node lab (client, http server)")

    # B against A: every attempt refused by the host kernel (EACCES 13, EPERM 1)
    out, err = b.run(PROBES.format(a=json.dumps(res_a)))
    assert err is None, (err, out)
    probes = _marker(out, "PROBES")
    allowed = {k: v for k, v in probes.items() if v not in (1, 13)}
    assert not allowed, f"B could reach A's things: {allowed}"
    assert len(probes) == 5 + 5 * (len(res_a["pids"]) + 1)
    # and B's token opens nothing on A's server
    for method, path in (("GET", "/api/kernels"), ("GET", "/api/contents"),
                         ("DELETE", f"/api/kernels/{a.kernel}")):
        status, _ = a.server_api(method, path, token=b.token)
        assert status in (403, 404), (method, path, status)
    status, kernels = a.server_api("GET", "/api/kernels")
    assert status == 200 and [k["id"] for k in kernels] == [a.kernel]  # type: ignore[union-attr]

    # C: the memory cap, then the instance cap, both as a clear message in the notebook
    out_c, err_c = c.run(CAPS)
    caps = [ln for ln in out_c.splitlines() if ln.startswith("CAP ")]
    assert len(caps) == 2, out_c
    assert "memory cap reached: node 'big' asks for 256 MiB" in caps[0] and f"cap is {CAP_MEM_MB} MiB" in caps[0]
    assert "STDPKT_MAX_MEM_MB" in caps[0] and "lab.stop()" in caps[0]
    assert f"node 'b2' would be instance 4 of this user, the cap is {CAP_INSTANCES} (STDPKT_MAX_INSTANCES)" \
        in caps[1] and "running: a1, a2, b1" in caps[1]
    assert "AFTER 1" in out_c
    assert err_c is not None and err_c["ename"] == "QuotaExceeded", err_c
    assert "instance cap reached: node 'x4'" in err_c["evalue"], err_c
    # the caps are this user's alone: A's and B's labs are untouched, still running
    for student, res in ((a, res_a), (b, res_b)):
        for pid in res["pids"]:
            assert _proc_uid(pid) == student.uid

    # stopping a server ends its labs and removes its run directory
    status, _ = hub.api("DELETE", f"/hub/api/users/{a.name}/server")
    assert status in (202, 204), status
    deadline = time.monotonic() + 90
    while (_uids_processes({a.uid}) or (run_base / a.name).exists()) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not _uids_processes({a.uid}), "A's processes outlived A's server"
    assert not (run_base / a.name).exists()
