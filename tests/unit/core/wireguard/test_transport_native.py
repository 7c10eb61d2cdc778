"""The native transport batches (vpn/core/wireguard/_transport.c) against the Python reference.

Every property feeds a native and a Python Keypair holding the same keys the same inputs and
requires the same bytes out, the same lengths, the same drops by reason and the same replay
window. `make sanitize` runs this file against a build with AddressSanitizer and UBSan.
"""

from __future__ import annotations

import os
import random
import struct
import subprocess
import sys
from collections import Counter
from collections.abc import MutableMapping
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vpn.core.types import Buffer
from vpn.core.wireguard import _transport, keypair, replay
from vpn.core.wireguard.constants import (
    MESSAGE_TRANSPORT,
    REJECT_AFTER_MESSAGES,
    REPLAY_WINDOW,
    TRANSPORT_MIN_SIZE,
)
from vpn.core.wireguard.keypair import Keypair, TransportError, transport_size
from vpn.core.wireguard.noise import SessionKeys

TransportKey = _transport.TransportKey
ROOT = Path(__file__).resolve().parents[4]
SEND_KEY, RECV_KEY, OTHER_KEY = bytes(range(32)), bytes(range(32, 64)), bytes(range(64, 96))
LOCAL, REMOTE = 0x1234, 0xABCD
PROPERTY = settings(deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def pair(*, initiator: bool = True) -> tuple[Keypair, Keypair]:
    """The same keypair twice: (native, python), each from its own SessionKeys (a Keypair
    wipes the keys it took)."""
    def one(native: bool) -> Keypair:
        return Keypair(SessionKeys(SEND_KEY, RECV_KEY, initiator, LOCAL, REMOTE), 0.0,
                       native=native)
    return one(True), one(False)


def seal(key: bytes, counter: int, plaintext: bytes, receiver: int = LOCAL) -> bytes:
    """A transport message to our receiver, sealed with `key` (RECV_KEY is the one our
    keypairs open with), made independently of either path (so counters past the message
    limit can be made too)."""
    nonce = struct.pack("<4xQ", counter)
    header = struct.pack("<IIQ", MESSAGE_TRANSPORT, receiver, counter)
    return header + ChaCha20Poly1305(key).encrypt(nonce, plaintext, None)


def data(seed: int, n: int) -> bytes:
    return random.Random(seed).randbytes(n)


def same_window(a: Keypair, b: Keypair) -> None:
    assert a.replay.greatest == b.replay.greatest
    assert a.replay.seen == b.replay.seen


def test_native_constants_match_the_protocol() -> None:
    assert _transport.REPLAY_SLOTS == replay.REPLAY_SLOTS
    assert _transport.REPLAY_WINDOW == REPLAY_WINDOW
    assert _transport.REJECT_AFTER_MESSAGES == REJECT_AFTER_MESSAGES


# -- sealing ------------------------------------------------------------------------------

near_limit = st.integers(REJECT_AFTER_MESSAGES - 40, REJECT_AFTER_MESSAGES)


@PROPERTY
@given(
    sizes=st.lists(st.one_of(st.integers(0, 100), st.integers(1380, 1440),
                             st.integers(0, 9000)), max_size=12),
    mtu=st.one_of(st.just(0), st.integers(0, 9000), st.sampled_from([1280, 1420, 1500, 9000]),
                  st.integers(-20, 20)),
    counter=st.one_of(st.integers(0, 2**20), near_limit),
    offset=st.integers(0, 64),
    seed=st.integers(0, 2**32),
)
def test_seal_batch_matches_python(sizes: list[int], mtu: int, counter: int, offset: int,
                                   seed: int) -> None:
    native, python = pair()
    native.send_counter = python.send_counter = counter
    packets = [data(seed + i, n) for i, n in enumerate(sizes)]
    room = offset + sum(transport_size(n, mtu) for n in sizes)
    outs = [bytearray(b"\xaa" * room) for _ in range(2)]
    results = []
    for kp, out in zip((native, python), outs, strict=True):
        try:
            results.append(kp.encrypt_batch(packets, out, offset, mtu))
        except TransportError as error:
            results.append(error.reason)
    assert results[0] == results[1]
    assert outs[0] == outs[1]
    assert native.send_counter == python.send_counter
    if isinstance(results[0], list):  # and the receiving side reads it back
        receiver = Keypair(SessionKeys(RECV_KEY, SEND_KEY, False, REMOTE, LOCAL), 0.0)
        receiver.replay.greatest = max(0, counter - 1)
        plain = bytearray(room)
        lengths = receiver.decrypt_batch(_split(bytes(outs[0][offset:]), results[0]), plain)
        assert lengths == [n - TRANSPORT_MIN_SIZE for n in results[0]]


def _split(blob: bytes, lengths: list[int]) -> list[bytes]:
    messages, at = [], 0
    for n in lengths:
        messages.append(blob[at:at + n])
        at += n
    return messages


def test_seal_short_out_writes_nothing() -> None:
    key = TransportKey(SEND_KEY)
    out = bytearray(b"\xaa" * (transport_size(100) * 2 - 1))
    with pytest.raises(ValueError, match="out too short"):
        key.seal_batch([bytes(100), bytes(100)], out, 0, 0, REMOTE, 7)
    assert out == b"\xaa" * len(out)
    with pytest.raises(ValueError, match="offset"):
        key.seal_batch([b""], out, len(out) + 1, 0, REMOTE, 7)
    # Counters never pass the limit, even when asked directly.
    with pytest.raises(ValueError, match="limit"):
        key.seal_batch([b"", b""], bytearray(64), 0, 0, REMOTE, REJECT_AFTER_MESSAGES - 1)
    with pytest.raises(OverflowError):
        key.seal_batch([b""], out, 0, 0, 2**32, 7)


# -- opening ------------------------------------------------------------------------------

# One received message: how it is made from the counter it carries.
Kind = st.sampled_from(["valid", "valid", "valid", "cut", "tampered", "wrong_key", "foreign",
                        "header", "garbage", "empty"])
# The window's edge at the limit: greatest = LIMIT - 1 makes the in-order counter the limit.
at_limit = st.sampled_from([REJECT_AFTER_MESSAGES - 1, REJECT_AFTER_MESSAGES])
counters = st.one_of(st.integers(0, 40), st.integers(0, 20_000), near_limit, at_limit,
                     st.integers(REJECT_AFTER_MESSAGES, 2**64 - 1))


def make_message(kind: str, counter: int, size: int, seed: int, keep_header: bool = False
                 ) -> bytes:
    plaintext = data(seed, size)
    rng = random.Random(seed)
    message = seal(RECV_KEY, counter, plaintext)
    if kind == "cut":
        return message[:rng.randrange(len(message))]
    if kind == "tampered":
        at = rng.randrange(16 if keep_header else 0, len(message))
        return message[:at] + bytes([message[at] ^ (1 << rng.randrange(8))]) + message[at + 1:]
    if kind == "wrong_key":
        return seal(OTHER_KEY, counter, plaintext)
    if kind == "foreign":
        return seal(RECV_KEY, counter, plaintext, receiver=LOCAL + 1)
    if kind == "header":  # a reserved byte set
        return message[:1] + b"\x01" + message[2:]
    if kind == "garbage":
        return data(seed, rng.choice([1, 31, 32, 33, 48, size + 32]))
    if kind == "empty":
        return b""
    return message


@st.composite
def traffic(draw: st.DrawFn) -> list[list[bytes]]:
    """Batches of messages: valid, cut, tampered, replayed, reordered, foreign, garbage."""
    messages = []
    for _ in range(draw(st.integers(0, 24))):
        kind = draw(Kind)
        size = draw(st.one_of(st.integers(0, 64), st.integers(1380, 1440), st.integers(0, 9000)))
        messages.append(make_message(kind, draw(counters), size, draw(st.integers(0, 2**32))))
    if messages and draw(st.booleans()):  # replays of some of them
        messages += draw(st.lists(st.sampled_from(messages), max_size=4))
    messages = draw(st.permutations(messages))
    cuts = sorted(draw(st.lists(st.integers(0, len(messages)), max_size=3)))
    return [messages[a:b] for a, b in zip([0, *cuts], [*cuts, len(messages)], strict=True)]


@PROPERTY
@given(batches=traffic(), start=st.one_of(st.none(), counters, at_limit),
       offset=st.integers(0, 40))
def test_decrypt_batch_matches_python(batches: list[list[bytes]], start: int | None,
                                      offset: int) -> None:
    native, python = pair()
    if start is not None:  # a window that has moved before
        assert native.replay.validate(start) == python.replay.validate(start)
    for batch in batches:
        room = offset + sum(max(0, len(m) - TRANSPORT_MIN_SIZE) for m in batch)
        outs = [bytearray(room) for _ in range(2)]
        drops: list[dict[str, int]] = [{}, {}]
        results = [kp.decrypt_batch(batch, out, offset, d)
                   for kp, out, d in zip((native, python), outs, drops, strict=True)]
        assert results[0] == results[1]
        assert drops[0] == drops[1]
        assert sum(drops[0].values()) == results[0].count(-1)
        end = offset + sum(n for n in results[0] if n >= 0)
        assert outs[0][:end] == outs[1][:end]
        same_window(native, python)


def test_open_short_out_or_bad_window_writes_nothing() -> None:
    key = TransportKey(RECV_KEY)
    message = seal(RECV_KEY, 5, bytes(100))
    seen = bytearray(replay.REPLAY_SLOTS)
    out = bytearray(b"\xaa" * 99)
    with pytest.raises(ValueError, match="out too short"):
        key.open_batch([message], out, 0, LOCAL, seen, 0)
    with pytest.raises(ValueError, match="replay window"):
        key.open_batch([message], bytearray(100), 0, LOCAL, bytearray(10), 0)
    with pytest.raises(ValueError, match="offset"):
        key.open_batch([message], out, -1, LOCAL, seen, 0)
    assert out == b"\xaa" * 99 and seen == bytes(replay.REPLAY_SLOTS)
    with pytest.raises(TypeError):
        key.open_batch([message, 7], bytearray(200), 0, LOCAL, seen, 0)
    with pytest.raises(BufferError):
        key.open_batch([message], bytes(200), 0, LOCAL, seen, 0)  # out must be writable
    with pytest.raises(BufferError):
        key.open_batch([message], bytearray(200), 0, LOCAL, bytes(8192), 0)


@PROPERTY
@given(sizes=st.lists(st.integers(0, 300), max_size=6), out_size=st.integers(0, 1000),
       offset=st.integers(-5, 1000), local=st.integers(-1, 2**32),
       greatest=st.integers(-1, 2**64))
def test_open_batch_any_numbers_are_safe(sizes: list[int], out_size: int, offset: int,
                                         local: int, greatest: int) -> None:
    """Whatever the numbers, a clean answer or a clear error, never a read or write out of
    bounds (the sanitizer build checks that)."""
    key = TransportKey(RECV_KEY)
    seen = bytearray(replay.REPLAY_SLOTS)
    messages = [data(n, n) for n in sizes]
    try:
        lengths, _, drops = key.open_batch(messages, bytearray(out_size), offset, local, seen,
                                           greatest)
    except (ValueError, OverflowError):
        return
    assert lengths == [-1] * len(sizes)
    assert drops is None if not sizes else sum(drops) == len(sizes)


def test_zero_wipes_and_repr_shows_no_key() -> None:
    key = TransportKey(SEND_KEY)
    assert SEND_KEY.hex() not in repr(key) and "key" in repr(key)
    key.zero()
    assert repr(key) == "TransportKey(zeroed)"
    with pytest.raises(ValueError, match="zeroed") as info:
        key.seal_batch([b""], bytearray(64), 0, 0, REMOTE, 0)
    assert SEND_KEY.hex() not in str(info.value)
    key.zero()  # twice is fine
    with pytest.raises(ValueError, match="32 bytes"):
        TransportKey(bytes(31))
    native, _ = pair()
    native.zero()
    assert native._send is None and not native.valid


def test_vpn_fast_path_python_selects_the_python_path() -> None:
    code = ("from vpn.io import native; from vpn.core.wireguard import fastpath, keypair; "
            "from vpn.core.wireguard.noise import SessionKeys; "
            "kp = keypair.Keypair(SessionKeys(bytes(32), bytes(32), True, 1, 2), 0.0); "
            "print(fastpath.FAST_PATH, kp.native, type(kp._send).__name__, "
            "native.fast_path()[1].split()[1])")
    outputs = []
    for value in ("python", ""):
        env = dict(os.environ, VPN_FAST_PATH=value, PYTHONPATH=str(ROOT))
        outputs.append(subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT,
                                      capture_output=True, text=True, check=True).stdout)
    assert outputs == ["python False ReferenceTransportKey (VPN_FAST_PATH=python)\n",
                       "native True TransportKey (transport\n"]


