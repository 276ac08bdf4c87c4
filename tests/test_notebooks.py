"""Every notebook in notebooks/ runs top to bottom headless (nbclient, a fresh kernel), and
the quickstart runs as an unprivileged user with a small, noexec /dev/shm (as on Binder)."""

from __future__ import annotations

import json
import os
import pwd
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from .conftest import REPO

NOTEBOOKS = REPO / "notebooks"
BOOKS = sorted(p.relative_to(NOTEBOOKS).as_posix()
               for p in [*NOTEBOOKS.glob("*.ipynb"), *NOTEBOOKS.glob("exercises/*.ipynb")])


def test_notebooks_are_stored_without_outputs() -> None:
    assert {"01-quickstart.ipynb", "02-load-balancer.ipynb", "03-paper-figures.ipynb",
            "04-exercise.ipynb", "04-exercise-solutions.ipynb"} <= set(BOOKS)
    for name in BOOKS:
        nb = json.loads((NOTEBOOKS / name).read_text())
        for cell in nb["cells"]:
            if cell["cell_type"] == "code":
                assert cell["outputs"] == [] and cell["execution_count"] is None, name
        assert "widgets" not in nb["metadata"], name  # no saved widget state either


def execute(path: Path, *, timeout: int = 900):
    """Run a notebook in a fresh kernel of this interpreter (kernel "python3", the venv's ipykernel)."""
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, kernel_name="python3", timeout=timeout,
                            resources={"metadata": {"path": str(path.parent)}})
    client.execute()  # raises CellExecutionError on the first error
    return nb


def text_of(nb) -> str:
    out = []
    for cell in nb.cells:
        for o in cell.get("outputs", []):
            if o.get("output_type") == "stream":
                out.append(o["text"])
            out += [v for k, v in o.get("data", {}).items() if k.startswith("text/") and isinstance(v, str)]
    return "\n".join(out)


@pytest.mark.uml
@pytest.mark.parametrize("name", BOOKS)
def test_notebook_runs_top_to_bottom(name: str, tmp_path: Path) -> None:
    work = tmp_path / "notebooks"
    shutil.copytree(NOTEBOOKS, work)  # as in the checkout: ../bench is the repo's
    path = work / name
    if name.startswith("03"):
        path = NOTEBOOKS / name  # it runs the bench scripts relative to the checkout
    nb = execute(path)
    text = text_of(nb)
    raw = json.dumps(nb)
    assert "cdn.bokeh.org" not in raw
    if name.startswith("01"):
        assert "hello from server" in text
        assert "application/vnd.bokehjs_load.v0+json" in raw  # the dashboard was shown, BokehJS inline
        assert re.search(r"10\.0\.0\.\d+:\d+ → 10\.0\.\d+\.\d+:80", text), "no conntrack entry shown"
        assert "stdpkt-lab" in text and "stdpkt-journey" in text  # the HTML reprs were shown
        assert "background:#fff3b0" in text  # a rewritten field highlighted in the journey
        assert "hint:" in text and "t=17" not in text  # an error's hint; no raw epoch times
    if name.startswith("02"):
        assert re.search(r"'b1': 10, 'b2': 10, 'b3': 10", text), "round robin did not spread 30 requests"
    if name.startswith("06"):  # iperf3 at each loss rate, beside the model, in well under a minute
        assert len(re.findall(r"loss [\d.]+ %: [\d.]+ Mbit/s measured", text)) == 5, text[-2000:]
        assert "throughput falls with loss: True" in text
    if name.startswith("05"):
        assert "intervals with no data: 0" in text, "the flow stopped during a live change"
        assert "tcp port 80" in text  # the steering table was shown
    if name == "04-exercise.ipynb":
        assert "FAIL  task 1" in text and "hint:" in text and "PASS: the chain is repaired" not in text
    if name == "04-exercise-solutions.ipynb":
        assert "PASS  task 1" in text and "PASS  task 2" in text and "PASS: the chain is repaired" in text
    if name.startswith("exercises/"):  # --- classroom exercises: broken ones FAIL with a hint ---
        if name.endswith("-solution.ipynb"):
            assert re.search(r"^PASS: (\d+)/\1 checks passed", text, re.M), text[-2000:]
        else:
            assert re.search(r"^FAIL: \d+/\d+ checks passed", text, re.M), text[-2000:]
            assert re.search(r"FAIL\s+\S.*\s{2}\S", text), "a failing check shows its hint"


