"""The protocol timers on the event loop: one wakeup, at the core's next deadline."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

# This much later than a deadline at most is not worth a second wakeup (the protocol's
# timers are seconds-scale, their jitter 1/3 s).
TIMER_SLACK = 0.02
# The watchdog's liveness check fails when the protocol timers are this late: the loop
# still wakes for the keep-alive, but the data path's own work no longer runs.
TIMERS_LATE = 5.0


class Timers:
    """Calls `tick()` at each deadline `arm` is given; `tick` returns the next one."""

    def __init__(self, clock: Callable[[], float], tick: Callable[[], float]) -> None:
        self.clock = clock
        self._tick = tick
        self._handle: asyncio.TimerHandle | None = None
        self._at = float("inf")

    def arm(self, deadline: float) -> None:
        """Wake at `deadline` (the core calls this when a timer is armed earlier than any
        before it), unless a wakeup is due about then anyway."""
        if deadline == float("inf") or deadline >= self._at - TIMER_SLACK:
            return
        if self._handle is not None:
            self._handle.cancel()
        self._at = deadline
        delay = max(0.0, deadline - self.clock())
        self._handle = asyncio.get_running_loop().call_later(delay, self._fire)

    def _fire(self) -> None:
        self._handle, self._at = None, float("inf")
        self.arm(self._tick())

    def cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def on_time(self) -> bool:
        """Whether the wakeup due (if any) is not badly late: the loop still runs them."""
        return self.clock() - self._at < TIMERS_LATE
