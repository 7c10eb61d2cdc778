"""The send walk's crypto and sends on worker threads (issue 20), for DataPath.

The loop thread reads the TUN into a batch of read slots it takes from a pool here (a
Lease), routes, and per peer reserves the reads' counters (send.reserve_jobs: a
super-packet's count from its virtio-net header, nothing split or copied) and queues them
as jobs of about JOB_BYTES laid out. A worker splits and seals a job into seal buffers the
job holds until it is sent (send.seal_job: a job of super-packets in one native split and
one native seal, each releasing the GIL once; else the inline path's walk) and, in the
peer's lane (WorkerPool's ordered stage, run by whichever worker's turn it is), sends it:
each peer's datagrams leave in the order they were read. The slots go back to the pool when
the wakeup's last job was sent, the seal buffers with their job.

The pool is bounded. A wakeup that finds no batch of slots free reads nothing and stops
watching the TUN (`pause`, counted as send_backpressure) until a worker gives one back
(`resume`, from the loop thread): what was read is never dropped and the loop never waits.

Workers write only their own counters (WorkerCounts, one per thread), summed when read.
"""

from __future__ import annotations

import collections
import functools
import threading
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from vpn.core.drops import Drop
from vpn.core.types import Address
from vpn.core.wireguard import Peer
from vpn.core.wireguard.keypair import Keypair, TransportError
from vpn.core.wireguard.send import Job, Read, reserve_jobs, seal_job
from vpn.io.buffers import reserve
from vpn.io.pausingpool import PausingPool
from vpn.io.tun import split_reads
from vpn.io.udp import UdpSocket
from vpn.io.workers import MAX_DEPTH_THREADS, WorkerPool

# A job: what a worker seals into one buffer of this size, about seven 64 KB super-packets:
# a wakeup of 64 reads makes nine or ten, one for each of that many workers, and the loop's
# per-job cost (the submit) and the lane's hand-overs stay small per byte (256 KiB jobs
# cost about 1.5 us more CPU per 64 KiB with 2 workers, in 3 interleaved runs).
JOB_BYTES = 1 << 19
# Batches of read slots per worker thread (up to MAX_DEPTH_THREADS of them): one being
# read, the others' jobs in flight. Each worker needs its own depth of queued jobs: when a
# batch comes back the loop thread must get a core (busy with the workers) and read before
# the queue runs dry; and a batch comes back only once its last job was sent, so a job whose
# worker lost its core holds its batch and, in its lane, every later job's. With 4 batches
# for 2 workers they waited for a job 12-17% of the time (bench.pipeline, 2 workers,
# per-thread schedstat), with 8 2.5-4.5%, and still 4-11% on a loaded machine (timed around
# the queue's get when it was empty: 60-165 waits of 1.5-9 ms in 3 s); with 12 0.1-0.3%
# (5-7 waits; 1 worker: 0.4-3% with 4, 0-1.5% with 6). Each batch is 4 MiB of address
# space, resident only as its slots are read into: 48 MiB for 2 workers under a bulk stream.
READ_BATCHES_PER_THREAD = 6


def read_batches(threads: int) -> int:
    """How many batches of read slots a pool of `threads` workers gets."""
    return READ_BATCHES_PER_THREAD * min(threads, MAX_DEPTH_THREADS)


# `vpn up --threads N` and, for vpn-userspace under wg-quick, this environment variable.
THREADS_ENV = "VPN_THREADS"
DEFAULT_THREADS = 0  # inline: see docs/architecture.md for the measurements behind it
MAX_THREADS = 64


@dataclass
class WorkerCounts:
    """One worker thread's counters; only that thread writes them."""

    datagrams_sent: int = 0
    drops: Counter[str] = field(default_factory=Counter)


class Lease:
    """One wakeup's batch of read slots, held by the loop thread while it reads and routes,
    and by each job made of its reads until that job was sent."""

    __slots__ = ("holders", "slots")

    def __init__(self, slots: list[memoryview]) -> None:
        self.slots = slots
        self.holders = 0


class _Sealed(NamedTuple):
    """A job's seal: its messages by buffer (or the failure), and the seal buffers it holds
    until it is sent, then goes back to `home` (the free ones of the worker that sealed)."""

    messages: list[tuple[memoryview, list[int]]] | BaseException
    buffers: list[memoryview]
    home: collections.deque[memoryview]


