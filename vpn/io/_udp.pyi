"""Types of _udp.c (batch receive with the datagram screen, the twin of
UdpSocket.receive_batch). Both functions take their arguments by position only."""

from _typeshed import ReadableBuffer, WriteableBuffer

MAX_BATCH: int

# Drops by reason: (too_short, transport_too_short, unknown_type, bad_length,
# reserved_nonzero, bad_mac1, unknown_receiver_index).
_Counts = tuple[int, int, int, int, int, int, int]
# (receives, gro_receives, gro_segments, truncated, errors)
_Stats = tuple[int, int, int, int, int]

def screen(data: ReadableBuffer, segment_size: int, known: ReadableBuffer,
           mac1_key: ReadableBuffer, /) -> tuple[list[tuple[int, int]], _Counts | None, bool]:
    """(runs, counts, lost): (start, length) of each stretch of datagrams that pass."""

def receive(fd: int, buffer: WriteableBuffer, slot_size: int, slots: int,
            known: ReadableBuffer, mac1_key: ReadableBuffer, /
            ) -> tuple[list[tuple[int, int, int, bytes]], _Counts | None, list[bytes], _Stats]:
    """(entries, counts, lost, stats): entries are (offset, length, segment_size, sockaddr)."""
