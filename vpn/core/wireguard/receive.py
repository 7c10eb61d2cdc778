"""The receive walk, as the kernel's receive.c: one wakeup's datagrams in, what to deliver and
what to send out.

`receive` takes the datagrams one socket wakeup gave (data, segment size, source: a GRO run
of datagrams of one size but the last, or one datagram) and does every protocol decision on
them: handshake messages to the handshake code, transport messages opened a keypair's run at
a time (Keypair.open_run, then accept_run in order), cryptokey routing (each inner source
must be one of the peer's AllowedIPs), the peers' bookkeeping once per keypair
(Peer.after_receive: bytes, timers, roaming, a confirmed session) and the lost-session
check. It counts every drop by reason in the device's `ReceiveCounts` (and the peer's,
where it knows whose). The shell hands the records to the TUN, sends `send` and logs
`roamed`; it makes no protocol decision and writes no counter of the core's.

The same walk split for worker threads (issue 20) is receive_jobs.py's: it builds on `Walk`
and `OrderedStage` here, and the loop hands `after_runs` a job's sessions once it is back.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING

from vpn.core.drops import Drop
from vpn.core.types import Address, Buffer

from .constants import MESSAGE_TRANSPORT, TRANSPORT_MIN_SIZE
from .keypair import OPENED, RECORD, Keypair
from .screen import SCREEN_REASONS

if TYPE_CHECKING:
    from .allowedips import AllowedIPs
    from .device import Device
    from .peer import Peer

# One receive: its bytes, the segment size of its datagrams (0 or its length: one datagram),
# and the source address.
Datagrams = Sequence[tuple[Buffer, int, Address]]
# The most messages one receive holds (a 65,535-byte receive of keepalives): what open_run
# may describe for accept_run in one call.
OPENED_PER_RUN = 65535 // TRANSPORT_MIN_SIZE + 1
# The smallest plaintext a record can stand for (an IPv4 header): each record takes at least
# this much of `out`, which bounds the records one wakeup can make.
MIN_RECORDED = 20


def records_needed(out_size: int) -> int:
    """Bytes of records a wakeup that opens into `out_size` bytes may need, at most."""
    return RECORD.size * (out_size // MIN_RECORDED + 1)


@dataclass(slots=True)
class ReceiveCounts:
    """The receive walk's counters; the shell's DataPathStats reports them under these names."""

    datagrams_received: int = 0  # every datagram, the screen's drops included
    handshakes_received: int = 0  # every datagram that is not a transport message
    packets_written: int = 0  # inner packets that passed every check, handed to the TUN
    lost_session_handshakes: int = 0  # initiations for data on a session we lost
    drops: Counter[str] = field(default_factory=Counter)

    def counts(self) -> dict[str, int]:
        """The counts but `drops`."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "drops"}


@dataclass(slots=True)
class Received:
    """What one wakeup's receive produced for the shell. (A slotted class: it is made once
    per wakeup, and a NamedTuple costs twice as much to make.)"""

    out: memoryview  # the plaintexts, where `records` point
    records: memoryview  # RECORD each: (offset in `out`, IP length, slot), all to deliver
    nrec: int
    send: list[tuple[Address, bytes]]  # handshake replies, keepalives, initiations
    roamed: list[tuple[Peer, Address]]  # peers whose endpoint moved (for the shell's log)
    drops: dict[str, int]  # this wakeup's, by reason (also in ReceiveCounts)

    def packets(self) -> list[memoryview]:
        """The inner packets to deliver, as views of `out`."""
        out = self.out
        return [out[at:at + length]
                for at, length, _ in RECORD.iter_unpack(self.records[:RECORD.size * self.nrec])]


@dataclass(slots=True)
class _Session:
    """What one wakeup received on one keypair, for the peer's bookkeeping after it."""

    peer: Peer
    source: Address  # the latest authenticated message's
    nbytes: int = 0
    packets: int = 0  # data packets delivered (0: only keepalives)


