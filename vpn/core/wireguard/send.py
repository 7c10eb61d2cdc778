"""The send half of the protocol, as the kernel's send.c: what the TUN gave us, routed to
peers, sealed into transport messages in the caller's send buffer, staged when there is no
session. Sans-I/O: reads come in, a layout of messages and the datagrams to send go out.

The reads are the TUN device's (vpn/io/tun.py's TunRead): the core never sees the offload
that made them, only whether a read stands for several packets and, if so, asks it to lay
them out in the send buffer with the room sealing in place needs around each (SEAL_GAP
before, SEAL_TAIL after), as wireguard-go's device asks tun.Device.Read for an offset.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple, Protocol

from vpn.core.drops import Drop
from vpn.core.packet.errors import OffloadError
from vpn.core.packet.headers import ip_destination
from vpn.core.packet.icmp import UnreachableResponder
from vpn.core.types import Address, Buffer

from .allowedips import AllowedIPs
from .constants import AEAD_TAG_LEN, PADDING_MULTIPLE, TRANSPORT_HEADER_SIZE
from .keypair import Keypair, transport_size
from .peer import Peer

__all__ = ["SEAL_GAP", "SEAL_TAIL", "Job", "Read", "Reserved", "Routed", "Sealed", "SplitRuns",
           "reserve_jobs", "route", "seal", "seal_job"]

# Around each segment laid out in the send buffer: room for the transport header before it,
# and for its padding (up to 15 bytes) and tag after, so that it is sealed where it lies.
SEAL_GAP = TRANSPORT_HEADER_SIZE
SEAL_TAIL = PADDING_MULTIPLE - 1 + AEAD_TAG_LEN
_GAP_AND_TAIL = SEAL_GAP + SEAL_TAIL  # the most a message adds to its packet


class Read(Protocol):
    """One read from the TUN device, as the send path needs it."""

    @property
    def packet(self) -> Buffer:
        """The IP packet as read (a super-packet whole): what routing looks at."""

    @property
    def segmented(self) -> bool:
        """Does the read stand for several packets (a TSO/USO super-packet)?"""

    def packets(self) -> list[Buffer]:
        """The complete packets the read stands for; OffloadError (with a drop reason) for
        one the device cannot act on."""

    def shape(self) -> tuple[int, int, int]:
        """(count, full, last) as split_into would return them, nothing written; OffloadError
        as `packets`. (Asked of a segmented read only.)"""

    def split_into(self, out: bytearray | memoryview, offset: int, gap: int, tail: int
                   ) -> tuple[int, int, int]:
        """The packets laid out in `out` from `offset`, `gap` bytes before and `tail` after
        each: segment i at offset + gap + i * (gap + full + tail); returns (count, full,
        last). OffloadError as `packets`, ValueError when `out` is too small, either way
        before a byte is written."""


class Routed(NamedTuple):
    """What one wakeup's reads are for: each peer's, in order, and what else they caused."""

    by_peer: dict[Peer, list[Read]]
    replies: list[bytes]  # ICMP unreachable, to write to the TUN
    drops: dict[str, int]  # by reason, the interface's only (no peer to name)


class Sealed(NamedTuple):
    """What one `seal` call made for one peer. The messages lie back to back in the send
    buffer from 0, `lengths` theirs, for `endpoint`; `control` datagrams (handshake, staged
    packets flushed) go there one by one after them. `rest` are the reads the buffer had no
    room for: seal them in another call once the messages are sent."""

    endpoint: Address | None
    lengths: list[int]
    control: list[bytes]
    rest: list[Read]
    drops: dict[str, int]  # by reason, already counted for the peer too
    exhausted: bool = False  # the keypair ran out of nonces: the rest was staged


class _Packets:
    """Complete packets that did not fit one call's buffer, carried to the next as a read."""

    __slots__ = ("_packets",)
    segmented = False

    def __init__(self, packets: list[Buffer]) -> None:
        self._packets = packets

    @property
    def packet(self) -> Buffer:
        return self._packets[0]

    def packets(self) -> list[Buffer]:
        return self._packets

    def shape(self) -> tuple[int, int, int]:
        raise ValueError("complete packets are not split")

    def split_into(self, out: bytearray | memoryview, offset: int, gap: int, tail: int
                   ) -> tuple[int, int, int]:
        raise ValueError("complete packets are sealed as they are")


