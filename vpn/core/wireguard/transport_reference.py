"""The Python reference of the native transport module (_transport.c): the same class and
function, the same arguments and results, so Keypair calls either one the same way and the
property tests hold them equal byte for byte.

The loops are written for CPython's sake: the nonce comes from one precompiled struct,
padding is decided with integer ops (a full-MTU segment needs none and is never copied), and
attributes are bound to locals. The replay window is replay.py's, over the caller's slots.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Protocol

from vpn.core.types import Buffer

from .constants import (
    AEAD_TAG_LEN,
    MESSAGE_TRANSPORT,
    PADDING_MULTIPLE,
    REJECT_AFTER_MESSAGES,
    TRANSPORT_HEADER_SIZE,
    TRANSPORT_MIN_SIZE,
)
from .crypto import InvalidTag, ReferenceAead
from .inner import inner_packet
from .messages import TRANSPORT_HEADER
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

# The order of the drop counts each open returns (wire.h's enum open_drop and run_drop).
BATCH_DROP_REASONS = ("transport_too_short", "wrong_keypair", "bad_auth", "replay")
RUN_DROP_REASONS = ("wrong_keypair", "bad_auth", "replay", "inner_not_ip",
                    "dishonest_packet_size")
# A run's record of one good packet: its offset in `out`, its IP length, the slot of its
# inner source; three little-endian uint32.
RECORD = struct.Struct("<III")
# open_run's description of one message that authenticated, for accept_run: its counter,
# its size on the wire, its plaintext's offset in `out`, its IP length, its status (an index
# of OPENED_STATUS: a packet, a keepalive, or the drop reason accept_run counts once the
# message is fresh) and its source slot.
OPENED = struct.Struct("<QIIIII")
OPENED_STATUS = ("packet", "keepalive", "inner_not_ip", "dishonest_packet_size")
OPENED_PACKET, OPENED_KEEPALIVE = 0, 1
# open_run returns once a call has seen this many distinct inner sources, so that its
# search among them stays short whatever an authenticated peer puts in its packets.
MAX_SOURCES = 64

BatchDrops = tuple[int, int, int, int]
RunDrops = tuple[int, int, int, int, int]
# open_runs' runs: (data, segment_size, pos, stop, out_at); and what it returns for each
# stretch of one: (the run's position in the list, stop, count, drops, sources).
OpenRun = tuple[Buffer, int, int, int, int]
Stretch = tuple[int, int, int, RunDrops | None, list[bytes]]


class TransportAead(Protocol):
    """One transport key, as _transport.TransportKey and ReferenceTransportKey hold it."""

    def seal_batch(self, packets: Sequence[Buffer], out: Buffer, offset: int, mtu: int,
                   receiver_index: int, first_counter: int, /) -> list[int]: ...

    def seal_segments(self, out: Buffer, offset: int, count: int, full: int, last: int,
                      gap: int, tail: int, mtu: int, receiver_index: int,
                      first_counter: int, /) -> tuple[int, int]: ...

    def seal_runs(self, out: Buffer, offset: int, runs: Sequence[tuple[int, int, int]],
                  gap: int, tail: int, mtu: int, receiver_index: int, first_counter: int, /
                  ) -> list[int]: ...

    def open_batch(self, messages: Sequence[Buffer], out: Buffer, offset: int,
                   local_index: int, seen: Buffer, greatest: int, /
                   ) -> tuple[list[int], int, BatchDrops | None]: ...

    def open_run(self, data: Buffer, segment_size: int, start: int, out: Buffer, offset: int,
                 local_index: int, capacity: int, opened: Buffer, seen: Buffer | None,
                 greatest: int, /) -> tuple[int, int, int, RunDrops | None, list[bytes]]: ...

    def open_runs(self, runs: Sequence[OpenRun], out: Buffer, local_index: int,
                  opened: Buffer, /) -> list[Stretch]: ...

    def zero(self) -> None: ...


def padded_length(n: int, mtu: int = 0) -> int:
    """Plaintext length after padding to 16 bytes, never past the MTU (0: no cap)."""
    padded = (n + _PAD_MASK) & -PADDING_MULTIPLE
    if mtu and padded > mtu:
        return n if n > mtu else mtu
    return padded


def transport_size(plaintext_len: int, mtu: int = 0) -> int:
    """Bytes on the wire for a plaintext of this length: header, padded body, tag."""
    return TRANSPORT_HEADER_SIZE + padded_length(plaintext_len, mtu) + AEAD_TAG_LEN


def _counts(drops: list[int]) -> tuple[int, ...] | None:
    return tuple(drops) if any(drops) else None


class ReferenceTransportKey:
    """_transport.TransportKey in Python, over `cryptography`'s ChaCha20-Poly1305."""

    __slots__ = ("_aead",)

    def __init__(self, key: Buffer) -> None:
        self._aead: ReferenceAead | None = ReferenceAead(key)

    def zero(self) -> None:
        """Forget the key (`cryptography` wipes its copy when the object is freed)."""
        self._aead = None

    def _key(self) -> ReferenceAead:
        if self._aead is None:
            raise ValueError("TransportKey was zeroed")
        return self._aead

    def seal_batch(self, packets: Sequence[Buffer], out: Buffer, offset: int, mtu: int,
                   receiver_index: int, first_counter: int, /) -> list[int]:
        """One transport message per packet back to back from out[offset:]; their lengths."""
        encrypt = self._key().encrypt_into
        view = memoryview(out)
        if len(view) < offset + sum(transport_size(len(p), mtu) for p in packets):
            raise ValueError("out too short for the batch")
        counter = first_counter
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
            _pack_header(view, offset, MESSAGE_TRANSPORT, receiver_index, counter)
            end = offset + n + TRANSPORT_MIN_SIZE
            encrypt(_nonce(counter), plaintext, None, view[offset + TRANSPORT_HEADER_SIZE:end])
            append(end - offset)
            offset = end
            counter += 1
        return lengths

    def seal_segments(self, out: Buffer, offset: int, count: int, full: int, last: int,
                      gap: int, tail: int, mtu: int, receiver_index: int,
                      first_counter: int, /) -> tuple[int, int]:
        """Seal in place what gso.split_into laid out; (size, last_size)."""
        if count < 1 or not 0 <= last <= full <= 0xFFFF or not 0 <= gap <= 0xFFFF \
                or not 0 <= tail <= 0xFFFF:
            raise ValueError("seal_segments: count, full, last, gap or tail out of range")
        self._key()
        stride = gap + full + tail
        size, last_size = transport_size(full, mtu), transport_size(last, mtu)
        if size > stride or last_size > gap + last + tail:
            raise ValueError("seal_segments: a message would not fit in its segment's slot")
        view = memoryview(out)
        if not 0 <= offset <= len(view) - ((count - 1) * stride + gap + last + tail):
            raise ValueError("seal_segments: out too short")
        plaintexts = [bytes(view[offset + gap + i * stride:][:full if i + 1 < count else last])
                      for i in range(count)]
        self.seal_batch(plaintexts, out, offset, mtu, receiver_index, first_counter)
        return size, last_size

    def seal_runs(self, out: Buffer, offset: int, runs: Sequence[tuple[int, int, int]],
                  gap: int, tail: int, mtu: int, receiver_index: int, first_counter: int, /
                  ) -> list[int]:
        """seal_segments for each (count, full, last) of `runs`, laid out back to back as
        gso.split_runs leaves them, counters from first_counter on across the runs: the
        messages back to back from out[offset]; their lengths."""
        self._key()
        view = memoryview(out)
        plaintexts: list[bytes] = []
        at = offset
        for count, full, last in runs:
            if count < 1 or not 0 <= last <= full <= 0xFFFF or not 0 <= gap <= 0xFFFF \
                    or not 0 <= tail <= 0xFFFF:
                raise ValueError("seal_runs: count, full, last, gap or tail out of range")
            stride = gap + full + tail
            if transport_size(full, mtu) > stride or transport_size(last, mtu) > gap + last + tail:
                raise ValueError("seal_runs: a message would not fit in its segment's slot")
            plaintexts += [bytes(view[at + gap + i * stride:][:full if i + 1 < count else last])
                           for i in range(count)]
            at += (count - 1) * stride + gap + last + tail
        if not 0 <= offset <= at <= len(view):
            raise ValueError("seal_runs: out too short")
        return self.seal_batch(plaintexts, out, offset, mtu, receiver_index, first_counter)

    def open_batch(self, messages: Sequence[Buffer], out: Buffer, offset: int,
                   local_index: int, seen: Buffer, greatest: int, /
                   ) -> tuple[list[int], int, BatchDrops | None]:
        """(lengths, greatest, drops): -1 in lengths for a dropped message. A message is
        checked against the window before its AEAD and enters it only once authenticated."""
        decrypt = self._key().decrypt_into
        window = ReplayWindow.over(seen, greatest)
        rejects, validate = window.rejects, window.validate
        view = memoryview(out)
        drops = [0, 0, 0, 0]  # BATCH_DROP_REASONS
        lengths: list[int] = []
        append = lengths.append
        for message in messages:
            n = len(message) - TRANSPORT_MIN_SIZE
            if n < 0:
                drops[0] += 1
            else:
                kind, receiver, counter = _unpack_header(message)
                if kind != MESSAGE_TRANSPORT or receiver != local_index:
                    drops[1] += 1
                elif rejects(counter):
                    drops[3] += 1  # known before the AEAD, which it is spared
                else:
                    end = offset + n
                    try:
                        decrypt(_nonce(counter), memoryview(message)[TRANSPORT_HEADER_SIZE:],
                                None, view[offset:end])
                    except InvalidTag:
                        drops[2] += 1
                    else:
                        if validate(counter):  # authenticated: now the window may move
                            append(n)
                            offset = end
                            continue
                        drops[3] += 1
            append(-1)
        return lengths, window.greatest, _counts(drops)  # type: ignore[return-value]

    def open_run(self, data: Buffer, segment_size: int, start: int, out: Buffer, offset: int,
                 local_index: int, capacity: int, opened: Buffer, seen: Buffer | None,
                 greatest: int, /) -> tuple[int, int, int, RunDrops | None, list[bytes]]:
        """(stop, offset, count, drops, sources): the run opened, no window changed (with
        `seen` None, only the message limit is checked before the AEAD)."""
        decrypt = self._key().decrypt_into
        size = len(data)
        if segment_size < 1 or not 0 <= start <= size or capacity < 0:
            raise ValueError("open_run: segment_size, start or capacity out of range")
        if not 0 <= offset <= len(out) or size - start > len(out) - offset:
            raise ValueError("open_run: out too short")
        view = memoryview(data)
        plain = memoryview(out)
        room = len(opened) // OPENED.size
        rejects = _at_limit if seen is None else ReplayWindow.over(seen, greatest).rejects
        drops = [0, 0, 0, 0, 0]  # RUN_DROP_REASONS
        sources: list[bytes] = []
        slots: dict[bytes, int] = {}
        pos = start
        count = packets = 0
        while pos < size:
            end = min(pos + segment_size, size)
            message = view[pos:end]
            if (end - pos < TRANSPORT_MIN_SIZE or message[0] != MESSAGE_TRANSPORT
                    or int.from_bytes(message[4:8], "little") != local_index or count == room
                    or packets == capacity or len(sources) == MAX_SOURCES):
                break
            pos = end
            kind, _, counter = _unpack_header(message)
            if kind != MESSAGE_TRANSPORT:
                drops[0] += 1
                continue
            if rejects(counter):
                drops[2] += 1  # known before the AEAD, which it is spared
                continue
            n = len(message) - TRANSPORT_MIN_SIZE
            try:
                decrypt(_nonce(counter), message[TRANSPORT_HEADER_SIZE:], None,
                        plain[offset:offset + n])
            except InvalidTag:
                drops[1] += 1
                continue
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
        return pos, offset, count, _counts(drops), sources  # type: ignore[return-value]

    def open_runs(self, runs: Sequence[OpenRun], out: Buffer, local_index: int,
                  opened: Buffer, /) -> list[Stretch]:
        """open_run without a window of each run's data[pos:stop] (plaintexts from
        out[out_at:]), described in `opened` one after the other, in as many stretches as
        MAX_SOURCES or the room take: each (run, stop, count, drops, sources)."""
        runs = list(runs)
        for i, (data, segment_size, pos, stop, out_at) in enumerate(runs):
            if segment_size < 1 or not 0 <= pos <= stop <= len(data):
                raise ValueError(f"open_runs: run {i}'s segment_size, pos or stop out of range")
            if not 0 <= out_at <= len(out) or stop - pos > len(out) - out_at:
                raise ValueError(f"out too short for run {i}")
        view = memoryview(opened)
        room = len(view) // OPENED.size
        at = 0
        stretches: list[Stretch] = []
        for i, (data, segment_size, pos, stop, offset) in enumerate(runs):
            head = memoryview(data)[:stop]
            while pos < stop:
                end, offset, count, drops, sources = self.open_run(
                    head, segment_size, pos, out, offset, local_index, room - at,
                    view[OPENED.size * at:], None, 0)
                if end <= pos:
                    raise RuntimeError("open_runs: a run made no progress")
                stretches.append((i, end, count, drops, sources))
                at += count
                pos = end
        return stretches