def test_a_missing_module_selects_python_and_says_why() -> None:
    code = ("import sys; sys.modules['vpn.core.wireguard._transport'] = None; "
            "from vpn.io import native; print(native.fast_path()[1])")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("VPN_FAST_PATH", None)
    shown = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout
    assert shown.startswith("python (native transport module not available (")


# -- receive runs (open_run then accept_run: open, replay, inner checks, sources) ---------

def receive_run(kp: Keypair, data: Buffer, segment_size: int, start: int,
                out: bytearray | memoryview, offset: int, records: bytearray | memoryview,
                drops: MutableMapping[str, int]) -> tuple[int, int, int, int, int, list[bytes]]:
    """open_run then accept_run, as the receive walk does them for one keypair's run:
    (stop, offset, nrec, fresh, nbytes, sources)."""
    most = (len(data) - start) // min(max(segment_size, 1), TRANSPORT_MIN_SIZE) + 1
    opened = bytearray(keypair.OPENED.size * max(most, 1))
    stop, offset, count, sources = kp.open_run(data, segment_size, start, out, offset,
                                               len(records) // keypair.RECORD.size, opened,
                                               drops)
    nrec, fresh, nbytes = kp.accept_run(opened, count, records, drops)
    return stop, offset, nrec, fresh, nbytes, sources


