"""Types of _screen.c (the WireGuard receive screen, for vpn/io/_udp.c's receive)."""

from collections.abc import Sequence
from typing import Any, final

from _typeshed import ReadableBuffer

# Drops by screen.SCREEN_REASONS: (too_short, transport_too_short, unknown_type, bad_length,
# reserved_nonzero, bad_mac1, unknown_receiver_index).
_Counts = tuple[int, int, int, int, int, int, int]

@final
class Screen:
    def __new__(cls, known: ReadableBuffer, mac1_key: ReadableBuffer) -> Screen: ...
    @property
    def capsule(self) -> object:
        """The DatagramScreen (vpn/core/include/screen.h) that _udp.receive takes."""

    def screen(self, data: ReadableBuffer, segment_size: int, /
               ) -> tuple[list[tuple[int, int]], _Counts | None, bool]:
        """(runs, counts, lost): (start, length) of each stretch of datagrams that pass."""

def run_stop(data: ReadableBuffer, segment_size: int, pos: int, /) -> int:
    """receive_jobs.run_stop's twin: the end of the run of transport messages from data[pos:]."""

def whole_runs(batch: Sequence[tuple[Any, int, Any]], start: int, header: ReadableBuffer,
               source: Any, offset: int, parts: list[Any], /) -> tuple[int, int, int]:
    """receive_jobs.whole_runs' twin: the receives from batch[start:] that continue a run."""
