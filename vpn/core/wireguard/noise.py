"""The Noise_IKpsk2 handshake as WireGuard uses it: both roles and transport key derivation.

Pure state transitions over decoded messages; MACs and cookies live in cookie.py.
"""

from __future__ import annotations

import contextlib
import enum
from collections.abc import Callable, Iterable
from dataclasses import dataclass

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
    initiator_step,
    kdf1,
    kdf2,
    kdf3,
    known_peers_table,
    responder_step,
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
        "transport_keys",
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
        # The final chaining key's split (send and receive keys before the roles pick),
        # made where that key was computed (a handshake worker): derive_session's input.
        self.transport_keys: tuple[bytes, bytes] | None = None

    def clear(self) -> None:
        """Forget the handshake in progress (timestamps and flood state are kept); its
        ephemeral key is wiped."""
        if self.ephemeral is not None:
            self.ephemeral.wipe()
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

    if hs.ephemeral is not None and hs.ephemeral is not ephemeral:
        hs.ephemeral.wipe()  # the initiation it made is void: no response can complete it
    hs.state = HandshakeState.CREATED_INITIATION
    hs.chaining_key, hs.hash, hs.ephemeral = ck, h, ephemeral
    hs.local_index = local_index
    return Initiation(local_index, e_pub, enc_static, enc_ts)


@dataclass(frozen=True, slots=True, repr=False)  # no secret in a repr
class InitiationRead:
    """An initiation authenticated (noise's first half for the responder): who sent it,
    and the chaining key and hash after it. No peer state was read but the ss and psk."""

    handshake: Handshake  # the peer's, as the lookup found it
    remote_ephemeral: bytes
    sender_index: int
    timestamp: bytes
    chaining_key: bytes
    hash: bytes


@dataclass(frozen=True, slots=True, repr=False)  # no secret in a repr
class Answer:
    """An initiation read and its response computed: everything with a Diffie-Hellman,
    done on immutable inputs (a handshake worker runs it off the event loop). The peer's
    state is written only by `accept_answer`, on the loop."""

    read: InitiationRead
    psk: bytes  # the one the response was made with: a change meanwhile voids it
    ephemeral_public: bytes  # its private key was wiped where its DHs ran
    encrypted_nothing: bytes
    transport_keys: tuple[bytes, bytes]
    hash: bytes


def read_initiation(
    identity: StaticIdentity, msg: Initiation, lookup_peer: Callable[[bytes], Handshake | None]
) -> InitiationRead:
    """Responder, message 1's cryptography: one DH and two decryptions; writes nothing."""
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
    ss = hs.precomputed_ss  # read once: the loop may replace the handshake meanwhile
    if ss is None:
        raise HandshakeError(Drop.LOW_ORDER_PEER_KEY)
    ck, key = kdf2(ck, ss)
    try:
        timestamp = aead_decrypt(key, 0, msg.encrypted_timestamp, h)
    except InvalidTag:
        raise HandshakeError(Drop.BAD_TIMESTAMP_AUTH) from None
    h = hash_(h, msg.encrypted_timestamp)
    return InitiationRead(hs, msg.ephemeral, msg.sender_index, timestamp, ck, h)


def check_initiation(hs: Handshake, read: InitiationRead, now: float) -> None:
    """The replay and flood rules against the peer's state as it is now."""
    # Big-endian TAI64N compares correctly as bytes; equal counts as a replay.
    if read.timestamp <= hs.latest_timestamp:
        raise HandshakeError(Drop.STALE_TIMESTAMP)
    last = hs.last_initiation_consumed
    if last is not None and now < last + INITIATION_MIN_INTERVAL:
        raise HandshakeError(Drop.INITIATION_FLOOD)


def _consumed(hs: Handshake, read: InitiationRead, now: float) -> None:
    hs.state = HandshakeState.CONSUMED_INITIATION
    hs.chaining_key, hs.hash = read.chaining_key, read.hash
    hs.ephemeral = None
    hs.remote_ephemeral = read.remote_ephemeral
    hs.remote_index = read.sender_index
    hs.latest_timestamp = read.timestamp
    hs.last_initiation_consumed = now


