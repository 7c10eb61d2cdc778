"""WireGuard's cryptographic primitives: BLAKE2s hash/MAC/HMAC/KDF, X25519, the two AEADs.

Thin wrappers over hashlib and `cryptography`; no cipher rounds are written here.
"""

from __future__ import annotations

import hashlib
import hmac
import struct

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.ciphers.algorithms import ChaCha20

from .constants import KEY_LEN, TAI64_BASE, TIMESTAMP_WHITENER_NS

__all__ = [
    "CryptoError",
    "InvalidTag",
    "aead_decrypt",
    "aead_encrypt",
    "constant_time_equal",
    "dh",
    "hash_",
    "hchacha20",
    "hmac_",
    "kdf1",
    "kdf2",
    "kdf3",
    "mac",
    "private_bytes",
    "public_bytes",
    "tai64n",
    "xaead_decrypt",
    "xaead_encrypt",
]

_blake2s = hashlib.blake2s
_hmac_digest = hmac.digest
constant_time_equal = hmac.compare_digest
_ZERO4 = b"\x00" * 4


class CryptoError(Exception):
    """A Diffie-Hellman that produced no usable secret (a low-order public key)."""


def hash_(*parts: bytes) -> bytes:
    """HASH(a || b || ...): 32-byte BLAKE2s."""
    h = _blake2s()
    for part in parts:
        h.update(part)
    return h.digest()


def mac(key: bytes, data: bytes) -> bytes:
    """MAC(key, data): keyed BLAKE2s with a 16-byte output."""
    return _blake2s(data, digest_size=16, key=key).digest()


def hmac_(key: bytes, data: bytes) -> bytes:
    """HMAC-BLAKE2s (RFC 2104 over the 64-byte block), as WireGuard's KDF uses it."""
    return _hmac_digest(key, data, "blake2s")


def kdf1(key: bytes, data: bytes) -> bytes:
    t0 = _hmac_digest(key, data, "blake2s")
    return _hmac_digest(t0, b"\x01", "blake2s")


def kdf2(key: bytes, data: bytes) -> tuple[bytes, bytes]:
    t0 = _hmac_digest(key, data, "blake2s")
    t1 = _hmac_digest(t0, b"\x01", "blake2s")
    return t1, _hmac_digest(t0, t1 + b"\x02", "blake2s")


def kdf3(key: bytes, data: bytes) -> tuple[bytes, bytes, bytes]:
    t0 = _hmac_digest(key, data, "blake2s")
    t1 = _hmac_digest(t0, b"\x01", "blake2s")
    t2 = _hmac_digest(t0, t1 + b"\x02", "blake2s")
    return t1, t2, _hmac_digest(t0, t2 + b"\x03", "blake2s")


def dh(private: X25519PrivateKey, public: bytes) -> bytes:
    """X25519; an all-zero result (low-order point) is refused as WireGuard requires."""
    try:
        shared = private.exchange(X25519PublicKey.from_public_bytes(public))
    except ValueError as exc:  # OpenSSL refuses the all-zero output itself
        raise CryptoError("low-order public key") from exc
    if shared == bytes(KEY_LEN):
        raise CryptoError("low-order public key")
    return shared


def public_bytes(private: X25519PrivateKey) -> bytes:
    return private.public_key().public_bytes_raw()


def private_bytes(private: X25519PrivateKey) -> bytes:
    return private.private_bytes_raw()


def counter_nonce(counter: int) -> bytes:
    """The 96-bit AEAD nonce: 4 zero bytes then the counter as a little-endian u64."""
    return _ZERO4 + counter.to_bytes(8, "little")


def aead_encrypt(key: bytes, counter: int, plaintext: bytes, ad: bytes) -> bytes:
    return ChaCha20Poly1305(key).encrypt(counter_nonce(counter), plaintext, ad)


def aead_decrypt(key: bytes, counter: int, ciphertext: bytes, ad: bytes) -> bytes:
    """Raises InvalidTag when the ciphertext does not authenticate."""
    return ChaCha20Poly1305(key).decrypt(counter_nonce(counter), ciphertext, ad)


# HChaCha20 from one block of `cryptography`'s ChaCha20 (DESIGN.md): the block is the
# permuted state plus the input state, so subtracting the known input words (the
# constant in words 0-3, the 16-byte nonce in words 12-15) leaves the permutation.
_SIGMA_WORDS = struct.unpack("<4I", b"expand 32-byte k")
_WORDS16 = struct.Struct("<16I")
_WORDS4 = struct.Struct("<4I")
_ZERO_BLOCK = bytes(64)


def hchacha20(key: bytes, nonce16: bytes) -> bytes:
    block = Cipher(ChaCha20(key, nonce16), mode=None).encryptor().update(_ZERO_BLOCK)
    w = _WORDS16.unpack(block)
    n = _WORDS4.unpack(nonce16)
    out = [(w[i] - _SIGMA_WORDS[i]) & 0xFFFFFFFF for i in range(4)]
    out += [(w[12 + i] - n[i]) & 0xFFFFFFFF for i in range(4)]
    return struct.pack("<8I", *out)


def xaead_encrypt(key: bytes, nonce24: bytes, plaintext: bytes, ad: bytes) -> bytes:
    """XChaCha20-Poly1305 (the cookie reply's cipher)."""
    subkey = hchacha20(key, nonce24[:16])
    return ChaCha20Poly1305(subkey).encrypt(_ZERO4 + nonce24[16:], plaintext, ad)


def xaead_decrypt(key: bytes, nonce24: bytes, ciphertext: bytes, ad: bytes) -> bytes:
    """Raises InvalidTag when the ciphertext does not authenticate."""
    subkey = hchacha20(key, nonce24[:16])
    return ChaCha20Poly1305(subkey).decrypt(_ZERO4 + nonce24[16:], ciphertext, ad)


def tai64n(unix_time: float) -> bytes:
    """12-byte TAI64N label of a wall-clock time, nanoseconds whitened as the kernel does."""
    ns_total = int(unix_time * 1_000_000_000)
    seconds, nanos = divmod(ns_total, 1_000_000_000)
    nanos -= nanos % TIMESTAMP_WHITENER_NS
    return struct.pack(">QI", TAI64_BASE + seconds, nanos)
