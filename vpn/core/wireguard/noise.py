"""The Noise_IKpsk2 handshake as WireGuard uses it: both roles and transport key derivation.

Pure state transitions over decoded messages; MACs and cookies live in cookie.py.
"""

from __future__ import annotations

import contextlib
import enum
from collections.abc import Callable

from vpn.core.drops import Drop
from vpn.core.types import Buffer

from .constants import CONSTRUCTION, IDENTIFIER, INITIATION_MIN_INTERVAL, KEY_LEN, TIMESTAMP_LEN
from .crypto import (
    CryptoError,
    InvalidTag,
    PrivateKey,
    aead_decrypt,
    aead_encrypt,
    dh,
    hash_,
    kdf1,
    kdf2,
    kdf3,
)
from .messages import Initiation, MessageError, Response

INITIAL_CHAIN_KEY = hash_(CONSTRUCTION)
INITIAL_HASH = hash_(INITIAL_CHAIN_KEY, IDENTIFIER)
_ZERO_KEY = bytes(KEY_LEN)


class HandshakeError(MessageError):
    """A handshake message that authenticates badly or arrives at the wrong time."""


class StaticIdentity:
    """This device's static X25519 key pair, with the responder's first hash precomputed."""

    __slots__ = ("private", "public", "responder_hash")

    def __init__(self, private: PrivateKey) -> None:
        self.private = private
        self.public = private.public
        self.responder_hash = hash_(INITIAL_HASH, self.public)

    @classmethod
    def from_private_bytes(cls, key: bytes) -> StaticIdentity:
        if len(key) != KEY_LEN:
            raise ValueError("a private key is 32 bytes")
        return cls(PrivateKey(key))

    def __repr__(self) -> str:
        return "StaticIdentity(<private key hidden>)"


class HandshakeState(enum.Enum):
    ZEROED = 0
    CREATED_INITIATION = 1
    CONSUMED_INITIATION = 2
    CREATED_RESPONSE = 3
    CONSUMED_RESPONSE = 4


class SessionKeys:
    """What a finished handshake yields: one key per direction and both indices. The keys
    are this object's own bytearrays so that they can be wiped: a Keypair wipes them once
    its AEAD objects hold the keys (the kdf's bytes results cannot be, and are dropped)."""

    __slots__ = ("is_initiator", "local_index", "recv_key", "remote_index", "send_key")

    def __init__(self, send_key: Buffer, recv_key: Buffer, is_initiator: bool,
                 local_index: int, remote_index: int) -> None:
        self.send_key = bytearray(send_key)
        self.recv_key = bytearray(recv_key)
        self.is_initiator = is_initiator
        self.local_index = local_index
        self.remote_index = remote_index

    def wipe(self) -> None:
        """Overwrite both keys with zeros, in place."""
        for key in (self.send_key, self.recv_key):
            key[:] = bytes(len(key))

    def __repr__(self) -> str:
        return (
            f"SessionKeys(is_initiator={self.is_initiator}, local_index={self.local_index:#x}, "
            f"remote_index={self.remote_index:#x}, <keys hidden>)"
        )