def seal_segments(kp: Keypair, out: bytearray, offset: int, count: int, full: int, last: int,
                  gap: int, tail: int, mtu: int) -> tuple[int, int]:
    """reserve then seal_segments_at, as the send walk does for one super-packet; arguments
    out of range are refused before a counter is taken."""
    if count < 1 or not 0 <= last <= full <= 0xFFFF or not 0 <= gap <= 0xFFFF \
            or not 0 <= tail <= 0xFFFF:
        raise ValueError("seal_segments: count, full, last, gap or tail out of range")
    first = kp.reserve(count)
    if first is None:
        raise TransportError("keypair_exhausted")
    return kp.seal_segments_at(first, out, offset, count, full, last, gap, tail, mtu)


def inner(kind: str, size: int, source: int, seed: int) -> bytes:
    """A plaintext of `size` bytes: an IPv4 or IPv6 packet from source number `source`, with
    an honest or a dishonest length field, or not IP at all."""
    body = bytearray(data(seed, size))
    if kind == "not_ip" or size == 0:
        if size:
            body[0] = (body[0] & 0x0F) | 0x50
        return bytes(body)
    rng = random.Random(seed)
    if kind.startswith("v4") and size >= 20:
        length = rng.randint(20, size) if kind == "v4" else rng.choice([0, 19, size + 1, 65535])
        body[0] = 0x45
        body[2:4] = length.to_bytes(2, "big")
        body[12:16] = bytes([198, 18, source >> 8, source & 0xFF])
    elif kind.startswith("v6") and size >= 40:
        length = rng.randint(0, size - 40) if kind == "v6" else size - 39 + rng.randrange(9)
        body[0] = 0x60
        body[4:6] = min(length, 65535).to_bytes(2, "big")
        body[8:24] = bytes(14) + source.to_bytes(2, "big")
    else:
        body[0] = 0x40 if kind.startswith("v4") else 0x60  # too short for its header
    return bytes(body)


