"""Receive buffers that outlive their wakeup, for the receive walk on worker threads.

A ReceiveBuffer is what one job owns from the socket to the TUN: room for a number of
receives (UdpSocket.receive_batch / receive_screened write into it) and as much again for
their plaintexts. ReceiveBuffers is their bounded pool, with the socket's backpressure
(a PausingPool).
"""

from __future__ import annotations

from collections.abc import Callable

from vpn.io.buffers import reserve
from vpn.io.pausingpool import PausingPool
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


class ReceiveBuffers(PausingPool[ReceiveBuffer]):
    """`count` ReceiveBuffers of `receives` receives, with the socket's backpressure."""

    def __init__(self, count: int, receives: int,
                 call_soon_threadsafe: Callable[[Callable[[], None]], object] | None
                 ) -> None:
        super().__init__((ReceiveBuffer(receives) for _ in range(count)), call_soon_threadsafe)
