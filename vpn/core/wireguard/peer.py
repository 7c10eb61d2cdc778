"""One remote peer: its handshake, keypairs, timers, cookie and staged packets, tied together.

Methods take `now` and return the datagrams to send to `peer.endpoint`; nothing here does I/O.
"""

from __future__ import annotations

import functools
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum

from vpn.core.types import Address, Buffer

from .constants import (
    KEEPALIVE_TIMEOUT,
    REJECT_AFTER_TIME,
    REKEY_AFTER_MESSAGES,
    REKEY_AFTER_TIME,
    REKEY_TIMEOUT,
)
from .cookie import CookieGenerator
from .crypto import PrivateKey, tai64n
from .index import IndexTable
from .keypair import Keypair, TransportError
from .keypairset import KeypairSet
from .noise import (
    Answer,
    Handshake,
    StaticIdentity,
    accept_answer,
    create_initiation,
    derive_session,
)
from .timers import TimerAction, Timers

MAX_STAGED_PACKETS = 128  # packets held while a handshake is in flight (the kernel's figure)
# The initiator rekeys on receive when a session gets this old (the kernel's last-minute rule).
_LASTMINUTE_AGE = REJECT_AFTER_TIME - KEEPALIVE_TIMEOUT - REKEY_TIMEOUT


class PeerEvent(StrEnum):
    """What happened to a peer, queued in `Peer.events` for the shell to log."""

    HANDSHAKE_COMPLETE = "handshake_complete"
    GIVE_UP = "give_up"  # no response for REKEY_ATTEMPT_TIME: staged packets dropped
    KEYS_ZEROED = "keys_zeroed"


@dataclass(frozen=True, slots=True)
class Sources:
    """What the device lends its peers: randomness and clocks (injected for the tests), and
    where to report a timer armed and an event."""

    wall_clock: Callable[[], float]  # TAI64N timestamps and `wg show` only, never timers
    # An ephemeral private key's 32 random bytes; None: drawn where the key is made.
    ephemeral_secret: Callable[[], bytes] | None
    jitter: Callable[[], float]
    timer_armed: Callable[[Peer, float], None]
    event: Callable[[Peer, PeerEvent], None]


