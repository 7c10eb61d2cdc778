"""The device: our static identity, the peer table, receiver indices and the handshake dispatcher.

`handle_handshake_message` and `receive_transport` take a datagram, its source and `now`.
"""

from __future__ import annotations

import os
import random
import struct
import time
from array import array
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from vpn.core.types import Address

from .allowedips import AllowedIPs
from .constants import (
    INDEXES_PER_PEER,
    LOST_SESSION_INTERVAL,
    MESSAGE_COOKIE_REPLY,
    MESSAGE_INITIATION,
    MESSAGE_RESPONSE,
    MESSAGE_TRANSPORT,
)
from .cookie import CookieChecker, HandshakeLoad, address_bytes
from .keypair import RECORD, Keypair
from .messages import (
    Buffer,
    MessageError,
    message_type,
    parse_cookie_reply,
    parse_initiation,
    parse_response,
    parse_transport_header,
)
from .noise import Handshake, StaticIdentity, consume_initiation, consume_response
from .peer import Peer
from .ratelimiter import RateLimiter

_SENDER_INDEX = struct.Struct("<I")


@dataclass(slots=True)
class HandshakeResult:
    """What a handshake-class datagram did: replies go back to the source address."""

    peer: Peer | None = None
    replies: list[bytes] = field(default_factory=list)
    event: str | None = None  # initiation_consumed, response_consumed, cookie_consumed, cookie_sent
    drop_reason: str | None = None


@dataclass(slots=True)
class TransportResult:
    """One decrypted transport message (receive_transport): the inner packet, its padding
    cut off."""

    peer: Peer | None = None
    packet: bytes = b""
    replies: list[bytes] = field(default_factory=list)  # to send to peer.endpoint
    drop_reason: str | None = None


