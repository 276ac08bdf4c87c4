"""Build steps setuptools cannot express in pyproject.toml alone.

* the cffi relay extension (stdpkt_lab/relay/_build_relay.py);
* the guest-side programs from lkl/: stdpkt-launch (confines the kernel
  process), stdpkt-agent and stdpkt-init (static: run inside every guest), plus the guest
  init and boot profile, copied into stdpkt_lab/_bin/ so an installed package
  carries them.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from setuptools import setup
from setuptools.command.build_ext import build_ext

HERE = Path(__file__).resolve().parent
PROGRAMS = {
    # name: (source, extra flags)
    "stdpkt-launch": ("lkl/launch.c", []),
    "stdpkt-agent": ("lkl/agent.c", ["-static"]),
    "stdpkt-init": ("lkl/init.c", ["-static"]),  # the fast guest init (init.sh's twin)
    # preloaded into linux.uml on hosts with a large XSAVE area (AVX-512, AMX): see the source
    "stdpkt-xstate.so": ("lkl/xstate-shim.c", ["-shared", "-fPIC", "-ldl"]),
}
DATA = ["lkl/init.sh", "lkl/boot-profile"]


class BuildWithGuestPrograms(build_ext):
    def run(self) -> None:
        super().run()
        target = (HERE if self.inplace else Path(self.build_lib)) / "stdpkt_lab" / "_bin"
        target.mkdir(parents=True, exist_ok=True)
        cc = shutil.which("cc") or shutil.which("gcc")
        if cc is None:
            raise SystemExit("stdpkt-lab needs a C compiler (apt-get install build-essential)")
        for name, (source, flags) in PROGRAMS.items():
            cmd = [cc, "-O2", "-Wall", "-o", str(target / name), str(HERE / source), *flags]
            print(" ".join(cmd))
            subprocess.run(cmd, check=True)
        for item in DATA:
            shutil.copy2(HERE / item, target / Path(item).name)


setup(
    cffi_modules=["stdpkt_lab/relay/_build_relay.py:ffibuilder"],
    cmdclass={"build_ext": BuildWithGuestPrograms},
)