class Peer:
    """All protocol state for one remote static key."""

    __slots__ = (
        "_indexes",
        "_sources",
        "cookies",
        "drops",
        "endpoint",
        "endpoint_changes",
        "events",
        "handshake",
        "handshakes",
        "keypairs",
        "last_handshake_wall",
        "last_sent_handshake",
        "mtu",
        "public_key",
        "rx_bytes",
        "staged",
        "timers",
        "tx_bytes",
    )

    def __init__(
        self,
        public_key: bytes,
        identity: StaticIdentity | None,
        indexes: IndexTable[Peer],
        sources: Sources,
        preshared_key: bytes | None = None,
        persistent_keepalive: float = 0.0,
        endpoint: Address | None = None,
    ) -> None:
        self._indexes = indexes
        self._sources = sources
        self.public_key = bytes(public_key)
        self.handshake = Handshake(identity, public_key, preshared_key)
        self.keypairs = KeypairSet(on_drop=indexes.forget_keypair)
        self.timers = Timers(persistent_keepalive, sources.jitter, self._timer_hook())
        self.cookies = CookieGenerator(public_key)
        self.endpoint = endpoint
        self.last_sent_handshake = float("-inf")
        self.last_handshake_wall: float | None = None  # wall-clock seconds, for `wg show`
        self.rx_bytes = 0
        self.tx_bytes = 0
        self.handshakes = 0  # completed, as either side
        self.endpoint_changes = 0  # learned or moved by an authenticated message
        self.drops: dict[str, int] | None = None  # by reason, once there is one
        self.mtu = 0  # padding cap; 0 pads to 16 with no cap
        self.staged: deque[bytes] = deque(maxlen=MAX_STAGED_PACKETS)
        self.events: deque[PeerEvent] = deque(maxlen=64)  # the latest, for inspection

    def __repr__(self) -> str:
        # A public key is public; show a short prefix so logs can tell peers apart.
        return f"Peer({self.public_key[:4].hex()}..., endpoint={self.endpoint})"

    # -- sending ----------------------------------------------------------------------------

    def keypair_for_sending(self, now: float) -> Keypair | None:
        kp = self.keypairs.current
        return kp if kp is not None and kp.sendable(now) else None

    def initiate_handshake(self, now: float, retry: bool = False) -> list[bytes]:
        """A new initiation unless one went out less than REKEY_TIMEOUT ago."""
        if not retry:
            self.timers.new_handshake_requested()
        if now - self.last_sent_handshake < REKEY_TIMEOUT or self.handshake.precomputed_ss is None:
            # One in flight already, or a low-order peer key or no private key of ours: no
            # handshake can use those.
            return []
        self.last_sent_handshake = now
        index = self._indexes.new_handshake(self)
        msg = create_initiation(
            self.handshake, index, tai64n(self._sources.wall_clock()),
            PrivateKey.generate(self._sources.ephemeral_secret),
        )
        data = self.cookies.add_macs(msg.pack(), now)
        self.tx_bytes += len(data)  # every message to the peer counts, as in the kernel
        self.timers.any_authenticated_packet_traversal(now)
        self.timers.any_authenticated_packet_sent(now)
        self.timers.handshake_initiated(now)
        return [data]

    def handshake_for_lost_session(self, now: float) -> list[bytes]:
        """An initiation on an unauthenticated hint (Device.on_unknown_index): only while no
        initiation is being retransmitted and none was given up on, and as a retry, so the
        count of attempts goes on. Were it to restart the count, or to go out ahead of a
        due retransmission (which re-arms the timer without counting an attempt), one
        spoofed packet a second would keep a dead peer's handshake, and its staged packets,
        alive past REKEY_ATTEMPT_TIME."""
        if self.timers.retransmit_at is not None or self.timers.out_of_attempts:
            return []
        return self.initiate_handshake(now, retry=True)

    def respond(self, answer: Answer, now: float) -> bytes:
        """Accept an initiation the worker answered (noise.accept_answer: the replay and
        flood rules against the state now) and send its response; the new keypair waits
        in `next`."""
        msg = accept_answer(self.handshake, answer,
                            lambda: self._indexes.new_handshake(self), now)
        self.last_sent_handshake = now
        data = self.cookies.add_macs(msg.pack(), now)
        self.tx_bytes += len(data)
        self._begin_session(now)
        self.timers.any_authenticated_packet_traversal(now)
        self.timers.any_authenticated_packet_sent(now)
        return data

    def _begin_session(self, now: float) -> Keypair:
        kp = Keypair(derive_session(self.handshake), now)
        self._indexes.add_keypair(self, kp)
        self.keypairs.add(kp)
        self.timers.session_derived(now)
        return kp

    def complete_as_initiator(self, now: float) -> list[bytes]:
        """After a valid response: install the keypair and confirm it to the responder."""
        self._begin_session(now)
        self._handshake_complete(now)
        out = self.flush_staged(now)
        return out or self.keepalive(now)

    def count_drop(self, reason: str, n: int = 1) -> None:
        """`n` packets or messages of this peer's were dropped for `reason`."""
        if self.drops is None:
            self.drops = {}
        self.drops[reason] = self.drops.get(reason, 0) + n

    def roam(self, source: Address) -> None:
        """An authenticated message came from `source`: it is the endpoint from now on."""
        if source != self.endpoint:
            self.endpoint = source
            self.endpoint_changes += 1

    def _handshake_complete(self, now: float) -> None:
        self.handshakes += 1
        self.timers.handshake_complete(now)
        self.last_handshake_wall = self._sources.wall_clock()
        self._emit(PeerEvent.HANDSHAKE_COMPLETE)

    def send(self, packet: bytes, now: float) -> list[bytes]:
        """Encrypt one IP packet (slow path); without a session, stage it and handshake."""
        kp = self.keypair_for_sending(now)
        if kp is None:
            return self.stage([packet], now)[1]
        try:
            data = kp.encrypt(packet, now, self.mtu)
        except TransportError:
            return self.stage([packet], now)[1]
        return [data, *self.after_send(now, kp, len(data), keepalive=not packet)]

    def stage(self, packets: Sequence[Buffer], now: float) -> tuple[int, list[bytes]]:
        """No usable session: hold the newest MAX_STAGED_PACKETS (copies: the caller's
        buffers are reused) and start a handshake. Returns how many older packets were
        pushed out, and the handshake datagrams to send."""
        dropped = max(0, len(self.staged) + len(packets) - MAX_STAGED_PACKETS)
        self.staged.extend(bytes(p) for p in packets[-MAX_STAGED_PACKETS:])
        return dropped, self.initiate_handshake(now)

    def flush_staged(self, now: float) -> list[bytes]:
        out: list[bytes] = []
        while self.staged and self.keypair_for_sending(now) is not None:
            out += self.send(self.staged.popleft(), now)
        return out

    def keepalive(self, now: float) -> list[bytes]:
        kp = self.keypair_for_sending(now)
        if kp is None:
            return self.initiate_handshake(now)
        data = kp.encrypt(b"", now)
        return [data, *self.after_send(now, kp, len(data), keepalive=True)]

    def after_send(
        self, now: float, kp: Keypair, nbytes: int, keepalive: bool = False, packets: int = 1
    ) -> list[bytes]:
        """Timer and rekey bookkeeping after the data plane sent on `kp` (once per batch)."""
        self.tx_bytes += nbytes
        timers = self.timers
        timers.any_authenticated_packet_traversal(now)
        timers.any_authenticated_packet_sent(now)
        if not keepalive:
            timers.data_sent(now)
        if kp.send_counter > REKEY_AFTER_MESSAGES or (
            kp.is_initiator and now - kp.created >= REKEY_AFTER_TIME
        ):
            return self.initiate_handshake(now)
        return []

    # -- receiving --------------------------------------------------------------------------

    def after_receive(
        self, now: float, kp: Keypair, nbytes: int, keepalive: bool, source: Address | None = None
    ) -> list[bytes]:
        """Bookkeeping after an authenticated, replay-checked transport message on `kp`."""
        self.rx_bytes += nbytes
        if source is not None:
            self.roam(source)
        out: list[bytes] = []
        if self.keypairs.received_with(kp):
            self._handshake_complete(now)
            out += self.flush_staged(now)
        current = self.keypairs.current
        timers = self.timers
        if (
            current is not None
            and current.is_initiator
            and now - current.created >= _LASTMINUTE_AGE
            and not timers.sent_lastminute_handshake
        ):
            timers.sent_lastminute_handshake = True
            out += self.initiate_handshake(now)
        timers.any_authenticated_packet_received(now)
        timers.any_authenticated_packet_traversal(now)
        if not keepalive:
            timers.data_received(now)
        return out

    # -- timers -----------------------------------------------------------------------------

    def poll(self, now: float) -> list[bytes]:
        out: list[bytes] = []
        for action in self.timers.poll(now):
            if action is TimerAction.SEND_HANDSHAKE_RETRY:
                out += self.initiate_handshake(now, retry=True)
            elif action is TimerAction.SEND_HANDSHAKE:
                out += self.initiate_handshake(now)
            elif action is TimerAction.SEND_KEEPALIVE:
                out += self.keepalive(now)
                self.timers.keepalive_timer_sent(now)
            elif action is TimerAction.SEND_PERSISTENT_KEEPALIVE:
                out += self.keepalive(now)
            elif action is TimerAction.GIVE_UP:
                self.staged.clear()
                self._emit(PeerEvent.GIVE_UP)
            elif action is TimerAction.ZERO_KEYS:
                self.zero_keys()
        return out

    def zero_keys(self) -> None:
        """Forget every session key and the handshake in flight."""
        self.keypairs.clear()
        self._indexes.forget_handshake(self)
        self.handshake.clear()
        self._emit(PeerEvent.KEYS_ZEROED)

    def set_identity(self, identity: StaticIdentity | None) -> None:
        """The device's private key changed or went (None): every session ends and the
        handshake is rebuilt on the new key (its static-static secret changes), the
        preshared key kept."""
        self.zero_keys()
        self.handshake = Handshake(identity, self.public_key, self.handshake.psk)
        self.last_sent_handshake = float("-inf")  # one in flight was on the old key: void
        self.timers = Timers(self.timers.persistent_interval, self._sources.jitter,
                             self._timer_hook())

    def _timer_hook(self) -> Callable[[float], None]:
        """What the timers tell of each deadline armed: the device's hook with this peer
        bound (a partial: no Python frame of the peer's own, for a ping's every packet)."""
        return functools.partial(self._sources.timer_armed, self)

    def _emit(self, event: PeerEvent) -> None:
        self.events.append(event)
        self._sources.event(self, event)

    def next_deadline(self) -> float | None:
        return self.timers.next_deadline()
