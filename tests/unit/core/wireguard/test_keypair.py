"""Transport: counter nonces, padding, tamper/replay/reorder/truncation, rotation, limits."""

from __future__ import annotations

import os
import random
import struct

import pytest

from vpn.core.wireguard.constants import REJECT_AFTER_MESSAGES, REJECT_AFTER_TIME, REPLAY_WINDOW
from vpn.core.wireguard.fastpath import TransportKey
from vpn.core.wireguard.keypair import (
    Keypair,
    TransportError,
    padded_length,
    transport_size,
)
from vpn.core.wireguard.keypairset import KeypairSet
from vpn.core.wireguard.noise import SessionKeys
from vpn.core.wireguard.replay import ReplayWindow


def keypairs(now: float = 0.0) -> tuple[Keypair, Keypair]:
    k1, k2 = os.urandom(32), os.urandom(32)
    a = Keypair(SessionKeys(k1, k2, True, 1, 2), now)
    b = Keypair(SessionKeys(k2, k1, False, 2, 1), now)
    return a, b


def reason(fn, *args) -> str:  # type: ignore[no-untyped-def]
    with pytest.raises(TransportError) as info:
        fn(*args)
    return info.value.reason


@pytest.mark.parametrize("native", [False, True])
def test_a_keypair_wipes_the_session_keys_it_took(native: bool) -> None:
    """Once its AEAD objects hold the keys, no other copy stays in the SessionKeys."""
    if native and TransportKey is None:
        pytest.skip("NATIVE PATH NOT TESTED: the _transport module is not built")
    k1, k2 = os.urandom(32), os.urandom(32)
    keys = [SessionKeys(k1, k2, True, 1, 2), SessionKeys(k2, k1, False, 2, 1)]
    a, b = (Keypair(k, 0.0, native=native) for k in keys)
    assert all(k.send_key == bytes(32) and k.recv_key == bytes(32) for k in keys)
    assert b.decrypt(a.encrypt(b"still works", 0.0), 0.0).rstrip(b"\0") == b"still works"


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


def _old_padded_length(n: int, mtu: int = 0) -> int:
    padded = (n + 15) & ~15
    return max(n, mtu) if mtu and padded > mtu else padded


def test_padded_length_matches_its_definition() -> None:
    for mtu in (0, 1, 15, 16, 17, 1280, 1412, 1420, 1421, 1500):
        for n in range(0, 1540):
            assert padded_length(n, mtu) == _old_padded_length(n, mtu), (n, mtu)


def _twin(kp: Keypair) -> Keypair:
    """A second Keypair on the same keys and counters, with a fresh replay window."""
    twin = Keypair.__new__(Keypair)
    for slot in Keypair.__slots__:
        setattr(twin, slot, getattr(kp, slot))
    twin.replay = ReplayWindow()
    return twin


SIZES = [0, 1, 15, 16, 17, 52, 1404, 1405, 1410, 1419, 1420, 1421, 1500]


@pytest.mark.parametrize("mtu", [0, 1420])
def test_encrypt_batch_writes_what_encrypt_into_would(mtu: int) -> None:
    a, _ = keypairs()
    twin = _twin(a)
    kinds = (bytes, bytearray, memoryview)
    packets = [kinds[i % 3](os.urandom(n)) for i, n in enumerate(SIZES)]
    a.send_counter = twin.send_counter = 7
    expected = bytearray(5 + sum(transport_size(len(p), mtu) for p in packets))
    lengths, pos = [], 5
    for p in packets:
        n = twin.encrypt_into(p, expected, pos, mtu)
        lengths.append(n)
        pos += n
    out = bytearray(len(expected))
    assert a.encrypt_batch(packets, memoryview(out), 5, mtu) == lengths
    assert out == expected and a.send_counter == twin.send_counter == 7 + len(packets)
    assert lengths == [transport_size(len(p), mtu) for p in packets]
    assert a.encrypt_batch([], out, 0, mtu) == [] and a.send_counter == 7 + len(packets)


