"""The handshake: both roles against each other, with and without PSK, and every rejection."""

from __future__ import annotations

import os

import pytest

from vpn.core.wireguard import crypto
from vpn.core.wireguard import noise as n
from vpn.core.wireguard.messages import Initiation, Response

T0 = crypto.tai64n(1_700_000_000.0)
T1 = crypto.tai64n(1_700_000_001.0)


def identities() -> tuple[n.StaticIdentity, n.StaticIdentity]:
    return (
        n.StaticIdentity(crypto.PrivateKey.generate()),
        n.StaticIdentity(crypto.PrivateKey.generate()),
    )


def run_handshake(psk: bytes | None) -> tuple[n.SessionKeys, n.SessionKeys]:
    ia, ib = identities()
    hs_a = n.Handshake(ia, ib.public, psk)
    hs_b = n.Handshake(ib, ia.public, psk)
    init = n.create_initiation(hs_a, 11, T0, crypto.PrivateKey.generate())
    found = n.consume_initiation(ib, init, {ia.public: hs_b}.get, now=1.0)
    assert found is hs_b and hs_b.remote_index == 11
    resp = n.create_response(hs_b, 22, crypto.PrivateKey.generate())
    assert resp.receiver_index == 11
    n.consume_response(resp, hs_a)
    return n.derive_session(hs_a), n.derive_session(hs_b)


@pytest.mark.parametrize("psk", [None, os.urandom(32)])
def test_both_roles_derive_mirrored_keys(psk: bytes | None) -> None:
    ka, kb = run_handshake(psk)
    assert ka.is_initiator and not kb.is_initiator
    assert ka.send_key == kb.recv_key and ka.recv_key == kb.send_key
    assert ka.send_key != ka.recv_key
    assert (ka.local_index, ka.remote_index) == (11, 22)
    assert (kb.local_index, kb.remote_index) == (22, 11)


def test_psk_mismatch_fails_at_the_response() -> None:
    ia, ib = identities()
    hs_a = n.Handshake(ia, ib.public, os.urandom(32))
    hs_b = n.Handshake(ib, ia.public, os.urandom(32))
    init = n.create_initiation(hs_a, 1, T0, crypto.PrivateKey.generate())
    n.consume_initiation(ib, init, {ia.public: hs_b}.get, 1.0)
    resp = n.create_response(hs_b, 2, crypto.PrivateKey.generate())
    with pytest.raises(n.HandshakeError) as info:
        n.consume_response(resp, hs_a)
    assert info.value.reason == "bad_response_auth"
    assert hs_a.state is n.HandshakeState.CREATED_INITIATION  # untouched


def _setup() -> tuple[n.StaticIdentity, n.Handshake, n.Handshake, Initiation]:
    ia, ib = identities()
    hs_a = n.Handshake(ia, ib.public)
    hs_b = n.Handshake(ib, ia.public)
    init = n.create_initiation(hs_a, 1, T0, crypto.PrivateKey.generate())
    return ib, hs_a, hs_b, init


def _flip(data: bytes, i: int) -> bytes:
    return data[:i] + bytes([data[i] ^ 0x80]) + data[i + 1 :]


@pytest.mark.parametrize(
    ("field", "reason"),
    [
        ("ephemeral", "bad_static_auth"),
        ("encrypted_static", "bad_static_auth"),
        ("encrypted_timestamp", "bad_timestamp_auth"),
    ],
)
def test_tampered_initiation_fields(field: str, reason: str) -> None:
    ib, hs_a, hs_b, init = _setup()
    value = getattr(init, field)
    for i in (0, len(value) - 1):
        bad = Initiation(**{**_fields(init), field: _flip(value, i)})
        with pytest.raises(n.HandshakeError) as info:
            n.consume_initiation(ib, bad, {hs_a.identity.public: hs_b}.get, 1.0)
        assert info.value.reason == reason
    assert hs_b.state is n.HandshakeState.ZEROED


def _fields(msg: Initiation | Response) -> dict[str, object]:
    return {name: getattr(msg, name) for name in msg.__slots__}


