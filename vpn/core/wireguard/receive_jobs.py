"""The receive walk on worker threads (issue 20): receive.py's walk split in three.

`dispatch` is the loop thread's part (handshake messages, the session lookup, each
transport run's extent: `Run`s per peer, in a `RunJob` per peer); a worker runs
`open_runs` (the AEAD, in parallel with other jobs), `preview_runs`, then `accept_runs`
(the replay window, cryptokey routing and the records, in the peer's order), through the
same `OrderedStage.accept` the inline walk calls. The peers' bookkeeping stays the
loop's: receive.after_runs with the job's sessions once it is back.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from vpn.core.types import Address, Buffer

from .constants import TRANSPORT_MIN_SIZE
from .keypair import OPENED, RECORD, Keypair, TransportError
from .receive import Datagrams, OrderedStage, ReceiveCounts, Received, Walk
from .screen import NATIVE as SCREEN_NATIVE
from .screen import native_run_stop, native_whole_runs
from .transport_reference import OpenRun

if TYPE_CHECKING:
    from .allowedips import AllowedIPs
    from .device import Device
    from .peer import Peer

# Up to this many messages, run_stop looks at each: cheaper than the columns' setup.
SHORT_RUN = 4


@dataclass(slots=True)
class Run:
    """One keypair's transport messages from one source, in `parts` as the loop's dispatch
    cut them: each (data, segment_size, pos, stop, out_at), the messages data[pos:stop],
    their plaintexts in the job's `out` from out_at (a message's plaintext is shorter than
    it, so a part's share of `out` is stop - pos bytes). A busy peer's receives of a wakeup
    are one Run, a part each: the loop appends a tuple per receive instead of making an
    object (a third of a microsecond each, on the thread issue 20's bound counts)."""

    kp: Keypair
    source: Address
    parts: list[OpenRun]

    @property
    def messages(self) -> int:
        return sum([-(-(stop - pos) // size) for _, size, pos, stop, _ in self.parts])


# One open_run call's outcome for accept: the run, where in `opened` it described its
# messages and how many, the inner sources, its drops.
_Opened = tuple[Run, int, int, list[bytes], dict[str, int]]


class RunJob(OrderedStage):
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
            stretches = kp.open_runs([part for run in group for part in run.parts], out,
                                     opened[OPENED.size * at:])
        except TransportError as error:
            job.opens.extend((run, at, 0, [], {error.reason: run.messages}) for run in group)
            continue
        owners = [run for run in group for _ in run.parts]  # each part's Run
        for i, _, count, sources, drops in stretches:
            job.opens.append((owners[i], at, count, sources, drops))
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
    through OrderedStage.accept as the inline walk; the counts go to `counts` (the worker's).

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
    it as `receive` needs for `batch`.

    Receives that are each one run for the receiver index of the latest run, from its
    source (a busy peer's: every receive of a wakeup but the first), are cut at once, its
    session known: whole_runs, native, one call for them all (the loop thread's cost per
    receive is what issue 20's 2-workers bound counts). Any other goes through Walk's walk,
    message by message."""
    walk = _Dispatch(device, now)
    if screened:
        walk.count_screened(screened)
    datagrams = 0  # the cut receives', added to the counts once
    at, end = 0, len(batch)
    while at < end:
        latest = walk.latest
        if latest is not None:  # the receives that continue the latest run, at once
            run = latest[2]
            at, walk.offset, cut = cut_whole_runs(batch, at, latest[0], run.source,
                                                  walk.offset, run.parts)
            datagrams += cut
            if at == end:
                break
        data, segment_size, source = batch[at]
        walk.datagrams(data, segment_size, source)
        at += 1
    walk.counts.datagrams_received += datagrams
    walk.finish(lost)  # its sessions are the jobs' now: no bookkeeping here
    return Dispatched(list(walk.jobs.values()), walk.send)


class _Dispatch(Walk):
    """Walk whose transport runs are cut out for workers rather than opened here."""

    __slots__ = ("checked", "jobs", "latest")

    def __init__(self, device: Device, now: float) -> None:
        super().__init__(device, now, memoryview(b""), memoryview(b""))
        self.jobs: dict[Peer, RunJob] = {}
        # Keypairs with a run this wakeup: receivable was checked once, as inline. (The
        # dispatch's `in self.sessions` sees them: sessions is this set until finish.)
        self.checked: set[Keypair] = set()
        self.sessions = self.checked  # type: ignore[assignment]
        # The latest run cut: its first 8 bytes (type, reserved, receiver index), its job
        # and Run (its job's last); None once anything else ran (a handshake message can
        # change what an index names).
        self.latest: tuple[bytes, RunJob, Run] | None = None

    def transport_run(self, data: Buffer, segment_size: int, pos: int, source: Address,
                      peer: Peer, kp: Keypair) -> int:
        stop = cut_run(data, segment_size, pos)
        job = self.jobs.get(peer)
        if job is None:
            job = self.jobs[peer] = RunJob(peer, self.allowed_ips)
        run = Run(kp, source, [(data, segment_size, pos, stop, self.offset)])
        job.runs.append(run)
        self.offset += stop - pos
        self.checked.add(kp)
        self.latest = (bytes(data[pos:pos + 8]), job, run)
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


def whole_runs(batch: Datagrams, start: int, header: bytes, source: Address, offset: int,
               parts: list[OpenRun]) -> tuple[int, int, int]:
    """From batch[start:], each receive that comes from `source`, begins with the 8 bytes
    `header` (type, reserved bytes, receiver index: the latest run's) and is one run
    (run_stop) appended to `parts` as (data, segment_size, 0, len(data), offset), `offset`
    growing by its length; stops at the first other. Returns where it stopped, the offset,
    and how many datagrams (messages) it appended."""
    if len(header) != 8:
        raise ValueError("whole_runs: header must be 8 bytes")
    if start < 0 or offset < 0:
        raise ValueError("whole_runs: start or offset < 0")
    datagrams = 0
    at = start
    while at < len(batch):
        data, segment_size, src = batch[at]
        if src is not source and src != source:
            break
        segment_size = operator.index(segment_size)
        view = memoryview(data)
        size = view.nbytes
        if size < TRANSPORT_MIN_SIZE or view[:8] != header:
            break
        if not 0 < segment_size < size:
            segment_size = size  # one datagram
        if run_stop(data, segment_size, 0) != size:
            break
        parts.append((data, segment_size, 0, size, offset))
        offset += size
        datagrams += -(-size // segment_size)
        at += 1
    return at, offset, datagrams


# The dispatch's run_stop and whole_runs: the screen module's twins when they run (the loop
# thread's cost per receive is a call or less, not the columns' copies), else the
# references above.
NATIVE_CUT = (SCREEN_NATIVE.native and native_run_stop is not None
              and native_whole_runs is not None)
cut_run = native_run_stop if NATIVE_CUT and native_run_stop is not None else run_stop
cut_whole_runs = (native_whole_runs if NATIVE_CUT and native_whole_runs is not None
                  else whole_runs)
