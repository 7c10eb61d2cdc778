"""The native handshake primitives (vpn/core/wireguard/_handshake.c) against their Python
reference over `cryptography` (crypto_reference.py).

Every property gives both the same input, random or hostile (low-order points, all-zero
keys, wrong lengths, wiped keys, tampered tags, short ciphertexts), and requires the same
output or the same exception type. `make sanitize` runs this file against a build with
AddressSanitizer and UBSan.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.examples import examples
from vpn.core.wireguard import _handshake as native
from vpn.core.wireguard import crypto_reference as reference

ROOT = Path(__file__).resolve().parents[4]
PROPERTY = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
_P = (1 << 255) - 19

# The u-coordinates of Curve25519's points of small order and their non-canonical
# encodings (p-1, p, p+1; the top bit, which X25519 ignores): each gives an all-zero secret.
_SMALL_ORDER = [
    0,
    1,
    0x00B8495F16056286FDB1329CEB8D09DA6AC49FF1FAE35616AEB8413B7C7AEBE0,
    0x57119FD0DD4E22D8868E1C58C45C44045BEF839C55B1D0B1248C50A3BC959C5F,
    _P - 1,
    _P,
    _P + 1,
]
LOW_ORDER = [u.to_bytes(32, "little") for u in _SMALL_ORDER]
LOW_ORDER += [p[:31] + bytes([p[31] | 0x80]) for p in LOW_ORDER]

key32 = st.binary(min_size=32, max_size=32)
# Mostly right, sometimes not: a wrong length must raise ValueError on both sides.
any_len = st.one_of(key32, st.binary(max_size=40))
peer_key = st.one_of(key32, st.sampled_from(LOW_ORDER), st.just(bytes(32)))


def _same(call: Callable[[ModuleType], object]) -> None:
    """The same result from native and reference, or the same exception type."""
    outcomes = []
    for module in (native, reference):
        try:
            outcomes.append(("ok", call(module)))
        except ValueError:
            outcomes.append(("ValueError", None))
    assert outcomes[0] == outcomes[1]


@settings(PROPERTY, max_examples=examples(200))
@given(private=st.one_of(key32, st.just(bytes(32)), any_len))
def test_x25519_public(private: bytes) -> None:
    _same(lambda m: m.X25519Key(private).public)


@settings(PROPERTY, max_examples=examples(200))
@given(private=st.one_of(key32, st.just(bytes(32))), peers=st.lists(peer_key, max_size=4))
def test_x25519(private: bytes, peers: list[bytes]) -> None:
    """One key made once, exchanged with several peers: each secret as the reference's."""
    keys = native.X25519Key(private), reference.X25519Key(private)
    for peer in peers:
        assert keys[0].exchange(peer) == keys[1].exchange(peer)


@pytest.mark.parametrize("peer", LOW_ORDER, ids=lambda p: p.hex()[:8] + p.hex()[-2:])
def test_x25519_refuses_every_small_order_point(peer: bytes) -> None:
    private = bytes(range(32))
    assert native.X25519Key(private).exchange(peer) is None
    assert reference.X25519Key(private).exchange(peer) is None


@settings(PROPERTY, max_examples=examples(100))
@given(private=any_len, peer=any_len)
def test_x25519_wrong_lengths(private: bytes, peer: bytes) -> None:
    _same(lambda m: m.X25519Key(private).exchange(peer))


def test_x25519_key_takes_any_buffer() -> None:
    private, peer = bytes(range(32)), reference.X25519Key(bytes(32)).public
    key = native.X25519Key(bytearray(private))
    assert key.public == reference.X25519Key(private).public
    assert key.exchange(memoryview(peer)) == reference.X25519Key(private).exchange(peer)
    with pytest.raises(TypeError):
        key.exchange("not a buffer")  # type: ignore[arg-type]


@pytest.mark.parametrize("module", [native, reference], ids=["native", "reference"])
def test_a_wiped_key_exchanges_no_more(module: ModuleType) -> None:
    key = module.X25519Key(bytes(range(32)))
    peer = module.X25519Key(bytes(32)).public
    assert key.exchange(peer) is not None
    key.wipe()
    key.wipe()  # idempotent
    with pytest.raises(module.KeyWiped):
        key.exchange(peer)
    with pytest.raises(ValueError):  # a bad length is still said first, as by the reference
        key.exchange(b"short")
    assert key.public == module.X25519Key(bytes(range(32))).public  # not a secret: kept


