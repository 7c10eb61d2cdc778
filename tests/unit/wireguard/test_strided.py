"""The bulk receive path of one GRO receive: transport_run reads every header at once,
ReplayWindow.accept_in_order takes a run of counters in one step, and
Keypair.decrypt_strided decrypts at a fixed stride. Each must agree with the per-packet
path it short-cuts (struct headers, validate, decrypt_batch)."""

from __future__ import annotations

import random
import struct

import pytest
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from hypothesis import given, settings
from hypothesis import strategies as st

from vpn.wireguard.constants import REJECT_AFTER_MESSAGES, TRANSPORT_MIN_SIZE
from vpn.wireguard.keypair import Keypair, padded_length, transport_size
from vpn.wireguard.messages import pack_transport_header, transport_run
from vpn.wireguard.noise import SessionKeys
from vpn.wireguard.replay import REPLAY_SLOTS, ReplayWindow

HEADER = struct.Struct("<IIQ")
RECEIVER = 2  # the receiving keypairs' local index (the sender's remote index)


# -- helpers -------------------------------------------------------------------------------


def keypairs(rng: random.Random) -> tuple[Keypair, Keypair, Keypair]:
    """A sender and two receivers with the same keys (one per decrypt method)."""
    k1, k2 = rng.randbytes(32), rng.randbytes(32)
    sender = Keypair(SessionKeys(k1, k2, True, 1, RECEIVER), 0.0)
    r1 = Keypair(SessionKeys(k2, k1, False, RECEIVER, 1), 0.0)
    r2 = Keypair(SessionKeys(k2, k1, False, RECEIVER, 1), 0.0)
    return sender, r1, r2


def encrypt_each(sender: Keypair, plaintexts: list[bytes], mtu: int) -> list[bytes]:
    """encrypt_batch, cut into one message per packet (consecutive counters)."""
    out = bytearray(sum(transport_size(len(p), mtu) for p in plaintexts))
    lengths = sender.encrypt_batch(plaintexts, out, 0, mtu)
    messages, position = [], 0
    for n in lengths:
        messages.append(bytes(out[position:position + n]))
        position += n
    return messages


def lay(datagrams: list[bytes], stride: int) -> bytearray:
    """Datagrams back to back at `stride`: all but the last exactly `stride` bytes."""
    assert all(len(d) == stride for d in datagrams[:-1]) and len(datagrams[-1]) <= stride
    return bytearray(b"".join(datagrams))


def split(data: bytes | bytearray, stride: int) -> list[memoryview]:
    view = memoryview(data)
    return [view[i:i + stride] for i in range(0, len(data), stride)]


def state(window: ReplayWindow) -> tuple[int, bytes]:
    return window.greatest, bytes(window._seen)


def clone(window: ReplayWindow) -> ReplayWindow:
    copy = ReplayWindow()
    copy._seen[:] = window._seen
    copy.greatest = window.greatest
    return copy


def counters_of(data: bytes | bytearray, stride: int) -> list[int]:
    return [HEADER.unpack_from(d)[2] for d in split(data, stride)]


# -- transport_run ---------------------------------------------------------------------------


def reference_run(data: bytes, stride: int) -> tuple[int, list[int]] | None:
    """transport_run the slow way: split, then struct-unpack every header."""
    rows = [data[i:i + stride] for i in range(0, len(data), stride)]
    if stride < TRANSPORT_MIN_SIZE or any(len(r) < TRANSPORT_MIN_SIZE for r in rows):
        return None
    headers = [HEADER.unpack_from(r) for r in rows]
    if any(kind != 4 for kind, _, _ in headers) or len({h[1] for h in headers}) != 1:
        return None
    return headers[0][1], [h[2] for h in headers]


def run_of(rng: random.Random, count: int, stride: int, last: int, index: int
           ) -> tuple[bytearray, list[int]]:
    counters = [rng.getrandbits(64) for _ in range(count)]
    rows = [pack_transport_header(index, c) + rng.randbytes(stride - 16) for c in counters]
    rows[-1] = rows[-1][:last]
    return lay(rows, stride), counters


