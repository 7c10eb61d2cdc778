"""The lost-session rehandshake (Device.on_unknown_index), on the protocol's clock: a
transport message for no session we know, from a peer's endpoint, may start a handshake,
but a spoofed one must never keep a dead peer's handshake (and its staged packets) alive."""

from __future__ import annotations

import os

import pytest

from tests.unit.core.wireguard.helpers import B_ADDR, Pair, ipv4_packet
from vpn.core.wireguard import Device, Peer
from vpn.core.wireguard.constants import (
    LOST_SESSION_INTERVAL,
    MAX_TIMER_HANDSHAKES,
    MESSAGE_INITIATION,
    REKEY_ATTEMPT_TIME,
    REKEY_TIMEOUT,
    REKEY_TIMEOUT_JITTER_MAX,
)

TICK = 0.1  # the endpoint runs the timers every 100 ms


def dead_peer(jitter: float) -> tuple[Device, Peer]:
    """A device with one peer at B_ADDR that never answers."""
    device = Device(os.urandom(32), jitter=lambda: jitter)
    return device, device.add_peer(Device(os.urandom(32)).public_key, endpoint=B_ADDR)


def run_until_give_up(
    jitter: float, spoof_every: float | None, limit: float = 300.0
) -> tuple[float | None, list[float], list[int]]:
    """Stage a packet for a dead peer at 0, then run the timers on a fake clock, with a
    spoofed unknown-index packet from the peer's endpoint every `spoof_every` seconds.
    Returns when it gave up, when initiations went out, and the staged count by tick."""
    device, peer = dead_peer(jitter)
    sent = [0.0] * len(peer.send(ipv4_packet("198.18.0.1", "198.18.0.2"), 0.0))
    staged = []
    next_spoof = spoof_every
    for step in range(1, round(limit / TICK)):
        now = step * TICK
        if next_spoof is not None and now >= next_spoof - 1e-9:
            next_spoof += spoof_every
            sent += [now for _ in device.on_unknown_index(B_ADDR, now)]
        sent += [now for _ in device.poll(now)]
        staged.append(len(peer.staged))
        if "give_up" in peer.events:
            return now, sent, staged
    return None, sent, staged


@pytest.mark.parametrize("jitter", [0.0, 0.5, 0.999])
def test_spoofed_packets_every_second_do_not_delay_the_give_up(jitter: float) -> None:
    gave_up, sent, _ = run_until_give_up(jitter, spoof_every=None)
    assert gave_up is not None
    spoofed_give_up, spoofed_sent, spoofed_staged = run_until_give_up(jitter, spoof_every=1.0)
    # The same give-up, at the same time, after the same initiations: as if no spoofed
    # packet had come. Retransmissions fall between whole seconds with jitter, so spoofed
    # packets also come just after each retransmission was due.
    assert spoofed_give_up == pytest.approx(gave_up)
    assert spoofed_sent == sent
    assert len(sent) == MAX_TIMER_HANDSHAKES + 2  # the first initiation and every retry
    # The 20th expiry gives up (as the kernel): past REKEY_ATTEMPT_TIME, after at most 20
    # jittered timeouts, each run up to a tick late.
    timeout = REKEY_TIMEOUT + REKEY_TIMEOUT_JITTER_MAX + TICK
    assert REKEY_ATTEMPT_TIME <= gave_up <= (MAX_TIMER_HANDSHAKES + 2) * timeout
    # The staged packet waited until the give-up, which dropped it.
    assert spoofed_staged[:-1] == [1] * (len(spoofed_staged) - 1)
    assert spoofed_staged[-1] == 0


def test_after_the_give_up_a_spoofed_packet_sends_nothing() -> None:
    gave_up, _, _ = run_until_give_up(0.0, spoof_every=None)
    assert gave_up is not None
    device, peer = dead_peer(0.0)
    peer.send(ipv4_packet("198.18.0.1", "198.18.0.2"), 0.0)
    now = 0.0
    while "give_up" not in peer.events:
        now += TICK
        device.poll(now)
    for second in range(1, 60):
        assert device.on_unknown_index(B_ADDR, now + second) == []
        assert device.poll(now + second) == []
    # Data asks anew: a fresh handshake with a fresh count of attempts.
    assert peer.send(ipv4_packet("198.18.0.1", "198.18.0.2"), now + 60)
    assert peer.timers.handshake_attempts == 0


def test_a_restarted_device_rehandshakes_once_per_interval() -> None:
    """What the rehandshake is for: we restarted, the peer still sends on the old session."""
    device, peer = dead_peer(0.0)
    (pair,) = device.on_unknown_index(B_ADDR, 10.0)
    assert pair[0] is peer and pair[1][0] == MESSAGE_INITIATION
    assert peer.timers.retransmit_at is not None  # the timers retry it from here on
    assert device.on_unknown_index(B_ADDR, 10.0 + LOST_SESSION_INTERVAL / 2) == []
    # Later ones leave the retransmissions (and their count) to the timers.
    attempts = peer.timers.handshake_attempts
    assert device.on_unknown_index(B_ADDR, 10.0 + REKEY_TIMEOUT + 1) == []
    assert peer.timers.handshake_attempts == attempts


def test_no_rehandshake_for_a_stranger_or_a_live_session(pair: Pair) -> None:
    pair.handshake(0.0)
    assert pair.a.on_unknown_index(B_ADDR, 1.0) == []  # a has a session with b
    device, peer = dead_peer(0.0)
    assert device.on_unknown_index(("198.18.7.7", 51820), 10.0) == []
    assert peer.timers.retransmit_at is None
    # The scan that found nothing still counts against the interval.
    assert device.on_unknown_index(B_ADDR, 10.5) == []
    assert device.on_unknown_index(B_ADDR, 11.0) != []