Wire = st.sampled_from(["valid"] * 6 + ["tampered", "wrong_key", "foreign", "header",
                                         "handshake", "replayed"])
Inner = st.sampled_from(["v4", "v4", "v6", "v6", "v4_dishonest", "v6_dishonest", "not_ip"])


@st.composite
def gro_receive(draw: st.DrawFn) -> tuple[bytes, int]:
    """One GRO receive as the socket hands it over: datagrams of one size, the last possibly
    shorter, of every kind a peer or an attacker can send."""
    segment_size = draw(st.one_of(st.integers(32, 120), st.sampled_from([1452, 9000])))
    count = draw(st.integers(1, 80))
    many_sources = draw(st.booleans())  # past MAX_SOURCES, or a few reused
    counter = draw(st.one_of(st.integers(0, 20_000), st.just(REJECT_AFTER_MESSAGES - 3)))
    datagrams: list[bytes] = []
    for i in range(count):
        size = segment_size
        if i == count - 1 and draw(st.booleans()):
            size = draw(st.integers(0, segment_size))
        wire = draw(Wire)
        source = i if many_sources else draw(st.integers(0, 3))
        seed = draw(st.integers(0, 2**32))
        counter = min(max(0, counter + draw(st.sampled_from([1, 1, 1, 2, 9000, -3]))),
                      2**64 - 1)
        if wire == "replayed" and datagrams:
            datagrams.append(draw(st.sampled_from(datagrams))[:size])
            continue
        plain = inner(draw(Inner), max(size - TRANSPORT_MIN_SIZE, 0), source, seed)
        if size < TRANSPORT_MIN_SIZE:
            datagrams.append(data(seed, size))
            continue
        message = bytearray(seal(OTHER_KEY if wire == "wrong_key" else RECV_KEY, counter,
                                 plain, receiver=LOCAL + (wire == "foreign")))
        if wire == "tampered":
            message[random.Random(seed).randrange(16, len(message))] ^= 1
        elif wire == "header":  # a reserved byte set
            message[1] = 1
        elif wire == "handshake":
            message[0] = 1
        datagrams.append(bytes(message))
    return b"".join(datagrams), segment_size


