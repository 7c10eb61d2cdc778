"""When the device demands cookies, and what it sheds: by the depth of its queue of
handshake messages waiting for Diffie-Hellman work (HandshakeQueue: an eighth full, and for
UNDER_LOAD_TIME after), as the kernel and wireguard-go do; never by garbage, bad mac1 or
cookie replies. The queue's jobs are worked and finished by hand here, as a worker would."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.unit.core.wireguard.helpers import (
    A_ADDR,
    B_ADDR,
    Pair,
    handshake_shaped,
    mac1_valid,
    make_pair,
)
from vpn.core.wireguard import Device, HandshakeJob
from vpn.core.wireguard.constants import (
    HANDSHAKE_QUEUE_SIZE,
    UNDER_LOAD_FRACTION,
    UNDER_LOAD_TIME,
)
from vpn.core.wireguard.cookie import HandshakeQueue

LOAD_AT = HANDSHAKE_QUEUE_SIZE // UNDER_LOAD_FRACTION  # 128


def stranger(i: int) -> tuple[str, int]:
    return (f"198.18.5.{2 + i % 200}", 1024 + i)


def deferred(device: Device) -> list[HandshakeJob]:
    """Give `device` a worker that only collects its jobs."""
    jobs: list[HandshakeJob] = []
    device.defer_handshake = jobs.append
    return jobs


def work(device: Device, jobs: list[HandshakeJob], now: float) -> list[tuple[object, bytes]]:
    """What the worker and the loop do: run every job, finish them in one batch."""
    for job in jobs:
        if job.outcome is None:  # not run yet
            job.run()
    done = list(jobs)
    jobs.clear()
    return device.finish_handshakes(done, now)  # type: ignore[return-value]


def flood(device: Device, count: int, now: float, kind: int = 1, **kw: bool) -> list[str]:
    """`count` mac1-valid messages from strangers; what became of each."""
    out = []
    for i in range(count):
        result = device.handle_handshake_message(mac1_valid(kind, device.public_key),
                                                 stranger(i), now, **kw)
        out.append(result.event or result.drop_reason or "")
    return out


def legit_initiation(pair: Pair, now: float) -> str | None:
    (init,) = pair.pa.initiate_handshake(now)
    return pair.b.handle_handshake_message(init, A_ADDR, now).event


def test_handshake_sized_garbage_never_makes_load(pair: Pair) -> None:
    jobs = deferred(pair.b)
    for i, datagram in enumerate(handshake_shaped(10_000)):
        result = pair.b.handle_handshake_message(datagram, stranger(i), 0.0)
        assert result.drop_reason in ("bad_mac1", "unknown_receiver_index"), result
    assert legit_initiation(pair, 0.0) == "queued"
    assert jobs and pair.b.handshake_queue.depth == 1
    assert pair.b.drops["cookie_sent"] == 0


def test_without_a_worker_nothing_waits_and_nothing_makes_load(pair: Pair) -> None:
    assert set(flood(pair.b, 3 * LOAD_AT, 0.0)) == {"bad_static_auth"}
    assert legit_initiation(pair, 0.0) == "initiation_consumed"
    assert pair.b.handshake_queue.depth == 0


def test_an_eighth_full_queue_makes_load() -> None:
    below = make_pair()
    deferred(below.b)
    assert set(flood(below.b, LOAD_AT - 1, 0.0)) == {"queued"}
    assert legit_initiation(below, 0.0) == "queued"  # the LOAD_AT-th queued
    assert flood(below.b, 1, 0.0) == ["cookie_sent"]  # and now the queue holds LOAD_AT

    responses = make_pair()
    deferred(responses.b)
    (init,) = responses.pb.initiate_handshake(0.0)  # b waits for a's response
    (resp,) = responses.a.handle_handshake_message(init, B_ADDR, 0.0).replies
    flood(responses.b, LOAD_AT, 0.0)
    assert responses.b.handle_handshake_message(resp, A_ADDR, 0.0).event == "cookie_sent"


def test_a_response_for_no_handshake_is_never_queued(pair: Pair) -> None:
    deferred(pair.b)
    assert set(flood(pair.b, 2 * LOAD_AT, 0.0, kind=2)) == {"unexpected_response"}
    assert pair.b.handshake_queue.depth == 0


def test_load_lasts_a_second_after_the_queue_drains(pair: Pair) -> None:
    jobs = deferred(pair.b)
    flood(pair.b, LOAD_AT, 10.0)
    assert flood(pair.b, 1, 10.0) == ["cookie_sent"]
    work(pair.b, jobs, 10.0)
    assert pair.b.handshake_queue.depth == 0
    assert flood(pair.b, 1, 10.0 + UNDER_LOAD_TIME - 0.01) == ["cookie_sent"]
    assert flood(pair.b, 1, 10.0 + UNDER_LOAD_TIME) == ["queued"]


def test_a_full_queue_sheds_and_counts(pair: Pair) -> None:
    jobs = deferred(pair.b)
    # Past the cookie check (as messages with a valid mac2 would be): only the bound is left.
    outcomes = flood(pair.b, HANDSHAKE_QUEUE_SIZE + 5, 0.0, under_load=False)
    assert outcomes.count("queued") == HANDSHAKE_QUEUE_SIZE == len(jobs)
    assert outcomes[HANDSHAKE_QUEUE_SIZE:] == ["handshake_queue_full"] * 5
    assert pair.b.drops["handshake_queue_full"] == 5
    work(pair.b, jobs, 0.0)
    assert pair.b.receive_counts.drops["bad_static_auth"] == HANDSHAKE_QUEUE_SIZE
    assert flood(pair.b, 1, 0.0, under_load=False) == ["queued"]


def test_a_full_queue_sheds_before_any_mac_work(pair: Pair) -> None:
    """As the kernel and wireguard-go: once the queue is full, a handshake message is
    dropped before its MACs are looked at, so a flood that fills the queue costs the loop
    no hash, and gets no cookie reply (it would get one with room in the queue)."""
    jobs = deferred(pair.b)
    flood(pair.b, HANDSHAKE_QUEUE_SIZE, 0.0, under_load=False)
    assert pair.b.handshake_queue.full
    bad_mac1 = next(iter(handshake_shaped(1)))
    assert flood(pair.b, 3, 0.0) == ["handshake_queue_full"] * 3  # under load, no mac2
    assert pair.b.handle_handshake_message(bad_mac1, stranger(0), 0.0).drop_reason == (
        "handshake_queue_full")
    assert pair.b.drops["cookie_sent"] == 0 and pair.b.drops["bad_mac1"] == 0
    work(pair.b, jobs, 0.0)
    assert flood(pair.b, 1, 0.0, under_load=False) == ["queued"]  # room again


def test_a_peer_answered_at_once_through_a_flood_the_worker_keeps_up_with(pair: Pair) -> None:
    """A flood of just under the load mark per wakeup, worked before the next: the real
    peer's initiation is answered in its own wakeup, no cookie round trip."""
    jobs = deferred(pair.b)
    sent: list[tuple[object, bytes]] = []
    for tick in range(20):
        now = tick * 0.01
        flood(pair.b, LOAD_AT - 2, now)
        if tick == 10:
            assert legit_initiation(pair, now) == "queued"
        sent += work(pair.b, jobs, now)
    assert pair.b.drops["cookie_sent"] == 0
    ((dest, response),) = sent
    assert dest == A_ADDR
    pair.a.handle_handshake_message(response, B_ADDR, 0.2)
    assert "handshake_complete" in pair.pa.events


