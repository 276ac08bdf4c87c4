"""What a student sees: JupyterLab in a real (headless) chromium, the dashboard live.

One test, marked ``browser`` and ``uml``: it starts JupyterLab on 127.0.0.1 (random
port, random token) on a small notebook that shows the dashboard of the paper's
chain and then keeps the kernel busy with traffic; it takes two screenshots
seconds apart while that cell runs and asserts that the plots and the packet table
changed between them; it reloads the page and checks the widget comes back with
the current state.  Screenshots go to ``artifacts/browser/``.  Everything it
started (the server's process group, its kernels, chromium) is stopped by the fixtures.
"""

from __future__ import annotations

import io
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import REPO

pytestmark = [pytest.mark.browser, pytest.mark.uml]

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
ARTIFACTS = REPO / "artifacts" / "browser"

SETUP = """\
import networkx as nx
import stdpkt_lab as sl
g = nx.Graph()
g.add_node("client", kind="host")
g.add_node("nat", kind="nat", outside="fw")
g.add_node("fw", kind="firewall", allow=["tcp/80", "icmp"])
g.add_node("server", kind="host", serve="http")
g.add_edges_from([("client", "nat"), ("nat", "fw"), ("fw", "server")])
lab = sl.Lab(g)
lab.start()
dash = lab.dashboard()
dash"""
# the kernel stays busy in this cell until the test has seen the dashboard move (it
# writes STOP_FILE beside the notebook) or for 180 s: the dashboard must keep moving all the same
STOP_FILE = "traffic.stop"
TRAFFIC = f"""\
import os, time
end = time.monotonic() + 180
while time.monotonic() < end and not os.path.exists({STOP_FILE!r}):
    lab.exec("client", "wget -qO /dev/null http://server/; ping -c 2 -i 0.2 -W 1 server >/dev/null")
"""
STOP = "dash.close()\nlab.stop()\nprint('stopped', lab.state.value)"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _notebook(path: Path) -> None:
    import nbformat
    from nbformat.v4 import new_code_cell, new_notebook

    nb = new_notebook(cells=[new_code_cell(SETUP), new_code_cell(TRAFFIC), new_code_cell(STOP)],
                      metadata={"kernelspec": {"name": "python3", "display_name": "Python 3",
                                               "language": "python"}})
    nbformat.write(nb, path)


class Server:
    def __init__(self, url: str, token: str, proc: subprocess.Popen, root: Path | None = None) -> None:
        self.url, self.token, self.proc, self.root = url, token, proc, root

    def api(self, method: str, path: str) -> object:
        req = urllib.request.Request(f"{self.url}{path}", method=method,
                                     headers={"Authorization": f"token {self.token}"})
        with urllib.request.urlopen(req, timeout=10) as resp:
            body = resp.read()
        return json.loads(body) if body else None


@pytest.fixture
def jupyter(tmp_path: Path) -> Iterator[Server]:
    """JupyterLab on 127.0.0.1 in its own process group; kernels shut down, group ended."""
    if not os.access(CHROMIUM, os.X_OK):
        pytest.skip(f"{CHROMIUM} missing (apt-get install chromium)")
    root = tmp_path / "nb"
    root.mkdir()
    _notebook(root / "dashboard.ipynb")
    port, token = _free_port(), secrets.token_hex(16)
    jupyter_lab = Path(sys.executable).parent / "jupyter-lab"
    argv = [str(jupyter_lab), "--no-browser", "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}",
            "--ServerApp.port_retries=0", f"--ServerApp.token={token}", f"--ServerApp.root_dir={root}",
            "--LabApp.expose_app_in_browser=True",
            "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"]
    if os.geteuid() == 0:
        argv.append("--allow-root")
    config = tmp_path / "config"
    (config / "labconfig").mkdir(parents=True)  # no "get Jupyter news?" toast over the screenshots
    (config / "labconfig" / "page_config.json").write_text(json.dumps(
        {"disabledExtensions": {"@jupyterlab/apputils-extension:announcements": True}}))
    env = dict(os.environ, JUPYTER_RUNTIME_DIR=str(tmp_path / "runtime"), JUPYTER_CONFIG_DIR=str(config),
               JUPYTERLAB_WORKSPACES_DIR=str(tmp_path / "workspaces"))
    log = open(tmp_path / "jupyter.log", "wb")
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    server = Server(f"http://127.0.0.1:{port}", token, proc, root)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                server.api("GET", "/api/status")
                break
            except OSError as exc:
                if proc.poll() is not None or time.monotonic() > deadline:
                    tail = (tmp_path / "jupyter.log").read_text()[-3000:]
                    raise RuntimeError(f"JupyterLab did not start:\n{tail}") from exc
                time.sleep(0.3)
        yield server
    finally:
        try:
            for kernel in server.api("GET", "/api/kernels") or []:  # type: ignore[union-attr]
                server.api("DELETE", f"/api/kernels/{kernel['id']}")
        except OSError:
            pass
        _end_group(proc)
        log.close()


