"""`vpn up`'s return to the shell: the parent's answer is the child's readiness or exit."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from vpn.host.background import run_in_background


def test_ready_returns_0_while_the_child_serves_on(tmp_path: Path) -> None:
    flag = tmp_path / "still-serving"

    def serve(ready: Callable[[], None]) -> int:
        ready()
        time.sleep(0.2)  # the parent must not wait for this
        flag.write_text(str(os.getsid(0) == os.getpid()))  # detached: its own session
        return 0

    started = time.monotonic()
    assert run_in_background(serve) == 0
    assert time.monotonic() - started < 0.2 and not flag.exists()
    deadline = time.monotonic() + 10
    while not flag.exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert flag.read_text() == "True"


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