def test_a_handshake_racing_the_removal_of_its_peer_is_dropped_by_reason(pair: Pair) -> None:
    jobs = deferred(pair.b)
    assert legit_initiation(pair, 0.0) == "queued"
    jobs[0].run()  # the worker answered
    pair.b.remove_peer(pair.a.public_key)
    assert work(pair.b, jobs, 0.0) == []
    assert pair.b.receive_counts.drops["handshake_peer_changed"] == 1
    assert len(pair.b.indexes) == 0  # nothing of the removed peer came back


def test_a_response_racing_a_new_initiation_or_a_psk_change_is_dropped() -> None:
    for change in ("reinitiate", "psk", "remove"):
        pair = make_pair()
        jobs = deferred(pair.a)
        (init,) = pair.pa.initiate_handshake(0.0)
        (resp,) = pair.b.handle_handshake_message(init, A_ADDR, 0.0).replies
        assert pair.a.handle_handshake_message(resp, B_ADDR, 0.0).event == "queued"
        jobs[0].run()
        if change == "reinitiate":
            pair.pa.initiate_handshake(10.0)
        elif change == "psk":
            pair.pa.handshake.psk = bytes(range(32))
        else:
            pair.a.remove_peer(pair.b.public_key)
        assert work(pair.a, jobs, 10.0) == [], change
        assert pair.a.receive_counts.drops["handshake_peer_changed"] == 1, change
        assert "handshake_complete" not in pair.pa.events


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 64), st.lists(st.tuples(st.sampled_from(["put", "done", "wait"]),
                                              st.floats(0, 2)), max_size=120))
def test_the_load_rule(size: int, steps: list[tuple[str, float]]) -> None:
    """Under load exactly while the queue holds an eighth of its size (at least one), or
    within UNDER_LOAD_TIME of the last time it did when asked; the depth stays in bounds."""
    queue = HandshakeQueue(size)
    mark = max(1, size // UNDER_LOAD_FRACTION)
    now, last_loaded = 0.0, float("-inf")
    for step, dt in steps:
        if step == "put" and not queue.full:
            queue.put()
        elif step == "done":
            queue.done()
        now += dt if step == "wait" else 0.0
        expected = queue.depth >= mark or now < last_loaded + UNDER_LOAD_TIME
        if queue.depth >= mark:
            last_loaded = now
        assert queue.under_load(now) is expected
        assert 0 <= queue.depth <= size