def _end_group(proc: subprocess.Popen) -> None:
    for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(wait)
            break
        except subprocess.TimeoutExpired:
            continue


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[object]:
    """Debian's chromium (never a downloaded one) with a fresh profile."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"), executable_path=CHROMIUM, headless=True,
            args=CHROMIUM_ARGS, viewport={"width": 1280, "height": 1500})
        try:
            yield context
        finally:
            context.close()


def _command(page, name: str) -> None:
    """Start a JupyterLab command (not waiting for it: run-cell would wait for the cell)."""
    page.evaluate("name => { window.jupyterapp.commands.execute(name); }", name)


def _run_cell(page, index: int) -> None:
    page.evaluate("i => { window.jupyterapp.shell.currentWidget.content.activeCellIndex = i; }", index)
    _command(page, "notebook:run-cell")


def _prompts(page) -> list[str]:
    return [t.strip() for t in page.locator(".jp-CodeCell .jp-InputPrompt").all_inner_texts()]


def _changed_fraction(png_a: bytes, png_b: bytes) -> float:
    from PIL import Image, ImageChops

    a = Image.open(io.BytesIO(png_a)).convert("RGB")
    b = Image.open(io.BytesIO(png_b)).convert("RGB")
    if a.size != b.size:
        return 1.0
    diff = ImageChops.difference(a, b).convert("L").point(lambda v: 255 if v > 16 else 0)
    return sum(diff.histogram()[255:]) / (a.size[0] * a.size[1])


def test_dashboard_moves_while_a_cell_is_busy_and_survives_a_reload(jupyter: Server, browser) -> None:
    if ARTIFACTS.exists():
        shutil.rmtree(ARTIFACTS)
    ARTIFACTS.mkdir(parents=True)
    page = browser.new_page()  # type: ignore[attr-defined]
    try:
        _check_dashboard(page, jupyter)
    except BaseException:
        page.screenshot(path=str(ARTIFACTS / "failure.png"), full_page=True)
        raise


def _check_dashboard(page, jupyter: Server) -> None:
    cdn: list[str] = []
    page.on("request", lambda r: cdn.append(r.url) if "cdn.bokeh.org" in r.url else None)
    page.goto(f"{jupyter.url}/lab/tree/dashboard.ipynb?token={jupyter.token}")
    page.wait_for_function("window.jupyterapp && window.jupyterapp.shell.currentWidget"
                           " && window.jupyterapp.shell.currentWidget.sessionContext"
                           " && window.jupyterapp.shell.currentWidget.sessionContext.session"
                           " && window.jupyterapp.shell.currentWidget.sessionContext.session.kernel",
                           timeout=60_000)
    page.wait_for_timeout(1500)
    _run_cell(page, 0)
    page.locator(".stdpkt-plots canvas").first.wait_for(timeout=120_000)
    _run_cell(page, 1)  # busy until STOP_FILE exists
    page.wait_for_function(
        "() => [...document.querySelectorAll('.stdpkt-table td')].some(td => /TCP|ICMP/.test(td.textContent))",
        timeout=30_000)
    page.wait_for_timeout(1000)
    plots, table = page.locator(".stdpkt-plots"), page.locator(".stdpkt-table")
    plots.scroll_into_view_if_needed()

    first_png, first_text, busy1 = plots.screenshot(), table.inner_text(), _prompts(page)
    page.screenshot(path=str(ARTIFACTS / "dashboard-1.png"), full_page=True)
    page.wait_for_timeout(3000)
    second_png, second_text, busy2 = plots.screenshot(), table.inner_text(), _prompts(page)
    page.screenshot(path=str(ARTIFACTS / "dashboard-2.png"), full_page=True)
    assert jupyter.root is not None
    (jupyter.root / STOP_FILE).write_text("seen\n")  # the traffic cell may end now
    (ARTIFACTS / "plots-1.png").write_bytes(first_png)
    (ARTIFACTS / "plots-2.png").write_bytes(second_png)

    assert "[*]:" in busy1 and "[*]:" in busy2, (busy1, busy2)  # the traffic cell was running
    changed = _changed_fraction(first_png, second_png)
    assert changed > 0.002, f"the plots did not move ({changed:.4%} of pixels changed)"
    assert first_text != second_text, "the packet table did not change"
    assert "TCP" in second_text or "ICMP" in second_text, second_text

    # after a reload the widget shows the kernel's current state again
    page.wait_for_function("() => ![...document.querySelectorAll('.jp-InputPrompt')]"
                           ".some(p => p.textContent.includes('*'))", timeout=60_000)
    _command(page, "docmanager:save")
    page.wait_for_timeout(1500)
    page.reload()
    page.locator(".stdpkt-plots canvas").first.wait_for(timeout=60_000)
    page.wait_for_function(
        "() => [...document.querySelectorAll('.stdpkt-table td')].some(td => /TCP|ICMP/.test(td.textContent))",
        timeout=30_000)
    page.wait_for_timeout(1500)
    page.screenshot(path=str(ARTIFACTS / "dashboard-after-reload.png"), full_page=True)
    reloaded_png = page.locator(".stdpkt-plots").screenshot()
    (ARTIFACTS / "plots-after-reload.png").write_bytes(reloaded_png)
    status = page.locator(".stdpkt-status").inner_text()
    assert "lab running" in status, status

    _run_cell(page, 2)
    page.wait_for_function("() => document.body.innerText.includes('stopped stopped')", timeout=60_000)
    assert not cdn, f"requests to the bokeh CDN: {cdn[:3]}"


# ---------------------------------------------------------------- classroom-quiet (issue 15 item 4)
NEWS_PROMPT = "official Jupyter news"


def _start_lab(tmp_path: Path, tag: str, root: Path, extra_env: dict[str, str]) -> Server:
    port, token = _free_port(), secrets.token_hex(16)
    argv = [str(Path(sys.executable).parent / "jupyter-lab"), "--no-browser", "--ServerApp.ip=127.0.0.1",
            f"--ServerApp.port={port}", "--ServerApp.port_retries=0", f"--ServerApp.token={token}",
            f"--ServerApp.root_dir={root}"]
    if os.geteuid() == 0:
        argv.append("--allow-root")
    env = dict(os.environ, JUPYTER_RUNTIME_DIR=str(tmp_path / f"runtime-{tag}"),
               JUPYTER_CONFIG_DIR=str(tmp_path / f"config-{tag}"),
               JUPYTERLAB_SETTINGS_DIR=str(tmp_path / f"settings-{tag}"),
               JUPYTERLAB_WORKSPACES_DIR=str(tmp_path / f"workspaces-{tag}"), **extra_env)
    log = tmp_path / f"jupyter-{tag}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    server = Server(f"http://127.0.0.1:{port}", token, proc)
    deadline = time.monotonic() + 60
    while True:
        try:
            server.api("GET", "/api/status")
            return server
        except OSError as exc:
            if proc.poll() is not None or time.monotonic() > deadline:
                _end_group(proc)
                raise RuntimeError(f"JupyterLab did not start:\n{log.read_text()[-3000:]}") from exc
            time.sleep(0.3)


def _toasts_after_load(browser, server: Server, path: str, shot: Path) -> str:
    page = browser.new_page()  # type: ignore[attr-defined]
    try:
        page.goto(f"{server.url}{path}?token={server.token}")
        page.wait_for_function("() => document.querySelector('.jp-LabShell') !== null", timeout=60_000)
        page.wait_for_function("() => document.querySelector('.jp-Notebook') !== null", timeout=60_000)
        page.wait_for_timeout(6000)  # the news question comes a moment after the shell is up
        page.screenshot(path=str(shot), full_page=True)
        return " | ".join(page.locator(".Toastify__toast, .jp-Notification-Toast").all_inner_texts())
    finally:
        page.close()


def test_classroom_settings_open_the_quickstart_without_the_news_prompt(tmp_path: Path, browser) -> None:
    """The settings `make lab`, binder/ and the hub install (deploy/jupyterlab/) keep the "get
    Jupyter news?" question away; a control run with the question re-enabled by a user setting
    shows that the check sees the prompt when it is there."""
    if not os.access(CHROMIUM, os.X_OK):
        pytest.skip(f"{CHROMIUM} missing (apt-get install chromium)")
    subprocess.run(["sh", str(REPO / "deploy/jupyterlab/install-settings.sh"), sys.prefix], check=True)
    root = tmp_path / "nb"
    root.mkdir()
    shutil.copy(REPO / "notebooks" / "01-quickstart.ipynb", root / "01-quickstart.ipynb")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    # control: the user re-enables the question (user settings win over overrides.d) and the
    # server fetches news from an address nothing listens on
    settings = tmp_path / "settings-control" / "@jupyterlab" / "apputils-extension"
    settings.mkdir(parents=True)
    (settings / "notification.jupyterlab-settings").write_text(json.dumps({"fetchNews": "none"}))
    config = tmp_path / "config-control"
    config.mkdir()
    (config / "jupyter_server_config.json").write_text(json.dumps(
        {"LabApp": {"news_url": f"http://127.0.0.1:{_free_port()}/feed.xml"}}))
    for tag, expect_prompt in (("control", True), ("quiet", False)):
        server = _start_lab(tmp_path, tag, root, {})
        try:
            toasts = _toasts_after_load(browser, server, "/lab/tree/01-quickstart.ipynb",
                                        ARTIFACTS / f"classroom-{tag}.png")
        finally:
            for kernel in server.api("GET", "/api/kernels") or []:  # type: ignore[union-attr]
                server.api("DELETE", f"/api/kernels/{kernel['id']}")
            _end_group(server.proc)
        assert (NEWS_PROMPT in toasts) is expect_prompt, f"{tag}: toasts shown: {toasts!r}"