class SendWorkers:
    """Seal and send on the data path's worker pool what the loop thread reserved."""

    def __init__(self, pool: WorkerPool, udp: Callable[[], UdpSocket],
                 on_error: Callable[[BaseException], None],
                 read_slots: Callable[[], list[memoryview]],
                 call_soon_threadsafe: Callable[[Callable[[], None]], object] | None = None
                 ) -> None:
        self._udp = udp  # the data path's socket now (it may be swapped)
        self._on_error = on_error
        self._pool = pool  # shared with the receive walk; the data path closes it
        # The batches of read slots, with the TUN's backpressure (the shell wires it).
        self.slots: PausingPool[list[memoryview]] = PausingPool(
            (read_slots() for _ in range(read_batches(pool.stats.threads))),
            call_soon_threadsafe)
        self._local = threading.local()  # per worker: its counts, its free seal buffers
        self.counts: list[WorkerCounts] = []  # one per worker thread, as each first counts
        self._lock = threading.Lock()  # the leases' holders
        self._send_lock = threading.Lock()  # the socket's counters and GSO state

    @property
    def send_lock(self) -> threading.Lock:
        """Held by each job's sends: hold it to swap or close the socket under them."""
        return self._send_lock

    @property
    def threads(self) -> int:
        return self._pool.stats.threads

    def take(self) -> Lease | None:
        """A batch of read slots for this wakeup (give it back with `release`); None when
        there is none free: then the TUN is paused until one returns."""
        slots = self.slots.take()
        if slots is None:
            return None
        lease = Lease(slots)
        lease.holders = 1
        return lease

    def send(self, peer: Peer, kp: Keypair, endpoint: Address, reads: Sequence[Read],
             mtu: int, now: float, drops: Counter[str], lease: Lease) -> None:
        """Reserve the counters of `reads` (read into `lease`'s slots) on the loop thread,
        and queue their sealing and sending in jobs of about JOB_BYTES."""
        reserved = reserve_jobs(peer, kp, endpoint, reads, mtu, now, JOB_BYTES)
        if reserved.drops:
            drops.update(reserved.drops)
        jobs = reserved.jobs
        if not jobs:
            if not reserved.control:
                return
            jobs = [Job([], 0, 0)]  # the control datagrams alone, in the peer's order
        last = jobs[-1]
        for job in jobs:
            with self._lock:
                lease.holders += 1
            try:
                self._pool.submit(peer, functools.partial(self._seal, kp, job, mtu),
                                  functools.partial(self._send, endpoint, job,
                                                    reserved.control if job is last else (),
                                                    lease))
            except BaseException:
                self.release(lease)  # not queued (the pool is closed): not held
                raise

    def release(self, lease: Lease) -> None:
        """One holder is done with `lease`: the last one gives its slots back (which wakes
        the TUN if a wakeup found none free)."""
        with self._lock:
            lease.holders -= 1
            if lease.holders:
                return
        self.slots.give_back(lease.slots)

    # -- on the workers -----------------------------------------------------------------

    def _seal(self, kp: Keypair, job: Job, mtu: int) -> _Sealed:
        """The split and the crypto, in parallel with other jobs; a failure is handed to
        the send stage (so that the slots and the seal buffers always come back)."""
        taken: list[memoryview] = []
        free = self._free_seal_buffers()

        def buffer(index: int) -> memoryview:
            while len(taken) <= index:
                taken.append(free.pop() if free else reserve(JOB_BYTES))
            return taken[index]

        try:
            return _Sealed(seal_job(kp, job, buffer, mtu, self._counts().drops, split_reads),
                           taken, free)
        except Exception as error:
            return _Sealed(error, taken, free)

    def _send(self, endpoint: Address, job: Job, control: Sequence[bytes], lease: Lease,
              result: _Sealed) -> None:
        """The peer's ordered stage: its messages, then its control datagrams."""
        counts = self._counts()
        sealed = result.messages
        try:
            with self._send_lock:
                udp = self._udp()
                if isinstance(sealed, TransportError):  # zeroed since: a session ended
                    counts.drops[sealed.reason] += job.messages
                elif isinstance(sealed, BaseException):
                    raise sealed
                else:
                    for out, lengths in sealed:
                        if lengths:
                            udp.send_messages(endpoint, out, lengths)
                            counts.datagrams_sent += len(lengths)
                for datagram in control:
                    udp.send(endpoint, datagram)
                counts.datagrams_sent += len(control)
        except Exception as failure:  # dropped whole and counted, as the pump's boundary
            counts.drops[Drop.INTERNAL_ERROR] += 1
            self._on_error(failure)
        finally:
            result.home.extend(result.buffers)
            self.release(lease)

    def _free_seal_buffers(self) -> collections.deque[memoryview]:
        """This worker's free seal buffers. Each worker seals into its own (a new one when
        every one it has is held by a job not yet sent: at most as many as jobs fit the read
        slots' batches), most recently sent first: their lines are still in its core's cache.
        From one list shared by every worker, a buffer one core had just written was the
        next job's on the other, its lines fetched from the first core's cache (the lane's
        send, on whichever worker drains it, gives it back here: deque's extend and pop are
        atomic between threads)."""
        free: collections.deque[memoryview] | None = getattr(self._local, "free", None)
        if free is None:
            free = self._local.free = collections.deque()
        return free

    def _counts(self) -> WorkerCounts:
        counts: WorkerCounts | None = getattr(self._local, "counts", None)
        if counts is None:
            counts = self._local.counts = WorkerCounts()
            self.counts.append(counts)
        return counts
