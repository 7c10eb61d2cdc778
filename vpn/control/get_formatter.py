"""A get answer built by the event loop and a thread of its own, taking turns: the loop
takes the snapshot a slice of peers at a time, the thread formats each slice meanwhile.

Why: the loop's thread runs the data path. When it also formatted the answers of `wg show`
asked back to back at 10,000 peers (10-25 ms each), it was CPU-hungry, and the kernel's
EEVDF scheduler then often kept a loop woken by a packet waiting for the next tick (4 ms at
HZ=250): it had used more than its share (docs/architecture.md, "Scheduler slices"). Now
the loop spends about 0.1 ms a slice reading the live peers (that stays on the loop: a
`set` it applies can then never be half-read) and sleeps in its poll while the thread
formats that slice; a slice the loop took is plain values, which nothing changes after.

The GIL: CPython 3.11 hands it to a waiting thread when the holder blocks; a holder that
never blocks keeps it for the switch interval (5 ms), and one that releases it and takes it
straight back (a zero sleep) wins the race and restarts the waiter's 5 ms. The thread
blocks after every slice (it waits for the next), so a woken loop waits for the GIL at
most one slice's formatting, about 0.25 ms.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import queue
import threading
from typing import Protocol

from vpn.control import uapi
from vpn.control.uapi import DeviceSnapshot

# Its weight a tenth of the loop's: a loop woken by a packet preempts it. Not SCHED_IDLE:
# one starved while it holds the GIL would hold the loop up with it.
NICE = 10
THREAD_NAME = "uapi-get"


class SnapshotInSlices(Protocol):
    """A snapshot taken a slice at a time (vpn.core.wireguard.snapshot.SlicedSnapshot)."""

    @property
    def current(self) -> DeviceSnapshot:
        """The snapshot being taken, its rows so far; another one once it starts over."""

    def step(self) -> DeviceSnapshot | None:
        """Take the next slice: the finished snapshot after the last one, else None."""


class FormatterStopped(Exception):
    """The formatter was closed while it built an answer."""


# The loop's message for a slice taken: the snapshot being taken and how many of its rows
# are, and the turn to settle once they are formatted (None: that was the last slice).
_Slice = tuple[DeviceSnapshot, int, "asyncio.Future[None] | None"]


class GetFormatter:
    """One thread formatting get answers, one at a time; `close()` ends it (an answer in
    progress stops at its next slice)."""

    def __init__(self) -> None:
        # The static lines kept from get to get; only the formatter's thread touches them.
        self.texts = uapi.PeerTexts()
        self._stopping = False
        self._jobs: set[queue.SimpleQueue[_Slice | None]] = set()
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix=THREAD_NAME, initializer=_lower_priority)

    async def answer(self, taking: SnapshotInSlices) -> bytes:
        """The whole `get=1` answer of the snapshot `taking` takes. Raises what taking or
        formatting it raised, FormatterStopped, or RuntimeError once closed."""
        loop = asyncio.get_running_loop()
        slices: queue.SimpleQueue[_Slice | None] = queue.SimpleQueue()
        result = loop.run_in_executor(self._pool, self._format, slices, loop)
        self._jobs.add(slices)
        try:
            while (done := taking.step()) is None:
                turn = loop.create_future()
                slices.put((taking.current, len(taking.current.rows), turn))
                # The loop polls (the data path runs) while the thread formats.
                await asyncio.wait((turn, result), return_when=asyncio.FIRST_COMPLETED)
                if not turn.done():  # the thread ended: failed, stopped, or never started
                    break
            else:
                slices.put((done, len(done.rows), None))
            if result.cancelled():
                raise FormatterStopped("the management socket is closing")
            return await result
        finally:
            self._jobs.discard(slices)
            if not result.done():
                slices.put(None)  # the thread stops at this job's next slice
                result.add_done_callback(_retrieved)

    def close(self) -> None:
        """Stop the thread and wait for it (at most one slice's formatting)."""
        self._stopping = True
        for slices in list(self._jobs):
            slices.put(None)
        self._pool.shutdown(wait=True, cancel_futures=True)

    def _format(self, slices: queue.SimpleQueue[_Slice | None],
                loop: asyncio.AbstractEventLoop) -> bytes:
        """On the thread: each slice as it comes, over again when the snapshot starts over."""
        snapshot: DeviceSnapshot | None = None
        pieces: list[str] = []
        fresh: dict[bytes, uapi.PeerTextLines] = {}
        formatted = 0
        while True:
            message = slices.get()
            if message is None or self._stopping:
                raise FormatterStopped("the management socket is closing")
            taken, end, turn = message
            if taken is not snapshot:  # the first slice, or the snapshot started over
                snapshot, pieces, fresh, formatted = taken, [uapi.format_head(taken)], {}, 0
            pieces.append(uapi.format_peers(taken.rows[formatted:end], self.texts.kept, fresh))
            formatted = end
            if turn is None:
                break
            loop.call_soon_threadsafe(_settle, turn)
        self.texts.kept = fresh  # a peer gone since the last get is forgotten
        pieces.append(uapi.ANSWER_END)
        return "".join(pieces).encode()


def _settle(turn: asyncio.Future[None]) -> None:
    if not turn.done():  # else the get was given up meanwhile
        turn.set_result(None)


def _retrieved(result: asyncio.Future[bytes]) -> None:
    """A given-up answer's outcome, read so that asyncio does not log it as lost."""
    if not result.cancelled():
        result.exception()


def _lower_priority() -> None:
    """This thread's nice value (per thread on Linux), so the loop's thread preempts it.
    Raising one's own needs no privilege (lowering it would: it is never lowered); where it
    is refused, formatting goes on."""
    thread = threading.get_native_id()
    with contextlib.suppress(OSError):
        os.setpriority(os.PRIO_PROCESS, thread,
                       max(NICE, os.getpriority(os.PRIO_PROCESS, thread)))