def test_wipe_while_other_threads_exchange() -> None:
    """Threads exchanging with one key while it is wiped: each gets the secret or KeyWiped,
    never a crash or another secret (each exchange holds its own reference to OpenSSL's
    key; the sanitizer builds run this)."""
    private = bytes(range(32))
    peers = [reference.X25519Key(bytes([i]) * 32).public for i in range(1, 9)]
    expected = {p: reference.X25519Key(private).exchange(p) for p in peers}

    def work(key: native.X25519Key, go: threading.Barrier, outcomes: list[object]) -> None:
        go.wait()
        for _ in range(20):
            for p in peers:
                try:
                    outcomes.append(key.exchange(p) == expected[p])
                except native.KeyWiped:
                    outcomes.append("wiped")

    for _ in range(5):
        key, go, outcomes = native.X25519Key(private), threading.Barrier(3), []
        threads = [threading.Thread(target=work, args=(key, go, outcomes)) for _ in range(2)]
        for t in threads:
            t.start()
        go.wait()
        key.wipe()
        for t in threads:
            t.join()
        assert set(outcomes) <= {True, "wiped"} and outcomes


@settings(PROPERTY, max_examples=examples(300))
@given(key=any_len, nonce=st.one_of(st.binary(min_size=12, max_size=12), any_len),
       text=st.binary(max_size=300), ad=st.binary(max_size=64))
def test_seal_and_open(key: bytes, nonce: bytes, text: bytes, ad: bytes) -> None:
    _same(lambda m: m.seal(key, nonce, text, ad))
    # Opening random bytes (a bad tag, or too short to hold one) fails alike.
    _same(lambda m: m.open(key, nonce, text, ad))


@settings(PROPERTY, max_examples=examples(300))
@given(key=key32, nonce=st.binary(min_size=12, max_size=12), text=st.binary(max_size=300),
       ad=st.binary(max_size=64), flip=st.integers(min_value=0))
