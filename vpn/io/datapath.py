"""The data path: TUN -> split -> encrypt -> UDP GSO, and UDP GRO -> decrypt -> coalesce -> TUN.

Both directions run as event-loop reader callbacks that drain a bounded batch per wakeup;
per-segment work is one AEAD call and a few slices, everything else happens once per batch.
"""

from __future__ import annotations

import functools
import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, fields

from vpn.core.keys import encode_key
from vpn.core.offload import OffloadError, split
from vpn.core.offload.gso import split_into
from vpn.core.packet.headers import ip_destination
from vpn.core.packet.icmp import UnreachableResponder
from vpn.core.packet.virtio import VirtioNetHeader
from vpn.core.types import Address, Buffer, endpoint_text
from vpn.core.wireguard import Device, Keypair, Peer, ReceiveCounts, TransportError
from vpn.core.wireguard.constants import (
    AEAD_TAG_LEN,
    PADDING_MULTIPLE,
    TRANSPORT_HEADER_SIZE,
    TRANSPORT_MIN_SIZE,
)
from vpn.core.wireguard.receive import records_needed
from vpn.core.wireguard.screen import Screen
from vpn.io.buffers import reserve
from vpn.io.tun import MAX_PACKET, TunDevice, TunGone, TunStats
from vpn.io.udp import UdpSocket, UdpStats

log = logging.getLogger("vpn.io.datapath")

# Encrypted datagrams are built in one buffer; past this much, a batch is sent in parts.
SEND_BUFFER_BYTES = 1 << 20
# Around each segment split into the send buffer: room for the transport header before it,
# and for its padding (up to 15 bytes) and tag after, so it is sealed where it lies.
SEAL_GAP = TRANSPORT_HEADER_SIZE
SEAL_TAIL = PADDING_MULTIPLE - 1 + AEAD_TAG_LEN
SEAL_GAP_AND_TAIL = SEAL_GAP + SEAL_TAIL  # what a message may add to its packet
# A transport message is at most the padded packet plus header and tag.
MAX_DATAGRAM = MAX_PACKET + TRANSPORT_MIN_SIZE + 16
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
    (the fields below), the TUN's writes (`tun`), the socket's (`udp`, which the summary
    nests) and the core's receive walk (`received`). `drops` is the pump's own;
    `all_drops()` and `summary()` hold every one."""

    udp: UdpStats
    tun: TunStats
    received: ReceiveCounts
    tun_reads: int = 0
    super_packets: int = 0
    segments_split: int = 0
    datagrams_sent: int = 0
    full_receive_batches: int = 0  # wakeups that found a whole batch of receives waiting
    icmp_unreachable_sent: int = 0
    drops: Counter[str] = field(default_factory=Counter)

    @property
    def datagrams_received(self) -> int:
        return self.received.datagrams_received

    @property
    def handshakes_received(self) -> int:
        return self.received.handshakes_received

    @property
    def packets_written(self) -> int:
        return self.received.packets_written

    @property
    def lost_session_handshakes(self) -> int:
        return self.received.lost_session_handshakes

    @property
    def tun_writes(self) -> int:
        return self.tun.tun_writes

    @property
    def jumbo_frames(self) -> int:
        return self.tun.jumbo_frames

    @property
    def jumbo_segments(self) -> int:
        return self.tun.jumbo_segments

    def all_drops(self) -> Counter[str]:
        """Every drop of the interface, by reason: the pump's, the TUN's and the core's."""
        drops = Counter(self.drops)
        drops.update(self.tun.drops)
        drops.update(self.received.drops)
        return drops

    def summary(self) -> dict:
        out: dict = {f.name: getattr(self, f.name) for f in fields(self)
                     if f.name not in _PARTS}
        out.update(self.tun.counts())
        out.update(self.received.counts())
        out["drops"] = dict(self.all_drops())
        out["udp"] = self.udp.summary()
        return out


