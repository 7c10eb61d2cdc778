"""The data path's large reusable buffers, resident only where they have been written.

``bytearray(n)`` writes every one of its n bytes, so the batch buffers (about 13 MB with the
default batches of 64) would be resident from the start, in an endpoint that may never see
more than a ping. Anonymous memory from mmap is zero-filled by the kernel page by page, on
first write: an idle endpoint holds none of it, a loaded one what its bursts really filled.
"""

from __future__ import annotations

import mmap

__all__ = ["reserve"]


def reserve(size: int) -> memoryview:
    """A writable, zero-filled buffer of `size` bytes whose pages cost nothing until written.

    The mapping lives as long as the view (or any view sliced from it)."""
    return memoryview(mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS))
