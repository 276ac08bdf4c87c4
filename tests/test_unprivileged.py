"""The product without root: a user installs stdpkt-lab and runs a chain (as Binder would)."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from .conftest import REPO, SESSION_RUNDIR

USER = "stdpkt-test"
SYSTEM_PYTHON = "/usr/bin/python3"

pytestmark = [pytest.mark.uml, pytest.mark.root]


@pytest.fixture(scope="module")
def user_install():
    """A non-root user with stdpkt-lab pip-installed (not editable) into its own venv."""
    if os.geteuid() != 0:
        pytest.skip("already unprivileged: the rest of the suite is this test")
    if not os.access(SYSTEM_PYTHON, os.X_OK):
        pytest.skip(f"{SYSTEM_PYTHON} is needed to build a venv the user can run")
    try:
        pwd.getpwnam(USER)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/bin/sh", USER],
                       check=True)
    base = Path(tempfile.mkdtemp(prefix="stdpkt-unpriv-", dir="/var/tmp"))  # pytest's is 0700
    base.chmod(0o755)
    home = base / "home"
    src = base / "src"
    shutil.copytree(REPO, src, ignore=shutil.ignore_patterns(
        ".venv", ".git", "build", "*.egg-info", "_bin", "*.so", "__pycache__", "artifacts"))
    home.mkdir()
    for path in (home, src, *src.rglob("*")):
        shutil.chown(path, USER, USER)
    venv = home / "venv"
    as_user = ["runuser", "-u", USER, "--", "env", f"HOME={home}"]
    subprocess.run([*as_user, SYSTEM_PYTHON, "-m", "venv", str(venv)], check=True)
    install = subprocess.run([*as_user, str(venv / "bin" / "pip"), "install", "-q", str(src)],
                             capture_output=True, text=True, timeout=900)
    assert install.returncode == 0, install.stderr[-3000:]
    yield as_user, venv, home
    shutil.rmtree(base, ignore_errors=True)


@pytest.mark.parametrize("ports", ["vector", "vhost"])
def test_user_runs_a_two_instance_pipeline(user_install, ports: str) -> None:
    as_user, venv, home = user_install
    work = home / f"work-{ports}"
    work.mkdir()
    shutil.chown(work, USER, USER)
    (work / "client.sh").write_text(
        "until ping -c1 -W1 10.0.0.1 >/dev/null 2>&1; do :; done\n"
        "until wget -qO- -T 2 http://10.0.0.1/ 2>/dev/null; do sleep 0.3; done\n"
        "id -u; echo x > /etc/host-write-test 2>/dev/null || echo ROOT-FS-READ-ONLY\n"
        "echo DEVICE $(readlink /sys/class/net/eth0)\n")
    (work / "server.sh").write_text(
        "mkdir -p /tmp/www; echo hello-unprivileged > /tmp/www/index.html\n"
        "busybox httpd -p 80 -h /tmp/www\n")
    stdpkt = str(venv / "bin" / "stdpkt")
    env = [f"STDPKT_RUNDIR={SESSION_RUNDIR}", f"STDPKT_PORTS={ports}"]
    client = subprocess.Popen(
        [*as_user, *env, "IF0=p1|/dev/stdout", "IP0=10.0.0.2", stdpkt, "run", "--oneshot",
         "client.sh"], cwd=work, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    server = subprocess.Popen(
        [*as_user, *env, "IF0=/dev/stdin|p1", "IP0=10.0.0.1", stdpkt, "run", "server.sh"],
        cwd=work, stdin=client.stdout, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    client.stdout.close()  # type: ignore[union-attr]
    _, client_err = client.communicate(timeout=180)
    _, server_err = server.communicate(timeout=60)
    text = client_err.decode()
    assert client.returncode == 0, (text, server_err.decode())
    assert "hello-unprivileged" in text
    assert "\n0\n" in text  # root inside its own kernel ...
    assert "ROOT-FS-READ-ONLY" in text  # ... yet the host's filesystem stays read-only
    assert not Path("/etc/host-write-test").exists()
    assert ("virtio-uml.0" in text) == (ports == "vhost"), text  # the port kind asked for
