"""The busy-poll's adaptive budget (vpn/io/pollbudget.py): haltpoll's rule on the gaps
between packets, bounded by the floor and the cap, and where steady patterns take it."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from vpn.io.pollbudget import FLOOR_NS, SHRINK_AFTER, AdaptiveBudget

CAP = 200_000

caps = st.integers(min_value=1_000, max_value=10_000_000)
gaps = st.integers(min_value=0, max_value=10**9)


def _at(cap: int, ns: int) -> AdaptiveBudget:
    budget = AdaptiveBudget(cap)
    budget.ns = max(budget.floor_ns, min(ns, cap))
    return budget


def _after(budget: AdaptiveBudget, *gaps: int) -> list[int]:
    seen = []
    for gap in gaps:
        budget.observe(gap)
        seen.append(budget.ns)
    return seen


def test_growing_doubles_up_to_the_cap_and_shrinking_halves_down_to_the_floor() -> None:
    assert _after(_at(CAP, FLOOR_NS), *[CAP] * 3) == [100_000, CAP, CAP]
    assert _after(AdaptiveBudget(CAP), *[CAP + 1] * (SHRINK_AFTER + 2)) == [
        CAP] * (SHRINK_AFTER - 1) + [100_000, FLOOR_NS, FLOOR_NS]


def test_a_cap_under_the_floor_is_both() -> None:
    budget = AdaptiveBudget(20_000)
    assert (budget.ns, budget.floor_ns) == (20_000, 20_000)
    assert _after(budget, 10**9, 10**9, 10**9, 15_000) == [20_000] * 4


def test_a_packet_caught_within_the_budget_leaves_it() -> None:
    assert _after(_at(CAP, 100_000), 30_000, 100_000) == [100_000, 100_000]


def test_a_packet_a_longer_spin_would_have_caught_grows_it() -> None:
    assert _after(_at(CAP, 100_000), 150_000) == [CAP]
    assert _after(_at(CAP, FLOOR_NS), 60_000) == [100_000]


def test_one_late_packet_among_a_ping_pongs_leaves_it() -> None:
    """A round trip near the cap, and now and then one later (a busy machine): the budget
    stays at the cap, so the next packet is caught."""
    pattern = [180_000, 180_000, 900_000] * 5 + [180_000, 900_000, 900_000] * 5
    assert set(_after(AdaptiveBudget(CAP), *pattern)) == {CAP}


@given(cap=caps, start=st.integers(min_value=0, max_value=10_000_000), gaps=st.lists(gaps))
def test_the_budget_stays_within_the_floor_and_the_cap(cap: int, start: int,
                                                        gaps: list[int]) -> None:
    budget = _at(cap, start)
    for gap in gaps:
        budget.observe(gap)
        assert min(FLOOR_NS, cap) <= budget.ns <= cap


@given(cap=caps, start=st.integers(min_value=0, max_value=10_000_000), gaps=st.lists(gaps))
def test_gaps_within_the_cap_never_shrink_it_and_grow_it_when_missed(
        cap: int, start: int, gaps: list[int]) -> None:
    budget = _at(cap, start)
    for gap in gaps:
        before = budget.ns
        budget.observe(gap)
        if gap <= cap:
            assert budget.ns >= before
            if gap > before:
                assert budget.ns > before  # grew: the next such gap is nearer to a catch
        else:
            assert budget.ns <= before


@given(cap=caps, gap_share=st.floats(min_value=0.01, max_value=1.0))
def test_a_steady_ping_pong_takes_it_to_a_budget_that_catches(cap: int,
                                                              gap_share: float) -> None:
    """From the floor, a ping-pong whose next packet comes within the cap has the budget grow
    until it catches that packet, and no further than twice the gap (or the floor)."""
    budget = _at(cap, FLOOR_NS)
    gap = int(cap * gap_share)
    _after(budget, *[gap] * 32)
    assert gap <= budget.ns <= min(cap, max(2 * gap, FLOOR_NS))


def test_the_peers_answer_a_round_trip_away_takes_it_to_the_cap() -> None:
    """The default cap, 200 us, and a ping-pong's next packet from the peer 120 us after
    the last: from the floor, 100, then the cap, where it stays."""
    assert _after(_at(CAP, FLOOR_NS), *[120_000] * 4) == [100_000, CAP, CAP, CAP]


@given(cap=caps)
def test_an_idle_endpoint_falls_to_the_floor(cap: int) -> None:
    """No packet within the cap, again and again (idle, or a flow sparser than the cap):
    the spins shrink to the floor within a few wakeups."""
    budget = AdaptiveBudget(cap)
    assert budget.ns == cap  # a new endpoint starts as a fixed budget would
    _after(budget, *[cap + 1] * (SHRINK_AFTER + 8))
    assert budget.ns == min(FLOOR_NS, cap)
