"""The tree's layers, checked: which package may import which (docs/architecture.md), that
the core does no I/O, that tools stay out of the installed package, and module size."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# Layer -> the vpn packages it may import (itself included). endpoint and cli, on top, may
# import everything.
ALLOWED = {
    "vpn.core": ("vpn.core",),
    "vpn.io": ("vpn.io", "vpn.core"),
    "vpn.host": ("vpn.host", "vpn.core.types"),
    "vpn.control": ("vpn.control", "vpn.core"),
}
# The core is sans-I/O: no sockets, event loops, processes or netlink.
CORE_FORBIDDEN = ("socket", "asyncio", "select", "selectors", "fcntl", "subprocess",
                  "uvloop", "pyroute2", "vpn.io", "vpn.host", "vpn.control")
MAX_LINES = 600


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    """Every module `path` imports, relative imports resolved."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return found


def _python_files(*folders: str) -> list[Path]:
    return sorted(p for folder in folders for p in (ROOT / folder).rglob("*.py"))


def _within(module: str, packages: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in packages)


@pytest.mark.parametrize("path", _python_files("vpn"), ids=lambda p: _module_name(p))
def test_each_layer_imports_only_what_it_may(path: Path) -> None:
    name = _module_name(path)
    layer = next((layer for layer in ALLOWED if _within(name, (layer,))), None)
    ours = {m for m in _imports(path) if _within(m, ("vpn", "lab", "tests", "bench"))}
    assert not {m for m in ours if not _within(m, ("vpn",))}, f"{name} imports a tool"
    if layer is None:
        return  # vpn.endpoint, vpn.cli: the top
    # `from vpn.core import keys` names the package vpn.core itself; that is allowed.
    wrong = {m for m in ours if not _within(m, ALLOWED[layer]) and m not in ("vpn",)}
    assert not wrong, f"{name} ({layer}) may not import {sorted(wrong)}"


@pytest.mark.parametrize("path", _python_files("vpn/core"), ids=lambda p: _module_name(p))
def test_the_core_does_no_io(path: Path) -> None:
    used = {m for m in _imports(path) if _within(m, CORE_FORBIDDEN)}
    assert not used, f"{_module_name(path)} imports {sorted(used)}"


def test_tools_do_not_lean_on_the_tests() -> None:
    """bench/, scripts/ and lab/ share lab/, never a test module."""
    leaning = {str(p.relative_to(ROOT)): sorted(m for m in _imports(p) if _within(m, ("tests",)))
               for p in _python_files("bench", "scripts", "lab", "examples")}
    assert {p: m for p, m in leaning.items() if m} == {}


@pytest.mark.parametrize("path", _python_files("vpn", "lab"), ids=lambda p: _module_name(p))
def test_no_module_is_over_600_lines(path: Path) -> None:
    assert len(path.read_text().splitlines()) <= MAX_LINES
