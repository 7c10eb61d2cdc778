"""The worker pool: each lane's ordered stage runs in submission order, whatever order the
work finishes in; failures are counted and pass the turn on; close loses nothing."""

from __future__ import annotations

import threading
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.examples import examples
from vpn.io.workers import WorkerPool

# (lane, how long its work takes in microseconds) per job
jobs_strategy = st.lists(st.tuples(st.integers(0, 4), st.integers(0, 300)),
                         min_size=1, max_size=60)


@settings(max_examples=examples(60), deadline=None)
@given(jobs=jobs_strategy, threads=st.integers(1, 4))
def test_each_lane_keeps_its_order_under_random_completion(
        jobs: list[tuple[int, int]], threads: int) -> None:
    released: dict[int, list[int]] = {}
    pool = WorkerPool(threads)
    try:
        for number, (lane, micros) in enumerate(jobs):
            def work(micros: int = micros, number: int = number) -> int:
                time.sleep(micros / 1e6)  # workers finish out of order
                return number

            pool.submit(lane, work, lambda n, lane=lane: released.setdefault(lane, []).append(n))
    finally:
        pool.close()
    expected: dict[int, list[int]] = {}
    for number, (lane, _) in enumerate(jobs):
        expected.setdefault(lane, []).append(number)
    assert released == expected
    assert pool.stats.jobs == len(jobs)
    assert pool.stats.errors == 0


def test_a_failing_job_is_counted_and_its_lane_goes_on() -> None:
    errors: list[BaseException] = []
    released: list[str] = []
    pool = WorkerPool(2, on_error=errors.append)
    gate = threading.Event()

    def slow() -> str:
        gate.wait(10)
        return "first"

    def broken() -> str:
        raise ValueError("a batch no drop reason foresaw")

    pool.submit("peer", slow, released.append)
    pool.submit("peer", broken, released.append)
    pool.submit("peer", lambda: "third", released.append)
    pool.submit("peer", lambda: "fourth", lambda _: (_ for _ in ()).throw(OSError("then")))
    pool.submit("peer", lambda: "fifth", released.append)
    gate.set()
    pool.close()
    assert released == ["first", "third", "fifth"]
    assert [type(e) for e in errors] == [ValueError, OSError]
    assert pool.stats.errors == 2
    assert pool.stats.jobs == 5


def test_close_finishes_every_submitted_job_and_ends_the_threads() -> None:
    done: list[int] = []
    pool = WorkerPool(3, name="test-close")
    for n in range(200):
        pool.submit(n % 7, lambda n=n: n, done.append)
    pool.close()
    assert sorted(done) == list(range(200))
    assert not [t for t in threading.enumerate() if t.name.startswith("test-close")]
    with pytest.raises(RuntimeError, match="closed"):
        pool.submit(0, lambda: 0, done.append)
    pool.close()  # idempotent


def test_a_pool_needs_a_thread() -> None:
    with pytest.raises(ValueError, match="at least one thread"):
        WorkerPool(0)


def test_lanes_that_finished_are_forgotten() -> None:
    pool = WorkerPool(2)
    try:
        for lane in range(3000):
            pool.submit(lane, lambda: None, lambda _: None)
    finally:
        pool.close()
    assert pool.stats.jobs == 3000
    assert not pool._lanes  # each went when its last then had run


def test_no_worker_waits_for_a_turn() -> None:
    """One lane, its first job's work held: the second worker does not sit on the second
    job's finished work but goes on to the third and fourth; their thens wait, parked, and
    run in order once the first's has."""
    released: list[int] = []
    pool = WorkerPool(2)
    gate = threading.Event()
    worked: list[int] = []
    try:
        pool.submit("peer", lambda: gate.wait(10) and 0, released.append)
        for n in (1, 2, 3):
            pool.submit("peer", lambda n=n: worked.append(n) or n, released.append)
        deadline = time.monotonic() + 10
        while len(worked) < 3 and time.monotonic() < deadline:
            time.sleep(0.001)
        assert worked == [1, 2, 3] and released == []
    finally:
        gate.set()
        pool.close()
    assert released == [0, 1, 2, 3]
    assert sum(w.waits for w in pool.stats.workers) == 3
