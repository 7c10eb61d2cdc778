"""The data path: TUN -> split -> encrypt -> UDP GSO, and UDP GRO -> decrypt -> coalesce -> TUN.

Both directions run as event-loop reader callbacks that drain a bounded batch per wakeup;
per-segment work is one AEAD call and a few slices, everything else happens once per batch.
"""

from __future__ import annotations

import functools
import logging
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, fields

from vpn.core.drops import Drop
from vpn.core.keys import encode_key
from vpn.core.types import Address, Buffer, endpoint_text
from vpn.core.wireguard import Device, Peer, ReceiveCounts
from vpn.core.wireguard.receive import records_needed
from vpn.core.wireguard.send import Read
from vpn.io.buffers import reserve
from vpn.io.receiveworkers import ReceiveWorkerCounts, ReceiveWorkers
from vpn.io.sendworkers import SendWorkers, WorkerCounts
from vpn.io.tun import MAX_PACKET, TunDevice, TunGone, TunRead, TunStats
from vpn.io.udp import UdpSocket, UdpStats
from vpn.io.workers import WorkerPool

log = logging.getLogger("vpn.io.datapath")

# Encrypted datagrams are built in one buffer; past this much, a batch is sent in parts.
SEND_BUFFER_BYTES = 1 << 20
# An internal error is counted every time, its traceback logged at most this often.
INTERNAL_ERROR_LOG_SECONDS = 60.0


def _pump_boundary(batch: Callable[[DataPath], None]) -> Callable[[DataPath], None]:
    """No exception leaves an event-loop callback: a batch that fails in a way no drop
    reason foresaw is dropped whole (`internal_error`), and the endpoint goes on."""

    @functools.wraps(batch)
    def guarded(self: DataPath) -> None:
        try:
            batch(self)
        except Exception:
            self._internal_error()

    return guarded


@dataclass
class DataPathStats:
    """The interface's counters of the offload picture and of every drop, by reason, as one
    summary. Each part is counted where it happens and read through here: the pump's own
    (the fields below), the TUN's (`tun`: the super-packets it split, its writes), the
    socket's (`udp`, which the summary nests) and the core's receive walk (`received`), with
    the worker threads' own (`workers`, `receivers`) added in when read.
    `drops` is the pump's own; `all_drops()` and `summary()` hold every one."""

    udp: UdpStats
    tun: TunStats = field(default_factory=TunStats)
    received: ReceiveCounts = field(default_factory=ReceiveCounts)
    tun_reads: int = 0
    datagrams_sent: int = 0
    full_receive_batches: int = 0  # wakeups that found a whole batch of receives waiting
    icmp_unreachable_sent: int = 0
    drops: Counter[str] = field(default_factory=Counter)
    # The send workers' own counters (one per thread, summed here), and their pool's.
    workers: list[WorkerCounts] = field(default_factory=list)
    send_backpressure: int = 0  # TUN wakeups that read nothing: no read slots free
    # The receive workers' (one per thread: their walk's and their TUN writes' counts).
    receivers: list[ReceiveWorkerCounts] = field(default_factory=list)
    receive_backpressure: int = 0  # socket wakeups that stopped: no receive buffer free

    def _tun_counts(self) -> dict[str, int]:
        return _summed(self.tun.counts(), (w.tun.counts() for w in list(self.receivers)))

    def _received_counts(self) -> dict[str, int]:
        return _summed(self.received.counts(),
                       (w.received.counts() for w in list(self.receivers)))

    @property
    def super_packets(self) -> int:
        return self.tun.super_packets

    @property
    def segments_split(self) -> int:
        return self.tun.segments_split

    @property
    def tun_writes(self) -> int:
        return self._tun_counts()["tun_writes"]

    @property
    def jumbo_frames(self) -> int:
        return self._tun_counts()["jumbo_frames"]

    @property
    def jumbo_segments(self) -> int:
        return self._tun_counts()["jumbo_segments"]

    @property
    def datagrams_received(self) -> int:
        return self.received.datagrams_received

    @property
    def handshakes_received(self) -> int:
        return self.received.handshakes_received

    @property
    def packets_written(self) -> int:
        return self._received_counts()["packets_written"]

    @property
    def lost_session_handshakes(self) -> int:
        return self.received.lost_session_handshakes

    def all_drops(self) -> Counter[str]:
        """Every drop of the interface, by reason: the pump's, the TUN's and the core's."""
        drops = Counter(self.drops)
        for worker in list(self.workers):
            drops.update(worker.drops)
        for receiver in list(self.receivers):
            drops.update(receiver.received.drops)
            drops.update(receiver.tun.drops)
        drops.update(self.tun.drops)
        drops.update(self.received.drops)
        return drops

    def summary(self) -> dict:
        out: dict = {f.name: getattr(self, f.name) for f in fields(self)
                     if f.name not in _PARTS}
        out["datagrams_sent"] += sum(w.datagrams_sent for w in list(self.workers))
        out.update(self._tun_counts())
        out.update(self._received_counts())
        out["drops"] = dict(self.all_drops())
        out["udp"] = self.udp.summary()
        return out