def route(allowed_ips: AllowedIPs[Peer], icmp: UnreachableResponder,
          reads: Sequence[Read], now: float) -> Routed:
    """Cryptokey routing by destination, read by read; a packet no peer's AllowedIPs cover
    is answered with ICMP unreachable, as the kernel's WireGuard does (wireguard-go drops it
    silently): the sender learns at once instead of timing out. Rate-limited; never for
    errors, multicast, broadcast."""
    lookup = allowed_ips.lookup
    by_peer: dict[Peer, list[Read]] = {}
    replies: list[bytes] = []
    drops: dict[str, int] = {}
    routed: Buffer = b""  # the last destination looked up, and its peer: a stream's reads
    peer: Peer | None = None  # come in a row, and the loop thread's time bounds the workers'
    for read in reads:
        packet = read.packet
        destination = ip_destination(packet)
        if destination is None:
            drops[Drop.TUN_NOT_IP] = drops.get(Drop.TUN_NOT_IP, 0) + 1
            continue
        if destination != routed:
            peer, routed = lookup(destination), destination
        if peer is None:
            drops[Drop.NO_PEER_FOR_DESTINATION] = drops.get(Drop.NO_PEER_FOR_DESTINATION, 0) + 1
            reply = icmp.reply(packet, now)
            if reply is not None:
                replies.append(reply)
            continue
        by_peer.setdefault(peer, []).append(read)
    return Routed(by_peer, replies, drops)


def seal(peer: Peer, reads: Sequence[Read], out: bytearray | memoryview, mtu: int,
         now: float) -> Sealed:
    """Seal `reads` for `peer` into `out` from 0, in order: each super-packet split straight
    into `out` and sealed where it lies (no segment becomes an object), the packets between
    them sealed together. Without an endpoint they are dropped; without a usable keypair,
    or when it runs out of nonces, staged behind a handshake."""
    drops: dict[str, int] = {}
    endpoint = peer.endpoint
    if endpoint is None:
        _drop(peer, drops, Drop.PEER_WITHOUT_ENDPOINT, len(_complete(reads, drops)))
        return Sealed(None, [], [], [], drops)
    kp = peer.keypair_for_sending(now)
    if kp is None:
        return Sealed(endpoint, [], _stage(peer, _complete(reads, drops), now, drops), [],
                      drops)
    lengths: list[int] = []
    rest, stopped, end = _walk(kp, kp.reserve, reads, out, mtu, drops, lengths)
    if stopped is not None:  # out of nonces: rare, the rest waits for the next session
        staged = _complete(reads[stopped:], drops)
        return Sealed(endpoint, lengths, _stage(peer, staged, now, drops), [], drops, True)
    return Sealed(endpoint, lengths, peer.after_send(now, kp, end), rest, drops)


class Job(NamedTuple):
    """A worker's share of one peer's reads: `messages` counters reserved from
    `first`, in read order (a super-packet's from its header, before it is split), at most
    a job budget's bytes once laid out."""

    reads: list[Read]
    first: int
    messages: int


class Reserved(NamedTuple):
    """What reserve_jobs did with one peer's reads: `jobs` to seal with `keypair` (in order,
    seal_job) and send to `endpoint`, then the `control` datagrams."""

    endpoint: Address
    keypair: Keypair
    jobs: list[Job]
    control: list[bytes]
    drops: dict[str, int]