def test_padding_a_memoryview_plaintext() -> None:
    a, b = keypairs()
    data = bytearray(os.urandom(100))
    out = bytearray(transport_size(52))
    a.encrypt_into(memoryview(data)[:52], out)
    assert b.decrypt(bytes(out), 0.0) == bytes(data[:52]) + bytes(12)


def test_encrypt_batch_never_passes_the_message_limit() -> None:
    a, _ = keypairs()
    a.send_counter = REJECT_AFTER_MESSAGES - 3
    out = bytearray(4 * 32)
    assert reason(a.encrypt_batch, [b""] * 4, out) == "keypair_exhausted"
    assert a.send_counter == REJECT_AFTER_MESSAGES - 3  # nothing used
    assert a.encrypt_batch([b""] * 3, out) == [32] * 3  # the last three nonces
    assert int.from_bytes(out[64 + 8 : 64 + 16], "little") == REJECT_AFTER_MESSAGES - 1
    assert reason(a.encrypt_batch, [b""], out) == "keypair_exhausted"
    a.zero()
    assert reason(a.encrypt_batch, [], out) == "keypair_exhausted"


def test_reserve_takes_counters_that_seal_later_in_any_order() -> None:
    """reserve() on the loop thread, the sealing after it in any order (as workers finish):
    the messages are those encrypt_batch would have written one batch after the other."""
    a, b = keypairs()
    twin = _twin(a)
    batches = [[os.urandom(n) for n in SIZES[:k]] for k in (3, 1, 5)]
    firsts = [a.reserve(len(batch)) for batch in batches]
    assert firsts == [0, 3, 4] and a.send_counter == 9
    outs = [bytearray(sum(transport_size(len(p)) for p in batch)) for batch in batches]
    for i in (2, 0, 1):
        first = firsts[i]
        assert first is not None
        a.encrypt_batch_at(first, batches[i], outs[i])
    for batch, out in zip(batches, outs, strict=True):
        expected = bytearray(len(out))
        twin.encrypt_batch(batch, expected)
        assert out == expected
    assert b.decrypt(bytes(outs[1]), 0.0)[:1] == batches[1][0][:1]


def test_reserve_refuses_past_the_limit_or_once_zeroed() -> None:
    a, _ = keypairs()
    a.send_counter = REJECT_AFTER_MESSAGES - 2
    assert a.reserve(3) is None and a.send_counter == REJECT_AFTER_MESSAGES - 2
    assert a.reserve(2) == REJECT_AFTER_MESSAGES - 2
    first = _twin(a).reserve(0)
    assert first == REJECT_AFTER_MESSAGES
    a.send_counter = 0
    reserved = a.reserve(1)
    assert reserved == 0
    a.zero()  # between the reservation and its sealing on a worker
    assert a.reserve(1) is None
    assert reason(a.encrypt_batch_at, reserved, [b""], bytearray(32)) == "keypair_exhausted"
    assert reason(a.seal_segments_at, reserved, bytearray(64), 0, 1, 0, 0, 16, 31, 0) == (
        "keypair_exhausted")


def test_encrypt_batch_failing_part_way_uses_up_its_counters() -> None:
    a, b = keypairs()
    out = bytearray(32 * 2)  # room for two keepalives of three
    with pytest.raises((ValueError, struct.error)):
        a.encrypt_batch([b""] * 3, out)
    assert a.send_counter == 3  # no nonce of the batch can be used again
    assert b.decrypt(a.encrypt(b"", 0.0), 0.0) == b""
    assert int.from_bytes(a.encrypt(b"", 0.0)[8:16], "little") == 4


def test_decrypt_batch_round_trip_back_to_back() -> None:
    a, b = keypairs()
    packets = [os.urandom(n) for n in (1420, 1420, 52, 0, 1420, 700)]
    wire = bytearray(sum(transport_size(len(p), 1420) for p in packets))
    lengths = a.encrypt_batch(packets, wire, 0, 1420)
    messages, pos = [], 0
    for n in lengths:
        messages.append(memoryview(wire)[pos : pos + n])
        pos += n
    out = bytearray(3 + sum(padded_length(len(p), 1420) for p in packets))
    got = b.decrypt_batch(messages, out, 3)
    assert got == [padded_length(len(p), 1420) for p in packets]
    pos = 3
    for p, n in zip(packets, got, strict=True):
        assert bytes(out[pos : pos + n]) == p + bytes(n - len(p))
        pos += n
    assert b.replay.greatest == len(packets) - 1


