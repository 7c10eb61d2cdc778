"""The device: dispatch of every message type, transport with cryptokey routing, reprs."""

from __future__ import annotations

import base64
import os

import pytest

from tests.unit.core.wireguard.helpers import (
    A_ADDR,
    B_ADDR,
    Pair,
    ipv4_packet,
    make_pair,
    receive_one,
)
from vpn.core.wireguard import Device
from vpn.core.wireguard.constants import INDEXES_PER_PEER


@pytest.mark.parametrize("psk", [None, os.urandom(32)])
def test_handshake_and_transport_both_ways(psk: bytes | None) -> None:
    p = make_pair(psk)
    p.handshake(0.0)
    assert p.pa.keypairs.current is not None and p.pa.keypairs.current.is_initiator
    assert p.pb.keypairs.current is not None and p.pb.keypairs.next is None
    assert "handshake_complete" in p.pa.events and "handshake_complete" in p.pb.events
    to_b = ipv4_packet("198.18.0.1", "198.18.0.2", b"ping")
    (wire,) = p.pa.send(to_b, 1.0)
    got = receive_one(p.b, wire, A_ADDR, 1.0)
    assert p.pb.rx_bytes > 0 and got.packet[: len(to_b)] == to_b
    to_a = ipv4_packet("198.18.0.2", "198.18.0.1", b"pong")
    (wire,) = p.pb.send(to_a, 1.0)
    got = receive_one(p.a, wire, B_ADDR, 1.0)
    assert got.packet[: len(to_a)] == to_a
    assert p.pa.rx_bytes > 0 and p.pb.tx_bytes > 0


def test_psk_mismatch_never_completes() -> None:
    p = make_pair(os.urandom(32))
    p.pb.handshake.psk = os.urandom(32)
    (init,) = p.pa.initiate_handshake(0.0)
    r = p.b.handle_handshake_message(init, A_ADDR, 0.0)
    assert r.event == "initiation_consumed"  # the psk only enters at message 2
    assert p.a.handle_handshake_message(r.replies[0], B_ADDR, 0.0).drop_reason == (
        "bad_response_auth"
    )


def test_cryptokey_routing_drops_spoofed_sources(pair: Pair) -> None:
    pair.handshake(0.0)
    (wire,) = pair.pa.send(ipv4_packet("198.18.0.99", "198.18.0.2"), 1.0)
    assert receive_one(pair.b, wire, A_ADDR, 1.0).drop_reason == "source_not_allowed"
    # Not IP at all: dropped under the data path's reason (one rule for both, inner.py).
    (wire,) = pair.pa.send(b"\x00" * 40, 1.0)
    assert receive_one(pair.b, wire, A_ADDR, 1.0).drop_reason == "inner_not_ip"


def test_staged_packets_flush_when_the_handshake_completes(pair: Pair) -> None:
    packet = ipv4_packet("198.18.0.1", "198.18.0.2")
    out = pair.pa.send(packet, 0.0)
    assert len(out) == 1 and out[0][0] == 1  # an initiation, the packet staged
    r1 = pair.b.handle_handshake_message(out[0], A_ADDR, 0.0)
    r2 = pair.a.handle_handshake_message(r1.replies[0], B_ADDR, 0.0)
    assert len(r2.replies) == 1 and r2.replies[0][0] == 4  # the staged packet, no keepalive
    got = receive_one(pair.b, r2.replies[0], A_ADDR, 0.0)
    assert got.packet[: len(packet)] == packet


