"""MAC1/MAC2 and cookie replies: WireGuard's defence against handshake floods.

CookieChecker validates and answers (one per device); CookieGenerator adds MACs (one per peer);
HandshakeQueue bounds the handshake work waiting and decides when the device demands cookies.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Callable
from functools import lru_cache

from vpn.core.drops import Drop
from vpn.core.types import Address, Buffer

from .constants import (
    COOKIE_NONCE_LEN,
    COOKIE_REFRESH_TIME,
    HANDSHAKE_QUEUE_SIZE,
    LABEL_COOKIE,
    LABEL_MAC1,
    MAC_LEN,
    MESSAGE_INITIATION,
    UNDER_LOAD_FRACTION,
    UNDER_LOAD_TIME,
)
from .crypto import InvalidTag, constant_time_equal, hash_, mac, xaead_decrypt, xaead_encrypt
from .messages import (
    INITIATION_MAC1_OFFSET,
    INITIATION_MAC2_OFFSET,
    RESPONSE_MAC1_OFFSET,
    RESPONSE_MAC2_OFFSET,
    CookieReply,
    MessageError,
)

RandomSource = Callable[[int], bytes]
_ZERO_MAC = bytes(MAC_LEN)


def mac_offsets(data: Buffer) -> tuple[int, int]:
    """Where mac1 and mac2 start in a handshake message (initiation or response)."""
    if data[0] == MESSAGE_INITIATION:
        return INITIATION_MAC1_OFFSET, INITIATION_MAC2_OFFSET
    return RESPONSE_MAC1_OFFSET, RESPONSE_MAC2_OFFSET


def address_bytes(addr: Address) -> bytes:
    """The bytes a cookie is bound to: the packed source IP then the port, big-endian."""
    return _packed_ip(addr[0]) + addr[1].to_bytes(2, "big")


@lru_cache(maxsize=4096)
def _packed_ip(host: str) -> bytes:
    # Parsing the text form was a third of the cost of answering a flood initiation with a
    # cookie; a flood from many spoofed addresses only misses the cache, costing no more.
    return ipaddress.ip_address(host).packed


class CookieChecker:
    """Responder side: checks MACs keyed by our public key and mints cookie replies."""

    __slots__ = ("_encryption_key", "_mac1_key", "_random", "_secret", "_secret_born")

    def __init__(self, our_public: bytes, random: RandomSource = os.urandom) -> None:
        self._mac1_key = hash_(LABEL_MAC1, our_public)
        self._encryption_key = hash_(LABEL_COOKIE, our_public)
        self._random = random
        self._secret = b""
        self._secret_born = float("-inf")

    def __repr__(self) -> str:
        return "CookieChecker(<secrets hidden>)"

    def _cookie(self, addr: Address, now: float) -> bytes:
        if now - self._secret_born >= COOKIE_REFRESH_TIME:
            self._secret = self._random(32)
            self._secret_born = now
        return mac(self._secret, address_bytes(addr))

    @property
    def mac1_key(self) -> bytes:
        """The key of every mac1 sent to us (the native receive screens with it)."""
        return self._mac1_key

    def valid_mac1(self, data: Buffer) -> bool:
        """mac1, keyed by our public key: checked on every handshake message."""
        off1, off2 = mac_offsets(data)
        return constant_time_equal(mac(self._mac1_key, bytes(data[:off1])), bytes(data[off1:off2]))

    def reply_unless_mac2(
        self, data: Buffer, sender_index: int, addr: Address, now: float
    ) -> bytes | None:
        """Under load: None when mac2 proves `addr`, else the cookie reply that `data` gets
        instead of Diffie-Hellman work. The cookie is computed once for both."""
        off1, off2 = mac_offsets(data)
        cookie = self._cookie(addr, now)
        if constant_time_equal(mac(cookie, bytes(data[:off2])), bytes(data[off2 : off2 + MAC_LEN])):
            return None
        nonce = self._random(COOKIE_NONCE_LEN)
        sealed = xaead_encrypt(self._encryption_key, nonce, cookie, bytes(data[off1:off2]))
        return CookieReply(sender_index, nonce, sealed).pack()


class HandshakeQueue:
    """The count of handshake messages waiting for Diffie-Hellman work (queued for the
    handshake worker, or in its hands), its bound, and the load it makes: under load, a
    handshake message gets a cookie reply, not DH work, unless its mac2 proves the source.

    As in the kernel and wireguard-go, the device is under load while the queue holds
    an eighth of its size (UNDER_LOAD_FRACTION) or more, and for UNDER_LOAD_TIME after. Only
    what passed mac1 is ever queued: garbage, bad mac1 and cookie replies cost a hash at
    most and never make load. Without a worker (the core run inline, as the unit tests do)
    nothing waits, and the queue stays empty."""

    __slots__ = ("_load_at", "_until", "depth", "size")

    def __init__(self, size: int = HANDSHAKE_QUEUE_SIZE) -> None:
        self.size = size
        self._load_at = max(1, size // UNDER_LOAD_FRACTION)
        self.depth = 0
        self._until = float("-inf")

    def __repr__(self) -> str:
        return f"HandshakeQueue(depth={self.depth}, size={self.size}, until={self._until})"

    def under_load(self, now: float) -> bool:
        if self.depth >= self._load_at:
            self._until = now + UNDER_LOAD_TIME
            return True
        return now < self._until

    @property
    def full(self) -> bool:
        return self.depth >= self.size

    def put(self) -> None:
        self.depth += 1

    def done(self, n: int = 1) -> None:
        self.depth = max(0, self.depth - n)


class CookieGenerator:
    """Initiator side for one peer: adds mac1/mac2 and keeps the peer's latest cookie."""

    __slots__ = ("_cookie", "_cookie_born", "_decryption_key", "_last_mac1", "_mac1_key")

    def __init__(self, peer_public: bytes) -> None:
        self._mac1_key = hash_(LABEL_MAC1, peer_public)
        self._decryption_key = hash_(LABEL_COOKIE, peer_public)
        self._cookie: bytes | None = None
        self._cookie_born = float("-inf")
        self._last_mac1: bytes | None = None

    def __repr__(self) -> str:
        return f"CookieGenerator(has_cookie={self._cookie is not None})"

    def add_macs(self, message: bytes, now: float) -> bytes:
        """Fill mac1 (always) and mac2 (while a cookie younger than 120 s is held)."""
        off1, _ = mac_offsets(message)
        mac1 = mac(self._mac1_key, message[:off1])
        self._last_mac1 = mac1
        body = message[:off1] + mac1
        if self._cookie is not None and now - self._cookie_born < COOKIE_REFRESH_TIME:
            return body + mac(self._cookie, body)
        return body + _ZERO_MAC

    def consume_reply(self, reply: CookieReply, now: float) -> None:
        """Store the cookie from a reply to the last message we MAC'd; MessageError if bogus."""
        if self._last_mac1 is None:
            raise MessageError(Drop.UNEXPECTED_COOKIE_REPLY)
        try:
            cookie = xaead_decrypt(
                self._decryption_key, reply.nonce, reply.encrypted_cookie, self._last_mac1
            )
        except InvalidTag:
            raise MessageError(Drop.BAD_COOKIE_AUTH) from None
        self._cookie, self._cookie_born = cookie, now
        self._last_mac1 = None  # one reply per message sent