def receive(device: Device, batch: Datagrams, now: float, *, out: Buffer | None = None,
            records: Buffer | None = None, screened: Sequence[int] | None = None,
            lost: Sequence[Address] = ()) -> Received:
    """One wakeup's receive; see the module's docstring. `out` takes the plaintexts (room for
    every byte of `batch`), `records` what to deliver (records_needed(len(out)) bytes); both
    are made here when not given (the tests' one-message calls). `screened` is the native
    screen's drop counts (SCREEN_REASONS' order) and `lost` the sources of its
    unknown-receiver-index drops."""
    if out is None:
        out = bytearray(sum(len(data) for data, _, _ in batch))
    if records is None:
        records = bytearray(records_needed(len(out)))
    if len(records) < RECORD.size * (len(out) // MIN_RECORDED + 1):  # records_needed
        raise ValueError("receive: records too short for out")
    # Views once, so that slicing them per run copies nothing.
    walk = Walk(device, now, out if type(out) is memoryview else memoryview(out),
                 records if type(records) is memoryview else memoryview(records))
    if screened:
        walk.count_screened(screened)
    for data, segment_size, source in batch:
        walk.datagrams(data, segment_size, source)
    return walk.finish(lost)


class OrderedStage:
    """The ordered stage of transport runs, the inline walk's and a worker's job's alike:
    the replay window (accept_run), cryptokey routing, the records to deliver and what each
    keypair received, for the peers' bookkeeping after it."""

    __slots__ = ("allowed_ips", "counts", "drops", "nrec", "records", "sessions")

    def __init__(self, allowed_ips: AllowedIPs[Peer], counts: ReceiveCounts,
                 records: memoryview) -> None:
        self.allowed_ips = allowed_ips
        self.counts = counts
        self.records = records
        self.nrec = 0
        self.sessions: dict[Keypair, _Session] = {}
        self.drops: dict[str, int] = {}

    def drop(self, reason: str, n: int, peer: Peer | None) -> None:
        """Count a drop for the interface (a worker's job: the peer's are these too)."""
        self.drops[reason] = self.drops.get(reason, 0) + n

    def accept(self, kp: Keypair, peer: Peer, source: Address, opened: Buffer, count: int,
               sources: list[bytes], run_drops: dict[str, int]) -> None:
        """What open_run described in `opened`, in order: the replay window, then each fresh
        packet's inner source checked and recorded."""
        at = self.nrec
        nrec, fresh, nbytes = kp.accept_run(opened, count, self.records[RECORD.size * at:],
                                            run_drops)
        if run_drops:  # replays, failed authentication
            for reason, n in run_drops.items():
                self.drop(reason, n, peer)
        if fresh:
            # Only an authenticated, fresh message may move the endpoint or count as
            # received: a replayed or forged one from elsewhere changes nothing.
            got = self.sessions.get(kp)
            if got is None:
                got = self.sessions[kp] = _Session(peer, source)
            got.nbytes += nbytes
            got.source = source
            if nrec:
                # Cryptokey routing, once per distinct inner source: each must be one of
                # the peer's AllowedIPs (inline: this runs once per run).
                # (AllowedIPs.source_allowed, its lookup called directly: one call less.)
                lookup = self.allowed_ips.lookup
                for first, src in enumerate(sources):
                    if lookup(src) is not peer:  # rare: look at the rest, remove records
                        nrec = self.remove(peer, at, nrec, {
                            slot for slot in range(first, len(sources))
                            if lookup(sources[slot]) is not peer})
                        break
                self.nrec = at + nrec
                self.counts.packets_written += nrec
                got.packets += nrec

    def remove(self, peer: Peer, at: int, nrec: int, denied: set[int]) -> int:
        """Remove the records at..at+nrec-1 whose source slot is in `denied` (the rest
        moved down over them), counted as source_not_allowed; returns how many are kept."""
        records = self.records
        size = RECORD.size
        kept = 0
        for i in range(at, at + nrec):
            offset, length, slot = RECORD.unpack_from(records, size * i)
            if slot not in denied:
                RECORD.pack_into(records, size * (at + kept), offset, length, slot)
                kept += 1
        self.drop(Drop.SOURCE_NOT_ALLOWED, nrec - kept, peer)
        return kept


class Walk(OrderedStage):
    """One wakeup's receive state: where the next plaintext and record go, the sessions
    used, what to send."""

    __slots__ = ("device", "now", "offset", "opened", "out", "send")

    def __init__(self, device: Device, now: float, out: memoryview, records: memoryview
                 ) -> None:
        # OrderedStage's fields set here, not through its __init__: a call less a wakeup.
        self.allowed_ips = device.allowed_ips
        self.counts = device.receive_counts
        self.records = records
        self.nrec = 0
        self.sessions: dict[Keypair, _Session] = {}
        self.drops: dict[str, int] = {}
        self.device = device
        self.now = now
        self.out = out
        if not device.opened:  # made at the first receive: an idle device needs none
            device.opened = bytearray(OPENED.size * OPENED_PER_RUN)
        self.opened = device.opened
        self.offset = 0  # the end of `out`'s use
        self.send: list[tuple[Address, bytes]] = []

    def drop(self, reason: str, n: int, peer: Peer | None) -> None:
        """Count a drop for the interface and, when it is known whose, for the peer."""
        self.drops[reason] = self.drops.get(reason, 0) + n
        if peer is not None:
            peer.count_drop(reason, n)

    def count_screened(self, screened: Sequence[int]) -> None:
        """The screen's drops, under the reasons the dispatch below would give: a datagram
        that is not a transport message is the handshake code's (counted in Device.drops
        too), a transport message for no keypair of ours the data path's alone."""
        protocol = self.device.drops
        counts = self.counts
        counts.datagrams_received += sum(screened)
        for reason, n in zip(SCREEN_REASONS, screened, strict=True):
            if n:
                self.drops[reason] = self.drops.get(reason, 0) + n
                if reason != Drop.UNKNOWN_RECEIVER_INDEX:
                    protocol[reason] += n
                    counts.handshakes_received += n

    def datagrams(self, data: Buffer, segment_size: int, source: Address) -> None:
        """One receive, datagram by datagram: handshake messages handled on the way,
        transport messages opened a keypair's run at a time."""
        size = len(data)
        if not 0 < segment_size < size:
            segment_size = size  # one datagram
        self.counts.datagrams_received += -(-size // segment_size) if size else 1
        session_for = self.device.indexes.session  # Device.session, one call less a message
        now = self.now
        pos = 0
        while True:
            end = min(pos + segment_size, size)
            # Length first: a zero-length datagram has no type byte to look at.
            if end - pos < TRANSPORT_MIN_SIZE or data[pos] != MESSAGE_TRANSPORT:
                self.handshake_message(bytes(data[pos:end]), source)
                pos = end
            elif (found := session_for(int.from_bytes(data[pos + 4:pos + 8], "little"))
                  ) is None:
                self.drop(Drop.UNKNOWN_RECEIVER_INDEX, 1, None)
                self.lost_session(source)
                pos = end
            elif found[1] not in self.sessions and not found[1].receivable(now):
                self.drop(Drop.KEYPAIR_EXPIRED, 1, found[0])
                pos = end
            else:
                pos = self.transport_run(data, segment_size, pos, source, found[0], found[1])
            if pos >= size:
                return

    def handshake_message(self, datagram: bytes, source: Address) -> None:
        self.counts.handshakes_received += 1
        # `now` is this wakeup's: the device takes the mac1-valid handshake messages of one
        # wakeup as its backlog of Diffie-Hellman work, which decides "under load".
        result = self.device.handle_handshake_message(datagram, source, self.now)
        if result.drop_reason:
            self.drop(result.drop_reason, 1, result.peer)
        for reply in result.replies:
            self.send.append((source, reply))

    def transport_run(self, data: Buffer, segment_size: int, pos: int, source: Address,
                      peer: Peer, kp: Keypair) -> int:
        """The keypair's run of messages from data[pos:], in the two stages the kernel and
        wireguard-go use: open (the AEAD and the inner checks, which could run in parallel)
        and accept (the replay window and the records, per keypair in order). Returns where
        the run stopped."""
        run_drops: dict[str, int] = {}
        stop, self.offset, count, sources = kp.open_run(
            data, segment_size, pos, self.out, self.offset,
            len(self.records) // RECORD.size - self.nrec, self.opened, run_drops)
        self.accept(kp, peer, source, self.opened, count, sources, run_drops)
        if stop <= pos:
            raise RuntimeError(f"receive_run made no progress at {pos} of {len(data)}")
        return stop

    def lost_session(self, source: Address) -> None:
        """Data for a session we do not know: whether it starts a handshake (we restarted
        and the peer still uses the session we lost) is Device.on_unknown_index's call."""
        for peer, datagram in self.device.on_unknown_index(source, self.now):
            assert peer.endpoint is not None  # on_unknown_index matched it to `source`
            self.send.append((peer.endpoint, datagram))
            self.counts.lost_session_handshakes += 1

    def finish(self, lost: Sequence[Address]) -> Received:
        """Once per keypair, the peer's bookkeeping; then the screen's lost sessions."""
        roamed: list[tuple[Peer, Address]] = []
        if self.sessions:
            after_runs(self.now, self.sessions, self.send, roamed)
        for source in lost:
            self.lost_session(source)
        if self.drops:
            self.counts.drops.update(self.drops)
        return Received(self.out, self.records, self.nrec, self.send, roamed, self.drops)


def after_runs(now: float, sessions: dict[Keypair, _Session],
               send: list[tuple[Address, bytes]], roamed: list[tuple[Peer, Address]]) -> None:
    """The peers' bookkeeping (Peer.after_receive) once per keypair that received: what it
    answers goes to `send`, a peer whose endpoint moved to `roamed`. On the loop thread."""
    for kp, got in sessions.items():
        peer = got.peer
        before = peer.endpoint
        for reply in peer.after_receive(now, kp, got.nbytes, keepalive=got.packets == 0,
                                        source=got.source):
            send.append((got.source, reply))
        if peer.endpoint != before:
            roamed.append((peer, got.source))
