"""WireGuard's cryptographic primitives: BLAKE2s hash/MAC/HMAC/KDF, X25519, the two AEADs.

Thin wrappers over hashlib and, for X25519, the AEADs and the KDF (one native call per KDF
instead of three HMACs), the native module _handshake.c
(the system OpenSSL, the GIL released) or, under VPN_FAST_PATH=python or without it, its
Python reference over `cryptography` (crypto_reference.py, imported only then). No cipher
rounds are written here.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import struct
from collections.abc import Callable
from importlib import import_module
from typing import TYPE_CHECKING

from vpn.core.native import twin
from vpn.core.types import Buffer

from .constants import KEY_LEN, TAI64_BASE, TIMESTAMP_WHITENER_NS

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

__all__ = [
    "NATIVE",
    "CryptoError",
    "InvalidTag",
    "KeyWiped",
    "PrivateKey",
    "ReferenceAead",
    "aead_decrypt",
    "aead_encrypt",
    "constant_time_equal",
    "dh",
    "hash_",
    "hchacha20",
    "hmac_",
    "initiator_step",
    "kdf1",
    "kdf2",
    "kdf3",
    "known_peers_table",
    "mac",
    "responder_step",
    "tai64n",
    "xaead_decrypt",
    "xaead_encrypt",
]

# Decided once, at import, by vpn/core/native.py's rule (as for every C module): the native
# module when it is built and not refused.
try:
    from . import _handshake  # noqa: F401  (only whether it imports)
except ImportError as error:
    NATIVE = twin("handshake module", error)
else:
    NATIVE = twin("handshake module")

# The reference's signatures (bytes) come first for mypy: the native ones accept more.
if not NATIVE.native:
    from .crypto_reference import KeyWiped, X25519Key, hchacha20
    from .crypto_reference import kdf as _kdf
    from .crypto_reference import open as _open
    from .crypto_reference import seal as _seal
    from .crypto_reference import xopen as _xopen
    from .crypto_reference import xseal as _xseal
else:
    # The classes are two (the reference's, _handshake.pyi's) with one interface.
    from ._handshake import KeyWiped, X25519Key, hchacha20  # type: ignore[assignment]
    from ._handshake import kdf as _kdf
    from ._handshake import open as _open
    from ._handshake import seal as _seal
    from ._handshake import xopen as _xopen
    from ._handshake import xseal as _xseal

# The Noise steps with DHs in one native call each (handshake_steps.c), None on the Python
# path: noise.py composes the steps from the primitives then.
_consume_response: Callable[..., tuple[bytes, ...] | int] | None = None
_respond_known: Callable[..., tuple[int, tuple[bytes, ...]] | int] | None = None
_PeerTable: Callable[[list[tuple[bytes, bytes | None, bytes]]], object] | None = None
if NATIVE.native:
    from ._handshake import PeerTable as _NativePeerTable
    from ._handshake import consume_response as _native_consume_response
    from ._handshake import respond_known as _native_respond_known
    _consume_response = _native_consume_response
    _respond_known, _PeerTable = _native_respond_known, _NativePeerTable

_blake2s = hashlib.blake2s
_hmac_digest = hmac.digest
constant_time_equal = hmac.compare_digest
_ZERO4 = b"\x00" * 4


class CryptoError(Exception):
    """A Diffie-Hellman that produced no usable secret (a low-order public key)."""


class InvalidTag(Exception):
    """A ciphertext that does not authenticate."""


class PrivateKey:
    """An X25519 private key, made into the library's key object once (X25519Key: on the
    native path OpenSSL's EVP_PKEY), with its public half computed once: every DH reuses
    both. The one representation of private keys (static and ephemeral) on both paths.
    `wipe` frees the native copy (OpenSSL cleanses it) once no DH in flight uses it."""

    __slots__ = ("_key", "_secret", "public")

    def __init__(self, secret: Buffer) -> None:
        if len(secret) != KEY_LEN:
            raise ValueError(f"a private key is {KEY_LEN} bytes")
        self._secret = bytes(secret)
        self._key = X25519Key(self._secret)
        self.public = self._key.public

    @classmethod
    def generate(cls, secret: Callable[[], bytes] | None = None) -> PrivateKey:
        """A new key: from `secret`'s 32 bytes when given (the tests' seeded sources)."""
        return cls(secret() if secret is not None else secrets.token_bytes(KEY_LEN))

    def private_bytes(self) -> bytes:
        return self._secret

    def wipe(self) -> None:
        """No more DHs with this key: they raise KeyWiped. Idempotent."""
        self._key.wipe()

    def __repr__(self) -> str:
        return "PrivateKey(<hidden>)"


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
    return _kdf(key, data, 1)[0]


def kdf2(key: bytes, data: bytes) -> tuple[bytes, bytes]:
    t1, t2 = _kdf(key, data, 2)
    return t1, t2


def kdf3(key: bytes, data: bytes) -> tuple[bytes, bytes, bytes]:
    t1, t2, t3 = _kdf(key, data, 3)
    return t1, t2, t3


def dh(private: PrivateKey, public: bytes) -> bytes:
    """X25519; an all-zero result (low-order point) is refused as WireGuard requires.
    KeyWiped when `private` was wiped (a handshake replaced or a key changed meanwhile)."""
    shared = private._key.exchange(public)
    if shared is None:
        raise CryptoError("low-order public key")
    return shared


def known_peers_table(entries: list[tuple[bytes, bytes | None, bytes]]) -> object | None:
    """The native PeerTable of (public key, ss or None, psk) entries, each one's slot its
    position (ValueError for a key given twice), or None on the Python path."""
    return None if _PeerTable is None else _PeerTable(entries)


def responder_step(
    static: PrivateKey, table: object, chaining_key: bytes, hash_: bytes, ephemeral: bytes,
    sealed_static: bytes, sealed_timestamp: bytes, ephemeral_private: bytes | None,
) -> tuple[int, tuple[bytes, ...]] | int:
    """The responder's step in one native call (handshake_steps.c), the peer found in a
    known_peers_table, the GIL released once: the peer's slot and the nine results, or the
    code of where the message failed (1 a low-order point, 2 the static key, 3 the
    timestamp, 5 an unknown peer, 6 a peer whose key is low-order).
    `ephemeral_private` None: OpenSSL draws the new ephemeral. KeyWiped when the static
    key was wiped. Only with a table (the native path)."""
    assert _respond_known is not None
    return _respond_known(static._key, table, chaining_key, hash_, ephemeral, sealed_static,
                          sealed_timestamp, ephemeral_private)


def initiator_step(
    static: PrivateKey, ephemeral: PrivateKey, chaining_key: bytes, hash_: bytes, psk: bytes,
    remote_ephemeral: bytes, sealed_nothing: bytes,
) -> tuple[bytes, ...] | int | None:
    """The initiator's consume of a response in one native call (handshake_steps.c), the GIL
    released once: the two transport keys and the final hash, the code of where the message
    failed (1 a low-order point, 4 the empty AEAD), or None on the Python path. KeyWiped when
    a key was wiped."""
    if _consume_response is None:
        return None
    return _consume_response(static._key, ephemeral._key, chaining_key, hash_, psk,
                             remote_ephemeral, sealed_nothing)


def counter_nonce(counter: int) -> bytes:
    """The 96-bit AEAD nonce: 4 zero bytes then the counter as a little-endian u64."""
    return _ZERO4 + counter.to_bytes(8, "little")


def aead_encrypt(key: bytes, counter: int, plaintext: bytes, ad: bytes) -> bytes:
    return _seal(key, counter_nonce(counter), plaintext, ad)


def aead_decrypt(key: bytes, counter: int, ciphertext: bytes, ad: bytes) -> bytes:
    """Raises InvalidTag when the ciphertext does not authenticate."""
    return _opened(_open(key, counter_nonce(counter), ciphertext, ad))


def xaead_encrypt(key: bytes, nonce24: bytes, plaintext: bytes, ad: bytes) -> bytes:
    """XChaCha20-Poly1305 (the cookie reply's cipher)."""
    return _xseal(key, nonce24, plaintext, ad)


def xaead_decrypt(key: bytes, nonce24: bytes, ciphertext: bytes, ad: bytes) -> bytes:
    """Raises InvalidTag when the ciphertext does not authenticate."""
    return _opened(_xopen(key, nonce24, ciphertext, ad))


def _opened(plaintext: bytes | None) -> bytes:
    if plaintext is None:
        raise InvalidTag
    return plaintext


class ReferenceAead:
    """`cryptography`'s ChaCha20Poly1305 (imported on first use), raising this module's
    InvalidTag: the transport's Python reference (keypair.py) uses it."""

    __slots__ = ("_aead", "_invalid_tag")

    def __init__(self, key: Buffer) -> None:
        reference = import_module("vpn.core.wireguard.crypto_reference")
        self._aead: ChaCha20Poly1305 = reference.ChaCha20Poly1305(key)
        self._invalid_tag: type[Exception] = reference.InvalidTag

    def encrypt_into(self, nonce: Buffer, data: Buffer, ad: Buffer | None, out: Buffer) -> int:
        return self._aead.encrypt_into(nonce, data, ad, out)

    def decrypt_into(self, nonce: Buffer, data: Buffer, ad: Buffer | None, out: Buffer) -> int:
        try:
            return self._aead.decrypt_into(nonce, data, ad, out)
        except self._invalid_tag:
            raise InvalidTag from None


def tai64n(unix_time: float) -> bytes:
    """12-byte TAI64N label of a wall-clock time, nanoseconds whitened as the kernel does."""
    ns_total = int(unix_time * 1_000_000_000)
    seconds, nanos = divmod(ns_total, 1_000_000_000)
    nanos -= nanos % TIMESTAMP_WHITENER_NS
    return struct.pack(">QI", TAI64_BASE + seconds, nanos)
