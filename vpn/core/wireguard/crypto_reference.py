"""The Python reference of the handshake's primitives, over `cryptography` (and hashlib's
HMAC for the KDF): what the native
module (_handshake.c) is tested equal to, and what runs under VPN_FAST_PATH=python or
where the module is not built. crypto.py imports it only then, so an idle endpoint on the
native path never loads `cryptography` (about 8 MB). The signatures are _handshake's.
"""

from __future__ import annotations

import hmac
import struct

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.ciphers.algorithms import ChaCha20

__all__ = ["ChaCha20Poly1305", "InvalidTag", "KeyWiped", "X25519Key", "hchacha20", "kdf",
           "open", "seal", "xopen", "xseal"]

_ZERO4 = bytes(4)


class KeyWiped(Exception):
    """An exchange with a wiped X25519Key."""


class X25519Key:
    """A private key made into `cryptography`'s key once, with its public half."""

    __slots__ = ("_key", "public")

    def __init__(self, private: bytes) -> None:
        self._key: X25519PrivateKey | None = X25519PrivateKey.from_private_bytes(private)
        self.public = self._key.public_key().public_bytes_raw()

    def exchange(self, peer: bytes, /) -> bytes | None:
        """The shared secret, None for an all-zero one."""
        if len(peer) != 32:
            raise ValueError("a public key is 32 bytes")
        if self._key is None:
            raise KeyWiped("the private key was wiped")
        try:
            shared = self._key.exchange(X25519PublicKey.from_public_bytes(peer))
        except ValueError:
            return None  # OpenSSL refuses the all-zero output itself
        return None if shared == bytes(32) else shared

    def wipe(self) -> None:
        """Drop the key (`cryptography` frees it; Python cannot overwrite its copy)."""
        self._key = None


def seal(key: bytes, nonce: bytes, plaintext: bytes, ad: bytes, /) -> bytes:
    return ChaCha20Poly1305(key).encrypt(nonce, plaintext, ad)


def open(key: bytes, nonce: bytes, ciphertext: bytes, ad: bytes, /) -> bytes | None:
    try:
        return ChaCha20Poly1305(key).decrypt(nonce, ciphertext, ad)
    except InvalidTag:
        return None


# HChaCha20 from one block of ChaCha20 (DESIGN.md): the block is the permuted state plus
# the input state, so subtracting the known input words (the constant in words 0-3, the
# 16-byte nonce in words 12-15) leaves the permutation.
_SIGMA_WORDS = struct.unpack("<4I", b"expand 32-byte k")
_WORDS16 = struct.Struct("<16I")
_WORDS4 = struct.Struct("<4I")
_ZERO_BLOCK = bytes(64)


def hchacha20(key: bytes, nonce: bytes, /) -> bytes:
    if len(nonce) != 16:
        raise ValueError("the nonce is 16 bytes")
    block = Cipher(ChaCha20(key, nonce), mode=None).encryptor().update(_ZERO_BLOCK)
    w = _WORDS16.unpack(block)
    n = _WORDS4.unpack(nonce)
    out = [(w[i] - _SIGMA_WORDS[i]) & 0xFFFFFFFF for i in range(4)]
    out += [(w[12 + i] - n[i]) & 0xFFFFFFFF for i in range(4)]
    return struct.pack("<8I", *out)


def _extended(nonce: bytes) -> bytes:
    if len(nonce) != 24:
        raise ValueError("the nonce is 24 bytes")
    return _ZERO4 + nonce[16:]


def xseal(key: bytes, nonce: bytes, plaintext: bytes, ad: bytes, /) -> bytes:
    """XChaCha20-Poly1305 (the cookie reply's cipher)."""
    return seal(hchacha20(key, nonce[:16]), _extended(nonce), plaintext, ad)


def xopen(key: bytes, nonce: bytes, ciphertext: bytes, ad: bytes, /) -> bytes | None:
    return open(hchacha20(key, nonce[:16]), _extended(nonce), ciphertext, ad)


def kdf(key: bytes, data: bytes, outputs: int, /) -> tuple[bytes, ...]:
    """WireGuard's KDF: t0 = HMAC(key, data), t_i = HMAC(t0, t_(i-1) || i); the first
    `outputs` (1 to 3) of t_1..t_3. HMAC is RFC 2104 over BLAKE2s-256."""
    if not 1 <= outputs <= 3:
        raise ValueError(f"the KDF gives 1 to 3 outputs, not {outputs}")
    t0 = hmac.digest(key, data, "blake2s")
    out, previous = [], b""
    for counter in range(1, outputs + 1):
        previous = hmac.digest(t0, previous + bytes([counter]), "blake2s")
        out.append(previous)
    return tuple(out)