def test_unknown_index_and_wrong_message_class(pair: Pair) -> None:
    pair.handshake(0.0)
    (wire,) = pair.pa.send(ipv4_packet("198.18.0.1", "198.18.0.2"), 1.0)
    assert pair.b.handle_handshake_message(wire, A_ADDR, 1.0).drop_reason == "not_handshake"
    bad = wire[:4] + b"\x01\x02\x03\x04" + wire[8:]
    assert receive_one(pair.b, bad, A_ADDR, 1.0).drop_reason == "unknown_receiver_index"
    assert receive_one(pair.b, wire[:20], A_ADDR, 1.0).drop_reason == "transport_too_short"
    assert pair.b.handle_handshake_message(b"\x09", A_ADDR, 1.0).drop_reason == "too_short"
    assert pair.b.drops["not_handshake"] == 1


def test_replayed_initiation_is_dropped_by_the_device(pair: Pair) -> None:
    (init,) = pair.pa.initiate_handshake(0.0)
    assert pair.b.handle_handshake_message(init, A_ADDR, 0.0).event == "initiation_consumed"
    again = pair.b.handle_handshake_message(init, A_ADDR, 5.0)
    assert again.drop_reason == "stale_timestamp"


def test_unknown_initiator_is_dropped() -> None:
    p = make_pair()
    stranger = Device(os.urandom(32))
    peer = stranger.add_peer(p.b.public_key)
    (init,) = peer.initiate_handshake(0.0)
    assert p.b.handle_handshake_message(init, A_ADDR, 0.0).drop_reason == "unknown_peer"


def test_index_table_stays_bounded_over_many_handshakes(pair: Pair) -> None:
    for i in range(50):
        pair.handshake(10.0 * i)
    assert len(pair.a.indexes) <= INDEXES_PER_PEER and len(pair.b.indexes) <= INDEXES_PER_PEER
    assert len(pair.a.indexes) == 2  # previous and current: the handshake index moved on


def test_simultaneous_initiations_settle(pair: Pair) -> None:
    (ia,) = pair.pa.initiate_handshake(0.0)
    (ib,) = pair.pb.initiate_handshake(0.0)
    ra = pair.b.handle_handshake_message(ia, A_ADDR, 0.0)
    rb = pair.a.handle_handshake_message(ib, B_ADDR, 0.0)
    # Each side's own initiation state was replaced by the other's, so the responses to the
    # stale initiations are dropped; the timers retry later and one handshake then wins.
    assert pair.a.handle_handshake_message(ra.replies[0], B_ADDR, 0.0).drop_reason
    assert pair.b.handle_handshake_message(rb.replies[0], A_ADDR, 0.0).drop_reason
    pair.handshake(6.0)
    assert pair.pa.keypair_for_sending(6.0) is not None
    assert pair.pb.keypair_for_sending(6.0) is not None


def test_remove_peer_forgets_everything(pair: Pair) -> None:
    pair.handshake(0.0)
    pair.b.allowed_ips.insert("198.18.0.0/24", pair.pb)
    pair.b.remove_peer(pair.a.public_key)
    assert len(pair.b.indexes) == 0 and len(pair.b.allowed_ips) == 0
    assert pair.b.next_deadline() is None


def test_no_secret_in_any_repr() -> None:
    private, psk = os.urandom(32), os.urandom(32)
    dev = Device(private)
    other = Device(os.urandom(32))
    peer = dev.add_peer(other.public_key, preshared_key=psk)
    other.add_peer(dev.public_key, preshared_key=psk)
    (init,) = peer.initiate_handshake(0.0)
    r = other.handle_handshake_message(init, A_ADDR, 0.0)
    dev.handle_handshake_message(r.replies[0], B_ADDR, 0.0)
    kp = peer.keypairs.current
    assert kp is not None
    texts = [
        repr(x)
        for x in (
            dev,
            peer,
            kp,
            peer.keypairs,
            peer.handshake,
            peer.cookies,
            peer.timers,
            dev.checker,
            dev.identity,
        )
    ]
    texts.append(str(dev.__dict__))  # even a debug dump of the device's fields
    secrets = [private, psk]
    for text in texts:
        for secret in secrets:
            assert secret.hex() not in text
            assert base64.b64encode(secret).decode() not in text
            assert repr(secret) not in text
