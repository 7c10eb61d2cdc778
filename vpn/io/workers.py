"""Worker threads for the data path's native batches, each lane's order kept.

A job has two parts, as in the kernel's and wireguard-go's pipelines:
- `work`, the crypto: runs on any worker as soon as one is free, in parallel with other jobs.
  It is meant to be a native call that releases the GIL, so threads run it on every core.
- `then`, the ordered stage: runs only once the `then` of every earlier job of the same lane
  (a peer's sends, a peer's receives) has run. A peer's packets leave in the order they
  were read, whichever worker finished its work first.

No worker waits for a turn. A job whose work is done before its lane's earlier jobs' is
parked; the worker that runs the `then` before it runs it too, and every parked one after
(the lane's drainer, one at a time per lane). So with one busy peer every worker keeps
opening or sealing the next job instead of sitting on a finished one: waiting there held the
second of two workers idle for most of its time. The queue is first in, first out, and
`close()` lets every submitted job finish before the threads end, so nothing accepted is
lost. A failing `work` or `then` is counted and reported through `on_error`; the lane goes
on with the next job (a failed work's `then` is not run).
"""

from __future__ import annotations

import collections
import queue
import threading
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any

# The walks size the buffers they keep in flight (read slots, receive buffers) per worker,
# counting at most this many: past it a worker's share of the queue is deep enough, and the
# address space (4 MiB a batch) is not multiplied by every thread of a large pool.
MAX_DEPTH_THREADS = 4


@dataclass(slots=True)
class _Job:
    work: Callable[[], Any]
    then: Callable[[Any], None]
    lane: _Lane
    result: Any = None
    failed: bool = False  # work raised: its then is skipped
    finished: bool = False  # work has run (under the pool's lock)


@dataclass(slots=True)
class _Lane:
    key: Hashable
    jobs: collections.deque[_Job] = field(default_factory=collections.deque)
    draining: bool = False  # a worker is running this lane's thens


@dataclass
class WorkerStats:
    """One worker's figures; a worker writes only its own (no lock), readers sum them."""

    jobs: int = 0
    errors: int = 0
    busy_seconds: float = 0.0  # in work and then, not waiting for a job
    waits: int = 0  # jobs whose work finished before an earlier job's of their lane: parked


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
                 clock: Callable[[], float] = time.perf_counter,
                 on_start: Callable[[], object] | None = None) -> None:
        if threads < 1:
            raise ValueError("a worker pool needs at least one thread")
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._lanes: dict[Hashable, _Lane] = {}  # lanes with jobs not yet through `then`
        self._lock = threading.Lock()  # the lanes: their jobs, `finished`, `draining`
        self._closed = False
        self._on_error = on_error
        self._clock = clock
        self._on_start = on_start  # each thread's first call (its scheduler slice)
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
        with self._lock:
            queued = self._lanes.get(lane)
            if queued is None:
                queued = self._lanes[lane] = _Lane(lane)
            job = _Job(work, then, queued)
            queued.jobs.append(job)
        self._jobs.put(job)

    def close(self) -> None:
        """Finish every submitted job, then end the threads. Idempotent."""
        if self._closed:
            return
        self._closed = True
        for _ in self._threads:
            self._jobs.put(None)
        for thread in self._threads:
            thread.join()

    def _run(self, stats: WorkerStats) -> None:
        if self._on_start is not None:
            self._on_start()
        clock = self._clock
        while (job := self._jobs.get()) is not None:
            began = clock()
            try:
                job.result = job.work()
            except Exception as exc:  # counted and reported; the lane goes on
                job.failed = True
                self._failed(stats, exc)
            lane = job.lane
            with self._lock:
                job.finished = True
                drain = not lane.draining and lane.jobs[0] is job
                if drain:
                    lane.draining = True
            if drain:
                self._drain(lane, stats)
            else:
                stats.waits += 1  # parked: the lane's drainer runs its then
            stats.jobs += 1
            stats.busy_seconds += clock() - began

    def _drain(self, lane: _Lane, stats: WorkerStats) -> None:
        """Run the lane's thens in order while its first job's work is done; the lane is
        this worker's alone until it stops (and forgotten once it has no job left)."""
        while True:
            with self._lock:
                jobs = lane.jobs
                if not jobs or not jobs[0].finished:
                    lane.draining = False
                    if not jobs:
                        del self._lanes[lane.key]
                    return
                job = jobs.popleft()
            if job.failed:
                continue
            try:
                job.then(job.result)
            except Exception as exc:
                self._failed(stats, exc)
            job.result = None  # the job's buffers go with it

    def _failed(self, stats: WorkerStats, exc: BaseException) -> None:
        stats.errors += 1
        if self._on_error is not None:
            self._on_error(exc)