@settings(max_examples=150, deadline=None)
@given(
    count=st.integers(1, 64),
    stride=st.integers(32, 200),
    last_cut=st.integers(0, 168),
    index=st.integers(0, 2**32 - 1),
    seed=st.integers(0, 2**32),
    kind=st.sampled_from([bytes, bytearray, memoryview]),
)
def test_transport_run_reads_index_and_counters(
    count: int, stride: int, last_cut: int, index: int, seed: int, kind: type
) -> None:
    last = max(TRANSPORT_MIN_SIZE, stride - last_cut)
    data, counters = run_of(random.Random(seed), count, stride, last, index)
    assert len(data) == (count - 1) * stride + last
    assert transport_run(kind(data), stride) == (index, counters)


def test_transport_run_single_short_datagram() -> None:
    # One datagram shorter than the stride (a GRO receive of one): still a run of one.
    data = pack_transport_header(7, 99) + bytes(16)
    assert transport_run(data, 1500) == (7, [99])
    assert transport_run(data + bytes(100), 1500) == (7, [99])


@pytest.mark.parametrize("row", [0, 1, 5, 9])
@pytest.mark.parametrize("type_field", [0, 1, 2, 3, 5, 0x84, 0x104, 0x10004, 0x04000004])
def test_transport_run_rejects_other_type_fields(row: int, type_field: int) -> None:
    # Any type byte but 4, or a non-zero reserved byte (bytes 1..3), in any row.
    data, _ = run_of(random.Random(row), 10, 80, 60, 0xABCD)
    struct.pack_into("<I", data, row * 80, type_field)
    assert transport_run(data, 80) is None
    assert reference_run(bytes(data), 80) is None


@pytest.mark.parametrize("row", [0, 1, 4, 9])
@pytest.mark.parametrize("other", [0, 0xABCC, 0xABCD + 0x10000, 0x0100ABCD, 2**32 - 1])
def test_transport_run_rejects_a_different_receiver_in_any_row(row: int, other: int) -> None:
    data, _ = run_of(random.Random(row), 10, 80, 80, 0xABCD)
    assert transport_run(data, 80) is not None
    struct.pack_into("<I", data, row * 80 + 4, other)
    assert transport_run(data, 80) is None


@pytest.mark.parametrize("last", [1, 16, 31])
def test_transport_run_rejects_a_last_datagram_shorter_than_a_keepalive(last: int) -> None:
    data, _ = run_of(random.Random(last), 6, 64, last, 3)
    assert len(data) == 5 * 64 + last
    assert transport_run(data, 64) is None
    assert transport_run(data[:5 * 64], 64) is not None  # without it, the run is fine


@pytest.mark.parametrize("stride", [1, 8, 16, 24, 31])
def test_transport_run_rejects_strides_below_a_keepalive(stride: int) -> None:
    # Every "row" even carries a valid header at the start of its stride-bytes cut.
    data = pack_transport_header(5, 1) * 8
    assert transport_run(data, stride) is None
    assert transport_run(data + bytes(32), 32) is None  # rows of 16: not transport-sized
    assert transport_run(pack_transport_header(5, 1) + bytes(16), 32) == (5, [1])


@st.composite
def almost_runs(draw: st.DrawFn) -> tuple[bytes, int]:
    """Rows that are mostly valid headers to one index, with occasional faults."""
    stride = draw(st.integers(1, 120))
    count = draw(st.integers(1, 20))
    index = draw(st.integers(0, 2**32 - 1))
    rows = []
    for _ in range(count):
        kind = draw(st.sampled_from([4, 4, 4, 4, 0, 3, 0x104, 0x04000004]))
        receiver = draw(st.sampled_from([index, index, index, index ^ 1, index ^ 0x80000000]))
        counter = draw(st.integers(0, 2**64 - 1))
        row = HEADER.pack(kind, receiver, counter) + draw(st.binary(min_size=0, max_size=120))
        rows.append(row[:stride].ljust(stride, b"\0"))
    rows[-1] = rows[-1][:draw(st.integers(1, stride))]
    return b"".join(rows), stride


