"""cffi builder (API, out-of-line mode) of ``stdpkt_lab.relay._relay``.

Used by setup.py as ``cffi_modules=["stdpkt_lab/relay/_build_relay.py:ffibuilder"]``.
Run as a script to build the extension in place, next to this file::

    python stdpkt_lab/relay/_build_relay.py

The declarations come from the block between the ``cdef`` markers of relay.h,
so the header is the one place they are written.  Every ``*.c`` file of this
directory is compiled in (they link together; none has a ``main()``).
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

from cffi import FFI

HERE = Path(__file__).resolve().parent
MODULE = "stdpkt_lab.relay._relay"


def _cdef_text() -> str:
    header = (HERE / "relay.h").read_text()
    begin = header.index("/* ---- cdef begin ---- */")
    end = header.index("/* ---- cdef end ---- */")
    return header[begin:end].split("\n", 1)[1]


def make_ffibuilder(*, absolute: bool = False) -> FFI:
    """The builder; setup.py (run from the project root) wants relative paths, while
    compile(tmpdir=...) changes directory and so needs absolute ones."""

    def path(p: Path) -> str:
        return str(p) if absolute else os.path.relpath(p)

    builder = FFI()
    builder.cdef(_cdef_text())
    builder.set_source(
        MODULE,
        '#include "relay.h"',
        sources=[path(p) for p in sorted(HERE.glob("*.c"))],
        include_dirs=[path(HERE)],
        extra_compile_args=["-O2", "-pthread", "-std=gnu11", "-Wall"],
        extra_link_args=["-pthread"],
    )
    return builder


ffibuilder = make_ffibuilder()


def build_in_place(verbose: bool = False) -> Path:
    """Compile the extension into the package directory; returns its path.

    The file is named ``_relay.abi3.so``, as setup.py's build names it (cffi defines
    Py_LIMITED_API), and other builds of the module there are removed: Python prefers
    ``_relay.cpython-3XX-*.so`` to ``_relay.abi3.so``, so a stale one would shadow it."""
    with tempfile.TemporaryDirectory(prefix="relay-build-") as tmp:
        built = Path(make_ffibuilder(absolute=True).compile(tmpdir=tmp, verbose=verbose))
        target = HERE / "_relay.abi3.so"
        partial = target.with_name(target.name + ".tmp")
        shutil.copy2(built, partial)
        os.replace(partial, target)  # a running process keeps its mapping of the old file
    for other in HERE.glob("_relay.*.so"):
        if other != target:
            other.unlink()
    return target


if __name__ == "__main__":
    print(build_in_place(verbose="-v" in sys.argv[1:]))
