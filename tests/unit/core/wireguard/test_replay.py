"""The replay window walked edge by edge: in order, reordered, duplicated, too old, the limit."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from vpn.core.wireguard.constants import REJECT_AFTER_MESSAGES, REPLAY_WINDOW
from vpn.core.wireguard.replay import ReplayWindow

W = REPLAY_WINDOW  # 8128


def run(steps: list[tuple[int, bool]], limit: int = REJECT_AFTER_MESSAGES) -> None:
    window = ReplayWindow()
    for i, (counter, expected) in enumerate(steps):
        assert window.validate(counter, limit) is expected, f"step {i}: counter {counter}"


def test_window_is_at_least_what_the_issue_asks() -> None:
    assert W == 8128 >= 2048


def test_first_packets_and_duplicates() -> None:
    run([(0, True), (1, True), (1, False), (9, True), (8, True), (7, True), (7, False)])


def test_exact_window_edges() -> None:
    top = W + 1
    run(
        [
            (top, True),
            (0, False),  # top - 0 = W + 1 > W: just outside
            (1, True),  # top - 1 = W: the oldest counter still inside
            (1, False),
            (top + 1, True),
            (1, False),  # now just outside
            (2, True),
            (top + 1, False),
        ]
    )


def test_large_jump_clears_the_whole_ring() -> None:
    run(
        [
            (5, True),
            (5 + 10 * W, True),
            (5 + 10 * W - W, True),  # inside after the jump even though its word was reused
            (5 + 10 * W - W - 1, False),
            (5 + 10 * W - 1, True),
        ]
    )


def test_words_are_cleared_when_the_window_slides_one_word_at_a_time() -> None:
    window = ReplayWindow()
    for counter in range(0, 4 * W, 63):
        assert window.validate(counter)
        assert not window.validate(counter)
    # Every counter in the window that was never seen is still accepted once.
    top = window.greatest
    for counter in range(top - W, top):
        if counter % 63:
            assert window.validate(counter), counter


def test_reordered_within_the_window_all_accepted_once() -> None:
    counters = list(range(3000))
    random.Random(7).shuffle(counters)
    window = ReplayWindow()
    assert all(window.validate(c) for c in counters)
    assert not any(window.validate(c) for c in counters)


def test_limit_is_exclusive() -> None:
    run([(REJECT_AFTER_MESSAGES - 1, True), (REJECT_AFTER_MESSAGES, False)])
    run([(10, True), (11, False), (9, True)], limit=11)


def test_reference_model_over_random_walk() -> None:
    rng = random.Random(1)
    window, seen, greatest = ReplayWindow(), set(), -1
    base = 0
    for _ in range(20000):
        base += rng.choice([0, 1, 1, 2, 70, 300])
        counter = max(0, base - rng.randrange(0, W + 200))
        expected = counter not in seen and (greatest < 0 or counter > greatest - W - 1)
        assert window.validate(counter) is expected
        if expected:
            seen.add(counter)
            greatest = max(greatest, counter)


def test_limit_applies_below_the_greatest_too() -> None:
    window = ReplayWindow()
    assert window.validate(10)
    assert not window.validate(5, limit=3)  # the limit is checked before the window
    assert window.validate(5)


def _reference(steps: list[int]) -> list[bool]:
    """The window's definition: new, below the limit, at most W behind the greatest."""
    seen: set[int] = set()
    greatest, out = 0, []
    for counter in steps:
        ok = counter not in seen and counter >= greatest - W
        out.append(ok)
        if ok:
            seen.add(counter)
            greatest = max(greatest, counter)
    return out


def test_jumps_around_the_ring_size_leave_no_stale_slot() -> None:
    # The ring has 8192 slots: after a jump, a counter sharing a slot with one seen before
    # the jump must still be accepted once, whatever the size of the jump.
    for base in (0, 1, 8190, 8191, 8192, 12345):
        for jump in (1, 2, 63, 64, 65, W - 1, W, W + 1, 8191, 8192, 8193, 16383, 16384, 16385):
            top = base + jump
            olds = [c for c in range(base - 3, base + 1) if c >= 0]
            steps = [*olds, top]
            steps += [c + 8192 * k for c in olds for k in (1, 2) if top - W <= c + 8192 * k < top]
            steps += [top - W, top - W - 1, top - 1, top, *olds]
            window = ReplayWindow()
            got = [window.validate(c) for c in steps]
            assert got == _reference(steps), (base, jump, steps)


def test_matches_the_definition_over_random_walks_with_big_jumps() -> None:
    rng = random.Random(5)
    for _ in range(20):
        base, steps = 0, []
        for _ in range(2000):
            base += rng.choice([1, 1, 1, 2, 64, 700, W, 8192, 8193, 20000])
            steps.append(max(0, base - rng.choice([0, 0, 1, 63, 64, 8191, 8192, W, W + 1])))
        window = ReplayWindow()
        assert [window.validate(c) for c in steps] == _reference(steps)


def test_reset_forgets_everything() -> None:
    window = ReplayWindow()
    for counter in (0, 1, 5, 9000):
        assert window.validate(counter)
    window.reset()
    assert window.greatest == 0
    assert [window.validate(c) for c in (0, 1, 5, 9000)] == [True] * 4


@settings(max_examples=300, deadline=None)
@given(history=st.lists(st.integers(0, 20_000), max_size=40),
       counter=st.one_of(st.integers(0, 20_000),
                         st.integers(REJECT_AFTER_MESSAGES - 2, REJECT_AFTER_MESSAGES + 2)))
def test_rejects_is_validate_without_the_change(history: list[int], counter: int) -> None:
    """The read-only question the receive path asks before the AEAD: exactly the counters
    validate would refuse, and asking changes nothing."""
    window = ReplayWindow()
    for seen in history:
        window.validate(seen)
    state = (window.greatest, bytes(window.seen))
    rejected = window.rejects(counter)
    assert (window.greatest, bytes(window.seen)) == state
    assert rejected == (not window.validate(counter))
