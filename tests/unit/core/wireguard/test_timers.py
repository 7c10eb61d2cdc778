"""Timers alone, then two devices over hours of protocol time with a fake clock."""

from __future__ import annotations

import itertools

import pytest

from tests.unit.core.wireguard.helpers import (
    A_ADDR,
    B_ADDR,
    Pair,
    ipv4_packet,
    make_pair,
    receive_one,
)
from vpn.core.wireguard.constants import (
    KEEPALIVE_TIMEOUT,
    MAX_TIMER_HANDSHAKES,
    REJECT_AFTER_TIME,
    REKEY_AFTER_TIME,
    REKEY_ATTEMPT_TIME,
    REKEY_TIMEOUT,
)
from vpn.core.wireguard.timers import TimerAction, Timers


def test_retransmit_with_jitter_then_give_up() -> None:
    t = Timers(jitter=lambda: 0.999)
    t.handshake_initiated(0.0)
    assert t.next_deadline() == pytest.approx(REKEY_TIMEOUT + 0.333, abs=1e-3)
    assert t.poll(5.0) == []
    now, sent = 0.0, 0
    while True:
        now = t.next_deadline()
        actions = t.poll(now)
        if actions != [TimerAction.SEND_HANDSHAKE_RETRY]:
            break
        sent += 1
        t.handshake_initiated(now)
    assert actions == [TimerAction.GIVE_UP]
    assert sent == MAX_TIMER_HANDSHAKES + 1
    # Like the kernel: the 20th expiry (attempt count past REKEY_ATTEMPT_TIME / REKEY_TIMEOUT)
    # gives up, so at least REKEY_ATTEMPT_TIME and at most 20 jittered timeouts have passed.
    assert now == pytest.approx((MAX_TIMER_HANDSHAKES + 2) * (REKEY_TIMEOUT + 0.999 / 3))
    assert now >= REKEY_ATTEMPT_TIME
    assert t.zero_keys_at == pytest.approx(now + 3 * REJECT_AFTER_TIME)


def test_passive_keepalive_and_need_another() -> None:
    t = Timers()
    t.data_received(0.0)
    t.data_received(3.0)  # keepalive already pending: remember to send one more
    assert t.poll(KEEPALIVE_TIMEOUT) == [TimerAction.SEND_KEEPALIVE]
    t.any_authenticated_packet_sent(KEEPALIVE_TIMEOUT)
    t.keepalive_timer_sent(KEEPALIVE_TIMEOUT)
    assert t.keepalive_at == 2 * KEEPALIVE_TIMEOUT
    t.any_authenticated_packet_sent(12.0)  # real data went out: no keepalive needed
    assert t.next_deadline() is None


def test_new_handshake_when_sent_data_gets_no_answer() -> None:
    t = Timers(jitter=lambda: 0.0)
    t.data_sent(0.0)
    t.data_sent(4.0)  # does not push the deadline out
    assert t.next_deadline() == KEEPALIVE_TIMEOUT + REKEY_TIMEOUT
    assert t.poll(15.0) == [TimerAction.SEND_HANDSHAKE]
    t.data_sent(20.0)
    t.any_authenticated_packet_received(21.0)
    assert t.next_deadline() is None


def test_persistent_keepalive_rearms_on_traffic() -> None:
    t = Timers(persistent_keepalive=25.0)
    t.any_authenticated_packet_traversal(0.0)
    t.any_authenticated_packet_traversal(10.0)
    assert t.poll(34.9) == [] and t.poll(35.0) == [TimerAction.SEND_PERSISTENT_KEEPALIVE]
    t.set_persistent_keepalive(0, 40.0)
    assert t.next_deadline() is None


# -- whole devices ----------------------------------------------------------------------------


class Net:
    """Delivers datagrams between the two devices of a pair, counting what crossed."""

    def __init__(self, pair: Pair, lossy_to_b: bool = False) -> None:
        self.p = pair
        self.lossy_to_b = lossy_to_b
        self.initiations = {"a": 0, "b": 0}
        self.delivered = 0
        self.drops: list[str] = []

    def send(self, sender: str, datagrams: list[bytes], now: float) -> None:
        queue = [(sender, d) for d in datagrams]
        while queue:
            src, data = queue.pop(0)
            if data[0] == 1:
                self.initiations[src] += 1
            if src == "a" and self.lossy_to_b:
                continue
            dst, addr = (self.p.b, A_ADDR) if src == "a" else (self.p.a, B_ADDR)
            other = "b" if src == "a" else "a"
            if data[0] == 4:
                res = receive_one(dst, data, addr, now)
            else:
                res = dst.handle_handshake_message(data, addr, now)
            if res.drop_reason:
                self.drops.append(res.drop_reason)
            else:
                self.delivered += 1
            queue += [(other, r) for r in res.replies]

    def tick(self, now: float) -> None:
        self.p.wall.t = 1_700_000_000.0 + now
        for name, dev in (("a", self.p.a), ("b", self.p.b)):
            self.send(name, [d for _, d in dev.poll(now)], now)