def test_open_authenticates(key: bytes, nonce: bytes, text: bytes, ad: bytes,
                            flip: int) -> None:
    sealed = native.seal(key, nonce, text, ad)
    assert native.open(key, nonce, sealed, ad) == text
    assert reference.open(key, nonce, sealed, ad) == text
    tampered = bytearray(sealed + ad)
    bit = flip % (len(tampered) * 8)
    tampered[bit // 8] ^= 1 << (bit % 8)
    body, other_ad = bytes(tampered[: len(sealed)]), bytes(tampered[len(sealed):])
    assert native.open(key, nonce, body, other_ad) is None
    assert reference.open(key, nonce, body, other_ad) is None


@settings(PROPERTY, max_examples=examples(300))
@given(key=any_len, nonce=st.one_of(st.binary(min_size=24, max_size=24), any_len),
       text=st.binary(max_size=300), ad=st.binary(max_size=64), flip=st.integers(min_value=0))
def test_xseal_and_xopen(key: bytes, nonce: bytes, text: bytes, ad: bytes, flip: int) -> None:
    _same(lambda m: m.xseal(key, nonce, text, ad))
    _same(lambda m: m.xopen(key, nonce, text, ad))
    if len(key) == 32 and len(nonce) == 24:
        sealed = bytearray(native.xseal(key, nonce, text, ad))
        assert reference.xopen(key, nonce, bytes(sealed), ad) == text
        sealed[flip % len(sealed)] ^= 1
        assert native.xopen(key, nonce, bytes(sealed), ad) is None


@settings(PROPERTY, max_examples=examples(200))
@given(key=any_len, nonce=st.one_of(st.binary(min_size=16, max_size=16), any_len))
def test_hchacha20(key: bytes, nonce: bytes) -> None:
    _same(lambda m: m.hchacha20(key, nonce))


@settings(PROPERTY, max_examples=examples(300))
@given(key=st.one_of(key32, st.binary(max_size=200)), data=st.binary(max_size=300),
       outputs=st.one_of(st.integers(1, 3), st.integers(-5, 9)))
def test_kdf(key: bytes, data: bytes, outputs: int) -> None:
    """Any key and data length (HMAC hashes a key longer than its 64-byte block) and any
    count: the same keys, or ValueError on both sides outside 1 to 3."""
    _same(lambda m: m.kdf(key, data, outputs))


def test_kdf_chains_outputs() -> None:
    """Each output is keyed by t0 and fed the previous one: KDF_n's are KDF_3's prefix."""
    key, data = bytes(range(32)), b"data"
    three = native.kdf(key, data, 3)
    assert [len(t) for t in three] == [32, 32, 32] and len(set(three)) == 3
    assert native.kdf(key, data, 1) == three[:1]
    assert native.kdf(key, data, 2) == three[:2]


def test_buffers_other_than_bytes() -> None:
    key, nonce = bytearray(range(32)), memoryview(bytes(12))
    assert native.seal(key, nonce, bytearray(b"x"), b"") == reference.seal(
        bytes(key), bytes(nonce), b"x", b"")
    assert native.kdf(key, memoryview(b"data"), 2) == reference.kdf(bytes(key), b"data", 2)


def test_threads_agree() -> None:
    """Two threads (the GIL released in every call) get what one does: the X25519s, and
    the KDFs, which all duplicate one HMAC context made at import."""
    private = bytes(range(32))
    key = native.X25519Key(private)
    peers = [bytes([i]) * 32 for i in range(2, 42)]

    def outcomes() -> list[object]:
        return [(key.exchange(p), native.kdf(private, p, 1 + i % 3))
                for i, p in enumerate(peers)]

    expected = outcomes()
    results: list[list[object]] = [[], []]

    def work(out: list[object]) -> None:
        out.extend(outcomes())

    threads = [threading.Thread(target=work, args=(r,)) for r in results]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [expected, expected]


# Calls long enough for another thread to wake and take the GIL while one runs: 40 us for
# X25519, about 150 us for an AEAD over 256 KiB, a KDF over 256 KiB of data. (HChaCha20
# takes 1 us, a KDF of handshake-sized inputs 2-4 us: the caller is back before a waiting
# thread wakes, so their release cannot be seen this way.)
_KEY, _NONCE12, _NONCE24, _TEXT = bytes(range(32)), bytes(12), bytes(24), bytes(256 * 1024)
_SEALED = native.seal(_KEY, _NONCE12, _TEXT, b"ad")
_XSEALED = native.xseal(_KEY, _NONCE24, _TEXT, b"ad")
_X25519KEY = native.X25519Key(_KEY)
_CALLS: dict[str, Callable[[], object]] = {
    "X25519Key": lambda: native.X25519Key(_KEY),
    "X25519Key.exchange": lambda: _X25519KEY.exchange(bytes([9]) + bytes(31)),
    "seal": lambda: native.seal(_KEY, _NONCE12, _TEXT, b"ad"),
    "open": lambda: native.open(_KEY, _NONCE12, _SEALED, b"ad"),
    "xseal": lambda: native.xseal(_KEY, _NONCE24, _TEXT, b"ad"),
    "xopen": lambda: native.xopen(_KEY, _NONCE24, _XSEALED, b"ad"),
    "kdf": lambda: native.kdf(_KEY, _TEXT, 3),
    # the responder's step to where the static key does not open (the table is not read)
    "respond_known": lambda: native.respond_known(
        _X25519KEY, native.PeerTable([]), _KEY, _KEY, bytes([9]) + bytes(31), bytes(48),
        bytes(28), None),
    # the initiator's consume of a response: both DHs, then the empty AEAD does not open
    "consume_response": lambda: native.consume_response(
        _X25519KEY, _X25519KEY, _KEY, _KEY, _KEY, bytes([9]) + bytes(31), bytes(16)),
}


@pytest.mark.parametrize("name", sorted(_CALLS))
def test_every_call_releases_the_gil(name: str) -> None:
    """With a switch interval longer than the test, a thread that holds the GIL keeps it
    until it blocks or lets go: another thread waiting for it runs during this loop of
    calls only if a call lets go (a `cryptography` X25519 exchange in its place: never)."""
    call, calls = _CALLS[name], 1000
    go, progress, seen = threading.Event(), [0], []

    def waiter() -> None:
        go.wait()
        seen.append(progress[0])

    thread = threading.Thread(target=waiter)
    thread.start()
    interval = sys.getswitchinterval()
    sys.setswitchinterval(100.0)
    try:
        go.set()
        for i in range(calls):
            progress[0] = i
            call()
            if seen:
                break
        progress[0] = calls
    finally:
        sys.setswitchinterval(interval)
    thread.join()
    assert seen and seen[0] < calls, "the waiting thread ran only after the loop"


def test_only_the_python_path_loads_cryptography() -> None:
    """An endpoint's modules and a whole handshake with transport keys leave `cryptography`
    unloaded on the native path (about 10 MB of idle memory, README "Limits"); the Python
    path loads it."""
    code = ("import sys, vpn.endpoint, vpn.userspace; from lab.doubles import handshaken_pair; "
            "a, b = handshaken_pair(); "
            "print(any(m.split('.')[0] == 'cryptography' for m in sys.modules))")
    loaded = {}
    for value in ("", "python"):
        env = dict(os.environ, VPN_FAST_PATH=value, PYTHONPATH=str(ROOT))
        loaded[value] = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT,
                                       capture_output=True, text=True, check=True).stdout
    assert loaded == {"": "False\n", "python": "True\n"}
