"""Transport keypairs: one handshake's two keys, their counters and replay window, and
the batch calls of the data path (seal a batch or a super-packet laid out in place; open a
keypair's run of a receive, then accept it in order).

The crypto itself is one TransportAead per direction (transport_reference.py): the native
_transport.TransportKey where it is built (fastpath.py), else the Python reference
ReferenceTransportKey, with the same methods and results; a keypair picks one at birth and
calls it the same way, so there is one code path here for both.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, MutableMapping, Sequence

from vpn.core.types import Buffer

from .constants import (
    MESSAGE_TRANSPORT,
    REJECT_AFTER_MESSAGES,
    REJECT_AFTER_TIME,
    TRANSPORT_MIN_SIZE,
)
from .fastpath import FAST_PATH, TransportKey, native_accept_run
from .messages import TRANSPORT_HEADER, MessageError
from .noise import SessionKeys
from .replay import ReplayWindow
from .transport_reference import (
    BATCH_DROP_REASONS,
    MAX_SOURCES,
    OPENED,
    OPENED_KEEPALIVE,
    OPENED_PACKET,
    OPENED_STATUS,
    RECORD,
    RUN_DROP_REASONS,
    OpenRun,
    ReferenceTransportKey,
    RunDrops,
    TransportAead,
    padded_length,
    reference_accept_run,
    transport_size,
)

__all__ = ["MAX_SOURCES", "OPENED", "OPENED_KEEPALIVE", "OPENED_PACKET", "OPENED_STATUS",
           "RECORD", "Keypair", "TransportError", "padded_length", "transport_size"]

AcceptRun = Callable[[Buffer, int, Buffer, int, Buffer],
                     tuple[int, int, int, int, "RunDrops | None"]]


class TransportError(MessageError):
    """A transport message that must be dropped (bad tag, replay, wrong or dead keypair)."""


class Keypair:
    """One direction-pair of ChaCha20-Poly1305 keys from one handshake."""

    __slots__ = (
        "_accept_run",
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
        key: Callable[[Buffer], TransportAead] = TransportKey if native else ReferenceTransportKey
        self._accept_run: AcceptRun = native_accept_run if native else reference_accept_run
        self._send: TransportAead | None = key(keys.send_key)
        self._recv: TransportAead | None = key(keys.recv_key)
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
        for key in (self._send, self._recv):
            if key is not None:
                key.zero()
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
        thread (encrypt_batch_at, seal_segments_at, seal_runs_at): the first of them, or None
        when they would pass the message limit or the keypair is zeroed (then none is taken). Called
        on one thread only (the event loop's), before the crypto: a nonce is never used
        twice, whatever order the sealing threads finish in."""
        counter = self.send_counter
        if counter + count > REJECT_AFTER_MESSAGES or self._send is None:
            return None
        self.send_counter = counter + count
        return counter

    def _sealer(self) -> TransportAead:
        """The sending key, or TransportError once the keypair was zeroed (a reservation
        made before then seals nothing)."""
        send = self._send
        if send is None:
            raise TransportError("keypair_exhausted")
        return send

    def encrypt_batch_at(self, first: int, packets: Sequence[Buffer],
                         out: bytearray | memoryview, offset: int = 0, mtu: int = 0
                         ) -> list[int]:
        """encrypt_batch with counters from `first`, which reserve() gave for len(packets)
        messages; safe on any thread, beside other calls on this keypair."""
        return self._sealer().seal_batch(packets, out, offset, mtu, self.remote_index, first)

    def seal_segments_at(self, first: int, out: bytearray | memoryview, offset: int,
                         count: int, full: int, last: int, gap: int, tail: int, mtu: int
                         ) -> tuple[int, int]:
        """seal_segments with counters from `first`, which reserve() gave for `count`
        messages; safe on any thread, beside other calls on this keypair."""
        return self._sealer().seal_segments(out, offset, count, full, last, gap, tail, mtu,
                                            self.remote_index, first)

    def seal_runs_at(self, first: int, out: bytearray | memoryview, offset: int,
                     runs: Sequence[tuple[int, int, int]], gap: int, tail: int, mtu: int
                     ) -> list[int]:
        """seal_segments_at for each (count, full, last) of `runs` (gso.split_runs' layout)
        in one call, counters from `first` (reserve() gave them for every run's count): the
        messages' lengths, back to back from `offset`."""
        return self._sealer().seal_runs(out, offset, runs, gap, tail, mtu, self.remote_index,
                                        first)

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
        messages = tuple(messages)
        recv = self._recv
        if recv is None:
            return self._expired(messages, drops)
        replay = self.replay
        opened, replay.greatest, counts = recv.open_batch(
            messages, out, offset, self.local_index, replay.seen, replay.greatest)
        if counts is not None and drops is not None:
            _add_drops(drops, BATCH_DROP_REASONS, counts)
        return opened

    def _expired(self, messages: Sequence[Buffer],
                 drops: MutableMapping[str, int] | None) -> list[int]:
        """decrypt_batch once the keys are gone: every message dropped, by the reason the
        first failing check gives."""
        if drops is not None:
            for message in messages:
                if len(message) < TRANSPORT_MIN_SIZE:
                    reason = "transport_too_short"
                else:
                    kind, receiver, _ = TRANSPORT_HEADER.unpack_from(message)
                    wrong = kind != MESSAGE_TRANSPORT or receiver != self.local_index
                    reason = "wrong_keypair" if wrong else "keypair_expired"
                drops[reason] = drops.get(reason, 0) + 1
        return [-1] * len(messages)

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
        recv = self._recv
        if recv is None:
            raise TransportError("keypair_expired")
        replay = self.replay
        stop, offset, count, counts, sources = recv.open_run(
            data, segment_size, start, out, offset, self.local_index, capacity, opened,
            replay.seen if window else None, replay.greatest)
        if counts is not None:
            _add_drops(drops, RUN_DROP_REASONS, counts)
        return stop, offset, count, sources

    def open_runs(self, runs: Sequence[OpenRun], out: bytearray | memoryview,
                  opened: bytearray | memoryview
                  ) -> list[tuple[int, int, int, list[bytes], dict[str, int]]]:
        """open_run without the window of each of this keypair's runs, (data, segment_size,
        pos, stop, out_at): the plaintexts of data[pos:stop] from out[out_at:], the messages
        described in `opened` one after the other, in one call (the native one releases the
        GIL once for all). Returns (run, stop, count, sources, drops) per stretch opened (a
        run is one, or more where MAX_SOURCES cut it)."""
        recv = self._recv
        if recv is None:
            raise TransportError("keypair_expired")
        stretches = []
        for run, stop, count, counts, sources in recv.open_runs(runs, out, self.local_index,
                                                                 opened):
            drops: dict[str, int] = {}
            if counts is not None:
                _add_drops(drops, RUN_DROP_REASONS, counts)
            stretches.append((run, stop, count, sources, drops))
        return stretches

    def accept_run(self, opened: Buffer, count: int, records: bytearray | memoryview,
                   drops: MutableMapping[str, int]) -> tuple[int, int, int]:
        """The stage of a run that runs per keypair, in order: each of the `count` messages
        open_run described in `opened` goes through the replay window; a fresh packet is
        recorded in `records` (RECORD, from 0) as (offset, IP length, source slot), and
        fresh keepalives and packets counted with their bytes. Returns (nrec, fresh,
        nbytes); drops are added to `drops` by reason. Too few records for the packets, or
        an unknown status, raise ValueError before the window changes."""
        replay = self.replay
        nrec, replay.greatest, fresh, nbytes, counts = self._accept_run(
            opened, count, replay.seen, replay.greatest, records)
        if counts is not None:
            _add_drops(drops, RUN_DROP_REASONS, counts)
        return nrec, fresh, nbytes

    def preview_run(self, opened: Buffer, count: int, records: bytearray | memoryview) -> int:
        """The records accept_run would make of what open_run described if none of it were a
        replay (accept_run against an empty window), into `records`; changes nothing here.
        Returns how many. A worker coalesces them beside other jobs, before its turn for
        the window; accept_run's records, compared in turn, say whether that holds."""
        window = ReplayWindow()
        nrec, _, _, _, _ = self._accept_run(opened, count, window.seen, window.greatest,
                                            records)
        return nrec

    def decrypt(self, message: Buffer, now: float) -> bytes:
        """The padded plaintext of a transport message (b"" for a keepalive)."""
        if not self.receivable(now):
            raise TransportError("keypair_expired")
        out = bytearray(max(0, len(message) - TRANSPORT_MIN_SIZE))
        self.decrypt_into(message, out)
        return bytes(out)


def _add_drops(drops: MutableMapping[str, int], reasons: tuple[str, ...],
               counts: tuple[int, ...]) -> None:
    """Add an open's drop counts to `drops` under their reasons (`reasons`, in the order
    both paths count them)."""
    for reason, n in zip(reasons, counts, strict=True):
        if n:
            drops[reason] = drops.get(reason, 0) + n
