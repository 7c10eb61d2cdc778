"""The device: our static identity, the peer table, receiver indexes and the handshake dispatcher.

`handle_handshake_message` takes a datagram, its source and `now`; `receive` one wakeup's
datagrams (the receive walk, receive.py); `apply` changes the configuration (all of a
ChangeSet or none of it), `snapshot` reports it.
"""

from __future__ import annotations

import functools
import os
import random
import struct
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from vpn.core.drops import Drop
from vpn.core.packet.icmp import UnreachableResponder
from vpn.core.types import Address, Buffer

from .allowedips import AllowedIPs
from .changes import ChangeError, ChangeSet, DeviceSnapshot, PeerChange
from .constants import (
    KEY_LEN,
    LOST_SESSION_INTERVAL,
    MESSAGE_COOKIE_REPLY,
    MESSAGE_INITIATION,
    MESSAGE_RESPONSE,
    MESSAGE_TRANSPORT,
)
from .cookie import CookieChecker, HandshakeQueue, address_bytes
from .crypto import KeyWiped
from .deadlines import Deadlines
from .index import IndexTable, RandomPages
from .keypair import Keypair
from .messages import (
    MessageError,
    message_type,
    parse_cookie_reply,
    parse_initiation,
    parse_response,
)
from .noise import (
    Answer,
    HandshakeError,
    KnownPeers,
    ResponseRead,
    StaticIdentity,
    accept_response,
    answer_known,
    read_response,
    response_inputs,
)
from .peer import Peer, PeerEvent, Sources
from .ratelimiter import RateLimiter
from .receive import ReceiveCounts, receive
from .screen import NATIVE as NATIVE_SCREEN
from .screen import Screen
from .send import Read, Routed, Sealed, route, seal
from .snapshot import peer_rows

_SENDER_INDEX = struct.Struct("<I")


class HandshakeEvent(StrEnum):
    """What a handshake-class datagram did, when it was not dropped."""

    INITIATION_CONSUMED = "initiation_consumed"
    RESPONSE_CONSUMED = "response_consumed"
    COOKIE_CONSUMED = "cookie_consumed"
    COOKIE_SENT = "cookie_sent"  # under load: answered with a cookie reply instead
    QUEUED = "queued"  # for the handshake worker: Device.finish_handshakes tells the rest


@dataclass(slots=True)
class HandshakeResult:
    """What a handshake-class datagram did: replies go back to the source address."""

    peer: Peer | None = None
    replies: list[bytes] = field(default_factory=list)
    event: HandshakeEvent | None = None
    drop_reason: str | None = None


class HandshakeJob:
    """One mac1-valid initiation or response queued for its Diffie-Hellman work. `run` is a
    pure function of what was read when it was queued (the handshake worker calls it off
    the event loop, the GIL released in the DHs); Device.finish_handshakes takes its
    outcome on the loop, where every state change happens."""

    __slots__ = ("_work", "outcome", "size", "source")

    def __init__(self, work: Callable[[], Answer | ResponseRead], source: Address,
                 size: int) -> None:
        self._work = work
        self.source = source
        self.size = size
        self.outcome: Answer | ResponseRead | MessageError | None = None

    def __repr__(self) -> str:
        return f"HandshakeJob(source={self.source}, done={self.outcome is not None})"

    def run(self) -> None:
        try:
            self.outcome = self._work()
        except MessageError as exc:  # the message's fault, a drop reason
            self.outcome = exc
        except KeyWiped:  # our key or the handshake's ephemeral changed meanwhile
            self.outcome = HandshakeError(Drop.HANDSHAKE_PEER_CHANGED)


