"""A device without a private key (wg-quick's `PostUp = wg set %i private-key FILE`), the key
arriving through `Device.apply`, and an all-zero key removing it, as the kernel and
wireguard-go do."""

from __future__ import annotations

import os

from vpn.control.uapi import format_get, parse_set
from vpn.core.wireguard import Device, HandshakeJob
from vpn.core.wireguard.changes import ChangeSet, PeerChange
from vpn.core.wireguard.crypto import KeyWiped, PrivateKey, dh
from vpn.core.wireguard.noise import Answer

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


def _wiped(key: PrivateKey) -> bool:
    try:
        dh(key, PrivateKey(bytes(range(32))).public)
    except KeyWiped:
        return True
    return False


def test_a_changed_key_is_wiped_and_a_job_in_flight_with_it_drops() -> None:
    """The old static key's native copy is freed (OpenSSL cleanses it) when the key changes;
    an initiation already queued with it drops as handshake_peer_changed, counted, not an
    internal error."""
    pair = make_pair()
    jobs: list[HandshakeJob] = []
    pair.a.defer_handshake = jobs.append
    old = pair.a.identity
    assert old is not None and not _wiped(old.private)
    init = pair.pb.initiate_handshake(1.0)[0]
    assert pair.a.handle_handshake_message(init, B_ADDR, 1.0).event == "queued"
    pair.a.apply(ChangeSet(private_key=os.urandom(32)), 2.0)
    assert _wiped(old.private)
    jobs[0].run()
    assert pair.a.finish_handshakes(jobs, 2.0) == []
    assert pair.a.receive_counts.drops == {"handshake_peer_changed": 1}
    pair.a.apply(ChangeSet(private_key=ZERO_KEY), 3.0)  # removed: wiped too
    assert pair.a.identity is None


def test_ephemeral_keys_are_wiped_when_done_with() -> None:
    """The responder's ephemeral where its DHs ran (only its public half comes back);
    the initiator's when a newer
    initiation replaces it or the handshake is cleared (its peer removed here; deriving the
    session clears it too)."""
    pair = make_pair()
    pair.handshake(1.0)
    assert pair.pa.handshake.ephemeral is None and pair.pb.handshake.ephemeral is None
    pair.pa.initiate_handshake(10.0)
    first = pair.pa.handshake.ephemeral
    assert first is not None and not _wiped(first)
    pair.wall.t += 10.0
    init = pair.pa.initiate_handshake(20.0)[0]  # a retransmission: a new ephemeral
    second = pair.pa.handshake.ephemeral
    assert second is not None and second is not first and _wiped(first)
    jobs: list[HandshakeJob] = []
    pair.b.defer_handshake = jobs.append
    assert pair.b.handle_handshake_message(init, A_ADDR, 20.0).event == "queued"
    jobs[0].run()
    answer = jobs[0].outcome
    assert isinstance(answer, Answer) and len(answer.ephemeral_public) == 32
    assert not _wiped(second)  # a's waits for the response
    pair.a.remove_peer(pair.b.public_key or b"")
    assert _wiped(second)
