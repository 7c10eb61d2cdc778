"""Receive buffers that outlive their wakeup, for the receive walk on worker threads.

A ReceiveBuffer is what one job owns from the socket to the TUN: room for a number of
receives (UdpSocket.receive_batch / receive_screened write into it) and as much again for
their plaintexts. ReceiveBuffers is their bounded pool, with the socket's backpressure.
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Callable

from vpn.io.buffers import reserve
from vpn.io.udp import RECEIVE_SLOT


class ReceiveBuffer:
    """Room for `receives` receives (`data`, cut in `slots`) and for their plaintexts
    (`out`, as large): what a receive job owns from the socket to the TUN. `jobs` is the
    number of jobs still using it (its owner's count)."""

    __slots__ = ("data", "jobs", "out", "slots")

    def __init__(self, receives: int) -> None:
        whole = reserve(2 * RECEIVE_SLOT * receives)
        self.data = whole[:RECEIVE_SLOT * receives]
        self.out = whole[RECEIVE_SLOT * receives:]
        self.slots = [(self.data[i * RECEIVE_SLOT:(i + 1) * RECEIVE_SLOT],)
                      for i in range(receives)]
        self.jobs = 0


class ReceiveBuffers:
    """A bounded pool of ReceiveBuffers, for receives that outlive their wakeup (the receive
    workers'). `take` on the loop thread; `give_back` from any thread. When none is free the
    reader stops watching the socket (`pause`, counted as `backpressure`) until one comes
    back (`resume`, called on the loop thread through `call_soon_threadsafe`): the kernel's
    socket buffer holds what arrives meanwhile."""

    def __init__(self, count: int, receives: int,
                 call_soon_threadsafe: Callable[[Callable[[], None]], object] | None
                 ) -> None:
        self.count = count
        self._free: collections.deque[ReceiveBuffer] = collections.deque(
            ReceiveBuffer(receives) for _ in range(count))
        self._lock = threading.Lock()  # _paused, between the loop and the workers
        self._paused = False
        self._call_soon_threadsafe = call_soon_threadsafe
        self.backpressure = 0  # wakeups that found no buffer free
        self.pause: Callable[[], None] | None = None
        self.resume: Callable[[], None] | None = None

    @property
    def free(self) -> int:
        return len(self._free)

    def take(self) -> ReceiveBuffer | None:
        """A free buffer, or None (the reader paused until one is back)."""
        try:
            return self._free.pop()
        except IndexError:
            pass
        with self._lock:  # pause before a give_back's resume, whatever the threads do
            if self._free:  # given back since
                return self._free.pop()
            self._paused = True
            self.backpressure += 1
            if self.pause is not None:
                self.pause()
        return None

    def give_back(self, buffer: ReceiveBuffer) -> None:
        with self._lock:
            self._free.append(buffer)
            wake, self._paused = self._paused, False
        if wake and self.resume is not None and self._call_soon_threadsafe is not None:
            self._call_soon_threadsafe(self.resume)
