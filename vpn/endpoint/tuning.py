"""The data path's knobs: worker threads, busy-poll, scheduler slices.

Config files stay wg-quick's, so each knob is a `vpn up` flag and an environment variable
(the only way to reach `vpn-userspace`, which wg-quick starts); the flag wins, and without
either the measured default holds.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from vpn.io.busypoll import BUSY_POLL_ENV, DEFAULT_BUSY_POLL_US, MAX_BUSY_POLL_US
from vpn.io.schedslice import DEFAULT_SLICE_US, MAX_SLICE_US, MIN_SLICE_US, SLICE_ENV
from vpn.io.sendworkers import DEFAULT_THREADS, MAX_THREADS, THREADS_ENV


def bounded(what: str, low: int, high: int, *, microseconds: bool = False,
            zero: str = "") -> Callable[[str], int]:
    """The parser of a knob's text: an integer in low..high (or 0, when `zero` says what 0
    means), else ValueError saying why, naming the knob as `what`."""
    unit = " us" if microseconds else ""

    def parse(text: str) -> int:
        try:
            value = int(text.strip())
        except ValueError:
            of = " of microseconds" if microseconds else ""
            raise ValueError(f"{what} {text!r} is not a number{of}") from None
        if not (low <= value <= high or (zero and value == 0)):
            also = f" (or 0: {zero})" if zero else ""
            raise ValueError(f"{what} {value} is outside {low}..{high}{unit}{also}")
        return value

    return parse


parse_threads = bounded("thread count", 0, MAX_THREADS)
parse_busy_poll = bounded("busy-poll budget", 0, MAX_BUSY_POLL_US, microseconds=True)
parse_slice = bounded("scheduler slice", MIN_SLICE_US, MAX_SLICE_US, microseconds=True,
                      zero="the kernel's default")


@dataclass(frozen=True)
class Tuning:
    """What `vpn up` and `vpn-userspace` hand the endpoint's runtime."""

    threads: int = DEFAULT_THREADS  # the data path's worker threads (0 or 1: none, inline)
    busy_poll_us: int = DEFAULT_BUSY_POLL_US  # each wakeup's busy-poll budget (0: off)
    slice_us: int = DEFAULT_SLICE_US  # the data path's scheduler slice (0: the kernel's)

    @classmethod
    def from_flags(cls, flags: Mapping[str, str | None]) -> Tuning:
        """From the flags given (FLAGS' names, value None when not given), else the
        environment, else the defaults; ValueError naming the flag or variable of a bad one."""
        return cls(**{field: _flag_or_env(flag, flags.get(flag), env, parse, default)
                      for field, (flag, env, parse, default) in FLAGS.items()})


# Tuning's field -> its flag, its environment variable, its parser, its default.
FLAGS: dict[str, tuple[str, str, Callable[[str], int], int]] = {
    "threads": ("--threads", THREADS_ENV, parse_threads, DEFAULT_THREADS),
    "busy_poll_us": ("--busy-poll", BUSY_POLL_ENV, parse_busy_poll, DEFAULT_BUSY_POLL_US),
    "slice_us": ("--sched-slice", SLICE_ENV, parse_slice, DEFAULT_SLICE_US),
}


def _flag_or_env(flag: str, given: str | None, env: str, parse: Callable[[str], int],
                 default: int) -> int:
    text, source = (given, flag) if given is not None else (os.environ.get(env), env)
    try:
        return parse(text) if text else default
    except ValueError as error:
        raise ValueError(f"{source}: {error}") from None


DEFAULTS = Tuning()