OUTCOMES: Counter[str] = Counter()


@PROPERTY
@given(receive=gro_receive(), capacity=st.one_of(st.just(4096), st.integers(0, 90)),
       offset=st.integers(0, 40), start=st.one_of(st.none(), counters, at_limit))
def test_receive_run_matches_python(receive: tuple[bytes, int], capacity: int, offset: int,
                                    start: int | None) -> None:
    blob, segment_size = receive
    native, python = pair()
    if start is not None:
        assert native.replay.validate(start) == python.replay.validate(start)
    outs = [bytearray(b"\xaa" * (offset + len(blob))) for _ in range(2)]
    records = [bytearray(12 * capacity) for _ in range(2)]
    pos = 0
    while pos < len(blob):
        drops: list[dict[str, int]] = [{}, {}]
        results = [receive_run(kp, memoryview(blob), segment_size, pos, out, offset, rec, d)
                   for kp, out, rec, d in zip((native, python), outs, records, drops,
                                              strict=True)]
        assert results[0] == results[1]
        assert drops[0] == drops[1]
        stop, _, nrec, fresh, nbytes, sources = results[0]
        assert records[0][:12 * nrec] == records[1][:12 * nrec]
        for i in range(nrec):
            at, length, slot = struct.unpack_from("<III", records[0], 12 * i)
            packet = bytes(outs[0][at:at + length])
            assert packet == outs[1][at:at + length]
            assert packet[0] >> 4 in (4, 6) and slot < len(sources) <= 64
            assert sources[slot] == (packet[12:16] if packet[0] >> 4 == 4 else packet[8:24])
        assert fresh >= nrec and nbytes >= 32 * fresh
        OUTCOMES.update(drops[0])
        OUTCOMES.update(records=nrec, sources_full=len(sources) == keypair.MAX_SOURCES)
        same_window(native, python)
        # Nothing done: the receive path hands this datagram to the handshake code or to
        # another keypair, then goes on.
        pos = stop if stop > pos else pos + segment_size


