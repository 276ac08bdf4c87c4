"""A student's single-user server, started by the hub as that student (after setuid).

Before it becomes ``jupyterhub-singleuser`` it makes the student's home private
(0700: notebooks, saved pcaps, logs; Debian's useradd makes it 0755) and gives
them their own copy of the notebooks in ``~/stdpkt-notebooks`` (once; later edits
are theirs; the ``*-solutions`` notebooks are the teacher's and are not copied).
The umask stays 022: with 077 the guest cannot read the hosts file the engine
writes into the (already 0700) run directory, and name resolution in the lab fails.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

home = Path(os.path.expanduser("~"))
if home.is_dir() and not home.is_symlink() and home.stat().st_uid == os.getuid():
    home.chmod(0o700)
source = os.environ.get("STDPKT_NOTEBOOKS")
target = home / "stdpkt-notebooks"
if source and Path(source).is_dir() and not target.exists():
    shutil.copytree(source, target, ignore=shutil.ignore_patterns(".ipynb_checkpoints", "*-solutions*"))
os.execv(sys.executable, [sys.executable, "-m", "jupyterhub.singleuser", *sys.argv[1:]])