def test_hours_of_two_way_traffic_rekey_every_two_minutes() -> None:
    p = make_pair()
    net = Net(p)
    to_b = ipv4_packet("198.18.0.1", "198.18.0.2")
    to_a = ipv4_packet("198.18.0.2", "198.18.0.1")
    handshake_times: list[float] = []
    created = None
    now = 0.0
    while now < 3 * 3600:
        net.tick(now)
        if int(now * 2) % 2 == 0:  # both sides send a packet every second
            net.send("a", p.pa.send(to_b, now), now)
            net.send("b", p.pb.send(to_a, now), now)
        kp = p.pa.keypairs.current
        if kp is not None and kp.created != created:
            created = kp.created
            handshake_times.append(now)
        if now > 1:
            assert p.pa.keypair_for_sending(now) is not None
            assert p.pb.keypair_for_sending(now) is not None
        now += 0.5
    gaps = [b - a for a, b in itertools.pairwise(handshake_times)]
    assert gaps and all(REKEY_AFTER_TIME <= g <= REKEY_AFTER_TIME + 2 for g in gaps), gaps
    assert set(net.drops) <= {"replay"}, net.drops  # nothing else ever dropped
    assert net.initiations["a"] >= len(handshake_times)


def test_initiator_alone_sends_but_no_answer_triggers_retries_then_zeroing() -> None:
    p = make_pair()
    p.handshake(0.0)
    net = Net(p, lossy_to_b=True)  # from now on a's packets are lost
    p.pa.events.clear()
    to_b = ipv4_packet("198.18.0.1", "198.18.0.2")
    net.send("a", p.pa.send(to_b, 1.0), 1.0)
    events: list[tuple[float, str]] = []
    now = 1.0
    while now < 1000:
        before = net.initiations["a"]
        net.tick(now)
        if net.initiations["a"] > before:
            events.append((now, "initiation"))
        for e in p.pa.events:
            events.append((now, e))
        p.pa.events.clear()
        now += 0.25
    first = events[0]
    # No reply for KEEPALIVE_TIMEOUT + REKEY_TIMEOUT after data: a new handshake.
    assert first == (1.0 + KEEPALIVE_TIMEOUT + REKEY_TIMEOUT, "initiation")
    give_up = next(t for t, e in events if e == "give_up")
    assert REKEY_ATTEMPT_TIME <= give_up - first[0] <= REKEY_ATTEMPT_TIME + 15
    zeroed = next(t for t, e in events if e == "keys_zeroed")
    # Zeroing: 3 x REJECT_AFTER_TIME after the session was derived at t=0.
    assert zeroed == pytest.approx(3 * REJECT_AFTER_TIME, abs=0.3)
    assert p.pa.keypairs.current is None and p.pa.keypair_for_sending(zeroed) is None


def test_responder_sends_passive_keepalive(pair: Pair) -> None:
    pair.handshake(0.0)
    net = Net(pair)
    net.send("a", pair.pa.send(ipv4_packet("198.18.0.1", "198.18.0.2"), 1.0), 1.0)
    assert pair.b.poll(1.0 + KEEPALIVE_TIMEOUT - 0.01) == []
    out = pair.b.poll(1.0 + KEEPALIVE_TIMEOUT)
    assert len(out) == 1 and len(out[0][1]) == 32  # one keepalive to a


def test_expired_session_is_not_used(pair: Pair) -> None:
    pair.handshake(0.0)
    assert pair.pa.keypair_for_sending(REJECT_AFTER_TIME - 0.1) is not None
    assert pair.pa.keypair_for_sending(REJECT_AFTER_TIME) is None
    out = pair.pa.send(ipv4_packet("198.18.0.1", "198.18.0.2"), REJECT_AFTER_TIME)
    assert out and out[0][0] == 1  # staged, and a handshake started


def test_initiator_rekeys_on_receive_near_expiry(pair: Pair) -> None:
    pair.handshake(0.0)
    age = REJECT_AFTER_TIME - KEEPALIVE_TIMEOUT - REKEY_TIMEOUT
    (wire,) = pair.pb.send(ipv4_packet("198.18.0.2", "198.18.0.1"), age - 1)
    assert receive_one(pair.a, wire, B_ADDR, age - 1).replies == []
    (wire,) = pair.pb.send(ipv4_packet("198.18.0.2", "198.18.0.1"), age)
    replies = receive_one(pair.a, wire, B_ADDR, age).replies
    assert len(replies) == 1 and replies[0][0] == 1
    (wire,) = pair.pb.send(ipv4_packet("198.18.0.2", "198.18.0.1"), age + 6)
    assert receive_one(pair.a, wire, B_ADDR, age + 6).replies == []  # only once


def test_persistent_keepalive_through_the_device() -> None:
    p = make_pair()
    p.pa.timers.set_persistent_keepalive(25.0, 0.0)
    p.handshake(0.0)
    sent = [now for now in range(1, 200) if p.a.poll(float(now))]
    assert sent[:3] == [25, 50, 75]