# ---------------------------------------------------------------- unprivileged (Binder-like)
RUNNER = """\
import sys, nbformat
from pathlib import Path
from nbclient import NotebookClient
src, out = Path(sys.argv[1]), sys.argv[2]
nb = nbformat.read(src, as_version=4)
try:
    NotebookClient(nb, kernel_name="python3", timeout=600,
                   resources={"metadata": {"path": str(src.parent)}}).execute()
finally:
    nbformat.write(nb, out)
print("EXECUTED")
"""
USER = "nobody"


def _uml_pids_under(base: str) -> set[int]:
    pids = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            exe = os.readlink(f"/proc/{entry}/exe")
            env = Path(f"/proc/{entry}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if "linux.uml" in exe and any(e.startswith(b"TMPDIR=" + base.encode()) for e in env):
            pids.add(int(entry))
    return pids


@pytest.mark.uml
@pytest.mark.root
def test_quickstart_as_an_unprivileged_user_with_a_small_noexec_dev_shm() -> None:
    """As on Binder: not root, /dev/shm 16 MiB and noexec (its own mount namespace), HOME and
    TMPDIR in a plain directory.  The project's packages are reused through a venv of the
    system Python (the project venv's interpreter may live under /root)."""
    if os.geteuid() != 0:
        pytest.skip("needs root to switch to an unprivileged user")
    system_python = "/usr/bin/python3"
    site = next((REPO / ".venv" / "lib").glob("python3*/site-packages"), None)
    if site is None or not os.access(system_python, os.X_OK):
        pytest.skip("needs the project .venv and /usr/bin/python3")
    if f"{sys.version_info.major}.{sys.version_info.minor}" not in site.parent.name:
        pytest.skip("the system Python differs from the venv's")
    base = Path(tempfile.mkdtemp(prefix="stdpkt-nbuser-", dir="/var/tmp"))
    try:
        base.chmod(0o755)
        home, tmp = base / "home", base / "home" / "tmp"
        tmp.mkdir(parents=True)
        shutil.copy(NOTEBOOKS / "01-quickstart.ipynb", home / "01-quickstart.ipynb")
        (base / "run.py").write_text(RUNNER)
        venv = base / "venv"
        subprocess.run([system_python, "-m", "venv", str(venv)], check=True)
        pth = next((venv / "lib").glob("python3*/site-packages")) / "stdpkt-project.pth"
        pth.write_text(f"import site; site.addsitedir({str(site)!r})\n")
        for path in [base, *base.rglob("*")]:
            path.chmod(path.stat().st_mode | 0o444 | (0o111 if path.is_dir() else 0))
        for path in [home, *home.rglob("*")]:
            shutil.chown(path, USER)
        user_cmd = ["runuser", "-u", USER, "--", "env", "-i", "PATH=/usr/bin:/bin", f"HOME={home}",
                    f"TMPDIR={tmp}", str(venv / "bin" / "python"), str(base / "run.py"),
                    str(home / "01-quickstart.ipynb"), str(home / "out.ipynb")]
        script = ("mount -t tmpfs -o size=16m,noexec tmpfs /dev/shm && exec \"$@\"")
        proc = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script,
                               "sh", *user_cmd], capture_output=True, text=True, timeout=900,
                              start_new_session=True)
        assert proc.returncode == 0 and "EXECUTED" in proc.stdout, proc.stdout[-3000:] + proc.stderr[-3000:]
        import nbformat

        text = text_of(nbformat.read(home / "out.ipynb", as_version=4))
        assert "hello from server" in text and "the server saw: 10.0.1.1" in text
        assert not list(tmp.iterdir())  # the run directory under $TMPDIR is gone again
    finally:
        deadline = time.monotonic() + 10
        while _uml_pids_under(str(base)) and time.monotonic() < deadline:
            time.sleep(0.2)
        leaked = _uml_pids_under(str(base))
        for pid in leaked:
            os.kill(pid, signal.SIGKILL)
        shutil.rmtree(base, ignore_errors=True)
    assert not leaked, f"UML processes left running: {leaked}"
    assert pwd.getpwnam(USER).pw_uid != 0
