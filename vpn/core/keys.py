"""WireGuard keys: generation, the public half, and the base64 and hex text forms.

Byte-compatible with `wg genkey`, `wg pubkey` and `wg genpsk`; pure apart from the random source.
"""

from __future__ import annotations

import base64
import binascii
import re
import secrets

from vpn.core.wireguard.crypto import PrivateKey

KEY_LEN = 32

# 32 bytes are 43 base64 digits and one '=': the last digit carries only 2 bits, so its low 4
# bits must be zero. Checking the alphabet of that digit rejects non-canonical encodings that
# b64decode would silently accept, as wg's own decoder does.
_B64_KEY = re.compile(r"[A-Za-z0-9+/]{42}[AEIMQUYcgkosw048]=")
_HEX_KEY = re.compile(r"[0-9a-f]{64}")


class KeyFormatError(ValueError):
    """Text that is not a key; the message never repeats the text, which may be a secret."""


def _check_raw(raw: bytes) -> bytes:
    if len(raw) != KEY_LEN:
        raise KeyFormatError(f"a key is {KEY_LEN} bytes, not {len(raw)}")
    return bytes(raw)


def clamp(private: bytes) -> bytes:
    """Clamp an X25519 scalar the way `wg genkey` stores it (RFC 7748 section 5)."""
    out = bytearray(_check_raw(private))
    out[0] &= 248
    out[31] = (out[31] & 127) | 64
    return bytes(out)


def generate_private() -> bytes:
    """A new clamped X25519 private key, as `wg genkey` makes."""
    return clamp(secrets.token_bytes(KEY_LEN))


def public_from_private(priv: bytes) -> bytes:
    """The X25519 public key of ``priv`` (clamped or not: X25519 clamps before multiplying)."""
    return PrivateKey(_check_raw(priv)).public


def generate_psk() -> bytes:
    """A new preshared key: 32 random bytes, as `wg genpsk` makes."""
    return secrets.token_bytes(KEY_LEN)


def decode_key(text: str) -> bytes:
    """Decode the canonical 44-character base64 form of a 32-byte key, nothing looser."""
    if not _B64_KEY.fullmatch(text):
        raise KeyFormatError("not a base64-encoded 32-byte key")
    try:
        return base64.b64decode(text, validate=True)
    except binascii.Error:  # pragma: no cover - the pattern already excludes these
        raise KeyFormatError("not a base64-encoded 32-byte key") from None


def encode_key(raw: bytes) -> str:
    """The base64 form that wg prints and reads."""
    return base64.b64encode(_check_raw(raw)).decode("ascii")


def to_hex(raw: bytes) -> str:
    """The lowercase hex form that the cross-platform UAPI (`wg` over a socket) uses."""
    return _check_raw(raw).hex()


def from_hex(text: str) -> bytes:
    """Decode the UAPI hex form: exactly 64 lowercase hex digits."""
    if not _HEX_KEY.fullmatch(text):
        raise KeyFormatError("not a 64-digit lowercase hex key")
    return bytes.fromhex(text)
