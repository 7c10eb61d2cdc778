"""The busy-poll's adaptive budget: how long the next spin may poll, from how long the next
packet took to come after the last ones. Pure: no clock, no descriptors; vpn/io/busypoll.py
measures the gaps and asks.

The rule is the kernel's haltpoll cpuidle governor's (guest_halt_poll_ns and its grow and
shrink parameters), applied to a packet instead of a vCPU's wakeup:
- the packet came within the budget (the spin caught it): the budget stays;
- it came later, but within the cap (a longer spin would have caught it): the budget
  doubles, to the cap at most;
- it came after the cap (no spin allowed would have caught it): the budget halves, to the
  floor at least.
Two changes (docs/architecture.md, "Busy-poll"): the budget shrinks only from the
SHRINK_AFTER-th gap past the cap in a row (in a ping-pong the next packet comes a round
trip later, near a 200 us cap, and on a busy machine one in several comes later than the
cap: halving at once would cost the next one a miss as well); and the floor is 50 us, not
0 (haltpoll's grow_start; measured: with 0 the ping-pong medians under an iperf3 stream
were above the fixed budget's, with 50 us they were not).
So a ping-pong whose next packet comes within the cap has its spins grow to catch it, and a
flow whose packets come further apart than the cap (a steady 1,000 a second against a
200 us cap) has them shrink to the floor instead of paying the whole budget each time.
"""

from __future__ import annotations

FLOOR_NS = 50_000  # the least budget (or the cap, if less): haltpoll's grow_start default
GROW = 2  # haltpoll's guest_halt_poll_grow default
SHRINK = 2  # haltpoll's guest_halt_poll_shrink default
SHRINK_AFTER = 3  # gaps past the cap in a row before the budget shrinks


class AdaptiveBudget:
    """One spin's budget, within [floor_ns, cap_ns], starting at the cap (a new endpoint
    behaves as a fixed budget until the gaps say otherwise)."""

    def __init__(self, cap_ns: int) -> None:
        self.cap_ns = cap_ns
        self.floor_ns = min(FLOOR_NS, cap_ns)
        self.ns = cap_ns
        self.late = 0  # gaps past the cap in a row

    def observe(self, gap_ns: int) -> None:
        """The next packet came `gap_ns` after the spin began (caught or not)."""
        if gap_ns > self.cap_ns:
            self.late += 1
            if self.late >= SHRINK_AFTER:
                self.ns = max(self.floor_ns, self.ns // SHRINK)
            return
        self.late = 0
        if gap_ns > self.ns:
            self.ns = min(self.cap_ns, self.ns * GROW)
