"""`vpn up`'s return to the shell: the parent's answer is the child's readiness or exit."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from vpn.host.background import run_in_background


def _wait_for(path: Path, seconds: float = 30) -> bool:
    deadline = time.monotonic() + seconds
    while not path.exists():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def test_ready_returns_0_while_the_child_serves_on(tmp_path: Path) -> None:
    go, flag = tmp_path / "parent-returned", tmp_path / "still-serving"

    def serve(ready: Callable[[], None]) -> int:
        ready()
        # Serving on until the parent has returned: a parent that waited for the child
        # would never see this file appear, and the child would give up.
        returned_first = _wait_for(go)
        # Written whole, then named: the parent waits for the name and reads at once.
        partial = flag.with_suffix(".partial")
        partial.write_text(f"{returned_first} {os.getsid(0) == os.getpid()}")
        partial.rename(flag)
        return 0

    assert run_in_background(serve) == 0
    go.touch()
    assert _wait_for(flag) and flag.read_text() == "True True"  # and in its own session


def test_keep_output_leaves_the_callers_stdout(capfd: pytest.CaptureFixture[str],
                                               tmp_path: Path) -> None:
    done = tmp_path / "done"

    def serve(ready: Callable[[], None]) -> int:
        ready()
        print("after ready", flush=True)
        done.touch()
        return 0

    assert run_in_background(serve, keep_output=True) == 0
    assert _wait_for(done)
    assert "after ready" in capfd.readouterr().out


def test_a_child_that_fails_first_gives_its_status() -> None:
    assert run_in_background(lambda ready: 2) == 2


def test_a_crash_is_status_1_with_its_traceback(capfd: pytest.CaptureFixture[str]) -> None:
    def serve(ready: Callable[[], None]) -> int:
        raise RuntimeError("a bug")

    assert run_in_background(serve) == 1
    assert "RuntimeError: a bug" in capfd.readouterr().err


def test_a_killed_child_is_128_plus_the_signal() -> None:
    def serve(ready: Callable[[], None]) -> int:
        os.kill(os.getpid(), signal.SIGKILL)
        return 0

    assert run_in_background(serve) == 128 + signal.SIGKILL
