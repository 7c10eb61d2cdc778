"""Busy-poll: after a wakeup's walk, poll the TUN and the socket for a short budget instead
of going straight back to the event loop, and walk at once what arrives meanwhile.

Why: in a ping-pong each packet is one wakeup, and an answer (the TUN's reply to what the
socket brought) often comes back within tens of microseconds: walking it from the spin
saves the epoll_wait, the sleep and the wakeup, as the kernel's SO_BUSY_POLL and DPDK's
poll-mode drivers do. (The vCPU halts it also saves were measured not to be the cost:
docs/architecture.md, "Busy-poll".) The spin yields the CPU between polls, so on a shared
core the packet's own sender runs first. The budget bounds the CPU an idle endpoint spends:
each wakeup spins at most the budget past its last packet, and the budget adapts
(vpn/io/pollbudget.py): it grows while the next packet comes a little after it and
shrinks, to 50 us, while packets come further apart than the configured cap, so a flow
too sparse to catch does not pay the whole cap for each spin that runs out. The loop
itself (timers, the management socket, handshakes' answers) runs again after every spin
that came back empty, and at the latest after HOLD_NS of walks.
"""

from __future__ import annotations

import os
import select
import time
from collections.abc import Callable

from vpn.io.pollbudget import AdaptiveBudget
from vpn.io.udp import NATIVE  # the same C module as the batch receive, the same choice

try:
    from vpn.io._udp import wait_readable as _native_wait_readable
except ImportError:  # not built: the Python twin below serves, as NATIVE says
    _native_wait_readable = None  # type: ignore[assignment]

BUSY_POLL_ENV = "VPN_BUSY_POLL"
# The cap, in microseconds, of each wakeup's poll past its last packet; 0 is off. 200 by
# measurement (docs/architecture.md, "Busy-poll"): long enough for a ping-pong's next packet
# from the peer, not only the local answer, to come within the spin, so neither end sleeps
# between round trips. Against 50, the idle ping-pong median was lower in 19 of 25 paired
# rounds on 2 shared cores (200 alone: 11 of 13, medians 0.88-0.94x). The budget under it
# adapts (pollbudget.py), so a flow a little sparser than the cap does not pay it whole:
# 1,000 pings a second cost 268 ms/s of CPU (both ends), against 648 with a fixed 200 and
# 245 with a fixed 50.
DEFAULT_BUSY_POLL_US = 200
MAX_BUSY_POLL_US = 10_000
# The longest one wakeup keeps walking and polling before the loop runs again (or the
# budget, if longer): what a timer or the management socket waits for at most, under load.
HOLD_NS = 1_000_000

TUN, UDP = 1, 2  # wait_readable's bits: its first descriptor, its second

WaitReadable = Callable[[int, int, int], int]


def wait_readable_python(fd_a: int, fd_b: int, budget_ns: int) -> int:
    """The twin of _udp.wait_readable: poll without sleeping, yielding the CPU between polls,
    until `fd_a` (bit 0) or `fd_b` (bit 1) is readable or has an error, or `budget_ns` have
    passed (0). A negative descriptor is left out."""
    poller = select.poll()
    bits = {}
    for fd, bit in ((fd_a, TUN), (fd_b, UDP)):
        if fd >= 0:
            poller.register(fd, select.POLLIN)
            bits[fd] = bit
    wanted = select.POLLIN | select.POLLERR | select.POLLHUP
    deadline = time.monotonic_ns() + budget_ns
    while True:
        ready = 0
        for fd, events in poller.poll(0):
            if events & wanted:
                ready |= bits[fd]
        if ready or time.monotonic_ns() >= deadline:
            return ready
        os.sched_yield()  # a task waiting for this CPU (the packet's sender) runs first


def wait_readable() -> WaitReadable:
    """The native busy-poll, or its Python twin where the module is not built or
    VPN_FAST_PATH=python."""
    if NATIVE.native and _native_wait_readable is not None:
        return _native_wait_readable
    return wait_readable_python


class BusyPoll:
    """The reader callbacks of the TUN and the socket, each walk followed by a bounded
    busy-poll of both descriptors. `fds` gives (tun, udp) as they are now, -1 for one not
    to poll (paused for backpressure, gone, or the interface stopping).

    The budget adapts (vpn/io/pollbudget.py), up to `budget_us`, one per descriptor last
    walked: what follows a TUN packet and what follows a socket's packet are different
    gaps. At 1,000 pings a second, the sender's spin after the ping it seals catches the
    answer a round trip later, while its spin after the answer would wait a millisecond
    for the next ping; one budget for both would swing between them."""

    def __init__(self, budget_us: int, walk_tun: Callable[[], None],
                 walk_udp: Callable[[], None], fds: Callable[[], tuple[int, int]], *,
                 wait: WaitReadable | None = None,
                 clock_ns: Callable[[], int] = time.monotonic_ns) -> None:
        self.cap_ns = budget_us * 1000
        self.hold_ns = max(HOLD_NS, self.cap_ns)
        self.walk_tun, self.walk_udp = walk_tun, walk_udp
        self.fds = fds
        self.wait = wait or wait_readable()
        self.clock_ns = clock_ns
        self.budgets = {TUN: AdaptiveBudget(self.cap_ns), UDP: AdaptiveBudget(self.cap_ns)}
        # The spin that came back empty, (its budget, when it began): the loop's next
        # wakeup says how much longer it would have had to poll.
        self._unanswered: tuple[AdaptiveBudget, int] | None = None
        self.caught = 0  # walks a spin led to: wakeups the loop did not need
        self.spins_empty = 0  # spins that ran out of budget

    def on_tun_readable(self) -> None:
        self._woken()
        self.walk_tun()
        self._spin(TUN)

    def on_udp_readable(self) -> None:
        self._woken()
        self.walk_udp()
        self._spin(UDP)

    def _woken(self) -> None:
        if self._unanswered is not None:
            budget, began = self._unanswered
            budget.observe(self.clock_ns() - began)
            self._unanswered = None

    def _spin(self, walked: int) -> None:
        """Poll both descriptors for up to the budget of the one `walked` last; walk whatever
        is ready and poll again, until a poll finds nothing or this wakeup has held the loop
        for hold_ns."""
        start = self.clock_ns()
        while True:
            tun_fd, udp_fd = self.fds()
            if tun_fd < 0 and udp_fd < 0:
                return
            budget = self.budgets[walked]
            began = self.clock_ns()
            ready = self.wait(tun_fd, udp_fd, budget.ns)
            if not ready:
                self.spins_empty += 1
                self._unanswered = (budget, began)
                return
            budget.observe(self.clock_ns() - began)
            if ready & TUN:
                self.caught += 1
                self.walk_tun()
                walked = TUN
            if ready & UDP:
                self.caught += 1
                self.walk_udp()
                walked = UDP
            if self.clock_ns() - start >= self.hold_ns:
                return
