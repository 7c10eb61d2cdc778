"""An independent check of the handshake: the `noiseprotocol` package plays the other role.

WireGuard's message 1 fields from byte 8 to mac1 (ephemeral, encrypted static, encrypted
timestamp) are exactly Noise IKpsk2's message 1 (e, es, s, ss, payload = TAI64N); message 2's
fields from byte 12 to mac1 (ephemeral, encrypted empty) are Noise's message 2
(e, ee, se, psk, empty payload). Noise's Split gives the transport keys.
"""

from __future__ import annotations

import os

import pytest
from noise.connection import Keypair as NoiseKeypair
from noise.connection import NoiseConnection

from tests.unit.core.wireguard.helpers import A_ADDR, B_ADDR, WallClock, receive_one
from vpn.core.wireguard import Device, crypto
from vpn.core.wireguard.constants import CONSTRUCTION, IDENTIFIER
from vpn.core.wireguard.cookie import CookieGenerator
from vpn.core.wireguard.messages import Initiation, Response, parse_initiation, parse_response


def noise_peer(private: bytes, remote_public: bytes | None, psk: bytes, initiator: bool):
    conn = NoiseConnection.from_name(CONSTRUCTION)
    conn.set_prologue(IDENTIFIER)
    conn.set_psks(psk=psk)  # IKpsk2: the psk is mixed in after message 2's `se`
    conn.set_keypair_from_private_bytes(NoiseKeypair.STATIC, private)
    if remote_public is not None:
        conn.set_keypair_from_public_bytes(NoiseKeypair.REMOTE_STATIC, remote_public)
    conn.set_as_initiator() if initiator else conn.set_as_responder()
    conn.start_handshake()
    return conn


def split_keys(conn) -> tuple[bytes, bytes]:  # (send, receive) of that side
    proto = conn.noise_protocol
    return proto.cipher_state_encrypt.k, proto.cipher_state_decrypt.k


@pytest.mark.parametrize("psk", [None, os.urandom(32)])
def test_our_initiator_against_noiseprotocol_responder(psk: bytes | None) -> None:
    their_private = os.urandom(32)
    device = Device(os.urandom(32), wall_clock=WallClock())
    their_public = crypto.PrivateKey(their_private).public
    peer = device.add_peer(their_public, preshared_key=psk)
    (raw,) = peer.initiate_handshake(now=0.0)

    responder = noise_peer(their_private, None, psk or bytes(32), initiator=False)
    timestamp = responder.read_message(raw[8:116])
    assert timestamp == crypto.tai64n(WallClock()())
    body = responder.write_message(b"")
    assert len(body) == 48
    init = parse_initiation(raw)
    # Their responder's message 2 in WireGuard's frame; mac1 keyed by our public key.
    resp = Response(0x5151, init.sender_index, bytes(body[:32]), bytes(body[32:]))
    wire = CookieGenerator(device.public_key).add_macs(resp.pack(), 0.0)
    result = device.handle_handshake_message(wire, B_ADDR, now=0.0)
    assert result.drop_reason is None and result.event == "response_consumed"

    kp = peer.keypairs.current
    assert kp is not None and kp.is_initiator
    their_send, their_recv = split_keys(responder)
    # Same keys: our keepalive decrypts with their Noise transport cipher, and back.
    keepalive = result.replies[0]
    assert responder.decrypt(keepalive[16:]) == b""
    sealed = responder.encrypt(b"\x45" + bytes(15))
    frame = bytes([4, 0, 0, 0]) + (kp.local_index).to_bytes(4, "little") + (0).to_bytes(8, "little")
    assert kp.decrypt(frame + sealed, now=0.0) == b"\x45" + bytes(15)
    assert len(their_send) == len(their_recv) == 32


@pytest.mark.parametrize("psk", [None, os.urandom(32)])
def test_noiseprotocol_initiator_against_our_responder(psk: bytes | None) -> None:
    their_private = os.urandom(32)
    their_public = crypto.PrivateKey(their_private).public
    device = Device(os.urandom(32), wall_clock=WallClock())
    peer = device.add_peer(their_public, preshared_key=psk)
    initiator = noise_peer(their_private, device.public_key, psk or bytes(32), initiator=True)
    body = initiator.write_message(crypto.tai64n(1_700_000_000.0))
    assert len(body) == 108
    init = Initiation(0x7777, bytes(body[:32]), bytes(body[32:80]), bytes(body[80:]))
    wire = CookieGenerator(device.public_key).add_macs(init.pack(), 0.0)
    result = device.handle_handshake_message(wire, A_ADDR, now=0.0)
    assert result.drop_reason is None and result.event == "initiation_consumed"
    resp = parse_response(result.replies[0])
    assert resp.receiver_index == 0x7777
    assert initiator.read_message(result.replies[0][12:60]) == b""
    assert initiator.handshake_finished

    kp = peer.keypairs.next  # the responder waits for the first data packet
    assert kp is not None and not kp.is_initiator
    their_send, their_recv = split_keys(initiator)
    sealed = initiator.encrypt(b"")  # their keepalive, counter 0
    frame = bytes([4, 0, 0, 0]) + kp.local_index.to_bytes(4, "little") + bytes(8)
    transport = receive_one(device, frame + sealed, A_ADDR, now=0.0)
    assert transport.drop_reason is None
    assert peer.keypairs.current is kp  # confirmed by their packet
    reply = kp.encrypt(b"\x60" + bytes(15), now=0.0)
    assert initiator.decrypt(reply[16:]) == b"\x60" + bytes(15)
    assert len(their_send) == len(their_recv) == 32
