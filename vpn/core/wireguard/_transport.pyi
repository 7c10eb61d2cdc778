"""Types of _transport.c (transport messages sealed and opened in batches, OpenSSL
libcrypto; the reference is keypair.py). Methods take their arguments by position only."""

from collections.abc import Sequence
from typing import final

from _typeshed import ReadableBuffer, WriteableBuffer

REPLAY_SLOTS: int
REPLAY_WINDOW: int
RECORD_LEN: int
OPENED_LEN: int
MAX_SOURCES: int
REJECT_AFTER_MESSAGES: int
OPENSSL_VERSION: str

# (too_short, wrong_keypair, bad_auth, replay)
_BatchDrops = tuple[int, int, int, int]
# (wrong_keypair, bad_auth, replay, inner_not_ip, dishonest_packet_size)
_RunDrops = tuple[int, int, int, int, int]

@final
class TransportKey:
    """One ChaCha20-Poly1305 transport key (32 bytes); any number of threads may seal and
    open with it at once (each batch takes an OpenSSL context of its own)."""

    def __init__(self, key: ReadableBuffer) -> None: ...
    def seal_batch(self, packets: Sequence[ReadableBuffer], out: WriteableBuffer, offset: int,
                   mtu: int, receiver_index: int, first_counter: int, /) -> list[int]:
        """One transport message per packet back to back from out[offset:]; their lengths."""
    def seal_segments(self, out: WriteableBuffer, offset: int, count: int, full: int,
                      last: int, gap: int, tail: int, mtu: int, receiver_index: int,
                      first_counter: int, /) -> tuple[int, int]:
        """Seal in place what _gso.split_into laid out; (size, last_size)."""
    def seal_runs(self, out: WriteableBuffer, offset: int, runs: Sequence[tuple[int, int, int]],
                  gap: int, tail: int, mtu: int, receiver_index: int, first_counter: int, /
                  ) -> list[int]:
        """Seal in place what _gso.split_runs laid out; the messages' lengths."""
    def open_batch(self, messages: Sequence[ReadableBuffer], out: WriteableBuffer,
                   offset: int, local_index: int, seen: WriteableBuffer, greatest: int, /
                   ) -> tuple[list[int], int, _BatchDrops | None]:
        """(lengths, greatest, drops): -1 in lengths for a dropped message."""
    def open_run(self, data: ReadableBuffer, segment_size: int, start: int,
                 out: WriteableBuffer, offset: int, local_index: int, capacity: int,
                 opened: WriteableBuffer, seen: ReadableBuffer | None, greatest: int, /
                 ) -> tuple[int, int, int, _RunDrops | None, list[bytes]]:
        """(stop, offset, count, drops, sources): the run opened, no window changed."""
    def open_runs(self, runs: Sequence[tuple[ReadableBuffer, int, int, int, int]],
                  out: WriteableBuffer, local_index: int, opened: WriteableBuffer, /
                  ) -> list[tuple[int, int, int, _RunDrops | None, list[bytes]]]:
        """(run, stop, count, drops, sources) of each stretch of the runs opened."""
    def zero(self) -> None:
        """Wipe the key (a running batch's context when it ends); later batches raise
        ValueError."""

def accept_run(opened: ReadableBuffer, count: int, seen: WriteableBuffer, greatest: int,
               records: WriteableBuffer, /) -> tuple[int, int, int, int, _RunDrops | None]:
    """(nrec, greatest, fresh, nbytes, drops): open_run's messages through the window."""
