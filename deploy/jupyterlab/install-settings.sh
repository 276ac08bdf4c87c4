#!/bin/sh
# Classroom-quiet JupyterLab: install stdpkt-lab's settings into a Python prefix (a venv,
# Binder's /srv/conda/envs/notebook, the hub's venv).  Idempotent; used by `make lab`,
# binder/postBuild and deploy/jupyterhub/setup.sh.
#   overrides.json             -> PREFIX/share/jupyter/lab/settings/overrides.d/stdpkt-lab.json
#                                 (defaults for every user: no "get Jupyter news?" prompt, no
#                                 update check, no extension manager)
#   jupyter_server_config.json -> PREFIX/etc/jupyter/jupyter_server_config.d/stdpkt-lab.json
#                                 (the server neither fetches news nor checks for updates)
# A user's own choices in ~/.jupyter/lab/user-settings still win.
set -eu
prefix=${1:?usage: install-settings.sh PREFIX (e.g. .venv, or python -c "import sys; print(sys.prefix)")}
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$prefix/share/jupyter/lab/settings/overrides.d" "$prefix/etc/jupyter/jupyter_server_config.d"
cp "$here/overrides.json" "$prefix/share/jupyter/lab/settings/overrides.d/stdpkt-lab.json"
cp "$here/jupyter_server_config.json" "$prefix/etc/jupyter/jupyter_server_config.d/stdpkt-lab.json"
