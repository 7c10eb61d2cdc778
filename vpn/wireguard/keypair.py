"""Transport keypairs: counter-nonce encryption, authenticated decryption, rotation of three.

The data plane's per-packet work is Keypair.encrypt_into / decrypt_into; everything else is rare.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from .constants import (
    AEAD_TAG_LEN,
    MESSAGE_TRANSPORT,
    PADDING_MULTIPLE,
    REJECT_AFTER_MESSAGES,
    REJECT_AFTER_TIME,
    TRANSPORT_HEADER_SIZE,
    TRANSPORT_MIN_SIZE,
)
from .crypto import InvalidTag
from .messages import TRANSPORT_HEADER, Buffer, MessageError
from .noise import SessionKeys
from .replay import ReplayWindow

_ZERO4 = b"\x00" * 4
_ZERO_PAD = bytes(PADDING_MULTIPLE)
_pack_header = TRANSPORT_HEADER.pack_into
_unpack_header = TRANSPORT_HEADER.unpack_from


class TransportError(MessageError):
    """A transport message that must be dropped (bad tag, replay, wrong or dead keypair)."""


def padded_length(n: int, mtu: int = 0) -> int:
    """Plaintext length after padding to 16 bytes, never past the MTU (0: no cap)."""
    padded = (n + PADDING_MULTIPLE - 1) & ~(PADDING_MULTIPLE - 1)
    if mtu and padded > mtu:
        return max(n, mtu)
    return padded


def transport_size(plaintext_len: int, mtu: int = 0) -> int:
    """Bytes on the wire for a plaintext of this length: header, padded body, tag."""
    return TRANSPORT_HEADER_SIZE + padded_length(plaintext_len, mtu) + AEAD_TAG_LEN


class Keypair:
    """One direction-pair of ChaCha20-Poly1305 keys from one handshake."""

    __slots__ = (
        "_recv",
        "_send",
        "created",
        "is_initiator",
        "local_index",
        "peer",
        "remote_index",
        "replay",
        "send_counter",
        "valid",
    )

    def __init__(self, keys: SessionKeys, now: float, peer: Any = None) -> None:
        self._send: ChaCha20Poly1305 | None = ChaCha20Poly1305(keys.send_key)
        self._recv: ChaCha20Poly1305 | None = ChaCha20Poly1305(keys.recv_key)
        self.send_counter = 0
        self.replay = ReplayWindow()
        self.created = now
        self.is_initiator = keys.is_initiator
        self.local_index = keys.local_index
        self.remote_index = keys.remote_index
        self.peer = peer  # the owning Peer, so a receiver-index lookup yields both
        self.valid = True

    def __repr__(self) -> str:
        return (
            f"Keypair(local_index={self.local_index:#x}, remote_index={self.remote_index:#x}, "
            f"initiator={self.is_initiator}, sent={self.send_counter}, valid={self.valid})"
        )

    # -- lifetime ---------------------------------------------------------------------------

    def sendable(self, now: float) -> bool:
        """May this keypair encrypt at `now`? (Checked once per batch by the caller.)"""
        return (
            self.valid
            and now - self.created < REJECT_AFTER_TIME
            and self.send_counter < REJECT_AFTER_MESSAGES
        )

    def receivable(self, now: float) -> bool:
        """May this keypair decrypt at `now`? (Checked once per batch by the caller.)"""
        return (
            self.valid
            and now - self.created < REJECT_AFTER_TIME
            and self.replay.greatest < REJECT_AFTER_MESSAGES
        )

    def zero(self) -> None:
        """Drop the key material; the AEAD objects hold the only copies of the keys."""
        self._send = self._recv = None
        self.valid = False

    # -- sending ----------------------------------------------------------------------------

    def encrypt_into(
        self, plaintext: Buffer, out: bytearray | memoryview, offset: int = 0, mtu: int = 0
    ) -> int:
        """Write one transport message at out[offset:]; return its length.

        The plaintext is zero-padded to 16 bytes (capped at `mtu`). Time limits are the
        caller's (`sendable`); the message limit is enforced here because a reused nonce
        would be fatal.
        """
        counter = self.send_counter
        if counter >= REJECT_AFTER_MESSAGES or self._send is None:
            raise TransportError("keypair_exhausted")
        self.send_counter = counter + 1
        n = len(plaintext)
        pad = padded_length(n, mtu) - n
        if pad:
            plaintext = bytes(plaintext) + _ZERO_PAD[:pad]
            n += pad
        _pack_header(out, offset, MESSAGE_TRANSPORT, self.remote_index, counter)
        start = offset + TRANSPORT_HEADER_SIZE
        end = start + n + AEAD_TAG_LEN
        self._send.encrypt_into(
            _ZERO4 + counter.to_bytes(8, "little"), plaintext, None, memoryview(out)[start:end]
        )
        return end - offset

    def encrypt(self, plaintext: Buffer, now: float, mtu: int = 0) -> bytes:
        """One transport message, checking every limit; b"" plaintext makes a keepalive."""
        if not self.sendable(now):
            raise TransportError("keypair_expired")
        out = bytearray(transport_size(len(plaintext), mtu))
        self.encrypt_into(plaintext, out, 0, mtu)
        return bytes(out)

    # -- receiving --------------------------------------------------------------------------

    def decrypt_into(self, message: Buffer, out: bytearray | memoryview, offset: int = 0) -> int:
        """Authenticate `message`, then check replay; write the (padded) plaintext at
        out[offset:] and return its length. Raises TransportError with a drop reason."""
        if len(message) < TRANSPORT_MIN_SIZE:
            raise TransportError("transport_too_short")
        kind, receiver, counter = _unpack_header(message)
        if kind != MESSAGE_TRANSPORT or receiver != self.local_index:
            raise TransportError("wrong_keypair")
        recv = self._recv
        if recv is None:
            raise TransportError("keypair_expired")
        n = len(message) - TRANSPORT_MIN_SIZE
        try:
            recv.decrypt_into(
                _ZERO4 + counter.to_bytes(8, "little"),
                memoryview(message)[TRANSPORT_HEADER_SIZE:],
                None,
                memoryview(out)[offset : offset + n],
            )
        except InvalidTag:
            raise TransportError("bad_auth") from None
        # Only after authentication may the counter move the window.
        if not self.replay.validate(counter):
            raise TransportError("replay")
        return n

    def decrypt(self, message: Buffer, now: float) -> bytes:
        """The padded plaintext of a transport message (b"" for a keepalive)."""
        if not self.receivable(now):
            raise TransportError("keypair_expired")
        out = bytearray(max(0, len(message) - TRANSPORT_MIN_SIZE))
        self.decrypt_into(message, out)
        return bytes(out)


class KeypairSet:
    """A peer's previous, current and next keypairs, rotated by the kernel's rules."""

    __slots__ = ("_on_drop", "current", "next", "previous")

    def __init__(self, on_drop: Callable[[Keypair], None] | None = None) -> None:
        self.previous: Keypair | None = None
        self.current: Keypair | None = None
        self.next: Keypair | None = None
        self._on_drop = on_drop

    def __repr__(self) -> str:
        return f"KeypairSet(previous={self.previous}, current={self.current}, next={self.next})"

    def _drop(self, kp: Keypair | None) -> None:
        if kp is not None:
            kp.zero()
            if self._on_drop is not None:
                self._on_drop(kp)

    def add(self, new: Keypair) -> None:
        """Install a just-derived keypair.

        The initiator has seen the response, so its keypair is usable at once. The responder
        must wait for the initiator's first data packet, so its keypair waits in `next`.
        """
        if new.is_initiator:
            if self.next is not None:
                # An unconfirmed responder keypair becomes previous so late packets still
                # decrypt; the current one goes.
                old_prev, self.previous = self.previous, self.next
                self.next = None
                self._drop(self.current)
            else:
                old_prev, self.previous = self.previous, self.current
            self._drop(old_prev)
            self.current = new
        else:
            old_next, self.next = self.next, new
            self._drop(old_next)
            old_prev, self.previous = self.previous, None
            self._drop(old_prev)

    def received_with(self, kp: Keypair) -> bool:
        """Note an authenticated packet on `kp`; True if that confirmed the next keypair."""
        if kp is not self.next:
            return False
        old_prev = self.previous
        self.previous, self.current, self.next = self.current, kp, None
        self._drop(old_prev)
        return True

    def clear(self) -> None:
        for kp in (self.previous, self.current, self.next):
            self._drop(kp)
        self.previous = self.current = self.next = None

    def __iter__(self) -> Iterator[Keypair]:
        return iter([kp for kp in (self.previous, self.current, self.next) if kp is not None])