class Device:
    """One WireGuard interface's protocol state. Randomness and clocks are injected."""

    def __init__(
        self,
        private_key: bytes,
        *,
        random_bytes: Callable[[int], bytes] = os.urandom,
        wall_clock: Callable[[], float] = time.time,
        ephemeral_factory: Callable[[], X25519PrivateKey] = X25519PrivateKey.generate,
        jitter: Callable[[], float] = random.random,
        max_peers: int = 1 << 16,
    ) -> None:
        self.identity = StaticIdentity.from_private_bytes(private_key)
        self.random_bytes = random_bytes
        self.wall_clock = wall_clock  # TAI64N timestamps and `wg show` only, never timers
        self.ephemeral_factory = ephemeral_factory
        self.jitter = jitter
        self.max_peers = max_peers
        self.checker = CookieChecker(self.identity.public, random_bytes)
        self.load = HandshakeLoad()
        self.ratelimiter = RateLimiter()
        self.allowed_ips: AllowedIPs[Peer] = AllowedIPs()
        self.peers: dict[bytes, Peer] = {}
        # receiver index -> (peer, keypair), keypair None while the index names a handshake.
        self._index: dict[int, tuple[Peer, Keypair | None]] = {}
        self._handshake_index: dict[Peer, int] = {}
        self._keypair_indexes: bytes | None = None  # keypair_indexes(), until they change
        self._last_lost_session_scan = float("-inf")
        self.drops: Counter[str] = Counter()

    def __repr__(self) -> str:
        return f"Device(public={self.identity.public[:4].hex()}..., peers={len(self.peers)})"

    @property
    def public_key(self) -> bytes:
        return self.identity.public

    # -- peers ------------------------------------------------------------------------------

    def add_peer(
        self,
        public_key: bytes,
        preshared_key: bytes | None = None,
        persistent_keepalive: float = 0.0,
        endpoint: Address | None = None,
    ) -> Peer:
        if public_key in self.peers:
            raise ValueError("peer already present")
        if public_key == self.identity.public:
            raise ValueError("a peer cannot have the device's own public key")
        if len(self.peers) >= self.max_peers:
            raise ValueError("too many peers")
        peer = Peer(self, public_key, preshared_key, persistent_keepalive, endpoint)
        self.peers[peer.public_key] = peer
        return peer

    def remove_peer(self, public_key: bytes) -> None:
        peer = self.peers.pop(public_key, None)
        if peer is None:
            return
        peer.zero_keys()
        peer.timers.stop()
        self.allowed_ips.remove_by_peer(peer)

    # -- receiver indices (bounded: one handshake and three keypairs per peer) ---------------

    def _new_index(self) -> int:
        while True:
            index = int.from_bytes(self.random_bytes(4), "little")
            if index not in self._index:
                return index

    def _register_handshake(self, peer: Peer) -> int:
        self._forget_handshake(peer)
        index = self._new_index()
        self._index[index] = (peer, None)
        self._handshake_index[peer] = index
        assert len(self._index) <= INDEXES_PER_PEER * len(self.peers)
        return index

    def _forget_handshake(self, peer: Peer) -> None:
        index = self._handshake_index.pop(peer, None)
        if index is not None and self._index.get(index, (None, 1))[1] is None:
            del self._index[index]

    def _register_keypair(self, kp: Keypair) -> None:
        # The handshake's index passes to the keypair it produced.
        self._handshake_index.pop(kp.peer, None)
        self._index[kp.local_index] = (kp.peer, kp)
        self._keypair_indexes = None

    def _forget_keypair(self, kp: Keypair) -> None:
        entry = self._index.get(kp.local_index)
        if entry is not None and entry[1] is kp:
            del self._index[kp.local_index]
            self._keypair_indexes = None

    def keypair_indexes(self) -> bytes:
        """The receiver indexes that name a keypair, sorted, as a native uint32 array: what
        the native receive screens transport messages with (vpn/io/_udp.c)."""
        if self._keypair_indexes is None:
            self._keypair_indexes = array(
                "I", sorted(i for i, (_, kp) in self._index.items() if kp is not None)
            ).tobytes()
        return self._keypair_indexes

    def keypair_for_index(self, index: int) -> Keypair | None:
        """The data plane's receive lookup: a transport message's receiver index."""
        entry = self._index.get(index)
        return None if entry is None else entry[1]

    # -- handshake dispatcher ---------------------------------------------------------------

    def _drop(self, reason: str, peer: Peer | None = None) -> HandshakeResult:
        self.drops[reason] += 1
        return HandshakeResult(peer=peer, drop_reason=reason)

    def _lookup_handshake(self, public_key: bytes) -> Handshake | None:
        peer = self.peers.get(public_key)
        return None if peer is None else peer.handshake

    def handle_handshake_message(
        self, data: Buffer, src: Address, now: float, under_load: bool | None = None
    ) -> HandshakeResult:
        """Process an initiation, response or cookie reply from `src`.

        `now` is the time of the data path's wakeup: the mac1-valid initiations and responses
        handled at one `now` are the backlog that decides whether we are under load
        (HandshakeLoad). A bool `under_load` overrides that decision (the cookie exchange's
        tests)."""
        try:
            kind = message_type(data)
            if kind == MESSAGE_TRANSPORT:
                return self._drop("not_handshake")
            if kind == MESSAGE_COOKIE_REPLY:
                return self._consume_cookie_reply(data, now)  # no DH work: never load
            data = bytes(data)
            if not self.checker.valid_mac1(data):
                return self._drop("bad_mac1")
            if under_load is None:
                under_load = self.load.count_costly(now)
            if under_load:
                if not self.checker.valid_mac2(data, src, now):
                    sender = _SENDER_INDEX.unpack_from(data, 4)[0]
                    reply = self.checker.make_reply(data, sender, src, now)
                    self.drops["cookie_sent"] += 1
                    return HandshakeResult(replies=[reply], event="cookie_sent")
                if not self.ratelimiter.allow(address_bytes(src)[:-2], now):
                    return self._drop("ratelimited")
            if kind == MESSAGE_INITIATION:
                return self._consume_initiation(data, src, now)
            assert kind == MESSAGE_RESPONSE
            return self._consume_response(data, src, now)
        except MessageError as exc:
            return self._drop(exc.reason)

    def _consume_cookie_reply(self, data: Buffer, now: float) -> HandshakeResult:
        reply = parse_cookie_reply(data)
        entry = self._index.get(reply.receiver_index)
        if entry is None:
            return self._drop("unknown_receiver_index")
        peer = entry[0]
        peer.cookies.consume_reply(reply, now)
        return HandshakeResult(peer=peer, event="cookie_consumed")

    def _consume_initiation(self, data: bytes, src: Address, now: float) -> HandshakeResult:
        msg = parse_initiation(data)
        hs = consume_initiation(self.identity, msg, self._lookup_handshake, now)
        peer = self.peers[hs.remote_static]
        peer.endpoint = src
        reply = peer.create_response(now)
        peer.timers.any_authenticated_packet_received(now)
        peer.timers.any_authenticated_packet_traversal(now)
        return HandshakeResult(peer=peer, replies=[reply], event="initiation_consumed")

    def _consume_response(self, data: bytes, src: Address, now: float) -> HandshakeResult:
        msg = parse_response(data)
        entry = self._index.get(msg.receiver_index)
        hs = entry[0].handshake if entry is not None and entry[1] is None else None
        consume_response(msg, hs)
        assert entry is not None
        peer = entry[0]
        peer.endpoint = src
        replies = peer.complete_as_initiator(now)
        peer.timers.any_authenticated_packet_received(now)
        peer.timers.any_authenticated_packet_traversal(now)
        return HandshakeResult(peer=peer, replies=replies, event="response_consumed")

    def on_unknown_index(self, source: Address, now: float) -> list[tuple[Peer, bytes]]:
        """A transport message for no receiver index of ours came from `source`. From the
        endpoint of a peer we have no session with, it most likely means we restarted and
        the peer still uses the session we lost: a handshake now takes a round trip, where
        the peer's timers would take 15 s. The message is not authenticated, so this scans
        the peers at most once per LOST_SESSION_INTERVAL, sends only to the peer's own
        endpoint, never to `source`, and leaves the peer's give-up clock alone
        (Peer.handshake_for_lost_session). Returns (peer, datagram) pairs, as `poll` does."""
        if now - self._last_lost_session_scan < LOST_SESSION_INTERVAL:
            return []
        self._last_lost_session_scan = now
        for peer in self.peers.values():
            if peer.endpoint == source and peer.keypair_for_sending(now) is None:
                return [(peer, datagram) for datagram in peer.handshake_for_lost_session(now)]
        return []

    # -- transport: one message through the data path's own Keypair.receive_run -------------

    def receive_transport(self, data: Buffer, src: Address | None, now: float) -> TransportResult:
        """Decrypt one transport message, check replay, the inner packet and its source
        address, exactly as the data path does a GRO receive's worth at a time."""
        try:
            header = parse_transport_header(data)
        except MessageError as exc:
            return self._drop_transport(exc.reason)
        kp = self.keypair_for_index(header.receiver_index)
        if kp is None:
            return self._drop_transport("unknown_receiver_index")
        peer = kp.peer
        if not kp.receivable(now):
            return self._drop_transport("keypair_expired", peer)
        out = bytearray(len(data))
        records = bytearray(RECORD.size)
        drops: dict[str, int] = {}
        _, _, nrec, fresh, nbytes, sources = kp.receive_run(data, len(data), 0, out, 0,
                                                            records, drops)
        if not fresh:
            return self._drop_transport(next(iter(drops)), peer)
        if drops:  # authenticated and fresh, but not an IP packet we can deliver
            reason = next(iter(drops))
        elif nrec:
            at, length, _ = RECORD.unpack_from(records)
            if self.allowed_ips.source_allowed(peer, sources[0]):
                replies = peer.after_receive(now, kp, nbytes, keepalive=False, source=src)
                return TransportResult(peer=peer, packet=bytes(out[at:at + length]),
                                       replies=replies)
            reason = "source_not_allowed"
        else:  # a keepalive
            replies = peer.after_receive(now, kp, nbytes, keepalive=True, source=src)
            return TransportResult(peer=peer, replies=replies)
        replies = peer.after_receive(now, kp, nbytes, keepalive=False, source=src)
        res = self._drop_transport(reason, peer)
        res.replies = replies
        return res

    def _drop_transport(self, reason: str, peer: Peer | None = None) -> TransportResult:
        self.drops[reason] += 1
        return TransportResult(peer=peer, drop_reason=reason)

    # -- timers -----------------------------------------------------------------------------

    def poll(self, now: float) -> list[tuple[Peer, bytes]]:
        """Run every peer's expired timers; return (peer, datagram) pairs to send."""
        out: list[tuple[Peer, bytes]] = []
        for peer in list(self.peers.values()):
            deadline = peer.timers.next_deadline()
            if deadline is not None and deadline <= now:
                out += [(peer, d) for d in peer.poll(now)]
        return out

    def next_deadline(self) -> float | None:
        deadlines = [d for p in self.peers.values() if (d := p.timers.next_deadline()) is not None]
        return min(deadlines) if deadlines else None