def test_unknown_peer() -> None:
    ib, _, _, init = _setup()
    with pytest.raises(n.HandshakeError) as info:
        n.consume_initiation(ib, init, lambda key: None, 1.0)
    assert info.value.reason == "unknown_peer"


def test_replayed_and_old_initiations_are_rejected() -> None:
    ib, hs_a, hs_b, init = _setup()
    peers = {hs_a.identity.public: hs_b}.get
    n.consume_initiation(ib, init, peers, 1.0)
    with pytest.raises(n.HandshakeError) as info:
        n.consume_initiation(ib, init, peers, 10.0)  # the very same bytes
    assert info.value.reason == "stale_timestamp"
    older = n.create_initiation(
        hs_a, 2, crypto.tai64n(1_699_999_999.0), crypto.PrivateKey.generate()
    )
    with pytest.raises(n.HandshakeError) as info:
        n.consume_initiation(ib, older, peers, 10.0)
    assert info.value.reason == "stale_timestamp"
    newer = n.create_initiation(hs_a, 3, T1, crypto.PrivateKey.generate())
    assert n.consume_initiation(ib, newer, peers, 10.0) is hs_b


def test_initiation_flood_guard_is_fifty_per_second() -> None:
    ib, hs_a, hs_b, init = _setup()
    peers = {hs_a.identity.public: hs_b}.get
    n.consume_initiation(ib, init, peers, 1.0)
    second = n.create_initiation(hs_a, 2, T1, crypto.PrivateKey.generate())
    with pytest.raises(n.HandshakeError) as info:
        n.consume_initiation(ib, second, peers, 1.0 + 0.019)
    assert info.value.reason == "initiation_flood"
    assert n.consume_initiation(ib, second, peers, 1.0 + 0.02) is hs_b


@pytest.mark.parametrize("field", ["ephemeral", "encrypted_nothing"])
def test_tampered_response_fields(field: str) -> None:
    ib, hs_a, hs_b, init = _setup()
    n.consume_initiation(ib, init, {hs_a.identity.public: hs_b}.get, 1.0)
    resp = n.create_response(hs_b, 2, crypto.PrivateKey.generate())
    bad = Response(**{**_fields(resp), field: _flip(getattr(resp, field), 5)})
    with pytest.raises(n.HandshakeError) as info:
        n.consume_response(bad, hs_a)
    assert info.value.reason == "bad_response_auth"
    n.consume_response(resp, hs_a)  # the genuine one still works afterwards


def test_response_without_initiation_and_twice() -> None:
    ib, hs_a, hs_b, init = _setup()
    n.consume_initiation(ib, init, {hs_a.identity.public: hs_b}.get, 1.0)
    resp = n.create_response(hs_b, 2, crypto.PrivateKey.generate())
    with pytest.raises(n.HandshakeError) as info:
        n.consume_response(resp, hs_b)  # the responder's own state
    assert info.value.reason == "unexpected_response"
    n.consume_response(resp, hs_a)
    with pytest.raises(n.HandshakeError):
        n.consume_response(resp, hs_a)


def test_low_order_keys() -> None:
    ia, ib = identities()
    hs = n.Handshake(ia, bytes(32))
    with pytest.raises(n.HandshakeError) as info:
        n.create_initiation(hs, 1, T0, crypto.PrivateKey.generate())
    assert info.value.reason == "low_order_peer_key"
    _, _hs_a, hs_b, init = _setup()
    bad = Initiation(**{**_fields(init), "ephemeral": bytes(32)})
    with pytest.raises(n.HandshakeError) as info:
        n.consume_initiation(ib, bad, lambda k: hs_b, 1.0)
    assert info.value.reason == "low_order_ephemeral"


def test_reprs_hide_secrets() -> None:
    ka, _ = run_handshake(os.urandom(32))
    text = repr(ka)
    assert ka.send_key.hex() not in text and ka.recv_key.hex() not in text
    ident = n.StaticIdentity(crypto.PrivateKey.generate())
    assert ident.private.private_bytes().hex() not in repr(ident)
