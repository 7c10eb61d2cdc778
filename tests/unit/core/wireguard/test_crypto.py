"""Primitives: known answers, HMAC/KDF definitions, XChaCha20-Poly1305 against libsodium."""

from __future__ import annotations

import hashlib
import hmac

import nacl.bindings
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vpn.core.wireguard import crypto
from vpn.core.wireguard.constants import CONSTRUCTION, IDENTIFIER


def test_construction_and_identifier_known_answers() -> None:
    c = crypto.hash_(CONSTRUCTION)
    assert c.hex().startswith("60e26dae") and c.hex().endswith("8b78cd36")
    h = crypto.hash_(c, IDENTIFIER)
    assert h.hex().startswith("2211b361") and h.hex().endswith("ba079ef3")


def test_hmac_is_rfc2104_over_blake2s() -> None:
    key, data = b"k" * 32, b"data"
    assert crypto.hmac_(key, data) == hmac.new(key, data, hashlib.blake2s).digest()


def test_kdf_outputs_chain_as_the_whitepaper_defines() -> None:
    key, data = bytes(range(32)), b"input"
    t0 = crypto.hmac_(key, data)
    t1 = crypto.hmac_(t0, b"\x01")
    t2 = crypto.hmac_(t0, t1 + b"\x02")
    t3 = crypto.hmac_(t0, t2 + b"\x03")
    assert crypto.kdf1(key, data) == t1
    assert crypto.kdf2(key, data) == (t1, t2)
    assert crypto.kdf3(key, data) == (t1, t2, t3)


def test_mac_is_keyed_blake2s_128() -> None:
    expected = hashlib.blake2s(b"m", key=b"k" * 32, digest_size=16).digest()
    assert crypto.mac(b"k" * 32, b"m") == expected


def test_dh_agrees_and_refuses_low_order_points() -> None:
    a, b = crypto.PrivateKey.generate(), crypto.PrivateKey.generate()
    assert crypto.dh(a, b.public) == crypto.dh(b, a.public)
    for low_order in (bytes(32), b"\x01" + bytes(31)):
        with pytest.raises(crypto.CryptoError):
            crypto.dh(a, low_order)


@settings(max_examples=200, deadline=None)
@given(
    key=st.binary(min_size=32, max_size=32),
    nonce=st.binary(min_size=24, max_size=24),
    message=st.binary(max_size=200),
    ad=st.binary(max_size=40),
)
def test_xchacha20poly1305_matches_libsodium(
    key: bytes, nonce: bytes, message: bytes, ad: bytes
) -> None:
    ours = crypto.xaead_encrypt(key, nonce, message, ad)
    theirs = nacl.bindings.crypto_aead_xchacha20poly1305_ietf_encrypt(message, ad, nonce, key)
    assert ours == theirs
    assert crypto.xaead_decrypt(key, nonce, theirs, ad) == message


def test_xchacha20poly1305_rejects_tampering() -> None:
    key, nonce = b"\x07" * 32, b"\x09" * 24
    sealed = bytearray(crypto.xaead_encrypt(key, nonce, b"cookie", b"ad"))
    sealed[0] ^= 1
    with pytest.raises(crypto.InvalidTag):
        crypto.xaead_decrypt(key, nonce, bytes(sealed), b"ad")


def test_hchacha20_known_answer() -> None:
    # The HChaCha20 test vector of the XChaCha IETF draft (draft-irtf-cfrg-xchacha, 2.2.1).
    key = bytes(range(32))
    nonce = bytes.fromhex("000000090000004a0000000031415927")
    expected = "82413b4227b27bfed30e42508a877d73a0f9e4d58a74a853c12ec41326d3ecdc"
    assert crypto.hchacha20(key, nonce).hex() == expected


def test_tai64n_is_big_endian_monotonic_and_whitened() -> None:
    t = crypto.tai64n(1_700_000_000.123456789)
    assert len(t) == 12
    assert int.from_bytes(t[:8], "big") == 0x400000000000000A + 1_700_000_000
    nanos = int.from_bytes(t[8:], "big")
    assert nanos % (1 << 24) == 0 and nanos <= 123_456_789
    assert crypto.tai64n(1_700_000_001.0) > t
    # Within one 16.7 ms whitening step the label does not move.
    assert crypto.tai64n(1_700_000_002.0) == crypto.tai64n(1_700_000_002.001)