class Handshake:
    """Noise state shared with one remote static key (one per peer)."""

    __slots__ = (
        "chaining_key",
        "ephemeral",
        "hash",
        "identity",
        "initiator_hash",
        "last_initiation_consumed",
        "latest_timestamp",
        "local_index",
        "precomputed_ss",
        "psk",
        "remote_ephemeral",
        "remote_index",
        "remote_static",
        "state",
    )

    def __init__(
        self, identity: StaticIdentity | None, remote_static: bytes, psk: bytes | None = None
    ) -> None:
        if len(remote_static) != KEY_LEN:
            raise ValueError("a public key is 32 bytes")
        if psk is not None and len(psk) != KEY_LEN:
            raise ValueError("a preshared key is 32 bytes")
        self.identity = identity
        self.remote_static = bytes(remote_static)
        self.psk = bytes(psk) if psk is not None else _ZERO_KEY
        # DH(s_i, S_r) == DH(s_r, S_i): computed once per peer; None for a low-order key, or
        # while the device has no private key (identity None).
        self.precomputed_ss: bytes | None = None
        if identity is not None:
            with contextlib.suppress(CryptoError):
                self.precomputed_ss = dh(identity.private, self.remote_static)
        self.initiator_hash = hash_(INITIAL_HASH, self.remote_static)
        self.latest_timestamp = bytes(TIMESTAMP_LEN)
        self.last_initiation_consumed: float | None = None
        self._clear()

    def _clear(self) -> None:
        self.state = HandshakeState.ZEROED
        self.chaining_key = _ZERO_KEY
        self.hash = _ZERO_KEY
        self.ephemeral: PrivateKey | None = None
        self.remote_ephemeral = _ZERO_KEY
        self.local_index = 0
        self.remote_index = 0

    def clear(self) -> None:
        """Forget the handshake in progress (timestamps and flood state are kept)."""
        self._clear()

    def __repr__(self) -> str:
        return f"Handshake(state={self.state.name}, local_index={self.local_index:#x})"


def create_initiation(
    hs: Handshake, local_index: int, timestamp: bytes, ephemeral: PrivateKey
) -> Initiation:
    """Initiator, message 1. The returned message still has zero MACs."""
    if hs.identity is None:
        raise HandshakeError(Drop.NO_PRIVATE_KEY)
    if hs.precomputed_ss is None:
        raise HandshakeError(Drop.LOW_ORDER_PEER_KEY)
    ck = INITIAL_CHAIN_KEY
    h = hs.initiator_hash
    e_pub = ephemeral.public
    ck = kdf1(ck, e_pub)
    h = hash_(h, e_pub)
    ck, key = kdf2(ck, dh(ephemeral, hs.remote_static))
    enc_static = aead_encrypt(key, 0, hs.identity.public, h)
    h = hash_(h, enc_static)
    ck, key = kdf2(ck, hs.precomputed_ss)
    enc_ts = aead_encrypt(key, 0, timestamp, h)
    h = hash_(h, enc_ts)

    hs.state = HandshakeState.CREATED_INITIATION
    hs.chaining_key, hs.hash, hs.ephemeral = ck, h, ephemeral
    hs.local_index = local_index
    return Initiation(local_index, e_pub, enc_static, enc_ts)


def consume_initiation(
    identity: StaticIdentity,
    msg: Initiation,
    lookup_peer: Callable[[bytes], Handshake | None],
    now: float,
) -> Handshake:
    """Responder, message 1: authenticate, find the peer, refuse replays and floods.

    Nothing is written to the peer's state unless every check passes.
    """
    ck = kdf1(INITIAL_CHAIN_KEY, msg.ephemeral)
    h = hash_(identity.responder_hash, msg.ephemeral)
    try:
        ck, key = kdf2(ck, dh(identity.private, msg.ephemeral))
    except CryptoError as exc:
        raise HandshakeError(Drop.LOW_ORDER_EPHEMERAL) from exc
    try:
        remote_static = aead_decrypt(key, 0, msg.encrypted_static, h)
    except InvalidTag:
        raise HandshakeError(Drop.BAD_STATIC_AUTH) from None
    h = hash_(h, msg.encrypted_static)
    hs = lookup_peer(remote_static)
    if hs is None:
        raise HandshakeError(Drop.UNKNOWN_PEER)
    if hs.precomputed_ss is None:
        raise HandshakeError(Drop.LOW_ORDER_PEER_KEY)
    ck, key = kdf2(ck, hs.precomputed_ss)
    try:
        timestamp = aead_decrypt(key, 0, msg.encrypted_timestamp, h)
    except InvalidTag:
        raise HandshakeError(Drop.BAD_TIMESTAMP_AUTH) from None
    h = hash_(h, msg.encrypted_timestamp)

    # Big-endian TAI64N compares correctly as bytes; equal counts as a replay.
    if timestamp <= hs.latest_timestamp:
        raise HandshakeError(Drop.STALE_TIMESTAMP)
    last = hs.last_initiation_consumed
    if last is not None and now < last + INITIATION_MIN_INTERVAL:
        raise HandshakeError(Drop.INITIATION_FLOOD)

    hs.state = HandshakeState.CONSUMED_INITIATION
    hs.chaining_key, hs.hash = ck, h
    hs.ephemeral = None
    hs.remote_ephemeral = msg.ephemeral
    hs.remote_index = msg.sender_index
    hs.latest_timestamp = timestamp
    hs.last_initiation_consumed = now
    return hs


