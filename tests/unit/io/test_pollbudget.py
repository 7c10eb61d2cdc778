"""The busy-poll's adaptive budget (vpn/io/pollbudget.py): haltpoll's rule on the gaps
between packets, bounded by the floor and the cap, and where steady patterns take it."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from vpn.io.pollbudget import FLOOR_NS, GROW_START_NS, AdaptiveBudget, next_budget

CAP = 200_000

caps = st.integers(min_value=1_000, max_value=10_000_000)
gaps = st.integers(min_value=0, max_value=10**9)


def test_a_packet_caught_within_the_budget_leaves_it() -> None:
    assert next_budget(100_000, 30_000, CAP) == 100_000
    assert next_budget(100_000, 100_000, CAP) == 100_000


def test_a_packet_a_longer_spin_would_have_caught_grows_it() -> None:
    assert next_budget(100_000, 150_000, CAP) == CAP  # doubled
    assert next_budget(FLOOR_NS, 10_000, CAP) == GROW_START_NS  # from the floor: grow_start
    assert next_budget(150_000, 190_000, CAP) == CAP  # never past the cap


def test_a_packet_past_the_cap_shrinks_it_to_the_floor() -> None:
    assert next_budget(CAP, CAP + 1, CAP) == CAP // 2
    assert next_budget(GROW_START_NS, 10**9, CAP) == FLOOR_NS  # below grow_start: none
    assert next_budget(FLOOR_NS, 10**9, CAP) == FLOOR_NS


def test_a_cap_under_grow_start_is_reached_and_left_in_one_step() -> None:
    assert next_budget(FLOOR_NS, 15_000, 20_000) == 20_000
    assert next_budget(20_000, 25_000, 20_000) == FLOOR_NS


@given(cap=caps, start=st.integers(min_value=0, max_value=10_000_000), gaps=st.lists(gaps))
def test_the_budget_stays_within_the_floor_and_the_cap(cap: int, start: int,
                                                        gaps: list[int]) -> None:
    budget = AdaptiveBudget(cap)
    budget.ns = min(start, cap)
    for gap in gaps:
        budget.observe(gap)
        assert FLOOR_NS <= budget.ns <= cap


@given(cap=caps, budget=st.integers(min_value=0, max_value=10_000_000), gap=gaps)
def test_catches_never_shrink_it_and_misses_within_the_cap_grow_it(cap: int, budget: int,
                                                                    gap: int) -> None:
    budget = min(budget, cap)
    after = next_budget(budget, gap, cap)
    if gap <= cap:
        assert after >= budget
        if gap > budget:
            assert after > budget  # grew: the next such gap is nearer to being caught
    else:
        assert after < budget or budget == FLOOR_NS


@given(cap=caps, gap_share=st.floats(min_value=0.01, max_value=1.0))
def test_a_steady_ping_pong_takes_it_to_a_budget_that_catches(cap: int,
                                                              gap_share: float) -> None:
    """From the floor, a ping-pong whose next packet comes within the cap has the budget grow
    until it catches that packet, and no further than twice the gap (or grow_start)."""
    budget = AdaptiveBudget(cap)
    budget.ns = FLOOR_NS
    gap = int(cap * gap_share)
    for _ in range(32):
        budget.observe(gap)
    assert gap <= budget.ns <= min(cap, max(2 * gap, GROW_START_NS))


def test_the_peers_answer_a_round_trip_away_takes_it_to_the_cap() -> None:
    """The default cap, 200 us, and a ping-pong's next packet from the peer 120 us after
    the last: floor, 50, 100, then the cap, where it stays."""
    budget = AdaptiveBudget(CAP)
    budget.ns = FLOOR_NS
    seen = []
    for _ in range(5):
        budget.observe(120_000)
        seen.append(budget.ns)
    assert seen == [GROW_START_NS, 2 * GROW_START_NS, CAP, CAP, CAP]


@given(cap=caps)
def test_an_idle_endpoint_falls_to_the_floor(cap: int) -> None:
    """No packet within the cap, again and again (idle, or a flow sparser than the cap):
    the spins shrink to none within a few wakeups."""
    budget = AdaptiveBudget(cap)
    assert budget.ns == cap  # a new endpoint starts as a fixed budget would
    for _ in range(8):
        budget.observe(cap + 1)
    assert budget.ns == FLOOR_NS
