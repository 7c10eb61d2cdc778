"""scripts/apt.sh against the real apt-get: a held dpkg lock is waited for, not failed on.

A fresh Debian machine runs unattended-upgrades at boot; bootstrap.sh must wait for it. The
lock is held here by a process of our own (apt and dpkg take it with fcntl), and apt-get
check (which takes the lock and changes nothing) is what waits.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LOCK = "/var/lib/dpkg/lock-frontend"

# Holds the lock until its standard input closes.
HOLDER = """
import fcntl, sys
with open(sys.argv[1], "w") as lock:
    fcntl.lockf(lock, fcntl.LOCK_EX)
    print("held", flush=True)
    sys.stdin.read()
"""


def _require_apt() -> None:
    reason = None
    if os.geteuid() != 0:
        reason = "needs root (apt's lock)"
    elif shutil.which("apt-get") is None or not Path(LOCK).parent.is_dir():
        reason = "needs apt-get and dpkg"
    if reason and os.environ.get("CI"):
        pytest.fail(f"bootstrap test cannot run in CI: {reason}")
    if reason:
        pytest.skip(f"BOOTSTRAP TEST NOT RUN: {reason}")


@pytest.fixture
def held_lock() -> Iterator[subprocess.Popen[str]]:
    _require_apt()
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, LOCK],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        yield holder
    finally:
        if holder.poll() is None:
            holder.kill()
        holder.wait()


def _apt_get(*args: str, wait: str = "600") -> subprocess.Popen[str]:
    return subprocess.Popen(
        ["bash", "-c", '. scripts/apt.sh; apt_get "$@"', "bootstrap.sh", *args],
        cwd=ROOT, env={**os.environ, "APT_LOCK_WAIT": wait},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def test_a_held_lock_is_waited_for_and_named(held_lock: subprocess.Popen[str]) -> None:
    apt = _apt_get("check")
    assert apt.stderr is not None
    told = apt.stderr.readline()
    assert "waiting up to 600s for apt's lock" in told
    assert f"held by process {held_lock.pid}" in told
    assert apt.poll() is None, "apt_get gave up while the lock was held"
    assert held_lock.stdin is not None
    held_lock.stdin.close()  # the other process finishes and lets go of the lock
    rest = apt.stderr.read()
    assert apt.wait() == 0, told + rest
    assert "apt's lock is free, going on" in rest


def test_the_wait_is_bounded_and_says_what_to_do(held_lock: subprocess.Popen[str]) -> None:
    apt = _apt_get("check", wait="0")
    _, err = apt.communicate()
    assert apt.returncode == 1
    assert f"still held by process {held_lock.pid}" in err
    assert "set APT_LOCK_WAIT" in err


def test_other_failures_are_not_waited_on() -> None:
    _require_apt()
    apt = _apt_get("no-such-apt-command")
    _, err = apt.communicate()
    assert apt.returncode == 1
    assert "waiting" not in err
    assert "no-such-apt-command" in err
