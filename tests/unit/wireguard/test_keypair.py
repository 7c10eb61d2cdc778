"""Transport: counter nonces, padding, tamper/replay/reorder/truncation, rotation, limits."""

from __future__ import annotations

import os

import pytest

from vpn.wireguard.constants import REJECT_AFTER_MESSAGES, REJECT_AFTER_TIME, REPLAY_WINDOW
from vpn.wireguard.keypair import (
    Keypair,
    KeypairSet,
    TransportError,
    padded_length,
    transport_size,
)
from vpn.wireguard.noise import SessionKeys


def keypairs(now: float = 0.0) -> tuple[Keypair, Keypair]:
    k1, k2 = os.urandom(32), os.urandom(32)
    a = Keypair(SessionKeys(k1, k2, True, 1, 2), now)
    b = Keypair(SessionKeys(k2, k1, False, 2, 1), now)
    return a, b


def reason(fn, *args) -> str:  # type: ignore[no-untyped-def]
    with pytest.raises(TransportError) as info:
        fn(*args)
    return info.value.reason


def test_padding_rules() -> None:
    assert [padded_length(n) for n in (0, 1, 15, 16, 17)] == [0, 16, 16, 16, 32]
    assert padded_length(1410, 1420) == 1420  # capped at the MTU
    assert padded_length(1420, 1420) == 1420
    assert padded_length(1404, 1420) == 1408
    assert transport_size(0) == 32


def test_round_trip_keepalive_and_data() -> None:
    a, b = keypairs()
    keepalive = a.encrypt(b"", 0.0)
    assert len(keepalive) == 32 and keepalive[:4] == b"\x04\x00\x00\x00"
    assert keepalive[4:8] == (2).to_bytes(4, "little")  # their index
    assert b.decrypt(keepalive, 0.0) == b""
    msg = a.encrypt(b"hello", 0.0)
    assert int.from_bytes(msg[8:16], "little") == 1  # counter after the keepalive
    assert b.decrypt(msg, 0.0) == b"hello" + bytes(11)
    assert a.decrypt(b.encrypt(b"x" * 16, 0.0), 0.0) == b"x" * 16


def test_encrypt_into_and_decrypt_into_share_one_buffer() -> None:
    a, b = keypairs()
    packets = [os.urandom(1420) for _ in range(4)] + [os.urandom(700)]
    buf = bytearray(8 * 1500)
    offsets, off = [], 0
    for p in packets:
        n = a.encrypt_into(p, buf, off, mtu=1420)
        offsets.append((off, n))
        off += n
    out = bytearray(1500)
    for p, (start, n) in zip(packets, offsets, strict=True):
        got = b.decrypt_into(memoryview(buf)[start : start + n], out, 0)
        assert bytes(out[: len(p)]) == p and got == padded_length(len(p), 1420)


@pytest.mark.parametrize("index", [0, 4, 8, 15, 16, 40, -1])
def test_tampering_any_byte_is_rejected(index: int) -> None:
    a, b = keypairs()
    msg = bytearray(a.encrypt(b"payload!" * 4, 0.0))
    msg[index] ^= 1
    expected = "wrong_keypair" if index in (0, 4) else "bad_auth"
    assert reason(b.decrypt, bytes(msg), 0.0) == expected


def test_truncated_replayed_and_reordered() -> None:
    a, b = keypairs()
    msgs = [a.encrypt(bytes([i]) * 16, 0.0) for i in range(5)]
    assert reason(b.decrypt, msgs[0][:31], 0.0) == "transport_too_short"
    assert reason(b.decrypt, msgs[0][:-1], 0.0) == "bad_auth"
    for i in (4, 1, 3, 0, 2):  # reordered: all accepted
        assert b.decrypt(msgs[i], 0.0) == bytes([i]) * 16
    for m in msgs:
        assert reason(b.decrypt, m, 0.0) == "replay"


