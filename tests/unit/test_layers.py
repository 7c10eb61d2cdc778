"""The tree's layers, checked: which package may import which (docs/architecture.md), that
the core does no I/O, that tools stay out of the installed package, and module size."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# Layer -> the vpn packages it may import (itself included). The endpoint ties the four
# below it together; serving runs one as a process; cli and userspace, the two commands on
# top, may import everything.
ALLOWED = {
    "vpn.core": ("vpn.core",),
    "vpn.io": ("vpn.io", "vpn.core"),
    "vpn.host": ("vpn.host", "vpn.core.types"),
    "vpn.control": ("vpn.control", "vpn.core"),
    "vpn.endpoint": ("vpn.endpoint", "vpn.core", "vpn.io", "vpn.host", "vpn.control"),
    "vpn.serving": ("vpn.serving", "vpn.endpoint", "vpn.host"),
}
# Inside the endpoint: the lifecycle (open, start, stop, release) sits on the runtime and
# management (what runs on the started interface, and what changes it), which never start
# or stop anything; both share the errors and the config loading.
ENDPOINT_LAYERS = {
    "vpn.endpoint.errors": "shared",
    "vpn.endpoint.loading": "shared",
    "vpn.endpoint.tuning": "shared",
    "vpn.endpoint.timers": "runtime",
    "vpn.endpoint.peer_events": "runtime",
    "vpn.endpoint.runtime": "runtime",
    "vpn.endpoint.management": "runtime",
    "vpn.endpoint.interface": "lifecycle",
    "vpn.endpoint.lifecycle": "lifecycle",
}
ENDPOINT_MAY_IMPORT = {
    "shared": ("shared",),
    "runtime": ("shared", "runtime"),
    "lifecycle": ("shared", "runtime", "lifecycle"),
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
        return  # vpn.cli, vpn.userspace: the top
    # `from vpn.core import keys` names the package vpn.core itself; that is allowed.
    wrong = {m for m in ours if not _within(m, ALLOWED[layer]) and m not in ("vpn",)}
    assert not wrong, f"{name} ({layer}) may not import {sorted(wrong)}"


@pytest.mark.parametrize("path", _python_files("vpn/endpoint"), ids=lambda p: _module_name(p))
def test_the_endpoints_runtime_never_reaches_up_into_its_lifecycle(path: Path) -> None:
    name = _module_name(path)
    if name == "vpn.endpoint":
        return  # the package: it names what the library uses
    assert name in ENDPOINT_LAYERS, f"{name}: add it to ENDPOINT_LAYERS"
    may = ENDPOINT_MAY_IMPORT[ENDPOINT_LAYERS[name]]
    siblings = {m for m in _imports(path) if m in ENDPOINT_LAYERS or m == "vpn.endpoint"}
    wrong = {m for m in siblings if ENDPOINT_LAYERS.get(m) not in may}
    assert not wrong, f"{name} ({ENDPOINT_LAYERS[name]}) may not import {sorted(wrong)}"


@pytest.mark.parametrize("path", _python_files("vpn"), ids=lambda p: _module_name(p))
def test_no_module_imports_another_packages_private_name(path: Path) -> None:
    """A private name (`_serve`) stays in its package; what others need is made public
    where it belongs. A package's own private modules (its native `_udp`) are its own."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]

    def owner(module: str) -> str | None:  # the package a private part belongs to
        parts = module.split(".")
        return next((".".join(parts[:i]) for i, part in enumerate(parts)
                     if part.startswith("_") and not part.startswith("__")), None)

    private = {m for m in _imports(path) if _within(m, ("vpn",))
               and owner(m) not in (None, package)}
    assert not private, f"{name} imports {sorted(private)}"


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


# ---- the C modules: the same rules, read from their #include lines ----

_INCLUDE = re.compile(r'^\s*#\s*include\s*[<"]([^>"]+)[>"]', re.M)
# Headers that hold WireGuard protocol facts (message types and sizes, the record layout,
# the replay window, the transport key): only the core's modules may include them.
PROTOCOL_HEADERS = {"wire.h", "replay.h", "transport.h"}
# The core is sans-I/O in C too: no sockets, descriptors or ioctls.
CORE_FORBIDDEN_C = ("sys/socket.h", "sys/ioctl.h", "unistd.h", "fcntl.h", "poll.h",
                    "sys/uio.h", "netinet/", "linux/")


def _c_files(*folders: str) -> list[Path]:
    return sorted(p for folder in folders for p in (ROOT / folder).rglob("*")
                  if p.suffix in (".c", ".h"))


def _c_id(path: Path) -> str:
    return str(path.relative_to(ROOT))


def _c_includes(path: Path) -> set[str]:
    return set(_INCLUDE.findall(path.read_text()))


@pytest.mark.parametrize("path", _c_files("vpn"), ids=_c_id)
def test_no_c_file_is_over_600_lines(path: Path) -> None:
    assert len(path.read_text().splitlines()) <= MAX_LINES


@pytest.mark.parametrize("path", _c_files("vpn/io"), ids=_c_id)
def test_the_io_c_files_include_no_protocol_header(path: Path) -> None:
    """vpn/io/_udp.c screens datagrams through a DatagramScreen (screen.h) without knowing
    they are WireGuard's; the screen itself is the core's (_screen.c)."""
    protocol = {h for h in _c_includes(path) if Path(h).name in PROTOCOL_HEADERS}
    assert not protocol, f"{_c_id(path)} includes {sorted(protocol)}: the core's facts"


@pytest.mark.parametrize("path", _c_files("vpn/core"), ids=_c_id)
def test_the_core_c_files_do_no_io(path: Path) -> None:
    used = {h for h in _c_includes(path) if h.startswith(CORE_FORBIDDEN_C)}
    assert not used, f"{_c_id(path)} includes {sorted(used)}"


def test_the_c_checks_see_the_c_files() -> None:
    """The globs above find the modules (a moved tree must not pass by finding nothing)."""
    names = {p.name for p in _c_files("vpn")}
    assert {"_transport.c", "_gro.c", "_gso.c", "_screen.c", "_udp.c", "wire.h"} <= names
    assert "vpn/io/_udp.c" in {_c_id(p) for p in _c_files("vpn/io")}
