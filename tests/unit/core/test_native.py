"""The one twin rule (vpn/core/native.py): how a module picks its C twin or its Python
reference, and that every C module is picked that way and read by the start log's summary
(vpn/io/native.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from vpn.core import native
from vpn.io.native import fast_path, twins

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture
def fresh(monkeypatch: pytest.MonkeyPatch) -> list[native.Twin]:
    """A TWINS of the test's own, so the calls below do not join the process's."""
    registry: list[native.Twin] = []
    monkeypatch.setattr(native, "TWINS", registry)
    return registry


def test_a_built_module_runs(fresh: list[native.Twin],
                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(native, "PYTHON_FORCED", False)
    choice = native.twin("GSO split")
    assert (choice.native, choice.path, choice.built, choice.reason) == (
        True, "native", True, "")
    assert fresh == [choice]


def test_a_missing_module_leaves_the_reference_and_says_why(
        fresh: list[native.Twin], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(native, "PYTHON_FORCED", False)
    choice = native.twin("GSO split", ImportError("no module named _gso"))
    assert (choice.path, choice.built) == ("python", False)
    assert choice.reason == "native GSO split not available (no module named _gso)"


def test_vpn_fast_path_python_forces_the_reference(
        fresh: list[native.Twin], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(native, "PYTHON_FORCED", True)
    for missing in (None, ImportError("gone")):
        choice = native.twin("GRO coalescer", missing)
        assert choice.path == "python" and choice.reason == "VPN_FAST_PATH=python"
        assert choice.built is (missing is None)


def test_every_c_module_is_picked_by_the_rule_and_summed_up() -> None:
    """One Twin per C extension of the package (a PyInit_ in a .c file), each its module's
    NATIVE, every one in TWINS, and the summary reads exactly those."""
    extensions = [p for p in (ROOT / "vpn").rglob("_*.c") if "PyInit_" in p.read_text()]
    summed = twins()
    assert len(summed) == len(extensions) == 6
    assert all(any(t is s for t in native.TWINS) for s in summed)
    assert len({s.what for s in summed}) == len(summed)
    path, text = fast_path()
    if native.PYTHON_FORCED:
        assert (path, text) == ("python", "python (VPN_FAST_PATH=python)")
    else:
        assert path == ("native" if all(s.native for s in summed) else "python")
        assert all(s.reason in text for s in summed)