def reserve_jobs(peer: Peer, kp: Keypair, endpoint: Address, reads: Sequence[Read],
                 mtu: int, now: float, budget: int) -> Reserved:
    """seal's first half, for sealing on worker threads (seal_job), with nothing split or
    copied here: each read's message count (a super-packet's from its header: Read.shape)
    and room, the reads grouped in order into jobs that lay out in `budget` bytes, and the
    counters reserved per job on `kp`, the keypair the caller found sendable. A read the
    header check rejects is dropped here. Out of nonces, the rest is staged behind a
    handshake as seal does. The reads must stay valid until their job is sealed."""
    drops: dict[str, int] = {}
    jobs: list[Job] = []
    nbytes = 0
    taken: list[Read] = []
    count = room = 0
    # The last super-packet's shape and what it came to: a stream's mostly share theirs,
    # and this loop is the loop thread's, whose time per read bounds what workers can do.
    shaped, sized, laid = (0, 0, 0), 0, 0
    for i, read in enumerate(reads):
        if read.segmented:
            try:
                shape = read.shape()
            except OffloadError as err:
                drops[err.reason] = drops.get(err.reason, 0) + 1
                continue
            if shape != shaped:
                n, full, last = shaped = shape
                sized = (n - 1) * transport_size(full, mtu) + transport_size(last, mtu)
                laid = (n - 1) * (full + _GAP_AND_TAIL) + last + _GAP_AND_TAIL
            n = shape[0]
            nbytes += sized
            need = laid
        else:
            n, length = 1, len(read.packet)
            nbytes += transport_size(length, mtu)
            need = length + _GAP_AND_TAIL
        if taken and room + need > budget:
            first = kp.reserve(count)
            if first is None:  # rare: the reads from this job on wait for the next session
                return _staged(peer, kp, endpoint, reads, i - len(taken), jobs, now, drops)
            jobs.append(Job(taken, first, count))
            taken, count, room = [], 0, 0
        taken.append(read)
        count += n
        room += need
    if taken:
        first = kp.reserve(count)
        if first is None:
            return _staged(peer, kp, endpoint, reads, len(reads) - len(taken), jobs, now,
                           drops)
        jobs.append(Job(taken, first, count))
    return Reserved(endpoint, kp, jobs, peer.after_send(now, kp, nbytes), drops)


def _staged(peer: Peer, kp: Keypair, endpoint: Address, reads: Sequence[Read], at: int,
            jobs: list[Job], now: float, drops: dict[str, int]) -> Reserved:
    """reserve_jobs out of nonces at read `at`: the jobs before it, the rest staged."""
    return Reserved(endpoint, kp, jobs, _stage(peer, _complete(reads[at:], drops), now, drops),
                    drops)


class _Allotment:
    """A job's reserved counters, handed out in order as its reads are sealed (a read
    dropped on the way leaves its counters unused: a gap the receiver's window allows)."""

    __slots__ = ("end", "next")

    def __init__(self, first: int, count: int) -> None:
        self.next = first
        self.end = first + count

    def take(self, count: int) -> int | None:
        first = self.next
        if first + count > self.end:
            return None
        self.next = first + count
        return first


# A caller's split of a job's super-packets in one call (the TUN's: vpn.io.tun.split_reads):
# laid out back to back from the offset, each (count, full, last) as Read.split_into returns
# it; OffloadError or ValueError, before anything is written, for what it cannot split.
SplitRuns = Callable[[Sequence[Read], memoryview, int, int, int], list[tuple[int, int, int]]]


def seal_job(kp: Keypair, job: Job, buffer: Callable[[int], memoryview], mtu: int,
             drops: dict[str, int], split_runs: SplitRuns | None = None
             ) -> list[tuple[memoryview, list[int]]]:
    """seal's second half, on any thread: the job's reads split and sealed in place (the
    one walk of seal) with the counters reserve_jobs took, into buffer(0), then buffer(1)
    ... if one does not hold them all; the messages each buffer holds, back to back from 0.
    TransportError when the keypair was zeroed since; drops counted in `drops`.

    With `split_runs`, a job of super-packets only that fits buffer(0) (as reserve_jobs
    makes them) is split and sealed in two native calls that release the GIL once each,
    instead of two per read: what two workers cost each other is mostly each read's Python
    and GIL hand-offs. The walk, its reference, takes every other job, and one split_runs
    refuses (it then drops or carries over read by read)."""
    if split_runs is not None:
        whole = _seal_runs(kp, job, buffer(0), mtu, split_runs)
        if whole is not None:
            return [whole]
    allotment = _Allotment(job.first, job.messages)
    sealed: list[tuple[memoryview, list[int]]] = []
    reads: Sequence[Read] = job.reads
    while reads:
        out = buffer(len(sealed))
        lengths: list[int] = []
        reads, stopped, _ = _walk(kp, allotment.take, reads, out, mtu, drops, lengths)
        if stopped is not None:  # a split made more messages than its header said
            raise RuntimeError("a job's reads made more messages than were reserved")
        sealed.append((out, lengths))
    return sealed


