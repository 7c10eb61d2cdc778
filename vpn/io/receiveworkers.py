"""The receive walk's crypto and TUN writes on worker threads (issue 20), for DataPath.

The loop thread receives into a pool buffer (receivebuffers.py), walks the receives
(receive_jobs.dispatch: handshake messages, the session lookup, each transport run's
extent) and submits a job per peer to the data path's worker pool. A worker opens the
job's runs (receive_jobs.open_runs: the AEAD, GIL released, beside other jobs) into the
buffer's `out` and coalesces what it expects to deliver (receive_jobs.preview_runs,
TunDevice.gather); in the peer's lane (WorkerPool's ordered stage) it accepts them
(receive_jobs.accept_runs: the replay window, cryptokey routing) and writes those frames to
the TUN, or, when the accept kept other records than expected, coalesces those and writes
them. The job then goes back to the loop thread (`finish`, through call_soon_threadsafe,
batched: every job that came back since the last call) for the peers' bookkeeping
(receive.after_runs) and their drop counts. A buffer goes back to the pool when the last
job using it is done; with none free the socket is not read (ReceiveBuffers).

Workers write only their own counters (ReceiveWorkerCounts, one per thread), summed when
read.
"""

from __future__ import annotations

import collections
import functools
import threading
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field

from vpn.core.drops import Drop
from vpn.core.offload.gro import Coalesced
from vpn.core.types import Address
from vpn.core.wireguard import Device, Peer, ReceiveCounts
from vpn.core.wireguard.keypair import RECORD
from vpn.core.wireguard.receive import after_runs
from vpn.core.wireguard.receive_jobs import (
    Dispatched,
    RunJob,
    accept_runs,
    dispatch,
    open_runs,
    preview_runs,
)
from vpn.io.receivebuffers import ReceiveBuffer, ReceiveBuffers
from vpn.io.tun import TunDevice, TunStats
from vpn.io.udp import UdpSocket
from vpn.io.workers import MAX_DEPTH_THREADS, WorkerPool

# Receives a job buffer holds: half a full wakeup, so that a full wakeup's receives are
# opened by two workers at once, and the loop's cost per job (the submission, the wakeup of a
# worker, the bookkeeping back) is spread over many: with 16 the loop thread's share of a
# 64 KiB receive was about 2 us more (bench.pipeline, 2 workers).
JOB_RECEIVES = 32

# What a job's opening hands its ordered stage: the failure, or the records the opening
# expects and the frames it made of them (None where it made none).
_Opened = tuple[BaseException | None, tuple[bytearray, list[Coalesced]] | None]

# Buffers in the pool (each 2 x 32 x 64 KiB, resident only as used): a full wakeup plus
# room for each worker's jobs in flight (up to MAX_DEPTH_THREADS workers), so that
# the queue does not run dry while the loop thread waits for a core to receive more: with
# 6 buffers for 2 workers they waited for a job 12-17% of the time (bench.pipeline), with
# 10 5-9%.
def receive_buffers(threads: int) -> int:
    """How many receive buffers a pool of `threads` workers gets."""
    return 2 + 4 * min(threads, MAX_DEPTH_THREADS)


@dataclass
class ReceiveWorkerCounts:
    """One worker thread's counters; only that thread writes them."""

    received: ReceiveCounts = field(default_factory=ReceiveCounts)
    tun: TunStats = field(default_factory=TunStats)


