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

`dispatch` is the same walk split for worker threads (issue 20): the loop thread's part
(handshake messages, the session lookup, each transport run's extent: `Run`s per peer) and
a `RunJob` per peer for the workers, `open_runs` (the AEAD, in parallel) then `accept_runs`
(the replay window, cryptokey routing and the records, in the peer's order), through the
same `_Runs.accept` the inline walk calls. The peers' bookkeeping stays the loop's:
`after_runs` with the job's sessions once it is back.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING

from vpn.core.drops import Drop
from vpn.core.types import Address, Buffer

from .constants import MESSAGE_TRANSPORT, TRANSPORT_MIN_SIZE
from .keypair import OPENED, RECORD, Keypair, TransportError
from .screen import NATIVE as SCREEN_NATIVE
from .screen import SCREEN_REASONS, native_run_stop

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
# Up to this many messages, run_stop looks at each: cheaper than the columns' setup.
SHORT_RUN = 4
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
    walk = _Walk(device, now, out if type(out) is memoryview else memoryview(out),
                 records if type(records) is memoryview else memoryview(records))
    if screened:
        walk.count_screened(screened)
    for data, segment_size, source in batch:
        walk.datagrams(data, segment_size, source)
    return walk.finish(lost)


class _Runs:
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


class _Walk(_Runs):
    """One wakeup's receive state: where the next plaintext and record go, the sessions
    used, what to send."""

    __slots__ = ("device", "now", "offset", "opened", "out", "send")

    def __init__(self, device: Device, now: float, out: memoryview, records: memoryview
                 ) -> None:
        # _Runs' fields set here, not through its __init__: a call less a wakeup.
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


# -- the walk on worker threads --------------------------------------------------------------


@dataclass(slots=True)
class Run:
    """One keypair's run of transport messages, data[pos:stop], as the loop's dispatch found
    it; its plaintexts go to the job's `out` from `out_at` (a message's plaintext is shorter
    than it, so the run's share of `out` is stop - pos bytes)."""

    kp: Keypair
    data: Buffer
    segment_size: int
    pos: int
    stop: int
    source: Address
    out_at: int

    @property
    def messages(self) -> int:
        return -(-(self.stop - self.pos) // self.segment_size)


# One open_run call's outcome for accept: the run, where in `opened` it described its
# messages and how many, the inner sources, its drops.
_Opened = tuple[Run, int, int, list[bytes], dict[str, int]]


class RunJob(_Runs):
    """One peer's runs of one receive, for a worker: `open_runs` (in parallel with other
    jobs), then `accept_runs` (in the peer's order). `drops` are all the peer's, for the loop
    to count (Peer.count_drop is the loop's), with `sessions` (after_runs)."""

    __slots__ = ("opened", "opens", "peer", "runs")

    def __init__(self, peer: Peer, allowed_ips: AllowedIPs[Peer]) -> None:
        super().__init__(allowed_ips, ReceiveCounts(), memoryview(b""))
        self.peer = peer
        self.runs: list[Run] = []
        self.opens: list[_Opened] = []
        self.opened = memoryview(b"")


def open_runs(job: RunJob, out: memoryview) -> None:
    """The job's crypto, on a worker: each keypair's consecutive runs opened in one call
    (Keypair.open_runs: open_run without the window, which only the ordered stage may read)
    into `out`. A keypair zeroed before drops its runs (counted by accept_runs), as a wakeup
    after the zeroing would."""
    runs = job.runs
    total = sum([run.messages for run in runs])  # at most one record and one opened each
    opened = job.opened = memoryview(bytearray(OPENED.size * total))
    job.records = memoryview(bytearray(RECORD.size * total))
    at = first = 0
    while first < len(runs):
        kp = runs[first].kp
        last = first + 1
        while last < len(runs) and runs[last].kp is kp:
            last += 1
        group = runs[first:last]
        first = last
        try:
            stretches = kp.open_runs(
                [(run.data, run.segment_size, run.pos, run.stop, run.out_at) for run in group],
                out, opened[OPENED.size * at:])
        except TransportError as error:
            job.opens.extend((run, at, 0, [], {error.reason: run.messages}) for run in group)
            continue
        for i, _, count, sources, drops in stretches:
            job.opens.append((group[i], at, count, sources, drops))
            at += count


def preview_runs(job: RunJob) -> tuple[memoryview, int]:
    """The records accept_runs would make of the job's opened runs if none were a replay
    and every inner source the peer's (Keypair.preview_run per keypair's stretch), and how
    many: on the worker that opened them, before the peer's turn (see accept_runs)."""
    opened = job.opened
    records = memoryview(bytearray(len(job.records)))
    nrec = 0
    opens = job.opens
    first = 0
    while first < len(opens):
        kp, at = opens[first][0].kp, opens[first][1]
        count = opens[first][2]
        first += 1
        while first < len(opens) and opens[first][0].kp is kp:
            count += opens[first][2]
            first += 1
        if count:
            nrec += kp.preview_run(opened[OPENED.size * at:], count,
                                   records[RECORD.size * nrec:])
    return records, nrec


def accept_runs(job: RunJob, counts: ReceiveCounts) -> None:
    """The job's ordered stage, on a worker in the peer's turn: what open_runs described,
    through _Runs.accept as the inline walk; the counts go to `counts` (the worker's).

    A keypair's consecutive runs from one source whose inner sources are all the peer's (a
    busy peer's job: one keypair, one source, one flow) are accepted in one call: open_runs
    described their messages one after the other, and the window takes them in that order
    either way. Its Python per run (a call, the session, the lookups) held the GIL a job
    at a time while the other workers waited for it. Any other stretch goes run by run
    (accept_runs_by_run, the reference)."""
    job.counts = counts
    opened = job.opened
    opens = job.opens
    peer = job.peer
    lookup = job.allowed_ips.lookup
    first, total = 0, len(opens)
    while first < total:
        run, at, count, sources, drops = opens[first]
        kp, source = run.kp, run.source
        end = at + count
        last = first + 1
        while last < total:
            other, other_at, other_count, _, _ = opens[last]
            if other.kp is not kp or other.source != source or other_at != end:
                break
            end += other_count
            last += 1
        if last - first == 1:
            job.accept(kp, peer, source, opened[OPENED.size * at:], count, sources, drops)
        elif all(lookup(src) is peer
                 for src in {src for _, _, _, srcs, _ in opens[first:last] for src in srcs}):
            merged: dict[str, int] = {}
            for _, _, _, _, run_drops in opens[first:last]:
                for reason, n in run_drops.items():
                    merged[reason] = merged.get(reason, 0) + n
            # Sources checked above: none for accept to look up (nor to remove by slot).
            job.accept(kp, peer, source, opened[OPENED.size * at:], end - at, [], merged)
        else:
            for _, at, count, sources, drops in opens[first:last]:
                job.accept(kp, peer, source, opened[OPENED.size * at:], count, sources,
                           drops)
        first = last
    if job.drops:
        counts.drops.update(job.drops)


def accept_runs_by_run(job: RunJob, counts: ReceiveCounts) -> None:
    """accept_runs' reference: each run accepted on its own, as the inline walk does."""
    job.counts = counts
    opened = job.opened
    for run, at, count, sources, drops in job.opens:
        job.accept(run.kp, job.peer, run.source, opened[OPENED.size * at:], count, sources,
                   drops)
    if job.drops:
        counts.drops.update(job.drops)


@dataclass(slots=True)
class Dispatched:
    """What the loop's part of a wakeup's receive made: a job per peer that has runs, and
    what to send now (its drops are counted already)."""

    jobs: list[RunJob]
    send: list[tuple[Address, bytes]]


def dispatch(device: Device, batch: Datagrams, now: float, *,
             screened: Sequence[int] | None = None, lost: Sequence[Address] = ()
             ) -> Dispatched:
    """The loop thread's part of `receive` for the workers: the same walk over `batch`, each
    transport run's extent found (run_stop) and handed to its peer's job instead of opened.
    Each run's plaintexts have the room of its bytes in the jobs' shared `out`: as much of
    it as `receive` needs for `batch`."""
    walk = _Dispatch(device, now)
    if screened:
        walk.count_screened(screened)
    for data, segment_size, source in batch:
        walk.datagrams(data, segment_size, source)
    walk.finish(lost)  # its sessions are the jobs' now: no bookkeeping here
    return Dispatched(list(walk.jobs.values()), walk.send)


class _Dispatch(_Walk):
    """_Walk whose transport runs are cut out for workers rather than opened here."""

    __slots__ = ("checked", "jobs", "latest")

    def __init__(self, device: Device, now: float) -> None:
        super().__init__(device, now, memoryview(b""), memoryview(b""))
        self.jobs: dict[Peer, RunJob] = {}
        # Keypairs with a run this wakeup: receivable was checked once, as inline. (The
        # dispatch's `in self.sessions` sees them: sessions is this set until finish.)
        self.checked: set[Keypair] = set()
        self.sessions = self.checked  # type: ignore[assignment]
        # The latest run cut: its first 8 bytes (type, reserved, receiver index), its job
        # and keypair; None once anything else ran (a handshake message can change what
        # an index names).
        self.latest: tuple[bytes, RunJob, Keypair] | None = None

    def datagrams(self, data: Buffer, segment_size: int, source: Address) -> None:
        """A receive that is one run for the receiver index of the latest run (a busy
        peer's: every receive of a wakeup but the first) is cut here, its session known;
        any other goes through _Walk's walk, message by message. (The loop thread's cost
        per receive: issue 20's 2-workers bound counts it.)"""
        latest = self.latest
        size = len(data)
        if latest is not None and size >= TRANSPORT_MIN_SIZE and data[:8] == latest[0]:
            if not 0 < segment_size < size:
                segment_size = size  # one datagram
            stop = cut_run(data, segment_size, 0)
            if stop == size:
                self.counts.datagrams_received += -(-size // segment_size)
                latest[1].runs.append(Run(latest[2], data, segment_size, 0, size, source,
                                          self.offset))
                self.offset += size
                return
        super().datagrams(data, segment_size, source)

    def transport_run(self, data: Buffer, segment_size: int, pos: int, source: Address,
                      peer: Peer, kp: Keypair) -> int:
        stop = cut_run(data, segment_size, pos)
        job = self.jobs.get(peer)
        if job is None:
            job = self.jobs[peer] = RunJob(peer, self.allowed_ips)
        job.runs.append(Run(kp, data, segment_size, pos, stop, source, self.offset))
        self.offset += stop - pos
        self.checked.add(kp)
        self.latest = (bytes(data[pos:pos + 8]), job, kp)
        return stop

    def handshake_message(self, datagram: bytes, source: Address) -> None:
        self.latest = None
        super().handshake_message(datagram, source)

    def lost_session(self, source: Address) -> None:
        self.latest = None
        super().lost_session(source)

    def finish(self, lost: Sequence[Address]) -> Received:
        self.sessions = {}  # the keypairs only checked: the jobs will tell what arrived
        return super().finish(lost)


def run_stop(data: Buffer, segment_size: int, pos: int) -> int:
    """Where the run of transport messages from data[pos:] for one receiver index ends: at
    the first message shorter than a transport message, of another type or for another
    index, as open_run stops (or earlier, at other reserved bytes: a cut there is only one
    more run). A GRO receive's messages are one flow's: a long one is compared at once, its
    headers' two words (type and reserved bytes, receiver index) a strided column each."""
    size = len(data)
    n = -(-(size - pos) // segment_size)
    if n == 1:
        return size
    view = data if type(data) is memoryview else memoryview(data)
    header = view[pos:pos + 8].tobytes()
    last = pos + (n - 1) * segment_size
    if n > SHORT_RUN and segment_size % 4 == 0 and size - last >= TRANSPORT_MIN_SIZE:
        words = view[pos:last + 8].cast("I")
        step = segment_size // 4
        if (words[::step].tobytes() == header[:4] * n
                and words[1::step].tobytes() == header[4:] * n):
            return size
    end = pos + segment_size  # the first message is the run's (the dispatch saw to it)
    while end < size:  # a short run, a new keypair part way, garbage: message by message
        stop = min(end + segment_size, size)
        if stop - end < TRANSPORT_MIN_SIZE or view[end:end + 8] != header:
            break
        end = stop
    return end


# The dispatch's run_stop: the screen module's twin when it runs (the loop thread's cost per
# receive is a call, not the columns' copies), else the reference above.
cut_run = native_run_stop if SCREEN_NATIVE.native and native_run_stop is not None else run_stop
