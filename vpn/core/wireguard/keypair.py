"""Transport keypairs: counter-nonce encryption, authenticated decryption, rotation of three.

The data plane's per-packet work is Keypair.encrypt_into / decrypt_into, or the batch forms
encrypt_batch / decrypt_batch that loop over many packets with everything bound once;
everything else is rare. The hot paths are written for CPython's sake: the nonce comes from
one precompiled struct, padding is decided with integer ops (a full-MTU segment needs none
and is never copied), and attributes are bound to locals.

Those loops are the readable reference. Where the native module is built (fastpath.py),
a keypair's keys live in _transport.TransportKey objects instead and each batch is one
native call (vpn/core/wireguard/_transport.c) that does what the loops do, byte for byte, with
the replay check on this keypair's own ReplayWindow.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, MutableMapping, Sequence
from typing import Any

from vpn.core.types import Buffer

from .constants import (
    AEAD_TAG_LEN,
    MESSAGE_TRANSPORT,
    PADDING_MULTIPLE,
    REJECT_AFTER_MESSAGES,
    REJECT_AFTER_TIME,
    TRANSPORT_HEADER_SIZE,
    TRANSPORT_MIN_SIZE,
)
from .crypto import InvalidTag
from .crypto import ReferenceAead as ChaCha20Poly1305
from .fastpath import FAST_PATH, TransportKey, native_accept_run
from .inner import inner_packet
from .messages import TRANSPORT_HEADER, MessageError
from .noise import SessionKeys
from .replay import ReplayWindow

# The 96-bit nonce: 32 zero bits, then the 64-bit counter, little-endian. One Struct.pack
# call (about 30 ns) beats zero bytes + int.to_bytes (about 60 ns) and, unlike a shared
# bytearray filled with pack_into, hands the AEAD an immutable object.
_nonce = struct.Struct("<4xQ").pack
# Zero padding by length, so padding is a single join rather than a slice and two copies.
_PADS = tuple(bytes(n) for n in range(PADDING_MULTIPLE))
_PAD_MASK = PADDING_MULTIPLE - 1
_pack_header = TRANSPORT_HEADER.pack_into
_unpack_header = TRANSPORT_HEADER.unpack_from

assert PADDING_MULTIPLE & _PAD_MASK == 0  # a power of two, so -n & _PAD_MASK is the pad

# The order of the drop counts a native open returns.
_NATIVE_DROP_REASONS = ("transport_too_short", "wrong_keypair", "bad_auth", "replay")
_RUN_DROP_REASONS = ("wrong_keypair", "bad_auth", "replay", "inner_not_ip",
                     "dishonest_packet_size")

# receive_run's record of one good packet: its offset in `out`, its IP length, the slot of
# its inner source; three little-endian uint32.
RECORD = struct.Struct("<III")
# open_run's description of one message that authenticated, for accept_run: its counter,
# its size on the wire, its plaintext's offset in `out`, its IP length, its status (an index
# of OPENED_STATUS: a packet, a keepalive, or the drop reason accept_run counts once the
# message is fresh) and its source slot.
OPENED = struct.Struct("<QIIIII")
OPENED_STATUS = ("packet", "keepalive", "inner_not_ip", "dishonest_packet_size")
OPENED_PACKET, OPENED_KEEPALIVE = 0, 1
# receive_run returns once a call has seen this many distinct inner sources, so that its
# search among them stays short whatever an authenticated peer puts in its packets.
MAX_SOURCES = 64


class TransportError(MessageError):
    """A transport message that must be dropped (bad tag, replay, wrong or dead keypair)."""


def padded_length(n: int, mtu: int = 0) -> int:
    """Plaintext length after padding to 16 bytes, never past the MTU (0: no cap)."""
    padded = (n + _PAD_MASK) & -PADDING_MULTIPLE
    if mtu and padded > mtu:
        return n if n > mtu else mtu
    return padded


def transport_size(plaintext_len: int, mtu: int = 0) -> int:
    """Bytes on the wire for a plaintext of this length: header, padded body, tag."""
    return TRANSPORT_HEADER_SIZE + padded_length(plaintext_len, mtu) + AEAD_TAG_LEN


class Keypair:
    """One direction-pair of ChaCha20-Poly1305 keys from one handshake."""

    __slots__ = (
        "_recv",
        "_send",
        "created",
        "is_initiator",
        "local_index",
        "native",
        "remote_index",
        "replay",
        "send_counter",
        "valid",
    )

    def __init__(
        self, keys: SessionKeys, now: float, *, native: bool | None = None
    ) -> None:
        # native: None follows fastpath.FAST_PATH; True or False picks (tests compare both).
        # The keypair takes the keys: `keys` is wiped once the AEAD objects hold them.
        if native is None:
            native = FAST_PATH == "native"
        elif native and TransportKey is None:
            raise RuntimeError("the native transport module is not built")
        self.native = native
        aead: Any = TransportKey if native else ChaCha20Poly1305
        self._send: Any = aead(keys.send_key)  # ChaCha20Poly1305 | TransportKey | None
        self._recv: Any = aead(keys.recv_key)
        keys.wipe()  # the AEAD objects hold the only copies now
        self.send_counter = 0
        self.replay = ReplayWindow()
        self.created = now
        self.is_initiator = keys.is_initiator
        self.local_index = keys.local_index
        self.remote_index = keys.remote_index
        self.valid = True

    def __repr__(self) -> str:
        return (
            f"Keypair(local_index={self.local_index:#x}, remote_index={self.remote_index:#x}, "
            f"initiator={self.is_initiator}, sent={self.send_counter}, valid={self.valid})"
        )

    # -- lifetime ---------------------------------------------------------------------------

    def sendable(self, now: float) -> bool:
        """May this keypair encrypt at `now`? (Checked once per batch by the caller.)"""
        return (
            self.valid
            and now - self.created < REJECT_AFTER_TIME
            and self.send_counter < REJECT_AFTER_MESSAGES
        )

    def receivable(self, now: float) -> bool:
        """May this keypair decrypt at `now`? (Checked once per batch by the caller.)"""
        return (
            self.valid
            and now - self.created < REJECT_AFTER_TIME
            and self.replay.greatest < REJECT_AFTER_MESSAGES
        )

    def zero(self) -> None:
        """Drop the key material; the AEAD objects hold the only copies of the keys (a
        native one is wiped at once, a `cryptography` one when it is freed)."""
        if self.native and self._send is not None:
            self._send.zero()
            self._recv.zero()
        self._send = self._recv = None
        self.valid = False

    # -- sending ----------------------------------------------------------------------------

    def encrypt_into(
        self, plaintext: Buffer, out: bytearray | memoryview, offset: int = 0, mtu: int = 0
    ) -> int:
        """Write one transport message at out[offset:]; return its length.

        The plaintext is zero-padded to 16 bytes (capped at `mtu`). Time limits are the
        caller's (`sendable`); the message limit is enforced here because a reused nonce
        would be fatal.
        """
        return self.encrypt_batch((plaintext,), out, offset, mtu)[0]

    def encrypt_batch(
        self,
        packets: Sequence[Buffer],
        out: bytearray | memoryview,
        offset: int = 0,
        mtu: int = 0,
    ) -> list[int]:
        """Write one transport message per packet, back to back from out[offset:]; return
        their lengths (message i starts at offset + sum(lengths[:i])).

        Each message is exactly what encrypt_into would write, with consecutive counters.
        `out` must hold sum(transport_size(len(p), mtu)) bytes from `offset`. If the batch
        would pass the message limit, nothing is encrypted and no counter is used: it raises
        TransportError("keypair_exhausted") and the caller hands the packets to the next
        keypair. All the batch's counters are taken before the first encryption, so an error
        part-way (a short `out`) can never lead to a nonce being used twice.
        """
        first = self.reserve(len(packets))
        if first is None:
            raise TransportError("keypair_exhausted")
        return self.encrypt_batch_at(first, packets, out, offset, mtu)

    def reserve(self, count: int) -> int | None:
        """Take `count` consecutive counters for messages sealed later, perhaps on another
        thread (encrypt_batch_at, seal_segments_at): the first of them, or None when they
        would pass the message limit or the keypair is zeroed (then none is taken). Called
        on one thread only (the event loop's), before the crypto: a nonce is never used
        twice, whatever order the sealing threads finish in."""
        counter = self.send_counter
        if counter + count > REJECT_AFTER_MESSAGES or self._send is None:
            return None
        self.send_counter = counter + count
        return counter

    def _sealer(self) -> Any:
        """The sending AEAD object, or TransportError once the keypair was zeroed (a
        reservation made before then seals nothing)."""
        send = self._send
        if send is None:
            raise TransportError("keypair_exhausted")
        return send

    def encrypt_batch_at(self, first: int, packets: Sequence[Buffer],
                         out: bytearray | memoryview, offset: int = 0, mtu: int = 0
                         ) -> list[int]:
        """encrypt_batch with counters from `first`, which reserve() gave for len(packets)
        messages; safe on any thread, beside other calls on this keypair."""
        send = self._sealer()
        if self.native:
            lengths: list[int] = send.seal_batch(packets, out, offset, mtu, self.remote_index,
                                                 first)
            return lengths
        return self._seal_python(packets, out, offset, mtu, first, send)

    def _seal_python(self, packets: Iterable[Buffer], out: bytearray | memoryview,
                     offset: int, mtu: int, counter: int, send: Any) -> list[int]:
        """The reference loop of encrypt_batch and seal_segments, from counter `counter`."""
        encrypt = send.encrypt_into
        remote = self.remote_index
        view = memoryview(out)
        if len(view) < offset + sum(transport_size(len(p), mtu) for p in packets):
            raise ValueError("out too short for the batch")
        lengths: list[int] = []
        append = lengths.append
        for plaintext in packets:
            n = len(plaintext)
            if n != mtu:
                pad = -n & _PAD_MASK
                if pad:
                    if mtu and n + pad > mtu:
                        pad = mtu - n if mtu > n else 0
                    if pad:
                        plaintext = b"".join((plaintext, _PADS[pad]))
                        n += pad
            _pack_header(view, offset, MESSAGE_TRANSPORT, remote, counter)
            end = offset + n + TRANSPORT_MIN_SIZE
            encrypt(_nonce(counter), plaintext, None, view[offset + TRANSPORT_HEADER_SIZE : end])
            append(end - offset)
            offset = end
            counter += 1
        return lengths

    def seal_segments(self, out: bytearray | memoryview, offset: int, count: int, full: int,
                      last: int, gap: int, tail: int, mtu: int) -> tuple[int, int]:
        """Seal in place the segments that gso.split_into wrote at out[offset:] (segment i at
        offset + gap + i * (gap + full + tail), `full` bytes, the last `last`), as transport
        messages back to back from out[offset]: all `size` bytes but the last, `last_size`
        bytes; returns (size, last_size), what one UDP GSO send needs. Counters and limits
        as in encrypt_batch; a layout where a message would not fit in its segment's slot
        raises ValueError."""
        if count < 1 or not 0 <= last <= full <= 0xFFFF or not 0 <= gap <= 0xFFFF \
                or not 0 <= tail <= 0xFFFF:
            raise ValueError("seal_segments: count, full, last, gap or tail out of range")
        first = self.reserve(count)
        if first is None:
            raise TransportError("keypair_exhausted")
        return self.seal_segments_at(first, out, offset, count, full, last, gap, tail, mtu)

    def seal_segments_at(self, first: int, out: bytearray | memoryview, offset: int,
                         count: int, full: int, last: int, gap: int, tail: int, mtu: int
                         ) -> tuple[int, int]:
        """seal_segments with counters from `first`, which reserve() gave for `count`
        messages; safe on any thread, beside other calls on this keypair."""
        send = self._sealer()
        if self.native:
            sealed: tuple[int, int] = send.seal_segments(out, offset, count, full, last, gap,
                                                         tail, mtu, self.remote_index, first)
            return sealed
        stride = gap + full + tail
        size, last_size = transport_size(full, mtu), transport_size(last, mtu)
        if size > stride or last_size > gap + last + tail:
            raise ValueError("seal_segments: a message would not fit in its segment's slot")
        if not 0 <= offset <= len(out) - ((count - 1) * stride + gap + last + tail):
            raise ValueError("seal_segments: out too short")
        view = memoryview(out)
        plaintexts = [bytes(view[offset + gap + i * stride:][:full if i + 1 < count else last])
                      for i in range(count)]
        self._seal_python(plaintexts, out, offset, mtu, first, send)
        return size, last_size

    def encrypt(self, plaintext: Buffer, now: float, mtu: int = 0) -> bytes:
        """One transport message, checking every limit; b"" plaintext makes a keepalive."""
        if not self.sendable(now):
            raise TransportError("keypair_expired")
        out = bytearray(transport_size(len(plaintext), mtu))
        self.encrypt_into(plaintext, out, 0, mtu)
        return bytes(out)

    # -- receiving --------------------------------------------------------------------------

    def decrypt_into(self, message: Buffer, out: bytearray | memoryview, offset: int = 0) -> int:
        """Authenticate `message`, then check replay; write the (padded) plaintext at
        out[offset:] and return its length. Raises TransportError with a drop reason."""
        drops: dict[str, int] = {}
        n = self.decrypt_batch((message,), out, offset, drops)[0]
        if n < 0:
            raise TransportError(next(iter(drops)))
        return n

    def decrypt_batch(
        self,
        messages: Iterable[Buffer],
        out: bytearray | memoryview,
        offset: int = 0,
        drops: MutableMapping[str, int] | None = None,
    ) -> list[int]:
        """decrypt_into for each message, the plaintexts back to back from out[offset:].

        Returns one entry per message: the plaintext length, or -1 if the message was
        dropped (it then takes no room in `out`); each drop adds 1 to drops[reason], if
        `drops` is given, under the reason decrypt_into would have raised. Plaintext i starts
        at offset + the sum of the non-negative lengths before it. As with decrypt_into, the
        caller checks `receivable` once per batch and the replay window moves only for
        messages that authenticated.
        """
        recv = self._recv
        local = self.local_index
        replay = self.replay
        if self.native and recv is not None:
            opened: list[int]
            opened, replay.greatest, counts = recv.open_batch(
                messages, out, offset, local, replay.seen, replay.greatest
            )
            if counts is not None and drops is not None:
                _add_drops(drops, _NATIVE_DROP_REASONS, counts)
            return opened
        view = memoryview(out)
        rejects = replay.rejects
        validate = replay.validate
        lengths: list[int] = []
        append = lengths.append
        for message in messages:
            n = len(message) - TRANSPORT_MIN_SIZE
            if n < 0:
                reason = "transport_too_short"
            else:
                kind, receiver, counter = _unpack_header(message)
                if kind != MESSAGE_TRANSPORT or receiver != local:
                    reason = "wrong_keypair"
                elif recv is None:
                    reason = "keypair_expired"
                elif rejects(counter):
                    reason = "replay"  # known before the AEAD, which it is spared
                else:
                    end = offset + n
                    try:
                        recv.decrypt_into(
                            _nonce(counter), message[TRANSPORT_HEADER_SIZE:], None, view[offset:end]
                        )
                    except InvalidTag:
                        reason = "bad_auth"
                    else:
                        if validate(counter):  # authenticated: now the window may move
                            append(n)
                            offset = end
                            continue
                        reason = "replay"
            append(-1)
            if drops is not None:
                drops[reason] = drops.get(reason, 0) + 1
        return lengths

    def receive_run(
        self,
        data: Buffer,
        segment_size: int,
        start: int,
        out: bytearray | memoryview,
        offset: int,
        records: bytearray | memoryview,
        drops: MutableMapping[str, int],
    ) -> tuple[int, int, int, int, int, list[bytes]]:
        """open_run then accept_run: the run of transport messages for this keypair that
        starts at data[start:] (datagrams of `segment_size` bytes, the last possibly shorter:
        one GRO receive, or one datagram), as the receive path needs them. Returns (stop,
        offset, nrec, fresh, nbytes, sources): see the two. It stops before the first
        datagram that is not a transport message for this keypair's receiver index (the
        caller dispatches it), once as many packets opened as `records` holds, or once
        MAX_SOURCES distinct inner sources were seen. The caller checks `receivable` first.
        `out` needs room for len(data) - start bytes from `offset` (ValueError otherwise)."""
        most = (len(data) - start) // min(max(segment_size, 1), TRANSPORT_MIN_SIZE) + 1
        opened = bytearray(OPENED.size * max(most, 1))
        stop, offset, count, sources = self.open_run(
            data, segment_size, start, out, offset, len(records) // RECORD.size, opened, drops)
        nrec, fresh, nbytes = self.accept_run(opened, count, records, drops)
        return stop, offset, nrec, fresh, nbytes, sources

    def open_run(
        self,
        data: Buffer,
        segment_size: int,
        start: int,
        out: bytearray | memoryview,
        offset: int,
        capacity: int,
        opened: bytearray | memoryview,
        drops: MutableMapping[str, int],
        window: bool = True,
    ) -> tuple[int, int, int, list[bytes]]:
        """The stage of a run that changes no replay window, so it may run beside others:
        authenticate each message of the run at data[start:] and check its plaintext as an
        IP packet (inner.inner_packet). Returns (stop, offset, count, sources).

        It stops where receive_run says, once `capacity` packets opened, or once `opened`
        is full. A counter at the message limit is refused (replay) before its AEAD, and
        with `window` one this keypair's window refuses already: the window only moves
        forward, so one older than accept_run's can only let more through. Each message
        that authenticated is described in `opened` (OPENED, `count` of them, from 0): its
        counter, size, plaintext offset, IP length, status (OPENED_STATUS) and source slot,
        where `sources[slot]` is its inner source. A packet's plaintext stays at
        out[offset:]; the returned offset is past the last. Drops before the AEAD and
        failed authentication are added to `drops` by reason; the rest are accept_run's."""
        if self.native:
            replay = self.replay
            stop, offset, count, counts, sources = self._recv.open_run(
                data, segment_size, start, out, offset, self.local_index, capacity, opened,
                replay.seen if window else None, replay.greatest)
            if counts is not None:
                _add_drops(drops, _RUN_DROP_REASONS, counts)
            return stop, offset, count, sources
        return self._open_run_python(data, segment_size, start, out, offset, capacity, opened,
                                     drops, window)

    def _open_run_python(
        self,
        data: Buffer,
        segment_size: int,
        start: int,
        out: bytearray | memoryview,
        offset: int,
        capacity: int,
        opened: bytearray | memoryview,
        drops: MutableMapping[str, int],
        window: bool,
    ) -> tuple[int, int, int, list[bytes]]:
        """open_run's reference, datagram by datagram."""
        size = len(data)
        if segment_size < 1 or not 0 <= start <= size or capacity < 0:
            raise ValueError("open_run: segment_size, start or capacity out of range")
        if not 0 <= offset <= len(out) or size - start > len(out) - offset:
            raise ValueError("open_run: out too short")
        view = memoryview(data)
        plain = memoryview(out)
        room = len(opened) // OPENED.size
        local = self.local_index
        decrypt = self._recv.decrypt_into
        rejects = self.replay.rejects if window else _at_limit
        sources: list[bytes] = []
        slots: dict[bytes, int] = {}
        pos = start
        count = packets = 0
        while pos < size:
            end = min(pos + segment_size, size)
            message = view[pos:end]
            if (end - pos < TRANSPORT_MIN_SIZE or message[0] != MESSAGE_TRANSPORT
                    or int.from_bytes(message[4:8], "little") != local or count == room
                    or packets == capacity or len(sources) == MAX_SOURCES):
                break
            pos = end
            kind, _, counter = _unpack_header(message)
            if kind != MESSAGE_TRANSPORT:
                reason = "wrong_keypair"
            elif rejects(counter):
                reason = "replay"  # known before the AEAD, which it is spared
            else:
                n = len(message) - TRANSPORT_MIN_SIZE
                try:
                    decrypt(_nonce(counter), message[TRANSPORT_HEADER_SIZE:], None,
                            plain[offset:offset + n])
                except InvalidTag:
                    reason = "bad_auth"
                else:
                    status, length, slot = OPENED_KEEPALIVE, 0, 0
                    if n:
                        checked = inner_packet(plain[offset:offset + n])
                        if isinstance(checked, str):
                            status = OPENED_STATUS.index(checked)
                        else:
                            length, src = checked
                            source = bytes(src)
                            slot = slots.get(source, len(sources))
                            if slot == len(sources):
                                slots[source] = slot
                                sources.append(source)
                            status = OPENED_PACKET
                            packets += 1
                    OPENED.pack_into(opened, OPENED.size * count, counter, len(message), offset,
                                     length, status, slot)
                    count += 1
                    if status == OPENED_PACKET:
                        offset += n
                    continue
            drops[reason] = drops.get(reason, 0) + 1
        return pos, offset, count, sources

    def accept_run(self, opened: Buffer, count: int, records: bytearray | memoryview,
                   drops: MutableMapping[str, int]) -> tuple[int, int, int]:
        """The stage of a run that runs per keypair, in order: each of the `count` messages
        open_run described in `opened` goes through the replay window; a fresh packet is
        recorded in `records` (RECORD, from 0) as (offset, IP length, source slot), and
        fresh keepalives and packets counted with their bytes. Returns (nrec, fresh,
        nbytes); drops are added to `drops` by reason. Too few records for the packets, or
        an unknown status, raise ValueError before the window changes."""
        replay = self.replay
        if self.native:
            nrec, replay.greatest, fresh, nbytes, counts = native_accept_run(
                opened, count, replay.seen, replay.greatest, records)
            if counts is not None:
                _add_drops(drops, _RUN_DROP_REASONS, counts)
            return nrec, fresh, nbytes
        if not 0 <= count <= len(opened) // OPENED.size:
            raise ValueError("accept_run: count outside `opened`")
        entries = list(OPENED.iter_unpack(memoryview(opened)[:OPENED.size * count]))
        if any(entry[4] >= len(OPENED_STATUS) for entry in entries):
            raise ValueError("accept_run: an entry has no such status")
        if sum(entry[4] == OPENED_PACKET for entry in entries) > len(records) // RECORD.size:
            raise ValueError("accept_run: records too short for the packets")
        validate = replay.validate
        nrec = fresh = nbytes = 0
        for counter, size, at, length, status, slot in entries:
            if not validate(counter):
                drops["replay"] = drops.get("replay", 0) + 1
                continue
            fresh += 1
            nbytes += size
            if status == OPENED_PACKET:
                RECORD.pack_into(records, RECORD.size * nrec, at, length, slot)
                nrec += 1
            elif status != OPENED_KEEPALIVE:
                reason = OPENED_STATUS[status]
                drops[reason] = drops.get(reason, 0) + 1
        return nrec, fresh, nbytes

    def decrypt(self, message: Buffer, now: float) -> bytes:
        """The padded plaintext of a transport message (b"" for a keepalive)."""
        if not self.receivable(now):
            raise TransportError("keypair_expired")
        out = bytearray(max(0, len(message) - TRANSPORT_MIN_SIZE))
        self.decrypt_into(message, out)
        return bytes(out)


def _at_limit(counter: int) -> bool:
    """open_run's check before the AEAD without a window: the message limit alone."""
    return counter >= REJECT_AFTER_MESSAGES


def _add_drops(drops: MutableMapping[str, int], reasons: tuple[str, ...],
               counts: tuple[int, ...]) -> None:
    """Add a native open's drop counts to `drops` under the reasons the Python path uses
    (`reasons`, in the order the C code counts them)."""
    for reason, n in zip(reasons, counts, strict=True):
        if n:
            drops[reason] = drops.get(reason, 0) + n
