"""PausingPool: the reader paused when no item is free, resumed once `resume_at` are back
(the first one by default), once per pause."""

from __future__ import annotations

import pytest

from vpn.io.pausingpool import PausingPool


def pool_with_hooks(items: int, resume_at: int = 1
                    ) -> tuple[PausingPool[int], list[str]]:
    events: list[str] = []
    pool = PausingPool(range(items), lambda callback: callback(), resume_at)
    pool.pause, pool.resume = (lambda: events.append("pause")), (lambda: events.append("resume"))
    return pool, events


@pytest.mark.parametrize(("resume_at", "given_back_before_resume"), [(1, 1), (2, 2), (3, 3)])
def test_the_reader_resumes_once_resume_at_items_are_back(
        resume_at: int, given_back_before_resume: int) -> None:
    pool, events = pool_with_hooks(4, resume_at)
    taken = [pool.take() for _ in range(4)]
    assert pool.take() is None and events == ["pause"] and pool.backpressure == 1
    for i, item in enumerate(taken[:given_back_before_resume]):
        assert events == ["pause"], f"resumed after {i} of {resume_at}"
        assert item is not None
        pool.give_back(item)
    assert events == ["pause", "resume"]
    for item in taken[given_back_before_resume:]:  # not paused any more: no second resume
        assert item is not None
        pool.give_back(item)
    assert events == ["pause", "resume"] and pool.free == 4


def test_resume_at_past_the_pool_still_resumes_when_every_item_is_back() -> None:
    pool, events = pool_with_hooks(2, resume_at=10)
    first, second = pool.take(), pool.take()
    assert pool.take() is None
    assert first is not None and second is not None
    pool.give_back(first)
    assert events == ["pause"]
    pool.give_back(second)
    assert events == ["pause", "resume"]


def test_a_take_while_paused_gets_what_is_back_and_the_reader_resumes_later() -> None:
    pool, events = pool_with_hooks(4, resume_at=2)
    taken = [pool.take() for _ in range(4)]
    assert pool.take() is None
    assert taken[0] is not None and taken[1] is not None
    pool.give_back(taken[0])
    assert pool.take() == taken[0]  # a wakeup already under way may still take it
    pool.give_back(taken[0])
    pool.give_back(taken[1])
    assert events == ["pause", "resume"]