@PROPERTY
@given(receive=gro_receive(), capacity=st.one_of(st.just(4096), st.integers(0, 90)),
       room=st.one_of(st.just(4096), st.integers(0, 90)), window=st.booleans(),
       start=st.one_of(st.none(), counters, at_limit))
def test_open_then_accept_matches_python(receive: tuple[bytes, int], capacity: int,
                                         room: int, window: bool, start: int | None) -> None:
    """The two stages on their own: open_run writes the same descriptions, plaintexts and
    drops on both paths and changes no window; accept_run then moves both windows alike."""
    blob, segment_size = receive
    native, python = pair()
    if start is not None:
        assert native.replay.validate(start) == python.replay.validate(start)
    before = bytes(native.replay.seen), native.replay.greatest
    outs = [bytearray(len(blob)) for _ in range(2)]
    opened = [bytearray(keypair.OPENED.size * room) for _ in range(2)]
    drops: list[dict[str, int]] = [{}, {}]
    results = [kp.open_run(blob, segment_size, 0, out, 0, capacity, o, d, window)
               for kp, out, o, d in zip((native, python), outs, opened, drops, strict=True)]
    assert results[0] == results[1] and drops[0] == drops[1]
    assert (bytes(native.replay.seen), native.replay.greatest) == before
    same_window(native, python)
    _, offset, count, _ = results[0]
    assert opened[0][:keypair.OPENED.size * count] == opened[1][:keypair.OPENED.size * count]
    for entry in keypair.OPENED.iter_unpack(opened[0][:keypair.OPENED.size * count]):
        if entry[4] == keypair.OPENED_PACKET:
            at, length = entry[2], entry[3]
            assert outs[0][at:at + length] == outs[1][at:at + length] and at + length <= offset
    records = [bytearray(12 * count) for _ in range(2)]
    accepted = [kp.accept_run(o, count, r, d)
                for kp, o, r, d in zip((native, python), opened, records, drops, strict=True)]
    assert accepted[0] == accepted[1] and drops[0] == drops[1] and records[0] == records[1]
    same_window(native, python)


def test_accept_run_refuses_bad_numbers_before_the_window_moves() -> None:
    message = seal(RECV_KEY, 1, inner("v4", 100, 1, 1))
    for kp in pair():
        opened = bytearray(keypair.OPENED.size)
        assert kp.open_run(message, len(message), 0, bytearray(200), 0, 1, opened, {})[2] == 1
        unknown = bytearray(opened)
        unknown[20:24] = (len(keypair.OPENED_STATUS)).to_bytes(4, "little")
        for args in ((opened, 2, bytearray(12)), (opened, -1, bytearray(12)),
                     (opened, 1, bytearray(11)), (unknown, 1, bytearray(12))):
            with pytest.raises(ValueError):
                kp.accept_run(*args, {})
        assert kp.replay.greatest == 0 and not any(kp.replay.seen)
        assert kp.accept_run(opened, 1, bytearray(12), {}) == (1, 1, len(message))


def test_receive_run_checks_its_numbers() -> None:
    native, python = pair()
    message = seal(RECV_KEY, 1, inner("v4", 100, 1, 1))
    for kp in (native, python):
        for args in ((message, 0, 0, bytearray(200), 0), (message, 200, len(message) + 1,
                     bytearray(200), 0), (message, 200, 0, bytearray(len(message) - 1), 0),
                     (message, 200, 0, bytearray(200), 201)):
            with pytest.raises(ValueError):
                receive_run(kp, *args, bytearray(12), {})
        assert kp.replay.greatest == 0 and not any(kp.replay.seen)
    assert _transport.RECORD_LEN == 12 and _transport.MAX_SOURCES == keypair.MAX_SOURCES


