"""A device without a private key (wg-quick's `PostUp = wg set %i private-key FILE`), the key
arriving through `Device.apply`, and an all-zero key removing it, as the kernel and
wireguard-go do."""

from __future__ import annotations

import os

from vpn.control.uapi import format_get, parse_set
from vpn.core.wireguard import Device
from vpn.core.wireguard.changes import ChangeSet, PeerChange

from .helpers import A_ADDR, B_ADDR, WallClock, make_pair

ZERO_KEY = bytes(32)


def test_without_a_key_nothing_is_sent_and_handshakes_are_dropped() -> None:
    pair = make_pair()
    assert pair.b.public_key is not None
    keyless = Device(None, wall_clock=WallClock(), jitter=lambda: 0.0)
    peer = keyless.add_peer(pair.b.public_key, endpoint=B_ADDR)
    keyless.allowed_ips.insert("198.18.0.2/32", peer)
    assert keyless.private_key is None and keyless.public_key is None
    assert keyless.checker is None
    assert peer.initiate_handshake(0.0) == []
    assert peer.send(b"\x45" + bytes(27), 0.0) == []  # staged, no initiation
    assert keyless.poll(10.0) == []

    init = pair.pb.initiate_handshake(0.0)[0]  # whoever sends us one: nobody can know us
    result = keyless.handle_handshake_message(init, A_ADDR, 0.0)
    assert result.drop_reason == "no_private_key"
    assert keyless.drops["no_private_key"] == 1


def test_snapshot_and_get_omit_the_missing_key() -> None:
    keyless = Device(None)
    assert keyless.snapshot().private_key is None
    assert "private_key" not in format_get(keyless.snapshot())
    assert "public=none" in repr(keyless)


def test_a_key_applied_later_makes_handshakes_work() -> None:
    pair = make_pair()
    key = os.urandom(32)
    keyless = Device(None, wall_clock=pair.wall, jitter=lambda: 0.0)
    assert pair.b.public_key is not None
    keyless.apply(ChangeSet(peers=[PeerChange(pair.b.public_key, endpoint=B_ADDR)]), 0.0)
    keyless.apply(ChangeSet(private_key=key), 0.0)
    assert keyless.private_key == key and keyless.checker is not None
    assert keyless.public_key is not None
    pair.b.remove_peer(pair.pb.public_key)
    pb = pair.b.add_peer(keyless.public_key, endpoint=A_ADDR)
    init = keyless.peers[pair.b.public_key].initiate_handshake(1.0)
    assert len(init) == 1
    response = pair.b.handle_handshake_message(init[0], A_ADDR, 1.0)
    assert response.drop_reason is None and response.peer is pb
    done = keyless.handle_handshake_message(response.replies[0], B_ADDR, 1.0)
    assert done.drop_reason is None


def test_an_all_zero_key_removes_the_key_and_ends_every_session() -> None:
    pair = make_pair()
    pair.handshake(1.0)
    assert pair.pa.keypair_for_sending(1.0) is not None
    changes = parse_set([f"private_key={'0' * 64}"])
    assert changes.private_key == ZERO_KEY
    pair.a.check(changes)
    pair.a.apply(changes, 2.0)
    assert pair.a.private_key is None and pair.a.public_key is None
    assert pair.pa.keypair_for_sending(2.0) is None
    assert pair.a.indexes.keypair_indexes() == b"" and pair.a.screen() is None
    assert pair.pa.initiate_handshake(20.0) == []
    assert "private_key" not in format_get(pair.a.snapshot())
    init = pair.pb.initiate_handshake(20.0)[0]
    assert pair.a.handle_handshake_message(init, B_ADDR, 20.0).drop_reason == "no_private_key"
    # Removing it again changes nothing and is no error.
    pair.a.apply(changes, 21.0)
    assert pair.a.private_key is None and len(pair.a.peers) == 1


def test_the_zero_key_is_not_a_peer_key_check() -> None:
    # A peer's own-key check must not compare against a missing key.
    keyless = Device(None)
    keyless.apply(ChangeSet(private_key=ZERO_KEY,
                            peers=[PeerChange(ZERO_KEY[:31] + b"\x01")]), 0.0)
    assert len(keyless.peers) == 1
