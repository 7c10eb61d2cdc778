"""Which peers have a timer due: a heap of deadlines, so a timer wakeup costs the peers whose
deadline passed, not every configured peer (a hub with 10,000 idle peers wakes often).

Entries are hints, reconciled with the peer's own timers when they come due: a deadline
cleared or moved later leaves a stale entry, which pops early and finds nothing to run; the
caller then schedules the peer's real next deadline. Only an earlier deadline is pushed, so
each key has at most one live entry, and stale ones are swept when they outnumber the live.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)

_SWEEP_SLACK = 64  # stale entries tolerated beyond the live ones before a rebuild


class Deadlines(Generic[K]):
    """The earliest known deadline of each key, in a heap."""

    __slots__ = ("_heap", "_live", "_order")

    def __init__(self) -> None:
        # (deadline, order, key): order breaks ties, so keys are never compared.
        self._heap: list[tuple[float, int, K]] = []
        self._live: dict[K, float] = {}  # the deadline of each key's live entry
        self._order = itertools.count()

    def __len__(self) -> int:
        return len(self._live)

    def __repr__(self) -> str:
        return f"Deadlines(live={len(self._live)}, entries={len(self._heap)})"

    def schedule(self, key: K, deadline: float) -> None:
        """`key` has something due at `deadline` (a later one than known changes nothing:
        the earlier entry pops first and the caller reschedules)."""
        if deadline < self._live.get(key, float("inf")):
            self._live[key] = deadline
            heapq.heappush(self._heap, (deadline, next(self._order), key))
            if len(self._heap) > 2 * len(self._live) + _SWEEP_SLACK:
                self._sweep()

    def forget(self, key: K) -> None:
        self._live.pop(key, None)

    def due(self, now: float) -> list[K]:
        """The keys whose live deadline is at or before `now`, earliest first; they are no
        longer scheduled (schedule each again with its next deadline)."""
        out: list[K] = []
        heap, live = self._heap, self._live
        while heap and heap[0][0] <= now:
            deadline, _, key = heapq.heappop(heap)
            if live.get(key) == deadline:
                del live[key]
                out.append(key)
        return out

    def earliest(self) -> float:
        """The next live deadline (inf: none)."""
        heap, live = self._heap, self._live
        while heap and live.get(heap[0][2]) != heap[0][0]:
            heapq.heappop(heap)  # stale: its key was forgotten, popped or moved earlier
        return heap[0][0] if heap else float("inf")

    def _sweep(self) -> None:
        self._heap = [(d, next(self._order), k) for k, d in self._live.items()]
        heapq.heapify(self._heap)