class ReceiveWorkers:
    """Open, accept and deliver on the data path's worker pool what the loop received."""

    def __init__(self, pool: WorkerPool, device: Device, tun: TunDevice,
                 clock: Callable[[], float], *, send: Callable[[Address, bytes], None],
                 roamed: Callable[[Peer, Address], None],
                 on_error: Callable[[BaseException], None],
                 call_soon_threadsafe: Callable[[Callable[[], None]], object] | None = None
                 ) -> None:
        """`send` a datagram and log a peer that `roamed`, on the loop thread; `on_error`
        logs a worker's failure (counted as internal_error by the worker)."""
        self._pool = pool  # shared with the send walk; the data path closes it
        self._device = device
        self._tun = tun
        self._clock = clock
        self._on_error = on_error
        self._send = send
        self._roamed = roamed
        self.buffers = ReceiveBuffers(receive_buffers(pool.stats.threads), JOB_RECEIVES,
                                      call_soon_threadsafe)
        self._local = threading.local()
        self.counts: list[ReceiveWorkerCounts] = []  # one per worker thread
        self._lock = threading.Lock()  # _posted and the buffers' job counts
        self._done: collections.deque[RunJob] = collections.deque()
        self._posted = False
        self._call_soon_threadsafe = call_soon_threadsafe

    def receive(self, udp: UdpSocket) -> bool:
        """One wakeup on the loop thread: a buffer's worth of receives at a time, until the
        socket is drained, a wakeup's batch was read or no buffer is free. Returns whether
        the whole batch was there (the socket was full)."""
        self.finish()
        device = self._device
        read = 0
        while read < udp.batch:
            buffer = self.buffers.take()
            if buffer is None:
                return False
            before = udp.stats.receives
            screen = device.screen() if udp.screens else None
            lost: list[Address] = []
            screened = None
            if screen is not None:
                received, screened, lost = udp.receive_screened(screen, buffer)
            else:
                received = udp.receive_batch(buffer)
            got = udp.stats.receives - before
            read += got
            try:
                walked = dispatch(device, received, self._clock(), screened=screened,
                                  lost=lost) if received or lost or screened else None
            except BaseException:  # counted at the pump's boundary; the buffer comes back
                self.buffers.give_back(buffer)
                raise
            self._submit(buffer, walked)
            if got < len(buffer.slots):
                return False
        return True

    def _submit(self, buffer: ReceiveBuffer, walked: Dispatched | None) -> None:
        """What the dispatch answered sent; a job per peer to the pool, each owning a share
        of `buffer` (given back with the last; now, without any job)."""
        jobs = walked.jobs if walked is not None else []
        if not jobs:
            self.buffers.give_back(buffer)
        for dest, datagram in walked.send if walked is not None else ():
            self._send(dest, datagram)
        buffer.jobs = len(jobs)
        for job in jobs:
            self._pool.submit(self.lane(job.peer), functools.partial(self._open, job, buffer),
                              functools.partial(self._accept, job, buffer))

    @staticmethod
    def lane(peer: Peer) -> Hashable:
        """The pool's lane of `peer`'s receive jobs (its sends have their own: the peer)."""
        return ("receive", peer)

    # -- on the workers -----------------------------------------------------------------

    def _open(self, job: RunJob, buffer: ReceiveBuffer) -> _Opened:
        """The crypto, in parallel with other jobs, then the frames its packets make if the
        peer's turn finds no replay and no source it may not use (preview_runs): the
        plaintexts are in this core's cache now, and the turn, which is serial per peer and
        may run on another worker, only writes. A failure is handed to the ordered stage
        (so that the buffer always comes back)."""
        try:
            open_runs(job, buffer.out)
            tun = self._tun
            if not tun.coalescing:
                return None, None
            records, nrec = preview_runs(job)
            if nrec < 2:  # one packet is written as it is (deliver_now)
                return None, None
            # A bytearray: its == against a memoryview is a memcmp (a memoryview's own ==
            # compares item by item, 50-90 us for a job's 9 KB of records, GIL held).
            expected = bytearray(records[:RECORD.size * nrec])
            return None, (expected, tun.gather(buffer.out, records, nrec))
        except Exception as error:
            return error, None

    def _accept(self, job: RunJob, buffer: ReceiveBuffer, opened: _Opened) -> None:
        """The peer's ordered stage: the window, routing, the TUN; then back to the loop."""
        counts = self._counts()
        error, gathered = opened
        try:
            if error is not None:
                raise error
            accept_runs(job, counts.received)
            tun = self._tun
            if (gathered is not None and tun.coalescing
                    and gathered[0] == job.records[:RECORD.size * job.nrec]):
                tun.write_gathered(gathered[1], counts.tun)
            else:  # replays, a source not allowed, coalescing off since: made again
                tun.deliver_now(buffer.out, job.records, job.nrec, counts.tun)
        except Exception as failure:  # dropped whole and counted, as the pump's boundary
            counts.received.drops[Drop.INTERNAL_ERROR] += 1
            self._on_error(failure)
        else:
            self._post(job)
        finally:
            with self._lock:
                buffer.jobs -= 1
                last = buffer.jobs == 0
            if last:
                self.buffers.give_back(buffer)

    def _post(self, job: RunJob) -> None:
        self._done.append(job)
        with self._lock:
            if self._posted:
                return
            self._posted = True
        if self._call_soon_threadsafe is not None:
            self._call_soon_threadsafe(self.finish)

    def _counts(self) -> ReceiveWorkerCounts:
        counts: ReceiveWorkerCounts | None = getattr(self._local, "counts", None)
        if counts is None:
            counts = self._local.counts = ReceiveWorkerCounts()
            self.counts.append(counts)
        return counts

    # -- back on the loop thread ----------------------------------------------------------

    def finish(self) -> None:
        """The jobs that came back: their peers' drops and bookkeeping (after_receive),
        and what that answers sent."""
        with self._lock:
            self._posted = False
        done = self._done
        if not done:
            return
        now = self._clock()
        replies: list[tuple[Address, bytes]] = []
        roamed: list[tuple[Peer, Address]] = []
        peers = self._device.peers
        while done:
            job = done.popleft()
            peer = job.peer
            if peers.get(peer.public_key) is not peer:
                continue  # removed since: nothing of it to keep (its timers least of all)
            for reason, n in job.drops.items():
                peer.count_drop(reason, n)
            after_runs(now, job.sessions, replies, roamed)
        for dest, datagram in replies:
            self._send(dest, datagram)
        for peer, source in roamed:
            self._roamed(peer, source)
