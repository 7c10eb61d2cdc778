"""The send walk's crypto and sends on worker threads (issue 20), for DataPath.

The loop thread reads the TUN, routes, and per peer lays the reads out in a job buffer and
reserves their nonces (send.lay_out): nothing of the TUN's buffers outlives the wakeup. A
worker seals the job (native, GIL released) and, in the peer's lane (WorkerPool's ordered
stage), sends it: each peer's datagrams leave in the order they were read.

The job buffers are a bounded pool. A wakeup that finds fewer than RESUME_FREE of them free
reads nothing and stops watching the TUN (`pause`, counted as send_backpressure) until a
worker has given enough back (`resume`, from the loop thread). A wakeup that runs out part
way lays the rest out in a buffer of its own, outside the pool (counted as
send_overflow_buffers): what was read is never dropped and the loop never waits.

Workers write only their own counters (WorkerCounts, one per thread), summed when read.
"""

from __future__ import annotations

import collections
import functools
import threading
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from vpn.core.drops import Drop
from vpn.core.types import Address
from vpn.core.wireguard import Peer
from vpn.core.wireguard.keypair import Keypair, TransportError
from vpn.core.wireguard.send import LaidOut, Read, lay_out, seal_chunk
from vpn.io.buffers import reserve
from vpn.io.udp import UdpSocket
from vpn.io.workers import WorkerPool

# One job's buffer: about seven 64 KB super-packets laid out with their sealing room.
JOB_BUFFER_BYTES = 1 << 19
# Pool size: a full wakeup (64 reads of 64 KB, about 9 buffers) plus room in flight.
POOL_BUFFERS = 16
RESUME_FREE = 10  # free buffers a wakeup needs before it reads


# `vpn up --threads N` and, for vpn-userspace under wg-quick, this environment variable.
THREADS_ENV = "VPN_THREADS"
DEFAULT_THREADS = 0  # inline: see docs/architecture.md for the measurements behind it
MAX_THREADS = 64


def parse_threads(text: str) -> int:
    """A thread count as given on the command line or in VPN_THREADS; ValueError with the
    reason for anything but 0..MAX_THREADS."""
    try:
        threads = int(text.strip())
    except ValueError:
        raise ValueError(f"thread count {text!r} is not a number") from None
    if not 0 <= threads <= MAX_THREADS:
        raise ValueError(f"thread count {threads} is outside 0..{MAX_THREADS}")
    return threads


@dataclass
class WorkerCounts:
    """One worker thread's counters; only that thread writes them."""

    datagrams_sent: int = 0
    drops: Counter[str] = field(default_factory=Counter)


class SendWorkers:
    """Seal and send on the data path's worker pool what the loop thread laid out."""

    def __init__(self, pool: WorkerPool, udp: Callable[[], UdpSocket],
                 on_error: Callable[[BaseException], None],
                 call_soon_threadsafe: Callable[[Callable[[], None]], object] | None = None
                 ) -> None:
        self._udp = udp  # the data path's socket now (it may be swapped)
        self._on_error = on_error
        self._pool = pool  # shared with the receive walk; the data path closes it
        self._free: collections.deque[memoryview] = collections.deque(
            reserve(JOB_BUFFER_BYTES) for _ in range(POOL_BUFFERS))
        self._local = threading.local()
        self.counts: list[WorkerCounts] = []  # one per worker thread, as each first counts
        self.backpressure = 0  # wakeups that read nothing: too few buffers free
        self.overflow_buffers = 0  # buffers made outside the pool part way through a wakeup
        self._paused = False
        self._lock = threading.Lock()  # _paused, between the loop and the workers
        self._send_lock = threading.Lock()  # the socket's counters and GSO state
        self._call_soon_threadsafe = call_soon_threadsafe
        # The shell's hooks: stop and start watching the TUN (on the loop thread).
        self.pause: Callable[[], None] | None = None
        self.resume: Callable[[], None] | None = None

    @property
    def send_lock(self) -> threading.Lock:
        """Held by each job's sends: hold it to swap or close the socket under them."""
        return self._send_lock

    @property
    def threads(self) -> int:
        return self._pool.stats.threads

    def ready(self) -> bool:
        """May this wakeup read the TUN? When not, the TUN is paused until buffers return."""
        with self._lock:
            if len(self._free) >= RESUME_FREE:
                return True
            self._paused = True
        self.backpressure += 1
        if self.pause is not None:
            self.pause()
        return False

    def send(self, peer: Peer, kp: Keypair, endpoint: Address, reads: Sequence[Read],
             mtu: int, now: float, drops: Counter[str]) -> None:
        """Lay `reads` out (loop thread) and queue their sealing and sending, a job a
        buffer's worth."""
        while True:
            buffer = self._take()
            try:
                laid = lay_out(peer, kp, endpoint, reads, buffer, mtu, now)
            except Exception:
                self._give_back(buffer)
                raise
            if laid.drops:
                drops.update(laid.drops)
            self._pool.submit(peer, functools.partial(self._seal, laid, buffer, mtu),
                              functools.partial(self._send, laid, buffer))
            if not laid.rest:
                return
            reads = laid.rest

    def _take(self) -> memoryview:
        try:
            return self._free.pop()
        except IndexError:
            self.overflow_buffers += 1
            return reserve(JOB_BUFFER_BYTES)

    # -- on the workers -----------------------------------------------------------------

    @staticmethod
    def _seal(laid: LaidOut, buffer: memoryview, mtu: int) -> BaseException | None:
        """The crypto, in parallel with other jobs; a failure is handed to the send stage
        (so that the buffer always comes back)."""
        try:
            for chunk in laid.chunks:
                seal_chunk(laid.keypair, chunk, buffer, mtu)
        except Exception as error:
            return error
        return None

    def _send(self, laid: LaidOut, buffer: memoryview, error: BaseException | None) -> None:
        """The peer's ordered stage: its messages, then its control datagrams."""
        counts = self._counts()
        try:
            with self._send_lock:
                udp = self._udp()
                if error is None:
                    for chunk in laid.chunks:
                        udp.send_messages(laid.endpoint, buffer[chunk.offset:], chunk.lengths)
                        counts.datagrams_sent += len(chunk.lengths)
                elif isinstance(error, TransportError):  # zeroed since: a session ended
                    counts.drops[error.reason] += sum(len(c.lengths) for c in laid.chunks)
                else:
                    raise error
                for datagram in laid.control:
                    udp.send(laid.endpoint, datagram)
                counts.datagrams_sent += len(laid.control)
        except Exception as failure:  # dropped whole and counted, as the pump's boundary
            counts.drops[Drop.INTERNAL_ERROR] += 1
            self._on_error(failure)
        finally:
            self._give_back(buffer)

    def _give_back(self, buffer: memoryview) -> None:
        if len(self._free) >= POOL_BUFFERS:
            return  # one too many, after an overflow: freed with its last view
        self._free.append(buffer)
        with self._lock:
            wake = self._paused and len(self._free) >= RESUME_FREE
            if wake:
                self._paused = False
        if wake and self.resume is not None and self._call_soon_threadsafe is not None:
            self._call_soon_threadsafe(self.resume)

    def _counts(self) -> WorkerCounts:
        counts: WorkerCounts | None = getattr(self._local, "counts", None)
        if counts is None:
            counts = self._local.counts = WorkerCounts()
            self.counts.append(counts)
        return counts