@settings(max_examples=300, deadline=None)
@given(almost_runs())
def test_transport_run_matches_a_struct_reference(case: tuple[bytes, int]) -> None:
    data, stride = case
    assert transport_run(data, stride) == reference_run(data, stride)


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=1, max_size=600), st.integers(1, 700))
def test_transport_run_never_raises_on_random_bytes(data: bytes, stride: int) -> None:
    # Non-empty data and a positive stride: what a GRO receive always is.
    result = transport_run(data, stride)
    assert result == reference_run(data, stride)
    if result is not None:
        assert len(result[1]) == -(-len(data) // stride)


# -- ReplayWindow.accept_in_order --------------------------------------------------------------


def window_at(greatest: int, extra: list[int], limit: int = REJECT_AFTER_MESSAGES
              ) -> ReplayWindow:
    window = ReplayWindow()
    window.validate(greatest, limit)
    for counter in extra:
        window.validate(counter, limit)
    return window


@st.composite
def windows(draw: st.DrawFn) -> ReplayWindow:
    """A window whose greatest is near a multiple of the ring size, with some slots seen."""
    turns = draw(st.integers(0, 6))
    greatest = max(0, turns * REPLAY_SLOTS + draw(st.integers(-300, 300)))
    extra = draw(st.lists(st.integers(max(0, greatest - 9000), greatest), max_size=12))
    return window_at(greatest, extra)


@st.composite
def counter_lists(draw: st.DrawFn, greatest: int) -> list[int]:
    first = greatest + 1
    how = draw(st.sampled_from(["run", "run", "long", "changed", "shifted", "random", "empty"]))
    if how == "empty":
        return []
    if how == "random":
        return draw(st.lists(st.integers(max(0, greatest - 9000), greatest + 9000),
                             min_size=1, max_size=40))
    n = draw(st.integers(1, REPLAY_SLOTS + 40) if how == "long" else st.integers(1, 300))
    run = list(range(first, first + n))
    if how == "shifted":  # the same run, starting one too early or too late (or far)
        delta = draw(st.sampled_from([-2, -1, 1, 2, 8192, 8193, -8192]))
        return [c + delta for c in run if c + delta >= 0] or [first + 1]
    if how == "changed":  # one counter skipped, repeated, swapped or jumped
        i = draw(st.integers(0, n - 1))
        change = draw(st.sampled_from(["skip", "repeat", "swap", "jump", "back"]))
        if change == "skip":
            run = run[:i] + [c + 1 for c in run[i:]]
        elif change == "repeat":
            run.insert(i, run[i])
        elif change == "swap" and n > 1:
            j = min(i + 1, n - 1) if i < n - 1 else i - 1
            run[i], run[j] = run[j], run[i]
        elif change == "jump":
            run[i] += draw(st.integers(1, 20000))
        else:
            run[i] -= draw(st.integers(1, 20000))
            run[i] = max(run[i], 0)
    return run


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_accept_in_order_equals_validate_one_by_one(data: st.DataObject) -> None:
    window = data.draw(windows())
    greatest = window.greatest
    counters = data.draw(counter_lists(greatest))
    near = data.draw(st.booleans())
    limit = (greatest + data.draw(st.integers(0, 400))) if near else REJECT_AFTER_MESSAGES
    before = state(window)
    reference = clone(window)
    run = list(range(greatest + 1, greatest + 1 + len(counters)))
    in_order = bool(counters) and counters == run
    fits = greatest + len(counters) < limit  # the last counter is below the limit

    accepted = window.accept_in_order(counters, limit)

    if accepted:
        assert in_order and fits
        assert all(reference.validate(c, limit) for c in counters)
        assert state(window) == state(reference)
        assert window.greatest == counters[-1]
    else:
        assert state(window) == before  # nothing changed
        if in_order and fits:
            # Only a run longer than the ring may be left to validate one by one.
            assert len(counters) > REPLAY_SLOTS
    if in_order and fits and len(counters) <= REPLAY_SLOTS:
        assert accepted


@pytest.mark.parametrize("turns", [1, 2, 5, 1000, 2**40])
@pytest.mark.parametrize("n", [1, 5, 6, 100, 8191, REPLAY_SLOTS])
def test_accept_in_order_wraps_the_ring(turns: int, n: int) -> None:
    # greatest just below a multiple of the ring size, so the run wraps slot 8191 -> 0.
    greatest = turns * REPLAY_SLOTS - 6
    window = window_at(greatest, [greatest - 5000, greatest - 8000, greatest - 8128])
    reference = clone(window)
    counters = list(range(greatest + 1, greatest + 1 + n))
    assert window.accept_in_order(counters)
    assert all(reference.validate(c) for c in counters)
    assert state(window) == state(reference)
    # Every counter of the run is now a replay, and so is the one before it.
    probe = clone(window)
    assert not any(probe.validate(c) for c in [*counters, greatest])


def test_accept_in_order_after_jumps() -> None:
    window = ReplayWindow()
    for counter in (1, 2, 50_000, 49_000, 100_000):  # jumps clear the slots skipped
        assert window.validate(counter)
    reference = clone(window)
    counters = list(range(100_001, 100_301))
    assert window.accept_in_order(counters)
    assert all(reference.validate(c) for c in counters)
    assert state(window) == state(reference)
    assert window.validate(100_300 - 8000)  # still inside the window, never seen
    assert not window.validate(100_001)


@pytest.mark.parametrize(
    "counters",
    [
        [],
        [10],  # greatest itself
        [9, 10, 11, 12],
        [12, 13],  # starts one too far
        [10, 11, 12],  # starts at greatest
        [11, 13],  # a gap
        [11, 12, 12],  # a duplicate
        [11, 13, 12],  # a swap
        [11, 12, 14_000],  # a jump at the end
    ],
)
def test_accept_in_order_refuses_anything_else_and_changes_nothing(counters: list[int]) -> None:
    window = window_at(10, [3, 7])
    before = state(window)
    assert not window.accept_in_order(counters)
    assert state(window) == before


def test_accept_in_order_respects_the_limit() -> None:
    window = window_at(100, [])
    before = state(window)
    assert not window.accept_in_order([101, 102, 103], limit=103)  # 103 is at the limit
    assert state(window) == before
    assert window.accept_in_order([101, 102], limit=103)
    assert window.greatest == 102
    assert not window.accept_in_order([103], limit=103)
    top = ReplayWindow()
    top.validate(REJECT_AFTER_MESSAGES - 3)
    over = list(range(REJECT_AFTER_MESSAGES - 2, REJECT_AFTER_MESSAGES + 1))
    assert not top.accept_in_order(over)
    assert top.greatest == REJECT_AFTER_MESSAGES - 3
    assert top.accept_in_order([REJECT_AFTER_MESSAGES - 2, REJECT_AFTER_MESSAGES - 1])
    assert top.greatest == REJECT_AFTER_MESSAGES - 1


def test_accept_in_order_of_a_run_longer_than_the_ring_is_still_safe() -> None:
    window = window_at(REPLAY_SLOTS - 3, [])
    counters = list(range(REPLAY_SLOTS - 2, REPLAY_SLOTS - 2 + REPLAY_SLOTS + 500))
    reference = clone(window)
    before = state(window)
    if window.accept_in_order(counters):
        assert all(reference.validate(c) for c in counters)
        assert state(window) == state(reference)
    else:
        assert state(window) == before


# -- Keypair.decrypt_strided -----------------------------------------------------------------


@st.composite
def strided_cases(draw: st.DrawFn) -> dict:
    count = draw(st.integers(1, 64))
    size = draw(st.integers(0, 160))  # every plaintext but maybe the last; also the MTU
    short = draw(st.none() | st.integers(0, size))  # the last one's, when shorter
    full = count - (short is not None)
    order = draw(st.sampled_from(["in order", "permuted", "duplicates"]))
    if order == "permuted":
        layout = draw(st.permutations(range(full)))
    elif order == "duplicates":
        layout = draw(st.lists(st.integers(0, max(full - 1, 0)), min_size=full, max_size=full))
    else:
        layout = list(range(full))
    return {
        "seed": draw(st.integers(0, 2**32)),
        "size": size,
        "short": short,
        "full": full,
        "short_at": draw(st.integers(0, full)),  # where the short one is in sending order
        "layout": list(layout),
        "start": draw(st.sampled_from([0, 1, 5000, REPLAY_SLOTS - 20, 3 * REPLAY_SLOTS - 7])),
        "warm": draw(st.booleans()),  # the counter before the first was received already
        "pre": draw(st.lists(st.integers(0, 120), max_size=5)),  # counters start - 60 + k seen
        "tampered": draw(st.lists(st.tuples(st.integers(0, count - 1), st.integers(0, 10**6)),
                                  max_size=6, unique_by=lambda t: t[0])),  # one flip a row
        "offset": draw(st.integers(0, 40)),
    }


def build(case: dict) -> tuple[Keypair, Keypair, bytearray, int, list[bytes]]:
    """The two receivers, the laid-out data, its stride and each row's padded plaintext."""
    rng = random.Random(case["seed"])
    sender, r1, r2 = keypairs(rng)
    size, short = case["size"], case["short"]
    sender.send_counter = case["start"]
    plaintexts = [rng.randbytes(size) for _ in range(case["full"])]
    if short is not None:
        plaintexts.insert(case["short_at"], rng.randbytes(short))
    messages = encrypt_each(sender, plaintexts, size)
    padded = [p.ljust(padded_length(len(p), size), b"\0") for p in plaintexts]
    full = [i for i in range(len(plaintexts)) if short is None or i != case["short_at"]]
    rows = [full[j] for j in case["layout"]]
    if short is not None:
        rows.append(case["short_at"])
    stride = size + TRANSPORT_MIN_SIZE
    data = lay([messages[i] for i in rows], stride)
    for row, position in case["tampered"]:
        length = len(data) - row * stride if row == len(rows) - 1 else stride
        data[row * stride + 8 + position % (length - 8)] ^= 0x20
    for r in (r1, r2):
        for k in case["pre"]:
            r.replay.validate(max(0, case["start"] - 60 + k))
        if case["warm"] and case["start"]:
            r.replay.validate(case["start"] - 1)
    return r1, r2, data, stride, [padded[i] for i in rows]


@settings(max_examples=200, deadline=None)
@given(strided_cases())
def test_decrypt_strided_matches_decrypt_batch(case: dict) -> None:
    r1, r2, data, stride, expected = build(case)
    count = len(expected)
    run = transport_run(bytes(data), stride)
    assert run is not None
    index, counters = run
    assert index == RECEIVER and counters == counters_of(data, stride)
    offset, body = case["offset"], stride - TRANSPORT_MIN_SIZE
    out_batch = bytearray(offset + len(data))
    out_strided = bytearray(offset + count * stride)
    drops_batch: dict[str, int] = {}
    drops_strided: dict[str, int] = {}

    by_batch = r1.decrypt_batch(split(data, stride), out_batch, offset, drops_batch)
    by_stride = r2.decrypt_strided(memoryview(data), stride, counters, out_strided, offset,
                                   drops_strided)

    assert by_stride == by_batch
    assert drops_strided == drops_batch
    assert set(drops_strided) <= {"bad_auth", "replay"}
    assert sum(drops_strided.values()) == by_stride.count(-1)
    tampered = {row for row, _ in case["tampered"]}
    assert drops_strided.get("bad_auth", 0) == len(tampered)
    assert all(by_stride[row] == -1 for row in tampered)
    position = offset
    for i, n in enumerate(by_stride):
        if n < 0:
            continue
        assert n == len(expected[i])
        at = offset + i * body
        assert out_strided[at:at + n] == expected[i]
        assert out_batch[position:position + n] == expected[i]
        position += n
    # The same replay window afterwards, slot for slot.
    assert state(r2.replay) == state(r1.replay)
    for probe in {0, *counters, r1.replay.greatest + 1, max(0, r1.replay.greatest - 8128)}:
        assert r1.replay.validate(probe) == r2.replay.validate(probe)


def in_order_run(count: int, size: int, last: int, warm: bool
                 ) -> tuple[Keypair, bytearray, int, list[bytes]]:
    rng = random.Random(count * 1000 + size + last)
    sender, receiver, _ = keypairs(rng)
    if warm:  # counter 0 received alone, so the run starts at greatest + 1
        keepalive = encrypt_each(sender, [b""], 0)[0]
        assert receiver.decrypt_batch([keepalive], bytearray(0)) == [0]
    plaintexts = [rng.randbytes(size) for _ in range(count - 1)] + [rng.randbytes(last)]
    data = lay(encrypt_each(sender, plaintexts, size), size + TRANSPORT_MIN_SIZE)
    return receiver, data, size + TRANSPORT_MIN_SIZE, plaintexts


@pytest.mark.parametrize("warm", [True, False])
@pytest.mark.parametrize(("count", "size", "last"), [(1, 100, 100), (2, 64, 3), (8, 1420, 1420),
                                                     (44, 1200, 700), (64, 0, 0)])
def test_in_order_run_then_the_same_again_is_all_replay(
    warm: bool, count: int, size: int, last: int
) -> None:
    receiver, data, stride, plaintexts = in_order_run(count, size, last, warm)
    run = transport_run(data, stride)
    assert run is not None
    _, counters = run
    assert counters == list(range(int(warm), int(warm) + count))
    out = bytearray(count * stride)
    drops: dict[str, int] = {}
    lengths = receiver.decrypt_strided(data, stride, counters, out, 0, drops)
    body = stride - TRANSPORT_MIN_SIZE
    assert lengths == [size] * (count - 1) + [padded_length(last, size)]
    assert drops == {}
    for i, p in enumerate(plaintexts):
        assert out[i * body:i * body + len(p)] == p
    assert receiver.replay.greatest == counters[-1]
    after = state(receiver.replay)

    again = bytearray(count * stride)
    assert receiver.decrypt_strided(data, stride, counters, again, 0, drops) == [-1] * count
    assert drops == {"replay": count}
    assert state(receiver.replay) == after
    # And the per-packet path agrees that every one of them is a replay.
    assert receiver.decrypt_batch(split(data, stride), again, 0, drops) == [-1] * count
    assert drops == {"replay": 2 * count}


@pytest.mark.parametrize("count", [1, 9, 33])
def test_zeroed_keypair_drops_all_as_expired(count: int) -> None:
    receiver, data, stride, _ = in_order_run(count, 96, 40, True)
    run = transport_run(data, stride)
    assert run is not None
    counters = run[1]
    receiver.zero()
    before = state(receiver.replay)
    out = bytearray(count * stride)
    drops: dict[str, int] = {"replay": 2}
    lengths = receiver.decrypt_strided(data, stride, counters, out, 0, drops)
    assert lengths == [-1] * count
    assert drops == {"replay": 2, "keypair_expired": count}
    assert state(receiver.replay) == before
    assert out == bytes(len(out))  # nothing written
    batch_drops: dict[str, int] = {"replay": 2}
    assert receiver.decrypt_batch(split(data, stride), out, 0, batch_drops) == lengths
    assert batch_drops == drops
    assert receiver.decrypt_strided(data, stride, counters, out, 0, None) == [-1] * count


def test_counters_at_the_message_limit_are_dropped_as_replay_by_both() -> None:
    # Forge messages with counters straddling REJECT_AFTER_MESSAGES (a sender never would).
    rng = random.Random(5)
    k1, k2 = rng.randbytes(32), rng.randbytes(32)
    aead = ChaCha20Poly1305(k1)
    counters = [REJECT_AFTER_MESSAGES - 2 + i for i in range(5)]
    stride = 48 + TRANSPORT_MIN_SIZE
    data = bytearray()
    for c in counters:
        data += pack_transport_header(RECEIVER, c)
        data += aead.encrypt(struct.pack("<4xQ", c), bytes([c & 0xFF]) * 48, None)
    assert transport_run(data, stride) == (RECEIVER, counters)
    results = []
    for method in ("batch", "strided"):
        receiver = Keypair(SessionKeys(k2, k1, False, RECEIVER, 1), 0.0)
        receiver.replay.validate(REJECT_AFTER_MESSAGES - 3)  # the run is next in order
        out = bytearray(len(data))
        drops: dict[str, int] = {}
        if method == "batch":
            lengths = receiver.decrypt_batch(split(data, stride), out, 0, drops)
        else:
            lengths = receiver.decrypt_strided(data, stride, counters, out, 0, drops)
        results.append((lengths, drops, state(receiver.replay)))
    assert results[0] == results[1]
    lengths, drops, (greatest, _) = results[1]
    assert lengths == [48, 48, -1, -1, -1]
    assert drops == {"replay": 3}
    assert greatest == REJECT_AFTER_MESSAGES - 1