class Device:
    """One WireGuard interface's protocol state. Randomness and clocks are injected.

    Without a private key (None: wg-quick's `PostUp = wg set %i private-key FILE`, or one
    removed with an all-zero key) the peers stay configured but no handshake is sent, and
    every handshake message is dropped as `no_private_key`, as wireguard-go does."""

    def __init__(
        self,
        private_key: bytes | None,
        *,
        random_bytes: Callable[[int], bytes] | None = None,
        wall_clock: Callable[[], float] = time.time,
        jitter: Callable[[], float] = random.random,
        max_peers: int = 1 << 16,
    ) -> None:
        self.random_bytes = random_bytes or os.urandom
        # Ephemeral private keys from an injected source (the tests' seeded ones), else
        # drawn where the key is made: in the native responder step, OpenSSL's RAND with the
        # GIL released (os.urandom hands the GIL back and takes it again, a wait on a busy
        # loop).
        self.sources = Sources(wall_clock,
                               random_bytes and functools.partial(random_bytes, KEY_LEN),
                               jitter, self._timer_armed, self._peer_event)
        self.max_peers = max_peers
        self.identity: StaticIdentity | None = None
        self.checker: CookieChecker | None = None  # keyed on our public key: None without
        self._install_identity(private_key)
        self.handshake_queue = HandshakeQueue()
        # The shell's handshake worker: takes each queued job (None: every handshake is
        # worked inline, in the call that received it, as the unit tests do).
        self.defer_handshake: Callable[[HandshakeJob], None] | None = None
        self.ratelimiter = RateLimiter()
        self.allowed_ips: AllowedIPs[Peer] = AllowedIPs()
        self.peers: dict[bytes, Peer] = {}
        # Moves with every change to the configuration (peers, their keys, keepalives,
        # endpoints and allowed IPs, the private key): a snapshot taken in slices starts
        # over when it moves, so that it never mixes two configurations.
        self.generation = 0
        self._known = KnownPeers(())
        self._known_generation = 0
        self.indexes: IndexTable[Peer] = IndexTable(random_bytes or RandomPages())
        self._last_lost_session_scan = float("-inf")
        self.drops: Counter[str] = Counter()  # the handshake code's
        self.receive_counts = ReceiveCounts()  # the receive walk's (receive.py)
        self.opened = bytearray()  # the receive walk's open stage describes a run here
        self._screen: Screen | None = None  # screen()'s, with what it was made for
        self._screen_known = b""
        self._screen_key = b""
        # Host unreachable for packets routed to us that no peer's AllowedIPs cover.
        self.icmp = UnreachableResponder()
        self.mtu = 0  # the padding cap of new peers (0: pad to 16, no cap)
        # The socket's settings, which the shell applies and records here for `snapshot`.
        self.listen_port = 0
        self.fwmark = 0
        # The shell's hooks: a timer armed earlier than `wake_at` (so it can sleep until the
        # next deadline instead of polling), and a peer's event (to log it).
        self.wake_at = float("inf")
        self._deadlines: Deadlines[Peer] = Deadlines()
        self.on_earlier_deadline: Callable[[float], None] | None = None
        self.on_peer_event: Callable[[Peer, PeerEvent], None] | None = None

    def __repr__(self) -> str:
        public = self.public_key
        shown = f"{public[:4].hex()}..." if public is not None else "none"
        return f"Device(public={shown}, peers={len(self.peers)})"

    @property
    def public_key(self) -> bytes | None:
        return None if self.identity is None else self.identity.public

    @property
    def private_key(self) -> bytes | None:
        # Read from the identity, never kept as a field a debug dump would show.
        return None if self.identity is None else self.identity.private.private_bytes()

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
        if public_key == self.public_key:
            raise ValueError("a peer cannot have the device's own public key")
        if len(self.peers) >= self.max_peers:
            raise ValueError("too many peers")
        peer = Peer(public_key, self.identity, self.indexes, self.sources, preshared_key,
                    persistent_keepalive, endpoint)
        peer.mtu = self.mtu
        self.peers[peer.public_key] = peer
        self.generation += 1
        return peer

    def set_mtu(self, mtu: int) -> None:
        """The padding cap of every peer, and of peers added later."""
        self.mtu = mtu
        for peer in self.peers.values():
            peer.mtu = mtu

    def remove_peer(self, public_key: bytes) -> None:
        peer = self.peers.pop(public_key, None)
        if peer is None:
            return
        self.generation += 1
        peer.zero_keys()
        peer.timers.stop()
        self._deadlines.forget(peer)
        self.allowed_ips.remove_by_peer(peer)

    # -- configuration: a ChangeSet applied whole, a snapshot of what runs --------------------

    def check(self, changes: ChangeSet) -> None:
        """Raise ChangeError if `apply` would refuse `changes`; changes nothing."""
        own = self.public_key
        new_key = _wanted_key(changes)
        if changes.private_key is not None and new_key != self.private_key:
            own = None
            if new_key is not None:
                try:
                    own = StaticIdentity.from_private_bytes(new_key).public
                except ValueError:
                    raise ChangeError("private_key: not a usable X25519 key") from None
        keys = set() if changes.replace_peers else set(self.peers)
        if own is not None:
            keys.discard(own)
        for change in changes.peers:
            if change.remove:
                keys.discard(change.public_key)
            elif change.public_key != own and not change.update_only:
                keys.add(change.public_key)
        if len(keys) > self.max_peers:
            raise ChangeError(f"more than {self.max_peers} peers")

    def apply(self, changes: ChangeSet, now: float) -> list[Peer]:
        """Apply all of `changes` (checked first: ChangeError applies nothing). listen_port
        and fwmark are the socket's, for the shell to apply. Returns the peers owed a
        keepalive at once (a newly set persistent keepalive sends one, as wireguard-go's)."""
        self.check(changes)
        self.generation += 1  # listen_port and fwmark too, which the shell sets at once
        new_key = _wanted_key(changes)
        if changes.private_key is not None and new_key != self.private_key:
            self._set_private_key(new_key)
        if changes.replace_peers:
            for key in list(self.peers):
                self.remove_peer(key)
        owed = []
        for change in changes.peers:
            peer = self._apply_peer(change, now)
            if peer is not None and change.persistent_keepalive and peer.endpoint is not None:
                owed.append(peer)
        return owed

    def _apply_peer(self, change: PeerChange, now: float) -> Peer | None:
        if change.public_key == self.public_key:
            return None  # as wireguard-go: a peer with the interface's own key is ignored
        if change.remove:
            self.remove_peer(change.public_key)
            return None
        peer = self.peers.get(change.public_key)
        if peer is None:
            if change.update_only:
                return None
            peer = self.add_peer(change.public_key)
        if change.preshared_key is not None:
            peer.handshake.psk = change.preshared_key
        if change.endpoint is not None:
            peer.endpoint = change.endpoint
        if change.persistent_keepalive is not None:
            peer.timers.set_persistent_keepalive(change.persistent_keepalive, now)
        if change.replace_allowed_ips:
            self.allowed_ips.remove_by_peer(peer)
        for network in change.allowed_ips:
            self.allowed_ips.insert(network, peer)
        return peer

    def _install_identity(self, private_key: bytes | None) -> None:
        if self.identity is not None:
            self.identity.private.wipe()  # a job in flight with it drops its message
        if private_key is None:
            self.identity = self.checker = None
        else:
            self.identity = StaticIdentity.from_private_bytes(private_key)
            self.checker = CookieChecker(self.identity.public, self.random_bytes)

    def _set_private_key(self, private_key: bytes | None) -> None:
        """A new identity, or none: every session ends, each peer's handshake is rebuilt
        on the new key (or left unable to start), and a peer that has the new public key
        goes (as wireguard-go)."""
        self._install_identity(private_key)
        if self.identity is not None:
            self.remove_peer(self.identity.public)
        for peer in self.peers.values():
            peer.set_identity(self.identity)

    def snapshot(self) -> DeviceSnapshot:
        """The running configuration and the peers' counters at one moment: what `wg show`,
        `vpn show`, SaveConfig and the endpoint's counters render. Plain values only, read
        in one pass (about 0.5 us a peer); formatting them is left to the caller. The `wg`
        protocol's get takes it in slices instead (`snapshot.SlicedSnapshot`)."""
        return DeviceSnapshot(private_key=self.private_key, listen_port=self.listen_port,
                              fwmark=self.fwmark,
                              rows=peer_rows(self.peers.values(), self.allowed_ips.prefixes_for))

    # -- receiver indexes (IndexTable: one handshake and three keypairs per peer) ----------

    def screen(self) -> Screen | None:
        """The receive screen the native receive runs (udp.receive_screened), or None: no
        native screen (or VPN_FAST_PATH=python), or no private key (no mac1 key to screen
        with: the handshake path drops those messages itself). Made anew only when the
        keypair indexes or the mac1 key change (IndexTable hands out the same bytes until
        then): a Screen copies the indexes, 40 KB at 10,000 peers, which every wakeup would
        otherwise pay."""
        checker = self.checker
        if checker is None or not NATIVE_SCREEN.native:
            return None
        known = self.indexes.keypair_indexes()
        key = checker.mac1_key
        if self._screen is None or known is not self._screen_known or key != self._screen_key:
            self._screen = Screen(known, key)
            self._screen_known, self._screen_key = known, key
        return self._screen

    def session(self, index: int) -> tuple[Peer, Keypair] | None:
        """The data plane's receive lookup: a transport message's receiver index."""
        return self.indexes.session(index)

    # -- handshake dispatcher ---------------------------------------------------------------

    def _drop(self, reason: str, peer: Peer | None = None) -> HandshakeResult:
        self.drops[reason] += 1
        return HandshakeResult(peer=peer, drop_reason=reason)

    def _known_peers(self) -> KnownPeers:
        """The peers as the responder's step looks them up: built again (O(peers), on the
        loop) at the first initiation after the configuration moved (the peer set, a psk, the
        private key); a job in flight keeps the one it was given."""
        if self._known_generation != self.generation:
            self._known = KnownPeers(peer.handshake for peer in self.peers.values())
            self._known_generation = self.generation
        return self._known

    def handle_handshake_message(
        self, data: Buffer, src: Address, now: float, under_load: bool | None = None
    ) -> HandshakeResult:
        """Process an initiation, response or cookie reply from `src`.

        The cheap checks run here: type, length, a full queue (handshake_queue_full, before
        any MAC), mac1 and, under load (HandshakeQueue: the queue an eighth full), the
        cookie's mac2 and the source's rate limit. What passes is a HandshakeJob: with a
        worker (`defer_handshake`), queued (`QUEUED`) and finished by `finish_handshakes`;
        without one, worked and finished here. A bool `under_load` overrides the load (the cookie
        exchange's tests)."""
        try:
            kind = message_type(data)
            if kind == MESSAGE_TRANSPORT:
                return self._drop(Drop.NOT_HANDSHAKE)
            if kind == MESSAGE_COOKIE_REPLY:
                return self._consume_cookie_reply(data, now)  # no DH work: never load
            if self.checker is None or self.identity is None:
                return self._drop(Drop.NO_PRIVATE_KEY)  # nobody can have sent it to us
            queue = self.handshake_queue
            if queue.full and self.defer_handshake is not None:
                # Shed before any MAC work, as the kernel and wireguard-go do: under a
                # flood that fills the queue, a message cannot be worked anyway, and the
                # checks cost the loop's thread what the workers need (no cookie reply is
                # sent then either: the source asks again once the queue has room).
                return self._drop(Drop.HANDSHAKE_QUEUE_FULL)
            data = bytes(data)
            if not self.checker.valid_mac1(data):
                return self._drop(Drop.BAD_MAC1)
            if under_load is None:
                under_load = queue.under_load(now)
            if under_load:
                sender = _SENDER_INDEX.unpack_from(data, 4)[0]
                reply = self.checker.reply_unless_mac2(data, sender, src, now)
                if reply is not None:
                    self.drops[Drop.COOKIE_SENT] += 1
                    return HandshakeResult(replies=[reply], event=HandshakeEvent.COOKIE_SENT)
                if not self.ratelimiter.allow(address_bytes(src)[:-2], now):
                    return self._drop(Drop.RATELIMITED)
            job = self._job(kind, data, src)
            if self.defer_handshake is None:
                job.run()
                return self._finish(job, now)
            queue.put()
            self.defer_handshake(job)
            return HandshakeResult(event=HandshakeEvent.QUEUED)
        except MessageError as exc:
            return self._drop(exc.reason)

    def _job(self, kind: int, data: bytes, src: Address) -> HandshakeJob:
        """The DH work of an initiation or a response, bound to immutable inputs: an
        initiation's peer (its ss and psk) is looked up by the work itself, once it has
        decrypted the static key; a response's handshake is read here."""
        if kind == MESSAGE_INITIATION:
            assert self.identity is not None
            work = functools.partial(answer_known, self.identity, parse_initiation(data),
                                     self._known_peers(), self.sources.ephemeral_secret)
            return HandshakeJob(work, src, len(data))
        assert kind == MESSAGE_RESPONSE
        msg = parse_response(data)
        initiator = self.indexes.handshake_peer(msg.receiver_index)
        inputs = response_inputs(None if initiator is None else initiator.handshake)
        return HandshakeJob(functools.partial(read_response, msg, inputs), src, len(data))

    def finish_handshakes(self, jobs: Sequence[HandshakeJob], now: float
                          ) -> list[tuple[Address, bytes]]:
        """On the loop: the worker's outcomes taken in, the state changed (a peer changed
        or removed meanwhile: handshake_peer_changed), drops counted as the receive walk
        counts them. Returns the datagrams to send, each to its job's source."""
        self.handshake_queue.done(len(jobs))
        send: list[tuple[Address, bytes]] = []
        drops = self.receive_counts.drops
        for job in jobs:
            result = self._finish(job, now)
            if result.drop_reason:
                drops[result.drop_reason] += 1
                if result.peer is not None:
                    result.peer.count_drop(result.drop_reason)
            send += [(job.source, reply) for reply in result.replies]
        return send

    def _finish(self, job: HandshakeJob, now: float) -> HandshakeResult:
        outcome = job.outcome
        try:
            if isinstance(outcome, Answer):
                return self._accept_initiation(outcome, job, now)
            if isinstance(outcome, ResponseRead):
                return self._accept_response(outcome, job, now)
            raise outcome if outcome is not None else HandshakeError(Drop.INTERNAL_ERROR)
        except MessageError as exc:
            return self._drop(exc.reason)

    def _accept_initiation(self, answer: Answer, job: HandshakeJob, now: float
                           ) -> HandshakeResult:
        hs = answer.read.handshake
        peer = self.peers.get(hs.remote_static)
        if peer is None or peer.handshake is not hs:  # removed, or its key or ours changed
            return self._drop(Drop.HANDSHAKE_PEER_CHANGED)
        reply = peer.respond(answer, now)
        peer.roam(job.source)
        peer.rx_bytes += job.size  # a consumed handshake message counts, as in the kernel
        peer.timers.any_authenticated_packet_received(now)
        peer.timers.any_authenticated_packet_traversal(now)
        return HandshakeResult(peer=peer, replies=[reply],
                               event=HandshakeEvent.INITIATION_CONSUMED)

    def _accept_response(self, read: ResponseRead, job: HandshakeJob, now: float
                         ) -> HandshakeResult:
        peer = self.indexes.handshake_peer(read.inputs.local_index)
        if peer is None or peer.handshake is not read.inputs.handshake:
            return self._drop(Drop.HANDSHAKE_PEER_CHANGED)
        accept_response(read)
        peer.roam(job.source)
        peer.rx_bytes += job.size
        replies = peer.complete_as_initiator(now)
        peer.timers.any_authenticated_packet_received(now)
        peer.timers.any_authenticated_packet_traversal(now)
        return HandshakeResult(peer=peer, replies=replies, event=HandshakeEvent.RESPONSE_CONSUMED)

    def _consume_cookie_reply(self, data: Buffer, now: float) -> HandshakeResult:
        reply = parse_cookie_reply(data)
        peer = self.indexes.peer(reply.receiver_index)
        if peer is None:
            return self._drop(Drop.UNKNOWN_RECEIVER_INDEX)
        peer.cookies.consume_reply(reply, now)
        return HandshakeResult(peer=peer, event=HandshakeEvent.COOKIE_CONSUMED)

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

    # -- sending: the data plane's batch (send.py, the kernel's send.c) ---------------------

    def route(self, reads: Sequence[Read], now: float) -> Routed:
        """One wakeup's TUN reads by peer, by their destination (send.route)."""
        return route(self.allowed_ips, self.icmp, reads, now)

    def seal(self, peer: Peer, reads: Sequence[Read], out: bytearray | memoryview,
             mtu: int, now: float) -> Sealed:
        """`peer`'s reads sealed into `out`, staged or dropped (send.seal)."""
        return seal(peer, reads, out, mtu, now)

    # -- the receive walk (receive.py) --------------------------------------------------------

    # One wakeup's datagrams in, what to deliver to the TUN and what to send out: the receive
    # walk (receive.receive, a method of the device's; bound here without a wrapper, as it
    # runs once per wakeup).
    receive = receive

    # -- timers -----------------------------------------------------------------------------

    def _timer_armed(self, peer: Peer, deadline: float) -> None:
        self._deadlines.schedule(peer, deadline)
        if deadline < self.wake_at:
            self.wake_at = deadline
            if self.on_earlier_deadline is not None:
                self.on_earlier_deadline(deadline)

    def _peer_event(self, peer: Peer, event: PeerEvent) -> None:
        if self.on_peer_event is not None:
            self.on_peer_event(peer, event)

    def poll(self, now: float) -> list[tuple[Peer, bytes]]:
        """Run the expired timers of the peers whose deadline passed (no other peer is
        looked at); return (peer, datagram) pairs to send. Afterwards `wake_at` is the next
        deadline (inf: none)."""
        out: list[tuple[Peer, bytes]] = []
        for peer in self._deadlines.due(now):
            if self.peers.get(peer.public_key) is peer:  # not removed since
                out += [(peer, d) for d in peer.poll(now)]
                deadline = peer.next_deadline()
                if deadline is not None:
                    self._deadlines.schedule(peer, deadline)
        self.wake_at = self._deadlines.earliest()
        return out

    def next_deadline(self) -> float | None:
        deadline = self._deadlines.earliest()
        return None if deadline == float("inf") else deadline


def _wanted_key(changes: ChangeSet) -> bytes | None:
    """The private key `changes` asks for; None for 32 zero bytes, which remove it (as the
    kernel and wireguard-go do for `wg set IFACE private-key /dev/null`)."""
    key = changes.private_key
    return key if key is not None and any(key) else None