def _summed(counts: dict[str, int], more: Iterable[dict[str, int]]) -> dict[str, int]:
    """`counts` with each of `more` (the worker threads' own) added, name by name."""
    for other in more:
        for name, n in other.items():
            counts[name] += n
    return counts


# DataPathStats' fields that are not counts.
_PARTS = ("udp", "tun", "received", "drops", "workers", "receivers")


class DataPath:
    """Moves packets between one TUN device and one UDP socket for a WireGuard Device."""

    def __init__(
        self,
        device: Device,
        tun: TunDevice,
        udp: UdpSocket,
        *,
        mtu: int,
        clock: Callable[[], float],
        threads: int = 0,
        call_soon_threadsafe: Callable[[Callable[[], None]], object] | None = None,
        on_worker_start: Callable[[], object] | None = None,
    ) -> None:
        """threads > 0: seal and send (SendWorkers), open and deliver (ReceiveWorkers) on a
        pool of that many worker threads, each calling `on_worker_start` first; 0, on the
        loop thread, inline."""
        self.device = device
        self.tun = tun
        self.udp = udp
        self.mtu = mtu
        self.clock = clock
        self.stats = DataPathStats(udp.stats, tun.stats, device.receive_counts)
        self._send_buffer = reserve(SEND_BUFFER_BYTES)
        # Decrypted packets of one receive batch, side by side until written to the TUN.
        self._recv_buffer = reserve(udp.batch * (MAX_PACKET + 1))
        self._recv_view = self._recv_buffer
        # What the receive walk found in one wakeup: (offset, length, slot) per packet to
        # deliver; sized for the most a wakeup can find, its pages touched only as used.
        self._records = reserve(records_needed(len(self._recv_buffer)))
        self._internal_error_logged = float("-inf")
        # The shell's hook: the interface was deleted (its TUN reports only errors now).
        self.on_tun_gone: Callable[[], None] | None = None
        self.pool: WorkerPool | None = None
        self.send_workers: SendWorkers | None = None
        self.receive_workers: ReceiveWorkers | None = None
        if threads > 0:
            self.pool = WorkerPool(threads, name="vpn-worker", on_start=on_worker_start)
            self.send_workers = SendWorkers(self.pool, lambda: self.udp, self._worker_error,
                                            tun.read_slots, call_soon_threadsafe)
            self.stats.workers = self.send_workers.counts
            self.receive_workers = ReceiveWorkers(
                self.pool, device, tun, clock, send=self._send_datagram,
                roamed=self._log_roamed, on_error=self._worker_error,
                call_soon_threadsafe=call_soon_threadsafe)
            self.stats.receivers = self.receive_workers.counts

    def close(self) -> None:
        """Finish what the workers were given (sealed and sent, opened and delivered, the
        peers' bookkeeping done), then end their threads."""
        if self.pool is not None:
            self.pool.close()
        if self.receive_workers is not None:
            self.receive_workers.finish()
            self.stats.receive_backpressure = self.receive_workers.buffers.backpressure

    # -- TUN -> peers -----------------------------------------------------------------------

    @_pump_boundary
    def on_tun_readable(self) -> None:
        """Read, hand the reads to the core (routing, then sealing per peer), send what it
        sealed and write its ICMP replies; with workers, read into a batch of their slots
        and queue the sealing and sending there."""
        workers = self.send_workers
        if workers is None:
            reads = self._read_tun(None)
            if reads:
                now = self.clock()
                for peer, peer_reads in self._route(reads, now).items():
                    self.send_to_peer(peer, peer_reads, now)
            return
        lease = workers.take()
        if lease is None:
            self.stats.send_backpressure = workers.slots.backpressure
            return
        try:
            reads = self._read_tun(lease.slots)
            if reads:
                now = self.clock()
                for peer, peer_reads in self._route(reads, now).items():
                    kp = peer.keypair_for_sending(now)
                    endpoint = peer.endpoint
                    if kp is None or endpoint is None:  # staged or dropped: nothing to seal
                        self.send_to_peer(peer, peer_reads, now)
                    else:
                        workers.send(peer, kp, endpoint, peer_reads, self.mtu, now,
                                     self.stats.drops, lease)
        finally:
            workers.release(lease)  # the loop's hold: the jobs hold the slots till sent

    def _read_tun(self, slots: list[memoryview] | None) -> list[TunRead]:
        """One wakeup's reads (into `slots` when given); none once the TUN is gone."""
        try:
            reads = self.tun.read_packets(slots)
        except TunGone:
            if self.on_tun_gone is not None:
                self.on_tun_gone()
            return []
        self.stats.tun_reads += len(reads)
        return reads

    def _route(self, reads: list[TunRead], now: float) -> dict[Peer, list[Read]]:
        """The reads by peer; the rest counted, or answered with ICMP unreachable."""
        stats = self.stats
        routed = self.device.route(reads, now)
        if routed.drops:
            stats.drops.update(routed.drops)
        for reply in routed.replies:
            self._write_packet(reply)
            stats.icmp_unreachable_sent += 1
        return routed.by_peer

    def send_to_peer(self, peer: Peer, reads: Sequence[Read], now: float) -> None:
        """Have the core seal what was read for `peer` into the send buffer, and send it;
        a send buffer's worth at a time."""
        view = self._send_buffer
        stats = self.stats
        while True:
            sealed = self.device.seal(peer, reads, view, self.mtu, now)
            if sealed.drops:
                stats.drops.update(sealed.drops)
            lengths = sealed.lengths
            if lengths and sealed.endpoint is not None:
                self.udp.send_messages(sealed.endpoint, view, lengths)
                stats.datagrams_sent += len(lengths)
            if sealed.control:  # mostly none: a call less a wakeup
                self.send_control(peer, sealed.control)
            if not sealed.rest:
                return
            reads = sealed.rest

    def send_control(self, peer: Peer, datagrams: list[bytes]) -> None:
        """Handshake messages, keepalives and flushed staged packets, one send each."""
        if not datagrams:
            return
        if peer.endpoint is None:
            self._drop(Drop.PEER_WITHOUT_ENDPOINT, len(datagrams), peer)
            return
        for datagram in datagrams:
            self.udp.send(peer.endpoint, datagram)
        self.stats.datagrams_sent += len(datagrams)

    # -- peers -> TUN -----------------------------------------------------------------------

    @_pump_boundary
    def on_udp_readable(self) -> None:
        """Receive one batch, hand it to the core's receive walk (Device.receive), the
        records it returns to the TUN, and send what it returns. With workers, the walk is
        split between this thread and them (ReceiveWorkers)."""
        if self.receive_workers is not None:
            self._receive_on_workers()
            return
        udp = self.udp
        receives = udp.stats.receives
        screened: tuple[int, ...] | None = None
        lost: list[Address] = []
        # Garbage is dropped (and counted by the core) before any Python runs, by the
        # core's screen when it has one.
        screen = self.device.screen() if udp.screens else None
        if screen is not None:
            received, screened, lost = udp.receive_screened(screen)
        else:
            received = udp.receive_batch()
        if udp.stats.receives - receives == udp.batch:  # garbage too: the socket was full
            self.stats.full_receive_batches += 1
        if not received and not lost and not screened:
            return
        got = self.device.receive(received, self.clock(), out=self._recv_view,
                                  records=self._records, screened=screened, lost=lost)
        tun = self.tun
        tun.deliver(self._recv_view, got.records, got.nrec)
        tun.flush()
        if got.send:
            for dest, datagram in got.send:
                udp.send(dest, datagram)
            self.stats.datagrams_sent += len(got.send)
        for peer, source in got.roamed:
            self._log_roamed(peer, source)

    def _receive_on_workers(self) -> None:
        """The loop thread's part of the receive walk; the rest on the workers."""
        assert self.receive_workers is not None
        if self.receive_workers.receive(self.udp):
            self.stats.full_receive_batches += 1
        self.stats.receive_backpressure = self.receive_workers.buffers.backpressure

    def _send_datagram(self, dest: Address, datagram: bytes) -> None:
        """One datagram the receive walk answers with, from the loop thread."""
        self.udp.send(dest, datagram)
        self.stats.datagrams_sent += 1

    @staticmethod
    def _log_roamed(peer: Peer, source: Address) -> None:
        log.info("peer %s endpoint changed to %s", short_key(peer), endpoint_text(source))

    def _drop(self, reason: str, n: int, peer: Peer | None) -> None:
        """Count a drop for the interface and, when the data path knows whose, the peer."""
        self.stats.drops[reason] += n
        if peer is not None:
            peer.count_drop(reason, n)

    def _internal_error(self) -> None:
        """Called from the except clause at the pump's boundary. The TUN's coalescer may hold
        views into the receive buffer, which the next batch overwrites: it must forget them,
        or they would be written then with the next batch's plaintext. Everything else of a
        batch lives in its locals. The traceback is logged at most once a minute, so that a
        bug a packet can trigger cannot flood the journal."""
        self.tun.clear()
        self.stats.drops[Drop.INTERNAL_ERROR] += 1
        now = self.clock()
        if now - self._internal_error_logged >= INTERNAL_ERROR_LOG_SECONDS:
            self._internal_error_logged = now
            log.exception("internal error in the data path: batch dropped (counted as "
                          "drops.internal_error; logged at most once a minute)")

    def _worker_error(self, error: BaseException) -> None:
        """A worker's failure (counted by the worker as internal_error): logged at most
        once a minute. Only the log here: the TUN's coalescer is the loop thread's."""
        now = self.clock()
        if now - self._internal_error_logged >= INTERNAL_ERROR_LOG_SECONDS:
            self._internal_error_logged = now
            log.error("internal error in a worker: job dropped (counted as "
                      "drops.internal_error; logged at most once a minute)", exc_info=error)

    def _write_packet(self, packet: Buffer) -> None:
        """One packet as it is, without offload (the TUN counts it)."""
        self.tun.write_packet(packet)

    # -- timers -----------------------------------------------------------------------------

    @_pump_boundary
    def on_tick(self) -> None:
        """Run the protocol timers: retransmits, keepalives, rekeys, key expiry."""
        for peer, datagram in self.device.poll(self.clock()):
            self.send_control(peer, [datagram])


def short_key(peer: Peer) -> str:
    """A peer's public key as `wg` prints it, shortened for logs."""
    return encode_key(peer.public_key)[:8] + "..."