def consume_initiation(
    identity: StaticIdentity,
    msg: Initiation,
    lookup_peer: Callable[[bytes], Handshake | None],
    now: float,
) -> Handshake:
    """Responder, message 1: authenticate, find the peer, refuse replays and floods.

    Nothing is written to the peer's state unless every check passes.
    """
    read = read_initiation(identity, msg, lookup_peer)
    check_initiation(read.handshake, read, now)
    _consumed(read.handshake, read, now)
    return read.handshake


def _response_keys(
    ck: bytes, h: bytes, remote_ephemeral: bytes, remote_static: bytes, psk: bytes,
    ephemeral: PrivateKey,
) -> tuple[bytes, tuple[bytes, bytes], bytes]:
    """Responder, message 2's cryptography: keygen's result and two DHs; writes nothing.
    Returns the encrypted empty payload, the transport keys and the hash."""
    e_pub = ephemeral.public
    ck = kdf1(ck, e_pub)
    h = hash_(h, e_pub)
    try:
        ck = kdf1(ck, dh(ephemeral, remote_ephemeral))
        ck = kdf1(ck, dh(ephemeral, remote_static))
    except CryptoError as exc:
        raise HandshakeError(Drop.LOW_ORDER_EPHEMERAL) from exc
    finally:
        ephemeral.wipe()  # the responder's ephemeral does nothing more: freed where it ran
    ck, tau, key = kdf3(ck, psk)
    h = hash_(h, tau)
    enc_nothing = aead_encrypt(key, 0, b"", h)
    return enc_nothing, kdf2(ck, b""), hash_(h, enc_nothing)


# The native steps' codes of where a message failed (handshake_steps.c).
_STEP_DROPS = {1: Drop.LOW_ORDER_EPHEMERAL, 2: Drop.BAD_STATIC_AUTH, 3: Drop.BAD_TIMESTAMP_AUTH,
               4: Drop.BAD_RESPONSE_AUTH, 5: Drop.UNKNOWN_PEER, 6: Drop.LOW_ORDER_PEER_KEY}


def _answer(msg: Initiation, hs: Handshake, psk: bytes, out: tuple[bytes, ...]) -> Answer:
    """An Answer from a native responder step's nine results."""
    _, timestamp, ck, h, e_pub, enc_nothing, key1, key2, final_hash = out
    read = InitiationRead(hs, msg.ephemeral, msg.sender_index, timestamp, ck, h)
    return Answer(read, psk, e_pub, enc_nothing, (key1, key2), final_hash)


class KnownPeers:
    """The peers a responder knows, frozen when built: their handshakes by static key and,
    on the native path, the table (handshake_table.c) that the whole responder step looks
    them up in without the GIL, with each one's ss and psk as they were. The device builds
    a new one when the peer set, a psk or the private key changes; one in use meanwhile is
    harmless: accept_answer refuses an answer whose handshake was replaced or whose psk
    changed."""

    __slots__ = ("_psks", "_slots", "_table", "handshakes")

    def __init__(self, handshakes: Iterable[Handshake]) -> None:
        self._slots = tuple(handshakes)
        self._psks = tuple(hs.psk for hs in self._slots)
        self.handshakes = {hs.remote_static: hs for hs in self._slots}
        self._table = known_peers_table([(hs.remote_static, hs.precomputed_ss, psk)
                                         for hs, psk in zip(self._slots, self._psks, strict=True)])

    def __repr__(self) -> str:
        return f"KnownPeers({len(self._slots)} peers)"


def answer_known(
    identity: StaticIdentity,
    msg: Initiation,
    known: KnownPeers,
    new_ephemeral: Callable[[], bytes] | None,
) -> Answer:
    """An initiation read and answered, as one pure function of its inputs: the worker's
    part. One native call when the handshake module is built (the GIL released once, the
    peer found in the table in C, no Python between the primitives, the ephemeral key made
    and wiped inside), else answer_initiation over `known`'s handshakes, the reference that
    tests hold the native step to. The new ephemeral, when `new_ephemeral` gives it, is drawn
    before the step (the tests' seeded keys): a message that fails still uses one."""
    table = known._table
    if table is None:
        return answer_initiation(identity, msg, known.handshakes.get, new_ephemeral)
    out = responder_step(identity.private, table, INITIAL_CHAIN_KEY,
                               identity.responder_hash, msg.ephemeral, msg.encrypted_static,
                               msg.encrypted_timestamp, new_ephemeral and new_ephemeral())
    if isinstance(out, int):
        raise HandshakeError(_STEP_DROPS[out])
    slot, results = out
    return _answer(msg, known._slots[slot], known._psks[slot], results)