def test_receive_run_stops_at_max_sources_and_full_records() -> None:
    """An authenticated peer that varies its inner source on every packet gets a short search
    per call, and a full record buffer ends a call, on both paths alike."""
    size = 100
    blob = b"".join(seal(RECV_KEY, i + 1, inner("v4", size, i, i)) for i in range(70))
    segment = size + TRANSPORT_MIN_SIZE
    for kp in pair():
        out = bytearray(len(blob))
        stop, _, nrec, fresh, _, sources = receive_run(kp, blob, segment, 0, out, 0,
                                                          bytearray(12 * 100), {})
        assert (stop, nrec, fresh, len(sources)) == (64 * segment, 64, 64, 64)
        stop, _, nrec, *_ = receive_run(kp, blob, segment, stop, out, 0, bytearray(12 * 5), {})
        assert (stop, nrec) == (69 * segment, 5)


# -- sealing in place (reserve then seal_segments_at, after gso.split_into) ---------------

@PROPERTY
@given(count=st.integers(1, 50), full=st.one_of(st.integers(0, 100), st.integers(1380, 1440),
                                               st.just(9000)),
       cut=st.integers(0, 2000), gap=st.sampled_from([16, 0, 20, 3]),
       tail=st.sampled_from([31, 0, 16, 47, 40]),
       mtu=st.one_of(st.just(0), st.sampled_from([1280, 1420, 1500, 9000]),
                     st.integers(0, 1500)),
       offset=st.integers(0, 40), counter=st.one_of(st.integers(0, 2**20), near_limit),
       seed=st.integers(0, 2**32))
def test_seal_segments_matches_python(count: int, full: int, cut: int, gap: int, tail: int,
                                      mtu: int, offset: int, counter: int, seed: int) -> None:
    """Segments laid out with a gap and a tail, sealed where they lie: the same messages,
    back to back, as encrypt_batch would write from copies of them, on both paths."""
    last = max(0, full - cut)
    stride = gap + full + tail
    plaintexts = [data(seed + i, full if i + 1 < count else last) for i in range(count)]
    layout = bytearray(data(seed, offset + (count - 1) * stride + gap + last + tail))
    for i, plain in enumerate(plaintexts):
        at = offset + gap + i * stride
        layout[at:at + len(plain)] = plain
    native, python = pair()
    outs = [bytearray(layout) for _ in range(2)]
    results = []
    for kp, out in zip((native, python), outs, strict=True):
        kp.send_counter = counter
        try:
            results.append(seal_segments(kp, out, offset, count, full, last, gap, tail, mtu))
        except (TransportError, ValueError) as error:
            results.append(type(error).__name__)
    assert results[0] == results[1]
    assert native.send_counter == python.send_counter
    if isinstance(results[0], str):
        assert outs[0] == layout == outs[1]  # refused before anything was written
        return
    size, last_size = results[0]
    end = offset + size * (count - 1) + last_size
    assert outs[0][:end] == outs[1][:end]
    _, reference = pair()
    reference.send_counter = counter
    expected = bytearray(end)
    assert reference.encrypt_batch(plaintexts, expected, offset, mtu) == (
        [size] * (count - 1) + [last_size])
    assert outs[0][offset:end] == expected[offset:]


# -- the window at the limit, and a call that raises or sees its list shrink ---------------