def create_response(hs: Handshake, local_index: int, ephemeral: PrivateKey) -> Response:
    """Responder, message 2. The returned message still has zero MACs."""
    if hs.state is not HandshakeState.CONSUMED_INITIATION:
        raise HandshakeError(Drop.NO_INITIATION_CONSUMED)
    ck, h = hs.chaining_key, hs.hash
    e_pub = ephemeral.public
    ck = kdf1(ck, e_pub)
    h = hash_(h, e_pub)
    try:
        ck = kdf1(ck, dh(ephemeral, hs.remote_ephemeral))
        ck = kdf1(ck, dh(ephemeral, hs.remote_static))
    except CryptoError as exc:
        raise HandshakeError(Drop.LOW_ORDER_EPHEMERAL) from exc
    ck, tau, key = kdf3(ck, hs.psk)
    h = hash_(h, tau)
    enc_nothing = aead_encrypt(key, 0, b"", h)
    h = hash_(h, enc_nothing)

    hs.state = HandshakeState.CREATED_RESPONSE
    hs.chaining_key, hs.hash, hs.ephemeral = ck, h, ephemeral
    hs.local_index = local_index
    return Response(local_index, hs.remote_index, e_pub, enc_nothing)


def consume_response(msg: Response, hs: Handshake | None) -> Handshake:
    """Initiator, message 2; `hs` is the handshake found by the message's receiver index."""
    if hs is None or hs.state is not HandshakeState.CREATED_INITIATION or hs.ephemeral is None:
        raise HandshakeError(Drop.UNEXPECTED_RESPONSE)
    if hs.identity is None:  # cannot be: an initiation needs one, and a new key rebuilds hs
        raise HandshakeError(Drop.NO_PRIVATE_KEY)
    ephemeral = hs.ephemeral
    ck = kdf1(hs.chaining_key, msg.ephemeral)
    h = hash_(hs.hash, msg.ephemeral)
    try:
        ck = kdf1(ck, dh(ephemeral, msg.ephemeral))
        ck = kdf1(ck, dh(hs.identity.private, msg.ephemeral))
    except CryptoError as exc:
        raise HandshakeError(Drop.LOW_ORDER_EPHEMERAL) from exc
    ck, tau, key = kdf3(ck, hs.psk)
    h = hash_(h, tau)
    try:
        aead_decrypt(key, 0, msg.encrypted_nothing, h)
    except InvalidTag:
        raise HandshakeError(Drop.BAD_RESPONSE_AUTH) from None
    h = hash_(h, msg.encrypted_nothing)

    hs.state = HandshakeState.CONSUMED_RESPONSE
    hs.chaining_key, hs.hash = ck, h
    hs.remote_ephemeral = msg.ephemeral
    hs.remote_index = msg.sender_index
    return hs


def derive_session(hs: Handshake) -> SessionKeys:
    """Split the chaining key into transport keys and wipe the handshake."""
    if hs.state is HandshakeState.CONSUMED_RESPONSE:
        initiator = True
    elif hs.state is HandshakeState.CREATED_RESPONSE:
        initiator = False
    else:
        raise HandshakeError(Drop.HANDSHAKE_INCOMPLETE)
    first, second = kdf2(hs.chaining_key, b"")
    send, recv = (first, second) if initiator else (second, first)
    keys = SessionKeys(send, recv, initiator, hs.local_index, hs.remote_index)
    hs.clear()
    return keys
