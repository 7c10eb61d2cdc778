"""The responder's peer table (noise.KnownPeers over handshake_table.c) as the device keeps
it: built again when the peer set, a psk or the private key changes, so that an initiation
meets the configuration as it is; a job queued with an older table drops as
handshake_peer_changed when its peer was removed or its psk changed meanwhile."""

from __future__ import annotations

import os

from vpn.core.wireguard import HandshakeJob
from vpn.core.wireguard.changes import ChangeSet, PeerChange

from .helpers import A_ADDR, B_ADDR, Pair, make_pair


def test_a_peer_added_after_an_answer_is_known() -> None:
    pair = make_pair()
    pair.handshake(1.0)  # b's table built, with a alone
    third = make_pair()  # third.a: a new peer of b's
    assert pair.b.public_key is not None and third.a.public_key is not None
    newcomer = third.a.add_peer(pair.b.public_key, endpoint=B_ADDR)
    pair.b.add_peer(third.a.public_key, endpoint=A_ADDR)
    init = newcomer.initiate_handshake(2.0)[0]
    result = pair.b.handle_handshake_message(init, A_ADDR, 2.0)
    assert result.drop_reason is None and result.peer is pair.b.peers[third.a.public_key]
    assert third.a.handle_handshake_message(result.replies[0], B_ADDR, 2.0).drop_reason is None


def test_a_removed_peer_is_unknown() -> None:
    pair = make_pair()
    pair.handshake(1.0)
    pair.b.remove_peer(pair.pb.public_key)
    init = pair.pa.initiate_handshake(10.0)[0]
    assert pair.b.handle_handshake_message(init, A_ADDR, 10.0).drop_reason == "unknown_peer"


def _queued(pair_psk: bytes | None = None) -> tuple[Pair, list[HandshakeJob]]:
    pair = make_pair(pair_psk)
    jobs: list[HandshakeJob] = []
    pair.b.defer_handshake = jobs.append
    init = pair.pa.initiate_handshake(1.0)[0]
    assert pair.b.handle_handshake_message(init, A_ADDR, 1.0).event == "queued"
    return pair, jobs


def test_a_peer_removed_while_its_initiation_is_queued_drops_it() -> None:
    pair, jobs = _queued()
    pair.b.remove_peer(pair.pb.public_key)
    jobs[0].run()
    assert pair.b.finish_handshakes(jobs, 1.0) == []
    assert pair.b.receive_counts.drops == {"handshake_peer_changed": 1}


def test_a_psk_changed_while_an_initiation_is_worked_drops_it_then_the_new_one_works(
) -> None:
    """The new psk reaches the next table: the next initiation's response is made with it,
    so the initiator (given it too) accepts it."""
    pair, jobs = _queued(os.urandom(32))
    b, a = pair.b, pair.a
    new_psk = os.urandom(32)
    jobs[0].run()  # answered with the old psk (the table's on the native path)
    b.apply(ChangeSet(peers=[PeerChange(a.public_key, preshared_key=new_psk)]), 1.0)
    assert b.finish_handshakes(jobs, 1.0) == []
    assert b.receive_counts.drops == {"handshake_peer_changed": 1}
    a.apply(ChangeSet(peers=[PeerChange(b.public_key, preshared_key=new_psk)]), 1.0)
    b.defer_handshake = None
    init = pair.pa.initiate_handshake(20.0)[0]
    response = b.handle_handshake_message(init, A_ADDR, 20.0)
    assert response.drop_reason is None
    assert a.handle_handshake_message(response.replies[0], B_ADDR, 20.0).drop_reason is None


def test_a_new_private_key_rebuilds_the_table() -> None:
    """The old table's ss are the old key's: an initiation to the new key is answered with
    the new ones."""
    pair = make_pair()
    pair.handshake(1.0)
    pair.b.apply(ChangeSet(private_key=os.urandom(32)), 2.0)
    assert pair.b.public_key is not None
    pair.a.remove_peer(pair.pa.public_key)
    pa = pair.a.add_peer(pair.b.public_key, endpoint=B_ADDR)
    init = pa.initiate_handshake(3.0)[0]
    response = pair.b.handle_handshake_message(init, A_ADDR, 3.0)
    assert response.drop_reason is None
    assert pair.a.handle_handshake_message(response.replies[0], B_ADDR, 3.0).drop_reason is None