@pytest.mark.parametrize("kind", ["valid", "wrong_key", "tampered"])
def test_the_limit_is_a_replay_on_both_paths(kind: str) -> None:
    """greatest = LIMIT - 1 makes the in-order counter the limit itself: forged or not, a
    message with it is a replay (before its AEAD) on both paths, in a batch and in a run."""
    message = make_message(kind, REJECT_AFTER_MESSAGES, 60, 7, keep_header=True)
    for kp in pair():
        assert kp.replay.validate(REJECT_AFTER_MESSAGES - 1)
        drops: dict[str, int] = {}
        assert kp.decrypt_batch([message], bytearray(100), 0, drops) == [-1]
        run_drops: dict[str, int] = {}
        receive_run(kp, message, len(message), 0, bytearray(100), 0, bytearray(12), run_drops)
        assert (kp.native, drops, run_drops) == (kp.native, {"replay": 1}, {"replay": 1})
        assert kp.replay.greatest == REJECT_AFTER_MESSAGES - 1


def test_an_open_that_raises_leaves_the_window_as_it_was() -> None:
    """A batch sets the window's slots in place, while the new greatest only comes back in
    the result. When the call raises instead (here: no memory from the Nth allocation on,
    for every N until the call succeeds), the slots must be as they were: otherwise the
    caller's old greatest and the new slots would accept the same messages again."""
    testcapi = pytest.importorskip(
        "_testcapi", reason="FAILURE INJECTION NOT TESTED: this Python has no _testcapi")
    messages = [seal(RECV_KEY, counter, inner("v4", 60, 1, counter))
                for counter in (11, 12, 9000)]  # 9000: every slot is cleared on the way

    def window() -> bytearray:
        seen = bytearray(replay.REPLAY_SLOTS)
        seen[5] = seen[10] = 1
        return seen

    calls = {
        "open_batch": lambda key, seen: key.open_batch(messages, bytearray(300), 0, LOCAL,
                                                       seen, 10)[1],
        "accept_run": lambda key, seen: _transport.accept_run(opened, count, seen, 10,
                                                              bytearray(12 * 4))[1],
    }
    opened = bytearray(keypair.OPENED.size * 4)
    count = TransportKey(RECV_KEY).open_run(b"".join(messages), len(messages[0]), 0,
                                            bytearray(300), 0, LOCAL, 4, opened, None, 0)[2]
    assert count == 3
    for name, call in calls.items():
        failed = 0
        while True:
            key, seen = TransportKey(RECV_KEY), window()
            testcapi.set_nomemory(failed, 0)
            try:
                greatest = call(key, seen)
            except MemoryError:
                greatest = None
            finally:
                testcapi.remove_mem_hooks()
            if greatest is not None:
                break
            assert seen == window(), f"{name}: allocation {failed} failed, the window moved"
            failed += 1
        assert failed > 0 and greatest == 9000 and seen[9000 & 8191] and not seen[10]


@pytest.mark.skipif(sys.version_info < (3, 12), reason=(
    "NOT RUN BEFORE PYTHON 3.12: from 3.12 on (PEP 688) Python code can export a buffer; "
    "on 3.11 nothing else runs while a batch takes its views"))
def test_a_list_shrunk_while_its_buffers_are_taken() -> None:
    """seal_batch and open_batch take the buffers of a snapshot of the caller's list: an
    item whose export shrinks the list changes nothing (it read freed memory before)."""

    class Shrinking:
        def __init__(self, data: bytes, victims: list[object]) -> None:
            self.data, self.victims = data, victims

        def __buffer__(self, flags: int) -> memoryview:
            del self.victims[1:]
            return memoryview(self.data)

    key = TransportKey(SEND_KEY)
    packets: list[object] = []
    packets += [Shrinking(bytes(100), packets), *(bytes([i]) * 100 for i in range(60))]
    out = bytearray(61 * transport_size(100))
    assert key.seal_batch(packets, out, 0, 0, REMOTE, 0) == [transport_size(100)] * 61
    messages: list[object] = []
    messages += [Shrinking(seal(RECV_KEY, 1, bytes(100)), messages),
                 *(seal(RECV_KEY, 2 + i, bytes(100)) for i in range(60))]
    lengths, greatest, _ = TransportKey(RECV_KEY).open_batch(
        messages, bytearray(61 * 100), 0, LOCAL, bytearray(replay.REPLAY_SLOTS), 0)
    assert (lengths, greatest) == ([100] * 61, 61)
