"""PausingPool: the reader paused when none is free, resumed once `resume_at` are back."""

from __future__ import annotations

from collections.abc import Callable

from vpn.io.pausingpool import PausingPool


def pool(items: int, resume_at: int) -> tuple[PausingPool[int], list[str]]:
    events: list[str] = []

    def now(callback: Callable[[], None]) -> None:  # call_soon_threadsafe, run at once
        callback()

    made = PausingPool(range(items), now, resume_at=resume_at)
    made.pause, made.resume = (lambda: events.append("pause")), (lambda: events.append("resume"))
    return made, events


def test_a_pause_ends_once_resume_at_are_back() -> None:
    made, events = pool(4, resume_at=2)
    taken = [made.take() for _ in range(4)]
    assert None not in taken and made.take() is None and events == ["pause"]
    assert made.backpressure == 1
    made.give_back(taken[0])
    assert events == ["pause"]  # one back: still paused
    made.give_back(taken[1])
    assert events == ["pause", "resume"]
    made.give_back(taken[2])
    assert events == ["pause", "resume"]  # not paused: nothing to resume
    assert made.free == 3


def test_resume_at_is_at_least_one_and_at_most_the_pool() -> None:
    assert pool(3, resume_at=0)[0].resume_at == 1
    assert pool(3, resume_at=10)[0].resume_at == 3
    made, events = pool(2, resume_at=10)  # all of them back, then resumed
    first, second = made.take(), made.take()
    assert made.take() is None
    assert first is not None and second is not None
    made.give_back(first)
    made.give_back(second)
    assert events == ["pause", "resume"]


def test_taking_while_paused_gives_what_came_back() -> None:
    """A wakeup while paused (a busy poll) reads into what is back; the pause holds until
    resume_at are free."""
    made, events = pool(3, resume_at=3)
    taken = [made.take() for _ in range(3)]
    assert made.take() is None
    made.give_back(taken[0])
    assert made.take() == taken[0] and events == ["pause"]
    for item in (taken[0], taken[1], taken[2]):
        made.give_back(item)
    assert events == ["pause", "resume"] and made.free == 3
