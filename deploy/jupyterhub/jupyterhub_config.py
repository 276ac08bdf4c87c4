"""stdpkt-lab: a class on one JupyterHub (run as root: `deploy/jupyterhub/run.sh`).

Each student is a local Unix account; the hub (root) starts their single-user
JupyterLab *as that account* (LocalProcessSpawner), so their notebook kernels and
every User-Mode Linux kernel of their labs run with the student's uid: another
student cannot ptrace, signal or read them (/proc of a foreign uid), nor read
their run directories (0700) or files (home made 0700 by singleuser.py).

Run directories: ``$STDPKT_HUB_RUNDIR`` (default /dev/shm/stdpkt-hub) is root's,
mode 0711 (no listing); each student gets ``<base>/<user>`` (0700, theirs) as
``STDPKT_RUNDIR`` when their server starts, removed when it stops.  Caps
(stdpkt_lab/engine/quota.py): ``STDPKT_MAX_INSTANCES`` / ``STDPKT_MAX_MEM_MB``
from the hub's environment (defaults 8 instances, 1536 MiB of guest memory).

Everything else is an environment variable (see README.md in this directory):
STDPKT_HUB_IP (127.0.0.1), STDPKT_HUB_PORT (8000), STDPKT_HUB_API_PORT (8081),
STDPKT_HUB_PROXY_API_PORT (8001), STDPKT_HUB_STATE (./state: database, cookie
secret, proxy pid), STDPKT_HUB_AUTH (pam | dummy: dummy accepts any password and
is refused unless the hub listens on loopback), STDPKT_HUB_USERS and
STDPKT_HUB_ADMINS (comma-separated), STDPKT_HUB_ADMIN_TOKEN (an API token for a
service with the admin role: the tests and scripts drive the hub's REST API with it).
"""

from __future__ import annotations

import ipaddress
import os
import pwd
import shutil
import stat
import sys
from pathlib import Path

c = get_config()  # type: ignore[name-defined]  # noqa: F821  (traitlets provides it)

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
#: The hub's own venv (the project's): JupyterLab's files, kernelspecs, server config live there.
HUB_PREFIX = Path(sys.prefix)
#: The Python the students' servers run: the hub's, or ./student-venv when setup.sh found
#: the hub's not executable by other accounts (an interpreter under /root).
_student = HERE / "student-venv" / "bin"
VENV_BIN = Path(os.environ.get("STDPKT_HUB_VENV_BIN")
                or (_student if (HERE / "student-venv.used").exists() else Path(sys.executable).parent))
ENV = os.environ.get

IP = ENV("STDPKT_HUB_IP", "127.0.0.1")
STATE = Path(ENV("STDPKT_HUB_STATE") or HERE / "state")
STATE.mkdir(mode=0o700, parents=True, exist_ok=True)
RUN_BASE = Path(ENV("STDPKT_HUB_RUNDIR") or "/dev/shm/stdpkt-hub")

# ----------------------------------------------------------------- network, state
c.JupyterHub.ip = IP
c.JupyterHub.port = int(ENV("STDPKT_HUB_PORT", "8000"))
c.JupyterHub.hub_ip = "127.0.0.1"
c.JupyterHub.hub_port = int(ENV("STDPKT_HUB_API_PORT", "8081"))
c.ConfigurableHTTPProxy.api_url = f"http://127.0.0.1:{ENV('STDPKT_HUB_PROXY_API_PORT', '8001')}"
c.ConfigurableHTTPProxy.command = [str(HERE / "node_modules" / ".bin" / "configurable-http-proxy")]
c.ConfigurableHTTPProxy.pid_file = str(STATE / "proxy.pid")
c.JupyterHub.db_url = f"sqlite:///{STATE / 'jupyterhub.sqlite'}"
c.JupyterHub.cookie_secret_file = str(STATE / "cookie_secret")
c.JupyterHub.pid_file = str(STATE / "jupyterhub.pid")
c.JupyterHub.cleanup_servers = True  # a stopped hub stops the students' servers (and their labs)

# ----------------------------------------------------------------- who may log in
auth = ENV("STDPKT_HUB_AUTH", "pam")
if auth == "dummy":
    if not ipaddress.ip_address(IP).is_loopback:
        raise SystemExit(f"STDPKT_HUB_AUTH=dummy accepts any password: refused on {IP} (loopback only)")
    c.JupyterHub.authenticator_class = "dummy"
