"""The busy-poll's adaptive budget: how long the next spin may poll, from how long the next
packet took to come after the last ones. Pure: no clock, no descriptors; vpn/io/busypoll.py
measures the gaps and asks.

The rule is the kernel's haltpoll cpuidle governor's (guest_halt_poll_ns and its grow,
shrink and grow_start parameters), applied to a packet instead of a vCPU's wakeup:
- the packet came within the budget (the spin caught it): the budget stays;
- it came later, but within the cap (a longer spin would have caught it): the budget
  doubles, from GROW_START_NS at least, to the cap at most;
- it came after the cap (no spin allowed would have caught it): the budget halves, and
  below GROW_START_NS it is the floor, 0: the spin then costs one poll.
One change, by measurement (docs/architecture.md, "Busy-poll"): the budget shrinks only
from the SHRINK_AFTER-th gap past the cap in a row. In a ping-pong the next packet comes
a round trip later, near a 200 us cap, and on a busy machine one in several comes later
than the cap; halving at once cost the next one a miss as well.
So a ping-pong whose next packet comes within the cap has its spins grow to catch it, and a
flow whose packets come further apart than the cap (a steady 1,000 a second against a
200 us cap) has them shrink to nothing instead of paying the whole budget each time.
"""

from __future__ import annotations

GROW_START_NS = 50_000  # haltpoll's guest_halt_poll_grow_start default
GROW = 2  # haltpoll's guest_halt_poll_grow default
SHRINK = 2  # haltpoll's guest_halt_poll_shrink default
SHRINK_AFTER = 3  # gaps past the cap in a row before the budget shrinks
FLOOR_NS = 0


def grown(budget_ns: int, cap_ns: int) -> int:
    """The budget after a packet came past it but within the cap."""
    return min(cap_ns, max(budget_ns * GROW, GROW_START_NS))


def shrunk(budget_ns: int, cap_ns: int) -> int:
    """The budget after packets came past the cap: halved, or the floor below the least
    budget it grows to."""
    half = budget_ns // SHRINK
    return half if half >= min(GROW_START_NS, cap_ns) else FLOOR_NS


class AdaptiveBudget:
    """One spin's budget, within [FLOOR_NS, cap_ns], starting at the cap (a new endpoint
    behaves as a fixed budget until the gaps say otherwise)."""

    def __init__(self, cap_ns: int) -> None:
        self.cap_ns = cap_ns
        self.ns = cap_ns
        self.late = 0  # gaps past the cap in a row

    def observe(self, gap_ns: int) -> None:
        """The next packet came `gap_ns` after the spin began (caught or not)."""
        if gap_ns > self.cap_ns:
            self.late += 1
            if self.late >= SHRINK_AFTER:
                self.ns = shrunk(self.ns, self.cap_ns)
            return
        self.late = 0
        if gap_ns > self.ns:
            self.ns = grown(self.ns, self.cap_ns)
