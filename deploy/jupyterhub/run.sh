#!/bin/bash
# Start the class hub (as root: it starts each student's server as that student).
# Settings are environment variables: see jupyterhub_config.py and README.md.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
venv=${STDPKT_HUB_VENV:-$(cd "$here/../.." && pwd)/.venv}
[ "$(id -u)" = 0 ] || { echo "run.sh: the hub must run as root (it switches to each student's account)" >&2; exit 2; }
bash "$here/setup.sh" >/dev/null
cd "${STDPKT_HUB_STATE:-$here/state}" 2>/dev/null || { mkdir -p -m 0700 "$here/state" && cd "$here/state"; }
exec "$venv/bin/jupyterhub" -f "$here/jupyterhub_config.py" "$@"
