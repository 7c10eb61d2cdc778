"""Worker threads for the data path's native batches, each lane's order kept.

A job has two parts, as in the kernel's and wireguard-go's pipelines:
- `work`, the crypto: runs on any worker as soon as one is free, in parallel with other jobs.
  It is meant to be a native call that releases the GIL, so threads run it on every core.
- `then`, the ordered stage: runs on the same worker after `work`, but only once the `then`
  of every earlier job of the same lane (a peer, a keypair) has finished. A peer's packets
  leave in the order they were read, whichever worker sealed them first.

The queue is first in, first out, so a worker only ever waits for a job that another worker
took before it: the earliest job in flight never waits, and the pool cannot deadlock.
`close()` lets every submitted job finish before the threads end, so nothing accepted is
lost. A failing `work` or `then` is counted and reported through `on_error`; the jobs after
it in its lane still run (their turn is passed on in a `finally`).
"""

from __future__ import annotations

import itertools
import queue
import threading
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any

# Lanes whose last job is done are forgotten every this many submissions.
PRUNE_EVERY = 1024


@dataclass(slots=True)
class _Job:
    work: Callable[[], Any]
    then: Callable[[Any], None]
    previous: threading.Event | None
    done: threading.Event


@dataclass
class WorkerStats:
    """One worker's figures; a worker writes only its own (no lock), readers sum them."""

    jobs: int = 0
    errors: int = 0
    busy_seconds: float = 0.0  # in work and then, not waiting for a job or a turn
    waits: int = 0  # jobs whose ordered stage had to wait for an earlier job's


@dataclass
class PoolStats:
    threads: int
    workers: list[WorkerStats] = field(default_factory=list)

    @property
    def jobs(self) -> int:
        return sum(w.jobs for w in self.workers)

    @property
    def errors(self) -> int:
        return sum(w.errors for w in self.workers)


class WorkerPool:
    """`threads` workers; `submit` is called from one thread (the event loop's)."""

    def __init__(self, threads: int, *, name: str = "vpn-worker",
                 on_error: Callable[[BaseException], None] | None = None,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        if threads < 1:
            raise ValueError("a worker pool needs at least one thread")
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._last: dict[Hashable, threading.Event] = {}
        self._submitted = itertools.count(1)
        self._closed = False
        self._on_error = on_error
        self._clock = clock
        self.stats = PoolStats(threads, [WorkerStats() for _ in range(threads)])
        self._threads = [
            threading.Thread(target=self._run, args=(stats,), name=f"{name}-{i}", daemon=True)
            for i, stats in enumerate(self.stats.workers)
        ]
        for thread in self._threads:
            thread.start()

    def submit(self, lane: Hashable, work: Callable[[], Any],
               then: Callable[[Any], None]) -> None:
        """Queue a job; its `then` follows every earlier `then` of `lane`."""
        if self._closed:
            raise RuntimeError("the worker pool is closed")
        previous = self._last.get(lane)
        if previous is not None and previous.is_set():
            previous = None
        done = threading.Event()
        self._last[lane] = done
        if next(self._submitted) % PRUNE_EVERY == 0:
            self._prune()
        self._jobs.put(_Job(work, then, previous, done))

    def _prune(self) -> None:
        for lane in [lane for lane, event in self._last.items() if event.is_set()]:
            del self._last[lane]

    def close(self) -> None:
        """Finish every submitted job, then end the threads. Idempotent."""
        if self._closed:
            return
        self._closed = True
        for _ in self._threads:
            self._jobs.put(None)
        for thread in self._threads:
            thread.join()
        self._last.clear()

    def _run(self, stats: WorkerStats) -> None:
        clock = self._clock
        while (job := self._jobs.get()) is not None:
            began = clock()
            try:
                result = job.work()
                if job.previous is not None and not job.previous.is_set():
                    stats.waits += 1
                    stats.busy_seconds += clock() - began
                    job.previous.wait()
                    began = clock()
                job.then(result)
            except Exception as exc:  # counted and reported; the lane goes on
                stats.errors += 1
                if self._on_error is not None:
                    self._on_error(exc)
            finally:
                # A failed job passes its turn on too, after every earlier one of its lane.
                if job.previous is not None:
                    job.previous.wait()
                job.done.set()
                stats.jobs += 1
                stats.busy_seconds += clock() - began
