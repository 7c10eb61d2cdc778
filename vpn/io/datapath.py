"""The data path: TUN -> split -> encrypt -> UDP GSO, and UDP GRO -> decrypt -> coalesce -> TUN.

Both directions run as event-loop reader callbacks that drain a bounded batch per wakeup;
per-segment work is one AEAD call and a few slices, everything else happens once per batch.
"""

from __future__ import annotations

import errno
import functools
import logging
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

from vpn.core.keys import encode_key
from vpn.core.offload import Coalesced, split
from vpn.core.offload.gro import receive_coalescer
from vpn.core.packet.virtio import NO_OFFLOAD, VirtioNetHeader
from vpn.core.types import Address, Buffer, endpoint_text
from vpn.core.wireguard import Device, Keypair, Peer
from vpn.core.wireguard.constants import MESSAGE_TRANSPORT, TRANSPORT_MIN_SIZE
from vpn.core.wireguard.keypair import RECORD
from vpn.core.wireguard.screen import SCREEN_REASONS, Screen
from vpn.core.wireguard.send import Read
from vpn.io.buffers import reserve
from vpn.io.tun import MAX_PACKET, TunDevice, TunGone, TunStats
from vpn.io.udp import UdpSocket, UdpStats

log = logging.getLogger("vpn.io.datapath")

# Encrypted datagrams are built in one buffer; past this much, a batch is sent in parts.
SEND_BUFFER_BYTES = 1 << 20
# Records of one receive_run call; a longer run is opened in several calls.
RECORDS_PER_RUN = 256
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


@dataclass(slots=True)
class _Received:
    """What one wakeup received on one keypair, for the peer's bookkeeping after it."""

    peer: Peer
    source: Address  # the latest authenticated message's
    nbytes: int = 0
    packets: int = 0  # data packets delivered (0: only keepalives)


