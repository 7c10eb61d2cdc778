"""A bounded pool of buffers that outlive their wakeup, with the reader's backpressure: both
walks on worker threads hand a wakeup's buffers to jobs (the send walk's TUN read slots, the
receive walk's receive buffers) and must not read more than the pool holds.

`take` runs on the loop thread, `give_back` on any. When none is free the reader stops
watching its file descriptor (`pause`, counted as `backpressure`) until one comes back
(`resume`, on the loop thread through `call_soon_threadsafe`): the kernel's queue holds
what arrives meanwhile, nothing read is dropped and the loop never waits.
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Callable, Iterable
from typing import Generic, TypeVar

T = TypeVar("T")


class PausingPool(Generic[T]):
    def __init__(self, items: Iterable[T],
                 call_soon_threadsafe: Callable[[Callable[[], None]], object] | None) -> None:
        self._free: collections.deque[T] = collections.deque(items)
        self.count = len(self._free)
        self._lock = threading.Lock()  # _free and _paused, between the loop and the workers
        self._paused = False
        self._call_soon_threadsafe = call_soon_threadsafe
        self.backpressure = 0  # wakeups that found none free
        # The shell's hooks: stop and start watching the reader's fd (on the loop thread).
        self.pause: Callable[[], None] | None = None
        self.resume: Callable[[], None] | None = None

    @property
    def free(self) -> int:
        return len(self._free)

    def take(self) -> T | None:
        """A free item, or None (the reader paused until one is back)."""
        with self._lock:
            if self._free:
                return self._free.pop()
            self._paused = True
            self.backpressure += 1
            if self.pause is not None:  # under the lock: before any give_back can resume
                self.pause()
        return None

    def give_back(self, item: T) -> None:
        with self._lock:
            self._free.append(item)
            wake, self._paused = self._paused, False
        if wake and self.resume is not None and self._call_soon_threadsafe is not None:
            self._call_soon_threadsafe(self.resume)