def test_decrypt_batch_drops_like_decrypt_into() -> None:
    a, b = keypairs()
    twin = _twin(b)
    good = [a.encrypt(bytes([i]) * 16, 0.0) for i in range(6)]
    forged = bytearray(good[5])
    forged[20] ^= 1
    far = good[0][:8] + (10**6).to_bytes(8, "little") + good[0][16:]  # forged counter
    wrong = b"\x04\x00\x00\x00" + (99).to_bytes(4, "little") + good[1][8:]
    messages = [good[1], good[0], good[1], good[0][:31], bytes(forged), far, wrong, good[3]]
    messages += [good[5], good[2], b"\x01" + good[4][1:], good[4]]
    expected_reasons: list[str | None] = []
    for m in messages:
        try:
            twin.decrypt_into(m, bytearray(max(0, len(m) - 32)))
            expected_reasons.append(None)
        except TransportError as err:
            expected_reasons.append(err.reason)
    drops: dict[str, int] = {}
    out = bytearray(16 * len(messages))
    got = b.decrypt_batch([memoryview(m) for m in messages], out, 0, drops)
    assert [n == -1 for n in got] == [r is not None for r in expected_reasons]
    assert all(n == 16 for n in got if n != -1)
    counted: dict[str, int] = {}
    for r in expected_reasons:
        if r is not None:
            counted[r] = counted.get(r, 0) + 1
    assert drops == counted
    assert counted == {"replay": 1, "transport_too_short": 1, "bad_auth": 2, "wrong_keypair": 2}
    # The accepted plaintexts sit back to back in message order.
    accepted = [m for m, r in zip(messages, expected_reasons, strict=True) if r is None]
    plaintexts = [bytes([good.index(m)]) * 16 for m in accepted]
    assert bytes(out[: 16 * len(accepted)]) == b"".join(plaintexts)
    assert b.replay.greatest == twin.replay.greatest == 5  # the forged counter moved nothing
    b.zero()
    assert b.decrypt_batch([good[0], good[0][:10]], out, 0, drops) == [-1, -1]
    assert drops["keypair_expired"] == 1 and drops["transport_too_short"] == 2
    assert b.decrypt_batch([good[0]], out) == [-1]  # no drops mapping: just -1


def test_decrypt_paths_agree_with_the_window_over_a_reordered_stream() -> None:
    # decrypt_into and decrypt_batch inline the window's in-order case; every path must
    # accept and refuse exactly what ReplayWindow.validate would.
    rng = random.Random(11)
    a, b = keypairs()
    c = _twin(b)
    model = ReplayWindow()
    messages: list[bytes] = []
    for _ in range(600):
        if messages and rng.random() < 0.3:
            messages.append(rng.choice(messages[-40:]))  # a duplicate
        else:
            if rng.random() < 0.05:
                a.send_counter += rng.choice([1, 100, REPLAY_WINDOW, 9000])
            messages.append(a.encrypt(b"", 0.0))
    order = messages[:]
    for i in range(0, len(order) - 3, 7):  # and reordered
        order[i], order[i + 2] = order[i + 2], order[i]
    expected = [model.validate(int.from_bytes(m[8:16], "little")) for m in order]
    single = []
    for m in order:
        try:
            b.decrypt_into(m, bytearray(0))
            single.append(True)
        except TransportError as err:
            assert err.reason == "replay"
            single.append(False)
    batched: list[bool] = []
    for i in range(0, len(order), 47):
        batched += [n == 0 for n in c.decrypt_batch(order[i : i + 47], bytearray(0))]
    assert single == batched == expected
    assert b.replay.greatest == c.replay.greatest == model.greatest
