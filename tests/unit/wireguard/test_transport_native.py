"""The native transport batches (vpn/wireguard/_transport.c) against the Python reference.

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
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vpn.wireguard import _transport, replay
from vpn.wireguard.constants import (
    MESSAGE_TRANSPORT,
    REJECT_AFTER_MESSAGES,
    REPLAY_WINDOW,
    TRANSPORT_MIN_SIZE,
)
from vpn.wireguard.keypair import Keypair, TransportError, transport_size
from vpn.wireguard.noise import SessionKeys

TransportKey = _transport.TransportKey
ROOT = Path(__file__).resolve().parents[3]
SEND_KEY, RECV_KEY, OTHER_KEY = bytes(range(32)), bytes(range(32, 64)), bytes(range(64, 96))
LOCAL, REMOTE = 0x1234, 0xABCD
PROPERTY = settings(deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def pair(*, initiator: bool = True) -> tuple[Keypair, Keypair]:
    """The same keypair twice: (native, python)."""
    keys = SessionKeys(SEND_KEY, RECV_KEY, initiator, LOCAL, REMOTE)
    return Keypair(keys, 0.0, native=True), Keypair(keys, 0.0, native=False)


def seal(key: bytes, counter: int, plaintext: bytes, receiver: int = LOCAL) -> bytes:
    """A transport message to our receiver, made independently of either path (so counters
    past the message limit can be made too)."""
    nonce = struct.pack("<4xQ", counter)
    header = struct.pack("<IIQ", MESSAGE_TRANSPORT, receiver, counter)
    return header + ChaCha20Poly1305(key).encrypt(nonce, plaintext, None)


def data(seed: int, n: int) -> bytes:
    return random.Random(seed).randbytes(n)


def same_window(a: Keypair, b: Keypair) -> None:
    assert a.replay.greatest == b.replay.greatest
    assert a.replay._seen == b.replay._seen


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
counters = st.one_of(st.integers(0, 40), st.integers(0, 20_000), near_limit,
                     st.integers(REJECT_AFTER_MESSAGES, 2**64 - 1))


def make_message(kind: str, counter: int, size: int, seed: int, keep_header: bool = False
                 ) -> bytes:
    plaintext = data(seed, size)
    rng = random.Random(seed)
    message = seal(SEND_KEY, counter, plaintext)
    if kind == "cut":
        return message[:rng.randrange(len(message))]
    if kind == "tampered":
        at = rng.randrange(16 if keep_header else 0, len(message))
        return message[:at] + bytes([message[at] ^ (1 << rng.randrange(8))]) + message[at + 1:]
    if kind == "wrong_key":
        return seal(OTHER_KEY, counter, plaintext)
    if kind == "foreign":
        return seal(SEND_KEY, counter, plaintext, receiver=LOCAL + 1)
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
@given(batches=traffic(), start=st.one_of(st.none(), counters), offset=st.integers(0, 40))
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
    code = ("from vpn import native; from vpn.wireguard import fastpath, keypair; "
            "from vpn.wireguard.noise import SessionKeys; "
            "kp = keypair.Keypair(SessionKeys(bytes(32), bytes(32), True, 1, 2), 0.0); "
            "print(fastpath.FAST_PATH, kp.native, type(kp._send).__name__, "
            "native.fast_path()[1].split()[1])")
    outputs = []
    for value in ("python", ""):
        env = dict(os.environ, VPN_FAST_PATH=value, PYTHONPATH=str(ROOT))
        outputs.append(subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT,
                                      capture_output=True, text=True, check=True).stdout)
    assert outputs == ["python False ChaCha20Poly1305 (VPN_FAST_PATH=python)\n",
                       "native True TransportKey (transport\n"]


def test_a_missing_module_selects_python_and_says_why() -> None:
    code = ("import sys; sys.modules['vpn.wireguard._transport'] = None; "
            "from vpn import native; print(native.fast_path()[1])")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("VPN_FAST_PATH", None)
    shown = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout
    assert shown.startswith("python (native transport module not available (")