def _seal_runs(kp: Keypair, job: Job, out: memoryview, mtu: int, split_runs: SplitRuns
               ) -> tuple[memoryview, list[int]] | None:
    """seal_job's job of super-packets in one split and one seal; None when the walk must
    take it (a plain packet among the reads, or the split refused: nothing was written)."""
    reads = job.reads
    if not reads or not all(read.segmented for read in reads):
        return None
    try:
        runs = split_runs(reads, out, 0, SEAL_GAP, SEAL_TAIL)
    except (OffloadError, ValueError):
        return None
    if sum(run[0] for run in runs) > job.messages:
        raise RuntimeError("a job's reads made more messages than were reserved")
    return out, kp.seal_runs_at(job.first, out, 0, runs, SEAL_GAP, SEAL_TAIL, mtu)


def _walk(kp: Keypair, reserve: Callable[[int], int | None], reads: Sequence[Read],
          out: bytearray | memoryview, mtu: int, drops: dict[str, int], lengths: list[int]
          ) -> tuple[list[Read], int | None, int]:
    """The one walk of seal and seal_job: `reads` in order into `out` from 0, each super-
    packet split in place and sealed where it lies, the plain packets between two sealed
    together, the messages back to back, their lengths added to `lengths`; the counters
    from `reserve` (kp.reserve, or a job's reserved ones). Returns the reads that did not
    fit, the index of the first read left unsealed when the counters ran out (None when
    they did not), and the end of what was sealed."""
    offset = i = 0
    end = len(reads)
    while i < end:
        read = reads[i]
        if read.segmented:
            try:
                count, full, last = read.split_into(out, offset, SEAL_GAP, SEAL_TAIL)
            except OffloadError as err:
                drops[err.reason] = drops.get(err.reason, 0) + 1
                i += 1
                continue
            except ValueError:
                if offset:  # the buffer is full: the rest goes in the next call
                    return list(reads[i:]), None, offset
                # More segments than the buffer holds at all (a tiny gso_size).
                packets = _complete([read], drops)
                j = i + 1
            else:
                first = reserve(count)
                if first is None:
                    return [], i, offset
                size, last_size = kp.seal_segments_at(first, out, offset, count, full, last,
                                                      SEAL_GAP, SEAL_TAIL, mtu)
                lengths += [size] * (count - 1)
                lengths.append(last_size)
                offset += size * (count - 1) + last_size
                i += 1
                continue
        else:
            j = i + 1  # the plain packets up to the next super-packet, sealed together
            while j < end and not reads[j].segmented:
                j += 1
            packets = _complete(reads[i:j], drops)
        room = len(out) - offset
        fit = 0
        for packet in packets:  # a message is at most its packet, gap and tail
            room -= len(packet) + _GAP_AND_TAIL
            if room < 0:
                break
            fit += 1
        if not fit and not offset and packets:
            raise ValueError("the send buffer cannot hold one message")  # no call would progress
        if fit:
            first = reserve(fit)
            if first is None:
                return [], i, offset
            sealed = kp.encrypt_batch_at(first, packets[:fit] if fit < len(packets) else packets,
                                         out, offset, mtu)
            lengths += sealed
            offset += sum(sealed)
        i = j
        if fit < len(packets):
            return [_Packets(packets[fit:]), *reads[i:]], None, offset
    return [], None, offset


def _complete(reads: Sequence[Read], drops: dict[str, int]) -> list[Buffer]:
    """The complete packets that `reads` stand for (for staging, counting or sealing)."""
    packets: list[Buffer] = []
    for read in reads:
        try:
            packets += read.packets()
        except OffloadError as err:
            drops[err.reason] = drops.get(err.reason, 0) + 1
    return packets


def _stage(peer: Peer, packets: list[Buffer], now: float, drops: dict[str, int]
           ) -> list[bytes]:
    """No usable session: the newest packets held (bounded), a handshake started."""
    dropped, handshake = peer.stage(packets, now)
    if dropped:
        _drop(peer, drops, Drop.STAGED_QUEUE_FULL, dropped)
    return handshake


def _drop(peer: Peer, drops: dict[str, int], reason: str, n: int) -> None:
    """A drop of the peer's: counted for it here, for the interface by the caller."""
    if n:
        drops[reason] = drops.get(reason, 0) + n
        peer.count_drop(reason, n)
