"""The data path's scheduler slices (vpn/io/schedslice.py), asked of this machine's kernel:
the slice a thread gets, what it keeps (policy, nice), and what it does not hand down."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pytest

from vpn.endpoint.tuning import parse_slice
from vpn.io import schedslice
from vpn.io.schedslice import MAX_SLICE_US, MIN_SLICE_US

T = TypeVar("T")
# EEVDF takes a slice request from Linux 6.12 on; before, the kernel accepts and ignores it.
_RELEASE = tuple(int(part) for part in os.uname().release.split(".")[:2])
TAKES_SLICES = _RELEASE >= (6, 12)


def test_slices_parse() -> None:
    assert [parse_slice(t) for t in ("0", " 100 ", str(MAX_SLICE_US))] == [0, 100, MAX_SLICE_US]


@pytest.mark.parametrize(("text", "reason"), [("x", "not a number"), ("-1", "outside"),
                                              (str(MIN_SLICE_US - 1), "outside"),
                                              (str(MAX_SLICE_US + 1), "outside")])
def test_bad_slices_say_why(text: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        parse_slice(text)


def _in_a_thread(work: Callable[[], T]) -> T:
    """`work`'s result, run on a thread of its own (what it changes dies with the thread)."""
    results: list[T] = []
    thread = threading.Thread(target=lambda: results.append(work()))
    thread.start()
    thread.join()
    return results[0]


def _slice_ns() -> int:
    """The calling thread's slice as the scheduler shows it."""
    for line in Path("/proc/thread-self/sched").read_text().splitlines():
        if line.startswith("se.slice"):
            return int(line.split(":")[1])
    raise AssertionError("no se.slice in /proc/thread-self/sched")


def test_a_thread_gets_the_slice_it_asks_for_and_keeps_its_nice_value() -> None:
    def ask() -> tuple[int, int, int]:
        os.nice(3)  # this thread's own, in Linux
        return schedslice.request(250), _slice_ns(), os.nice(0)

    reported, seen, nice = _in_a_thread(ask)
    assert nice == os.nice(0) + 3
    if TAKES_SLICES:
        assert (reported, seen) == (250, 250_000)
    else:  # said, not skipped: this kernel keeps its default slice
        assert reported == 0, f"kernel {os.uname().release} reported a slice it cannot take"


def test_the_slice_is_not_handed_to_threads_it_starts() -> None:
    def ask_then_start() -> tuple[int, int]:
        schedslice.request(MIN_SLICE_US)
        return _slice_ns(), _in_a_thread(_slice_ns)

    default = _in_a_thread(_slice_ns)
    own, child = _in_a_thread(ask_then_start)
    assert child == default
    assert own == (MIN_SLICE_US * 1000 if TAKES_SLICES else default)


def test_a_thread_under_another_policy_is_left_alone() -> None:
    def idle_then_ask() -> tuple[int, int]:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
        return schedslice.request(MIN_SLICE_US), os.sched_getscheduler(0)

    assert _in_a_thread(idle_then_ask) == (0, os.SCHED_IDLE)
