"""Receiver indexes: the random 32-bit names our handshakes and keypairs go by on the wire.

A peer holds at most one handshake index and three keypair indexes (previous, current,
next). The handshake's index passes to the keypair it produced, as in the kernel, so a
response or cookie reply finds the handshake and the first transport message finds the
keypair under the same name. The table is the one place those rules are kept; the Device
owns it and hands it to every peer.
"""

from __future__ import annotations

import os
from array import array
from bisect import bisect_left, insort
from collections.abc import Callable
from typing import Generic, TypeVar

from .keypair import Keypair

P = TypeVar("P")  # the peer type: the table only stores it


class RandomPages:
    """Random bytes drawn a page at a time (os.urandom by default) and handed out in slices:
    a hub answering thousands of initiations a second takes a new index for each on the
    loop's thread, and every os.urandom call hands the GIL back and waits to take it again.
    For indexes only, which go on the wire in the clear: no secret waits in the page."""

    __slots__ = ("_at", "_page", "_page_size", "_source")

    def __init__(self, source: Callable[[int], bytes] = os.urandom,
                 page_size: int = 4096) -> None:
        self._source = source
        self._page_size = page_size
        self._page = b""
        self._at = 0

    def __call__(self, size: int) -> bytes:
        at = self._at
        if at + size > len(self._page):
            self._page, at = self._source(max(self._page_size, size)), 0
        self._at = at + size
        return self._page[at:at + size]


class IndexTable(Generic[P]):
    __slots__ = ("_entries", "_handshakes", "_keypair_indexes", "_random_bytes", "_sorted")

    def __init__(self, random_bytes: Callable[[int], bytes]) -> None:
        self._random_bytes = random_bytes
        # index -> (peer, keypair); keypair None while the index names a handshake.
        self._entries: dict[int, tuple[P, Keypair | None]] = {}
        self._handshakes: dict[P, int] = {}
        # The keypair indexes, kept sorted as keypairs come and go (a hub with 10,000 peers
        # rekeys dozens of times a second: no re-sort of them all each time).
        self._sorted = array("I")
        self._keypair_indexes: bytes | None = None  # _sorted's bytes, until it changes

    def __len__(self) -> int:
        return len(self._entries)

    def new_handshake(self, peer: P) -> int:
        """A fresh index for `peer`'s handshake; its previous handshake index is freed."""
        self.forget_handshake(peer)
        while True:
            index = int.from_bytes(self._random_bytes(4), "little")
            if index not in self._entries:
                break
        self._entries[index] = (peer, None)
        self._handshakes[peer] = index
        return index

    def forget_handshake(self, peer: P) -> None:
        index = self._handshakes.pop(peer, None)
        if index is not None and self._entries.get(index, (None, True))[1] is None:
            del self._entries[index]

    def add_keypair(self, peer: P, keypair: Keypair) -> None:
        """The keypair takes over the index of the handshake that derived it."""
        self._handshakes.pop(peer, None)
        index = keypair.local_index
        previous = self._entries.get(index)
        self._entries[index] = (peer, keypair)
        if previous is None or previous[1] is None:  # not yet a keypair's: one entry each
            insort(self._sorted, index)
            self._keypair_indexes = None

    def forget_keypair(self, keypair: Keypair) -> None:
        entry = self._entries.get(keypair.local_index)
        if entry is not None and entry[1] is keypair:
            del self._entries[keypair.local_index]
            del self._sorted[bisect_left(self._sorted, keypair.local_index)]
            self._keypair_indexes = None

    def peer(self, index: int) -> P | None:
        """Whoever the index names, handshake or keypair (a cookie reply may answer either)."""
        entry = self._entries.get(index)
        return None if entry is None else entry[0]

    def handshake_peer(self, index: int) -> P | None:
        """The peer whose handshake in flight the index names (a response's receiver)."""
        entry = self._entries.get(index)
        return entry[0] if entry is not None and entry[1] is None else None

    def session(self, index: int) -> tuple[P, Keypair] | None:
        """The peer and keypair a transport message's receiver index names."""
        entry = self._entries.get(index)
        if entry is None or entry[1] is None:
            return None
        return entry[0], entry[1]

    def keypair_indexes(self) -> bytes:
        """The indexes that name a keypair, sorted, as a native uint32 array: what the native
        receive screen checks transport messages against (vpn/core/wireguard/_screen.c)."""
        if self._keypair_indexes is None:
            self._keypair_indexes = self._sorted.tobytes()
        return self._keypair_indexes
