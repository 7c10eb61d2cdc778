"""Types of _udp.c (batch receive with a datagram screen, the twin of
UdpSocket.receive_batch; the busy-poll; the TUN's read drain). Every function takes its
arguments by position only."""

from collections.abc import Sequence

from _typeshed import WriteableBuffer

MAX_BATCH: int

# (receives, gro_receives, gro_segments, truncated, errors)
_Stats = tuple[int, int, int, int, int]

def receive(fd: int, buffer: WriteableBuffer, slot_size: int, slots: int, screen: object, /
            ) -> tuple[list[tuple[int, int, int, bytes]], tuple[int, ...] | None, list[bytes],
                       _Stats]:
    """(entries, counts, lost, stats): entries are (offset, length, segment_size, sockaddr);
    `screen` is a capsule of a DatagramScreen (vpn/core/include/screen.h)."""

def wait_readable(fd_a: int, fd_b: int, budget_ns: int, /) -> int:
    """Busy-poll both descriptors (a negative one left out) with the GIL released until one
    is readable (bit 0: fd_a, bit 1: fd_b) or budget_ns have passed (0)."""

def read_frames(fd: int, slots: Sequence[WriteableBuffer], /) -> list[int]:
    """One non-blocking read into each slot in turn until nothing is waiting or the slots
    are used up: the lengths read. OSError for an error before the first read."""
