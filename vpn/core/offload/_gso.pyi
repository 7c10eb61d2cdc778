"""Types of _gso.c (native GSO segmentation, the twin of gso.split_python). Every function
takes its arguments by position only; each raises OffloadError where split_python would."""

from collections.abc import Sequence
from typing import TypeVar

from _typeshed import ReadableBuffer, WriteableBuffer

_Packet = TypeVar("_Packet", bound=ReadableBuffer)

def size(packet: ReadableBuffer, flags: int, gso_type: int, hdr_len: int, gso_size: int,
         csum_start: int, csum_offset: int, gap: int, tail: int, /) -> int:
    """Bytes split_into needs for this packet with that gap and tail around each segment."""

def shape(packet: ReadableBuffer, flags: int, gso_type: int, hdr_len: int, gso_size: int,
          csum_start: int, csum_offset: int, /) -> tuple[int, int, int]:
    """(count, full, last) as split_into would return them, nothing written."""

def split_into(out: WriteableBuffer, offset: int, packet: ReadableBuffer, flags: int,
               gso_type: int, hdr_len: int, gso_size: int, csum_start: int,
               csum_offset: int, gap: int, tail: int, /) -> tuple[int, int, int]:
    """(count, full, last): the segments written into out, as gso.split_into_python."""

def split_runs(out: WriteableBuffer, offset: int,
               reads: Sequence[tuple[ReadableBuffer, int, int, int, int, int, int]], gap: int,
               tail: int, /) -> list[tuple[int, int, int]]:
    """split_into for each read, back to back from offset; each read's (count, full, last)."""

def segments(packet: _Packet, flags: int, gso_type: int, hdr_len: int, gso_size: int,
             csum_start: int, csum_offset: int, /) -> list[_Packet | memoryview]:
    """split_python's result: [packet] itself when there is nothing to do, else
    memoryviews of one new bytearray."""
