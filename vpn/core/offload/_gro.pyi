"""Types of _gro.c (native GRO coalescing, the twin of gro.Coalescer)."""

from typing import final

from _typeshed import ReadableBuffer

MAX_FLOWS: int
MAX_UDP_SEGMENTS: int

@final
class Coalescer:
    """GRO over packets laid out in `buffer` (held, read only, for the object's life)."""

    def __new__(cls, buffer: ReadableBuffer, *, udp: bool = False,
                max_size: int = 65535) -> Coalescer: ...
    @property
    def udp(self) -> bool:
        """UDP runs are kept too."""
    @property
    def max_size(self) -> int:
        """The largest IP length of a coalesced frame."""
    def add_records(self, records: ReadableBuffer, start: int, stop: int,
                    denied: ReadableBuffer | None = None) -> int:
        """Add the packets of records start..stop-1 (little-endian uint32 offset, length,
        slot each), skipping those whose slot is set in `denied`; returns how many were."""
    def frames(self) -> list[tuple[bytes, bytes, int]]:
        """(header, body, segments) of every frame gathered, in order; then empty again."""
    def clear(self) -> None:
        """Forget everything gathered."""
