#!/bin/bash
# Set up the class hub in this checkout (idempotent): the project venv (make setup), the
# hub's Python side (pyproject's [hub] extra: jupyterhub), configurable-http-proxy from npm
# into deploy/jupyterhub/node_modules (never global), and the classroom-quiet JupyterLab
# settings the students' servers read.  Needs Node >= 18 and npm (Debian: nodejs npm).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
venv=${STDPKT_HUB_VENV:-$repo/.venv}
py=$venv/bin/python
if [ ! -x "$py" ]; then make -C "$repo" setup; fi
if ! "$py" -c "import jupyterhub" 2>/dev/null; then
    # the [hub] extra's requirements, read from pyproject.toml (no rebuild of the C parts)
    mapfile -t reqs < <("$py" -c "import tomllib,sys; d=tomllib.load(open(sys.argv[1],'rb')); print('\n'.join(d['project']['optional-dependencies']['hub']))" "$repo/pyproject.toml")
    "$py" -m pip install -q "${reqs[@]}"
fi
if [ ! -x "$here/node_modules/.bin/configurable-http-proxy" ]; then
    command -v npm >/dev/null || { echo "setup.sh: npm is missing (apt-get install nodejs npm)" >&2; exit 2; }
    npm ci --prefix "$here" --no-audit --no-fund --loglevel=error
fi
sh "$repo/deploy/jupyterlab/install-settings.sh" "$venv"
# The students' servers run the project's Python as each student.  When other accounts cannot
# execute it (a pyenv or conda under /root, mode 0700), they get ./student-venv: a venv of the
# system Python of the same version that reuses the project's packages (a .pth file).
student=$here/student-venv
rm -f "$here/student-venv.used"
if [ "$(id -u)" = 0 ] && ! runuser -u nobody -- "$py" -c "import stdpkt_lab" >/dev/null 2>&1; then
    site=$("$py" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
    ver=$("$py" -c "import sys; print(f'{sys.version_info[0]}.{sys.version_info[1]}')")
    [ -x "/usr/bin/python$ver" ] || { echo "setup.sh: $py is not usable by the students and /usr/bin/python$ver is missing" >&2; exit 2; }
    [ -x "$student/bin/python" ] || "/usr/bin/python$ver" -m venv --without-pip "$student"
    echo "import site; site.addsitedir('$site')" > "$student/lib/python$ver/site-packages/stdpkt-project.pth"
    if ! out=$(runuser -u nobody -- "$student/bin/python" -c "import stdpkt_lab, jupyterhub" 2>&1); then
        echo "setup.sh: the checkout is not readable by other accounts, so the students cannot run it ($out)" >&2
        exit 3
    fi
    touch "$here/student-venv.used"
fi
echo "hub ready: sudo $here/run.sh  (JupyterHub $("$py" -c 'import jupyterhub; print(jupyterhub.__version__)'), proxy $("$here/node_modules/.bin/configurable-http-proxy" --version))"