_PARTS = ("udp", "tun", "received", "drops")  # DataPathStats' fields that are not counts


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
        self.stats = DataPathStats(udp.stats, tun.stats, device.receive_counts)
        self._send_buffer = reserve(SEND_BUFFER_BYTES)
        # Decrypted packets of one receive batch, side by side until written to the TUN.
        self._recv_buffer = reserve(udp.batch * (MAX_PACKET + 1))
        self._recv_view = self._recv_buffer
        # What the receive walk found in one wakeup: (offset, length, slot) per packet to
        # deliver; sized for the most a wakeup can find, its pages touched only as used.
        self._records = reserve(records_needed(len(self._recv_buffer)))
        self._screen: Screen | None = None  # _screen_for's, with what it was made for
        self._screen_known = b""
        self._screen_key = b""
        self._internal_error_logged = float("-inf")
        # Host unreachable for packets routed to us that no peer's AllowedIPs cover.
        self.icmp = UnreachableResponder()
        # The shell's hook: the interface was deleted (its TUN reports only errors now).
        self.on_tun_gone: Callable[[], None] | None = None

    # -- TUN -> peers -----------------------------------------------------------------------

    @_pump_boundary
    def on_tun_readable(self) -> None:
        try:
            batch = self.tun.read_batch()
        except TunGone:
            if self.on_tun_gone is not None:
                self.on_tun_gone()
            return
        if not batch:
            return
        now = self.clock()
        stats = self.stats
        stats.tun_reads += len(batch)
        lookup = self.device.allowed_ips.lookup
        by_peer: dict[Peer, list[tuple[VirtioNetHeader, memoryview]]] = {}
        for read in batch:
            packet = read[1]
            destination = ip_destination(packet)
            if destination is None:
                stats.drops["tun_not_ip"] += 1
                continue
            peer = lookup(destination)
            if peer is None:
                stats.drops["no_peer_for_destination"] += 1
                self._answer_unreachable(packet, now)
                continue
            by_peer.setdefault(peer, []).append(read)
        for peer, reads in by_peer.items():
            self.send_to_peer(peer, reads, now)

    def _answer_unreachable(self, packet: memoryview, now: float) -> None:
        # As the kernel's WireGuard does (wireguard-go drops silently): the sender learns at
        # once instead of timing out. Rate-limited; never for errors, multicast, broadcast.
        reply = self.icmp.reply(packet, now)
        if reply is not None:
            self._write_packet(reply)
            self.stats.icmp_unreachable_sent += 1

    def send_to_peer(self, peer: Peer, reads: list[tuple[VirtioNetHeader, memoryview]],
                     now: float) -> None:
        """Encrypt what was read for `peer` and send it in as few GSO sends as possible."""
        endpoint = peer.endpoint
        if endpoint is None:
            self._drop("peer_without_endpoint", len(self._complete(reads)), peer)
            return
        kp = peer.keypair_for_sending(now)
        if kp is None:
            self.stage(peer, self._complete(reads), now)
            return
        sent, done = self._seal_and_send(kp, endpoint, reads)
        if done < len(reads):  # the keypair ran out of nonces: rare, handshake again
            self.stage(peer, self._complete(reads[done:]), now)
            return
        self.send_control(peer, peer.after_send(now, kp, sent))

    def _complete(self, reads: list[tuple[VirtioNetHeader, memoryview]]
                  ) -> list[Buffer]:
        """The complete packets that TUN reads stand for (for staging or counting)."""
        packets: list[Buffer] = []
        for header, packet in reads:
            try:
                segments = split(header, packet)
            except OffloadError as err:
                self.stats.drops[err.reason] += 1
                continue
            if header.gso_type:
                self.stats.super_packets += 1
                self.stats.segments_split += len(segments)
            packets.extend(segments)
        return packets

    def _seal_and_send(self, kp: Keypair, dest: Address,
                       reads: list[tuple[VirtioNetHeader, memoryview]]) -> tuple[int, int]:
        """Each super-packet split straight into the send buffer, sealed there in place and
        sent as one GSO run; the packets between them (ACKs, pings) sealed together. Returns
        the bytes sent and how many reads were handled (all, unless the keypair ran out)."""
        stats = self.stats
        buf = self._send_buffer
        view = memoryview(buf)
        sent = unsent = 0  # reads[unsent:] are not sent yet
        try:
            for i, (header, packet) in enumerate(reads):
                if not header.gso_type:
                    continue
                if unsent < i:
                    sent += self._encrypt_and_send(kp, dest, self._complete(reads[unsent:i]))
                unsent = i + 1
                try:
                    count, full, last = split_into(buf, 0, header, packet, SEAL_GAP, SEAL_TAIL)
                except OffloadError as err:
                    stats.drops[err.reason] += 1
                    continue
                except ValueError:  # more segments than the buffer holds (a tiny gso_size)
                    sent += self._encrypt_and_send(kp, dest, self._complete([(header, packet)]))
                    continue
                stats.super_packets += 1
                stats.segments_split += count
                try:
                    size, last_size = kp.seal_segments(buf, 0, count, full, last, SEAL_GAP,
                                                       SEAL_TAIL, self.mtu)
                except TransportError:
                    unsent = i
                    raise
                self._send_run(dest, view, 0, size, count, last_size)
                sent += size * (count - 1) + last_size
            if unsent < len(reads):
                sent += self._encrypt_and_send(kp, dest, self._complete(reads[unsent:]))
                unsent = len(reads)
        except TransportError:
            pass
        return sent, unsent

    def _encrypt_and_send(
        self, kp: Keypair, dest: Address, packets: list[Buffer]
    ) -> int:
        """Encrypt in chunks that fit the send buffer; send each chunk as GSO runs."""
        buf = self._send_buffer
        room = len(buf)
        total = 0
        start, end = 0, len(packets)
        while start < end:
            stop = end
            # Each message is its packet plus header, tag and up to 15 bytes of padding.
            while sum(map(len, packets[start:stop])) + SEAL_GAP_AND_TAIL * (stop - start) > room:
                stop = start + max(1, (stop - start) // 2)
            lengths = kp.encrypt_batch(packets[start:stop], buf, 0, self.mtu)
            total += self._send_runs(dest, lengths)
            start = stop
        return total

    def _send_runs(self, dest: Address, lengths: list[int]) -> int:
        """Send the messages laid back to back in the send buffer, as few GSO sends as the
        rule "all the same size, only the last smaller" allows."""
        view = memoryview(self._send_buffer)
        send_run = self._send_run
        offset = run_start = run_size = run_count = 0
        for n in lengths:
            if run_count and n == run_size:
                run_count += 1
            elif run_count and n < run_size:
                # A shorter datagram ends a GSO run.
                send_run(dest, view, run_start, run_size, run_count + 1, n)
                run_count = 0
            else:
                if run_count:
                    send_run(dest, view, run_start, run_size, run_count, run_size)
                run_start, run_size, run_count = offset, n, 1
            offset += n
        if run_count:
            send_run(dest, view, run_start, run_size, run_count, run_size)
        return offset

    def _send_run(
        self, dest: Address, view: memoryview, start: int, size: int, count: int, last: int
    ) -> None:
        end = start + size * (count - 1) + last
        self.udp.send_segments(dest, view[start:end], size, count, last)
        self.stats.datagrams_sent += count

    def stage(self, peer: Peer, packets: list[Buffer], now: float) -> None:
        """No usable session: hold the newest packets (bounded) and start a handshake."""
        dropped, handshake = peer.stage(packets, now)
        if dropped:
            self._drop("staged_queue_full", dropped, peer)
        self.send_control(peer, handshake)

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
        """Receive one batch, hand it to the core's receive walk (Device.receive), the
        records it returns to the TUN, and send what it returns."""
        udp = self.udp
        receives = udp.stats.receives
        screened: tuple[int, ...] | None = None
        lost: list[Address] = []
        checker = self.device.checker
        # Garbage is dropped (and counted by the core) before any Python runs. Without a
        # private key there is no mac1 key to screen with: the core drops handshake messages.
        if udp.screens and checker is not None and Screen is not None:
            received, screened, lost = udp.receive_screened(
                self._screen_for(self.device.keypair_indexes(), checker.mac1_key))
        else:
            received = udp.receive_batch()
        if udp.stats.receives - receives == udp.batch:  # garbage too: the socket was full
            self.stats.full_receive_batches += 1
        if not received and not lost and not screened:
            return
        got = self.device.receive(received, self.clock(), out=self._recv_view,
                                  records=self._records, screened=screened, lost=lost)
        self.tun.deliver(self._recv_view, got.records, got.nrec)
        self.tun.flush()
        for dest, datagram in got.send:
            udp.send(dest, datagram)
        self.stats.datagrams_sent += len(got.send)
        for peer, source in got.roamed:
            log.info("peer %s endpoint changed to %s", short_key(peer), endpoint_text(source))

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
        self.stats.drops["internal_error"] += 1
        now = self.clock()
        if now - self._internal_error_logged >= INTERNAL_ERROR_LOG_SECONDS:
            self._internal_error_logged = now
            log.exception("internal error in the data path: batch dropped (counted as "
                          "drops.internal_error; logged at most once a minute)")

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