elif auth == "pam":
    c.JupyterHub.authenticator_class = "pam"  # the students' Unix passwords
else:
    raise SystemExit(f"STDPKT_HUB_AUTH={auth!r}: expected pam or dummy")
users = {u.strip() for u in ENV("STDPKT_HUB_USERS", "").split(",") if u.strip()}
admins = {u.strip() for u in ENV("STDPKT_HUB_ADMINS", "").split(",") if u.strip()}
if users:
    c.Authenticator.allowed_users = users
elif auth == "pam":
    c.Authenticator.allow_existing_users = True  # those the admin adds in the hub's admin page
c.Authenticator.admin_users = admins
if ENV("STDPKT_HUB_ADMIN_TOKEN"):
    c.JupyterHub.services = [{"name": "stdpkt-admin", "api_token": ENV("STDPKT_HUB_ADMIN_TOKEN")}]
    c.JupyterHub.load_roles = [{"name": "admin", "services": ["stdpkt-admin"]}]

# ----------------------------------------------------------------- the students' servers
c.JupyterHub.spawner_class = "localprocess"  # setuid to the student (the hub runs as root)
c.Spawner.cmd = [str(VENV_BIN / "python"), str(HERE / "singleuser.py")]
c.Spawner.notebook_dir = "~"
c.Spawner.default_url = "/lab/tree/stdpkt-notebooks/01-quickstart.ipynb"
c.Spawner.start_timeout = 180  # a loaded machine
c.Spawner.http_timeout = 120
c.Spawner.environment = {
    "STDPKT_MAX_INSTANCES": ENV("STDPKT_MAX_INSTANCES", "8"),
    "STDPKT_MAX_MEM_MB": ENV("STDPKT_MAX_MEM_MB", "1536"),
    "STDPKT_RUNDIR": lambda spawner: str(RUN_BASE / spawner.user.name),
    "STDPKT_QUOTA_DIR": lambda spawner: str(RUN_BASE / spawner.user.name / ".quota"),
    "STDPKT_NOTEBOOKS": str(REPO / "notebooks"),
    "PATH": f"{VENV_BIN}:/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin",
    # the hub venv's JupyterLab (and the classroom-quiet settings in it), also from student-venv
    "JUPYTERLAB_DIR": str(HUB_PREFIX / "share" / "jupyter" / "lab"),
    "JUPYTER_PATH": str(HUB_PREFIX / "share" / "jupyter"),
    "JUPYTER_CONFIG_PATH": str(HUB_PREFIX / "etc" / "jupyter"),
}


def _private_base() -> None:
    """<base>: root's, 0711 (a student can enter their own directory, list none)."""
    try:
        RUN_BASE.mkdir(mode=0o711)
    except FileExistsError:
        pass
    st = RUN_BASE.lstat()
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != 0:
        raise RuntimeError(f"{RUN_BASE} (STDPKT_HUB_RUNDIR) exists and is not root's directory: remove it")
    os.chmod(RUN_BASE, 0o711)


def pre_spawn_hook(spawner) -> None:  # type: ignore[no-untyped-def]
    """Create the student's run directory (0700, theirs) before their server starts."""
    entry = pwd.getpwnam(spawner.user.name)  # KeyError: no such Unix account
    _private_base()
    mine = RUN_BASE / spawner.user.name
    try:
        mine.mkdir(mode=0o700)
        os.chown(mine, entry.pw_uid, entry.pw_gid)  # we made it, in a root-only directory: no race
    except FileExistsError:
        st = mine.lstat()
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != entry.pw_uid:
            raise RuntimeError(f"{mine} exists and is not {spawner.user.name}'s directory") from None
    os.chmod(mine, 0o700)


def post_stop_hook(spawner) -> None:  # type: ignore[no-untyped-def]
    """The server has stopped (its kernels and labs with it): remove the run directory."""
    shutil.rmtree(RUN_BASE / spawner.user.name, ignore_errors=True)  # rmtree does not follow symlinks


c.Spawner.pre_spawn_hook = pre_spawn_hook
c.Spawner.post_stop_hook = post_stop_hook