def answer_initiation(
    identity: StaticIdentity,
    msg: Initiation,
    lookup_peer: Callable[[bytes], Handshake | None],
    new_ephemeral: Callable[[], bytes] | None,
) -> Answer:
    """An initiation read and answered, composed from crypto.py's primitives (answer_known's
    Python path and reference). The peer's psk is read once, here; `new_ephemeral` gives the
    private key of the response's ephemeral (None: fresh random bytes)."""
    read = read_initiation(identity, msg, lookup_peer)
    hs = read.handshake
    psk = hs.psk
    ephemeral = PrivateKey.generate(new_ephemeral)
    enc_nothing, keys, h = _response_keys(read.chaining_key, read.hash,
                                          read.remote_ephemeral, hs.remote_static, psk,
                                          ephemeral)
    return Answer(read, psk, ephemeral.public, enc_nothing, keys, h)


def accept_answer(
    hs: Handshake, answer: Answer, new_index: Callable[[], int], now: float
) -> Response:
    """On the loop: the rules against the peer's state now, then the state written (as
    consume_initiation then create_response), under the index `new_index` gives once every
    check passed. `hs` must be the one the answer read, its psk unchanged."""
    if hs is not answer.read.handshake or hs.psk != answer.psk:
        raise HandshakeError(Drop.HANDSHAKE_PEER_CHANGED)
    check_initiation(hs, answer.read, now)
    local_index = new_index()
    _consumed(hs, answer.read, now)
    _responded(hs, answer.transport_keys, answer.hash, local_index)
    return Response(local_index, hs.remote_index, answer.ephemeral_public,
                    answer.encrypted_nothing)


def _responded(hs: Handshake, transport_keys: tuple[bytes, bytes], h: bytes,
               local_index: int) -> None:
    hs.state = HandshakeState.CREATED_RESPONSE
    # The final chaining key is not kept: its split is all that is left to use, and the
    # ephemeral (wiped where its DHs ran) nothing.
    hs.chaining_key, hs.transport_keys = _ZERO_KEY, transport_keys
    hs.hash, hs.ephemeral, hs.local_index = h, None, local_index


def create_response(hs: Handshake, local_index: int, ephemeral: PrivateKey) -> Response:
    """Responder, message 2. The returned message still has zero MACs."""
    if hs.state is not HandshakeState.CONSUMED_INITIATION:
        raise HandshakeError(Drop.NO_INITIATION_CONSUMED)
    enc_nothing, keys, h = _response_keys(hs.chaining_key, hs.hash, hs.remote_ephemeral,
                                          hs.remote_static, hs.psk, ephemeral)
    _responded(hs, keys, h, local_index)
    return Response(local_index, hs.remote_index, ephemeral.public, enc_nothing)


@dataclass(frozen=True, slots=True, repr=False)  # no secret in a repr
class ResponseInputs:
    """What consuming a response reads of the initiator's handshake, taken on the loop when
    the response is queued: the worker computes from these alone."""

    handshake: Handshake
    local_index: int
    identity: StaticIdentity
    ephemeral: PrivateKey
    chaining_key: bytes
    hash: bytes
    psk: bytes


@dataclass(frozen=True, slots=True, repr=False)  # no secret in a repr
class ResponseRead:
    """A response authenticated: the transport keys (the final chaining key's split) and
    the hash after it."""

    inputs: ResponseInputs
    remote_ephemeral: bytes
    sender_index: int
    transport_keys: tuple[bytes, bytes]
    hash: bytes