def reference_accept_run(opened: Buffer, count: int, seen: Buffer, greatest: int,
                         records: Buffer, /
                         ) -> tuple[int, int, int, int, RunDrops | None]:
    """_transport.accept_run in Python: (nrec, greatest, fresh, nbytes, drops)."""
    if not 0 <= count <= len(opened) // OPENED.size:
        raise ValueError("accept_run: count outside `opened`")
    entries = list(OPENED.iter_unpack(memoryview(opened)[:OPENED.size * count]))
    if any(entry[4] >= len(OPENED_STATUS) for entry in entries):
        raise ValueError("accept_run: an entry has no such status")
    if sum(entry[4] == OPENED_PACKET for entry in entries) > len(records) // RECORD.size:
        raise ValueError("accept_run: records too short for the packets")
    window = ReplayWindow.over(seen, greatest)
    validate = window.validate
    drops = [0, 0, 0, 0, 0]  # RUN_DROP_REASONS
    nrec = fresh = nbytes = 0
    for counter, size, at, length, status, slot in entries:
        if not validate(counter):
            drops[2] += 1
            continue
        fresh += 1
        nbytes += size
        if status == OPENED_PACKET:
            RECORD.pack_into(records, RECORD.size * nrec, at, length, slot)
            nrec += 1
        elif status != OPENED_KEEPALIVE:
            drops[RUN_DROP_REASONS.index(OPENED_STATUS[status])] += 1
    return nrec, window.greatest, fresh, nbytes, _counts(drops)  # type: ignore[return-value]


def _at_limit(counter: int) -> bool:
    """open_run's check before the AEAD without a window: the message limit alone."""
    return counter >= REJECT_AFTER_MESSAGES