@dataclass
class DataPathStats:
    """Counters of the offload picture and of every drop, by reason; `udp` holds the
    socket's own (GSO sends and segments, GRO receives) and `tun` the device's (the
    super-packets it split), so one summary tells it all."""

    udp: UdpStats
    tun: TunStats = field(default_factory=TunStats)
    tun_reads: int = 0
    datagrams_sent: int = 0
    datagrams_received: int = 0
    full_receive_batches: int = 0  # wakeups that found a whole batch of receives waiting
    packets_written: int = 0
    tun_writes: int = 0
    jumbo_frames: int = 0
    jumbo_segments: int = 0
    handshakes_received: int = 0
    icmp_unreachable_sent: int = 0
    lost_session_handshakes: int = 0
    drops: Counter[str] = field(default_factory=Counter)

    @property
    def super_packets(self) -> int:
        return self.tun.super_packets

    @property
    def segments_split(self) -> int:
        return self.tun.segments_split

    def summary(self) -> dict:
        out = asdict(self)
        del out["tun"]
        out["super_packets"] = self.super_packets
        out["segments_split"] = self.segments_split
        out["drops"] = dict(self.drops)
        out["udp"] = self.udp.summary()
        return out


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
    ) -> None:
        self.device = device
        self.tun = tun
        self.udp = udp
        self.mtu = mtu
        self.clock = clock
        self.stats = DataPathStats(udp.stats, tun.stats)
        self.coalescing = tun.vnet_hdr
        self._send_buffer = reserve(SEND_BUFFER_BYTES)
        # Decrypted packets of one receive batch, side by side until written to the TUN.
        self._recv_buffer = reserve(udp.batch * (MAX_PACKET + 1))
        self._recv_view = self._recv_buffer
        # What Keypair.receive_run found in one call: (offset, length, source slot) per packet.
        self._records = bytearray(RECORD.size * RECORDS_PER_RUN)
        self._run_drops: dict[str, int] = {}  # one receive_run's, to count per peer too
        self._screen: Screen | None = None  # _screen_for's, with what it was made for
        self._screen_known = b""
        self._screen_key = b""
        self._gro = receive_coalescer(self._recv_buffer, udp=tun.offload.uso)
        self._internal_error_logged = float("-inf")
        # The shell's hook: the interface was deleted (its TUN reports only errors now).
        self.on_tun_gone: Callable[[], None] | None = None

    # -- TUN -> peers -----------------------------------------------------------------------

    @_pump_boundary
    def on_tun_readable(self) -> None:
        """Read, hand the reads to the core (routing, then sealing per peer), send what it
        sealed and write its ICMP replies."""
        try:
            reads = self.tun.read_packets()
        except TunGone:
            if self.on_tun_gone is not None:
                self.on_tun_gone()
            return
        if not reads:
            return
        now = self.clock()
        stats = self.stats
        stats.tun_reads += len(reads)
        routed = self.device.route(reads, now)
        if routed.drops:
            stats.drops.update(routed.drops)
        for reply in routed.replies:
            self._write_packet(reply)
            stats.icmp_unreachable_sent += 1
        for peer, peer_reads in routed.by_peer.items():
            self.send_to_peer(peer, peer_reads, now)

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
            self.send_control(peer, sealed.control)
            if not sealed.rest:
                return
            reads = sealed.rest

    def send_control(self, peer: Peer, datagrams: list[bytes]) -> None:
        """Handshake messages, keepalives and flushed staged packets, one send each."""
        if not datagrams:
            return
        if peer.endpoint is None:
            self._drop("peer_without_endpoint", len(datagrams), peer)
            return
        for datagram in datagrams:
            self.udp.send(peer.endpoint, datagram)
        self.stats.datagrams_sent += len(datagrams)

    # -- peers -> TUN -----------------------------------------------------------------------

    @_pump_boundary
    def on_udp_readable(self) -> None:
        udp = self.udp
        receives = udp.stats.receives
        lost: list[Address] = []
        checker = self.device.checker
        # Garbage is dropped (and counted here) before any Python runs. Without a private
        # key there is no mac1 key to screen with: the dispatch drops handshake messages.
        if udp.screens and checker is not None and Screen is not None:
            received, screened, lost = udp.receive_screened(
                self._screen_for(self.device.keypair_indexes(), checker.mac1_key))
            if screened:
                self._count_screened(screened)
        else:
            received = udp.receive_batch()
        stats = self.stats
        if udp.stats.receives - receives == udp.batch:  # garbage too: the socket was full
            stats.full_receive_batches += 1
        if not received and not lost:
            return
        now = self.clock()
        offset = 0
        sessions: dict[Keypair, _Received] = {}
        for data, segment_size, source in received:
            size = len(data)
            if not 0 < segment_size < size:
                segment_size = size  # one datagram
            stats.datagrams_received += -(-size // segment_size) if size else 1
            offset = self._receive(data, segment_size, source, now, sessions, offset)
        if self.coalescing:
            for frame in self._gro.frames():
                self._write(frame)
        for kp, got in sessions.items():
            peer = got.peer
            before = peer.endpoint
            self.send_control(peer, peer.after_receive(now, kp, got.nbytes,
                                                       keepalive=got.packets == 0,
                                                       source=got.source))
            if peer.endpoint != before:
                log.info("peer %s endpoint changed to %s", short_key(peer),
                         endpoint_text(got.source))
        for source in lost:
            self._rehandshake_lost_session(source, now)

    def _screen_for(self, known: bytes, mac1_key: bytes) -> Screen:
        """The receive screen, made anew only when the keypair indexes or the mac1 key change
        (IndexTable hands out the same bytes until then): a Screen copies the indexes, 40 KB
        at 10,000 peers, which every wakeup would otherwise pay."""
        if self._screen is None or known is not self._screen_known \
                or mac1_key != self._screen_key:
            assert Screen is not None
            self._screen = Screen(known, mac1_key)
            self._screen_known, self._screen_key = known, mac1_key
        return self._screen

    def _count_screened(self, counts: tuple[int, ...]) -> None:
        """The screen's drops, under the counters the Python path would have used: a
        datagram that is not a transport message goes to the handshake code, which drops it
        by its reason (counted by the protocol and here, as on_handshake_message does); a
        transport message for no keypair of ours is the data path's alone."""
        stats = self.stats
        protocol = self.device.drops
        stats.datagrams_received += sum(counts)
        for reason, n in zip(SCREEN_REASONS, counts, strict=True):
            if n:
                stats.drops[reason] += n
                if reason != "unknown_receiver_index":
                    protocol[reason] += n
                    stats.handshakes_received += n

    def _receive(self, data: memoryview, segment_size: int, source: Address, now: float,
                 sessions: dict[Keypair, _Received], offset: int) -> int:
        """One receive (a GRO run of datagrams, or a single one): handshake messages are
        handled on the way, transport messages opened a keypair's run at a time into the
        receive buffer from `offset`. Returns the new end of the buffer's use."""
        drops = self.stats.drops
        session_for = self.device.session
        size = len(data)
        pos = 0
        while True:
            end = min(pos + segment_size, size)
            # Length first: a zero-length datagram has no type byte to look at.
            if end - pos < TRANSPORT_MIN_SIZE or data[pos] != MESSAGE_TRANSPORT:
                self.on_handshake_message(data[pos:end], source, now)
                pos = end
            elif (found := session_for(int.from_bytes(data[pos + 4:pos + 8], "little"))
                  ) is None:
                drops["unknown_receiver_index"] += 1
                self._rehandshake_lost_session(source, now)
                pos = end
            elif (got := sessions.get(found[1])) is None and not found[1].receivable(now):
                self._drop("keypair_expired", 1, found[0])
                pos = end
            else:
                peer, kp = found
                run_drops = self._run_drops
                stop, offset, nrec, fresh, nbytes, sources = kp.receive_run(
                    data, segment_size, pos, self._recv_view, offset, self._records, run_drops)
                if run_drops:  # replays, failed authentication: the interface's and the peer's
                    for reason, n in run_drops.items():
                        self._drop(reason, n, peer)
                    run_drops.clear()
                if stop <= pos:
                    raise RuntimeError(f"receive_run made no progress at {pos} of {size}")
                pos = stop
                if fresh:
                    # Only an authenticated, fresh message may move the endpoint or count
                    # as received: a replayed or forged one from elsewhere changes nothing.
                    if got is None:
                        got = sessions[kp] = _Received(peer, source)
                    got.nbytes += nbytes
                    got.source = source
                    if nrec:
                        got.packets += self._deliver(peer, nrec, sources)
            if pos >= size:
                return offset

    def _deliver(self, peer: Peer, nrec: int, sources: list[bytes]) -> int:
        """Cryptokey routing, once per distinct inner source (each must be one of the peer's
        AllowedIPs), then the recorded packets to GRO or straight to the TUN. Returns how
        many were delivered."""
        allowed = self.device.allowed_ips.source_allowed
        denied = None
        for slot, src in enumerate(sources):
            if not allowed(peer, src):
                denied = denied or bytearray(len(sources))
                denied[slot] = 1
        if self.coalescing:
            skipped = self._gro.add_records(self._records, 0, nrec, denied)
        else:
            skipped = 0
            for at, length, slot in RECORD.iter_unpack(self._records[:RECORD.size * nrec]):
                if denied and denied[slot]:
                    skipped += 1
                else:
                    self._write_packet(self._recv_view[at:at + length])
        if skipped:
            self._drop("source_not_allowed", skipped, peer)
        self.stats.packets_written += nrec - skipped
        return nrec - skipped

    def _drop(self, reason: str, n: int, peer: Peer | None) -> None:
        """Count a drop for the interface and, when the data path knows whose, the peer."""
        self.stats.drops[reason] += n
        if peer is not None:
            peer.count_drop(reason, n)

    def _rehandshake_lost_session(self, source: Address, now: float) -> None:
        """Data for a session we do not know: whether it starts a handshake (we restarted
        and the peer still uses the session we lost) is the protocol's decision."""
        for peer, datagram in self.device.on_unknown_index(source, now):
            self.send_control(peer, [datagram])
            self.stats.lost_session_handshakes += 1

    def on_handshake_message(self, datagram: memoryview, source: Address, now: float) -> None:
        self.stats.handshakes_received += 1
        # `now` is this wakeup's: the device takes the mac1-valid handshake messages of one
        # wakeup as its backlog of Diffie-Hellman work, which decides "under load".
        result = self.device.handle_handshake_message(bytes(datagram), source, now)
        if result.drop_reason:
            self._drop(result.drop_reason, 1, result.peer)
        for reply in result.replies:
            self.udp.send(source, reply)
        self.stats.datagrams_sent += len(result.replies)

    def _internal_error(self) -> None:
        """Called from the except clause at the pump's boundary. The coalescer may hold views
        into the receive buffer, which the next batch overwrites: it must forget them, or
        they would be written then with the next batch's plaintext. Everything else of a
        batch lives in its locals. The traceback is logged at most once a minute, so that a
        bug a packet can trigger cannot flood the journal."""
        self._gro.clear()
        self.stats.drops["internal_error"] += 1
        now = self.clock()
        if now - self._internal_error_logged >= INTERNAL_ERROR_LOG_SECONDS:
            self._internal_error_logged = now
            log.exception("internal error in the data path: batch dropped (counted as "
                          "drops.internal_error; logged at most once a minute)")

    def _write_packet(self, packet: Buffer) -> None:
        """One packet as it is, without offload."""
        self._write(Coalesced(NO_OFFLOAD, [packet]))

    def _write(self, frame: Coalesced) -> None:
        try:
            self.tun.write(frame.header, frame.parts)
        except BlockingIOError:
            self.stats.drops["tun_write_full"] += frame.segments
            return
        except OSError as err:
            if err.errno == errno.EINVAL and frame.segments > 1:
                self._refuse_coalescing(frame)
                return
            code = err.errno or 0
            self.stats.drops[f"tun_write_{errno.errorcode.get(code, code)}"] += 1
            return
        self.stats.tun_writes += 1
        if frame.segments > 1:
            self.stats.jumbo_frames += 1
            self.stats.jumbo_segments += frame.segments

    def _refuse_coalescing(self, frame: Coalesced) -> None:
        """Some stable kernels reject valid coalesced writes: write plain from now on."""
        log.warning("the kernel refused a coalesced TUN write (EINVAL); writing segments "
                    "one by one from now on")
        self.coalescing = False
        self.stats.drops["gro_write_refused"] += 1
        header = VirtioNetHeader.unpack(frame.header)
        for segment in split(header, b"".join(frame.parts)):
            self._write_packet(segment)

    # -- timers -----------------------------------------------------------------------------

    @_pump_boundary
    def on_tick(self) -> None:
        """Run the protocol timers: retransmits, keepalives, rekeys, key expiry."""
        for peer, datagram in self.device.poll(self.clock()):
            self.send_control(peer, [datagram])


def short_key(peer: Peer) -> str:
    """A peer's public key as `wg` prints it, shortened for logs."""
    return encode_key(peer.public_key)[:8] + "..."
