"""The public surface: every name in __all__ exists, the library never exits or raises bare."""

from __future__ import annotations

import ast
import importlib
import pkgutil
from pathlib import Path

import pytest

import stdpkt_lab

PACKAGE = Path(stdpkt_lab.__file__).parent
MODULES = sorted(
    m.name for m in pkgutil.walk_packages([str(PACKAGE)], "stdpkt_lab.")
    if not m.name.startswith("stdpkt_lab.dashboard") and not m.name.endswith("._relay")
    # _bin holds the guest programs and the kernel's LD_PRELOAD shim (stdpkt-xstate.so,
    # which pkgutil takes for an extension module): no Python modules below it
    and not m.name.startswith("stdpkt_lab._bin.")
)


@pytest.mark.parametrize("name", MODULES)
def test_all_names_exist(name: str) -> None:
    module = importlib.import_module(name)
    for exported in getattr(module, "__all__", []):
        assert hasattr(module, exported), f"{name}.__all__ lists missing {exported!r}"


def _library_sources() -> list[Path]:
    return [p for p in PACKAGE.rglob("*.py") if p.name not in ("cli.py", "cli_lab.py")]  # command entry points


def test_library_never_exits_or_raises_bare_exception() -> None:
    offenders = []
    for path in _library_sources():
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                if node.func.attr == "exit" and getattr(node.func.value, "id", "") == "sys":
                    offenders.append(f"{path.name}:{node.lineno} sys.exit")
            if isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call):
                if getattr(node.exc.func, "id", "") == "Exception":
                    offenders.append(f"{path.name}:{node.lineno} raise Exception")
    assert not offenders, offenders


def test_library_spawns_with_argv_lists_only() -> None:
    for path in _library_sources():
        assert "shell=True" not in path.read_text(), path


def test_errors_share_one_root() -> None:
    from stdpkt_lab import errors

    for name in errors.__all__:
        assert issubclass(getattr(errors, name), errors.StdpktError)


def test_description_layer_starts_no_processes() -> None:
    for path in (PACKAGE / "describe").rglob("*.py"):
        assert "subprocess" not in path.read_text(), path