def test_forgery_does_not_move_the_window() -> None:
    a, b = keypairs()
    genuine = a.encrypt(b"", 0.0)
    forged = genuine[:8] + (10**6).to_bytes(8, "little") + genuine[16:]
    assert reason(b.decrypt, forged, 0.0) == "bad_auth"
    assert b.replay.greatest == 0
    assert b.decrypt(genuine, 0.0) == b""


def test_too_old_outside_window() -> None:
    a, b = keypairs()
    first = a.encrypt(b"", 0.0)
    a.send_counter = REPLAY_WINDOW + 5
    assert b.decrypt(a.encrypt(b"", 0.0), 0.0) == b""
    assert reason(b.decrypt, first, 0.0) == "replay"


def test_time_and_message_limits() -> None:
    a, b = keypairs(now=100.0)
    assert a.sendable(100.0 + REJECT_AFTER_TIME - 0.001)
    assert not a.sendable(100.0 + REJECT_AFTER_TIME)
    assert reason(a.encrypt, b"", 100.0 + REJECT_AFTER_TIME) == "keypair_expired"
    msg = a.encrypt(b"", 100.0)
    assert reason(b.decrypt, msg, 100.0 + REJECT_AFTER_TIME) == "keypair_expired"
    a.send_counter = REJECT_AFTER_MESSAGES - 1
    a.encrypt(b"", 100.0)  # the last allowed nonce
    assert reason(a.encrypt_into, b"", bytearray(32), 0) == "keypair_exhausted"
    assert not a.sendable(100.0)


def test_zeroed_keypair_refuses_everything() -> None:
    a, b = keypairs()
    msg = a.encrypt(b"", 0.0)
    a.zero()
    b.zero()
    assert not a.sendable(0.0) and not b.receivable(0.0)
    assert reason(a.encrypt_into, b"", bytearray(32), 0) == "keypair_exhausted"
    assert reason(b.decrypt_into, msg, bytearray(0), 0) == "keypair_expired"


def _kp(initiator: bool, index: int) -> Keypair:
    k = os.urandom(32)
    return Keypair(SessionKeys(k, k, initiator, index, index + 100), 0.0)


def test_rotation_as_initiator() -> None:
    dropped: list[int] = []
    s = KeypairSet(on_drop=lambda kp: dropped.append(kp.local_index))
    k1, k2, k3 = _kp(True, 1), _kp(True, 2), _kp(True, 3)
    s.add(k1)
    assert (s.previous, s.current, s.next) == (None, k1, None)
    s.add(k2)
    assert (s.previous, s.current, s.next) == (k1, k2, None)
    s.add(k3)
    assert (s.previous, s.current, s.next) == (k2, k3, None)
    assert dropped == [1] and not k1.valid


def test_rotation_as_responder_waits_for_confirmation() -> None:
    dropped: list[int] = []
    s = KeypairSet(on_drop=lambda kp: dropped.append(kp.local_index))
    old, new = _kp(True, 1), _kp(False, 2)
    s.add(old)
    s.add(new)
    assert (s.previous, s.current, s.next) == (None, old, new)
    assert not s.received_with(old)
    assert s.received_with(new)
    assert (s.previous, s.current, s.next) == (old, new, None)
    newer = _kp(False, 3)
    s.add(newer)  # a responder keypair clears previous
    assert (s.previous, s.current, s.next) == (None, new, newer)
    assert dropped == [1]
    # An initiator keypair arriving while `next` waits: next becomes previous.
    mine = _kp(True, 4)
    s.add(mine)
    assert (s.previous, s.current, s.next) == (newer, mine, None)
    assert dropped == [1, 2]
    s.clear()
    assert list(s) == [] and sorted(dropped) == [1, 2, 3, 4]


def test_repr_hides_keys() -> None:
    k = os.urandom(32)
    kp = Keypair(SessionKeys(k, k, True, 1, 2), 0.0)
    import base64

    text = repr(kp) + repr(KeypairSet())
    assert k.hex() not in text and base64.b64encode(k).decode() not in text