def response_inputs(hs: Handshake | None) -> ResponseInputs:
    """`hs` found by the response's receiver index, and waiting for one; else HandshakeError."""
    if hs is None or hs.state is not HandshakeState.CREATED_INITIATION or hs.ephemeral is None:
        raise HandshakeError(Drop.UNEXPECTED_RESPONSE)
    if hs.identity is None:  # cannot be: an initiation needs one, and a new key rebuilds hs
        raise HandshakeError(Drop.NO_PRIVATE_KEY)
    return ResponseInputs(hs, hs.local_index, hs.identity, hs.ephemeral, hs.chaining_key,
                          hs.hash, hs.psk)


def read_response(msg: Response, inputs: ResponseInputs) -> ResponseRead:
    """Initiator, message 2's cryptography: two DHs and a decryption; writes nothing. One
    native call when the handshake module is built (the GIL released once), else the Python
    path (read_response_in_python, which tests hold the native step to)."""
    out = initiator_step(inputs.identity.private, inputs.ephemeral, inputs.chaining_key,
                         inputs.hash, inputs.psk, msg.ephemeral, msg.encrypted_nothing)
    if out is None:
        return read_response_in_python(msg, inputs)
    if isinstance(out, int):
        raise HandshakeError(_STEP_DROPS[out])
    key1, key2, h = out
    return ResponseRead(inputs, msg.ephemeral, msg.sender_index, (key1, key2), h)


def read_response_in_python(msg: Response, inputs: ResponseInputs) -> ResponseRead:
    """read_response composed from crypto.py's primitives."""
    ck = kdf1(inputs.chaining_key, msg.ephemeral)
    h = hash_(inputs.hash, msg.ephemeral)
    try:
        ck = kdf1(ck, dh(inputs.ephemeral, msg.ephemeral))
        ck = kdf1(ck, dh(inputs.identity.private, msg.ephemeral))
    except CryptoError as exc:
        raise HandshakeError(Drop.LOW_ORDER_EPHEMERAL) from exc
    ck, tau, key = kdf3(ck, inputs.psk)
    h = hash_(h, tau)
    try:
        aead_decrypt(key, 0, msg.encrypted_nothing, h)
    except InvalidTag:
        raise HandshakeError(Drop.BAD_RESPONSE_AUTH) from None
    return ResponseRead(inputs, msg.ephemeral, msg.sender_index, kdf2(ck, b""),
                        hash_(h, msg.encrypted_nothing))


def accept_response(read: ResponseRead) -> Handshake:
    """On the loop: the handshake must still be the one the response was read against."""
    inputs = read.inputs
    hs = inputs.handshake
    if (hs.state is not HandshakeState.CREATED_INITIATION or hs.ephemeral is not inputs.ephemeral
            or hs.local_index != inputs.local_index or hs.psk != inputs.psk):
        raise HandshakeError(Drop.HANDSHAKE_PEER_CHANGED)
    hs.state = HandshakeState.CONSUMED_RESPONSE
    hs.chaining_key, hs.transport_keys, hs.hash = _ZERO_KEY, read.transport_keys, read.hash
    hs.remote_ephemeral = read.remote_ephemeral
    hs.remote_index = read.sender_index
    return hs


def consume_response(msg: Response, hs: Handshake | None) -> Handshake:
    """Initiator, message 2; `hs` is the handshake found by the message's receiver index."""
    return accept_response(read_response(msg, response_inputs(hs)))


def derive_session(hs: Handshake) -> SessionKeys:
    """The transport keys (split from the final chaining key where the handshake's
    cryptography ran, a worker's thread) in their roles; the handshake is wiped."""
    if hs.state is HandshakeState.CONSUMED_RESPONSE:
        initiator = True
    elif hs.state is HandshakeState.CREATED_RESPONSE:
        initiator = False
    else:
        raise HandshakeError(Drop.HANDSHAKE_INCOMPLETE)
    if hs.transport_keys is None:  # cannot be: both states are entered with the keys
        raise HandshakeError(Drop.HANDSHAKE_INCOMPLETE)
    first, second = hs.transport_keys
    send, recv = (first, second) if initiator else (second, first)
    keys = SessionKeys(send, recv, initiator, hs.local_index, hs.remote_index)
    hs.clear()
    return keys
