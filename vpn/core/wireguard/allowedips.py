"""Allowed-IPs: the longest-prefix-match table behind cryptokey routing, IPv4 and IPv6.

Maps prefixes to peers for sending, and checks a decrypted packet's source for receiving.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Hashable, Iterable, Iterator
from typing import Generic, TypeVar

from vpn.core.types import Network

P = TypeVar("P", bound=Hashable)
_from_bytes = int.from_bytes
_NETWORKS = (ipaddress.IPv4Network, ipaddress.IPv6Network)  # by `version == 6`


class _Family(Generic[P]):
    """One address family: a hash table per prefix length, probed longest first.

    In Python every trie step is an interpreter round trip, so a walk of up to 128 nodes
    costs far more than a few dict probes; real configurations use a handful of distinct
    prefix lengths, which bounds a lookup to that many probes.
    """

    __slots__ = ("bits", "order", "tables")

    def __init__(self, bits: int) -> None:
        self.bits = bits
        self.tables: dict[int, dict[int, P]] = {}
        self.order: list[tuple[int, dict[int, P]]] = []  # (mask, table), longest first

    def mask(self, length: int) -> int:
        return ((1 << length) - 1) << (self.bits - length)

    def reorder(self) -> None:
        self.order = [
            (self.mask(length), self.tables[length]) for length in sorted(self.tables, reverse=True)
        ]

    def set(self, length: int, value: int, peer: P) -> P | None:
        table = self.tables.get(length)
        if table is None:
            table = self.tables[length] = {}
            self.reorder()
        old = table.get(value)
        table[value] = peer
        return old

    def delete(self, length: int, value: int) -> P | None:
        table = self.tables.get(length)
        if table is None or value not in table:
            return None
        peer = table.pop(value)
        if not table:
            del self.tables[length]
            self.reorder()
        return peer


Prefix = tuple[int, int, int]  # IP version, prefix length, network address as an integer


def prefix_of(network: Network | str) -> Prefix:
    """A network (or its text, host bits cleared) as the numbers the table keeps."""
    # ip_network() of a network object formats it and parses the text again: a tenth of
    # a second per 10,000 prefixes that a large `wg setconf` would pay twice.
    net = network if isinstance(network, _NETWORKS) else ipaddress.ip_network(
        network, strict=False)
    return net.version, net.prefixlen, int(net.network_address)


def networks(prefixes: Iterable[Prefix]) -> list[Network]:
    """Prefixes as network objects, in order (IPv4 first, then by length and address)."""
    # An (int, length) pair: an address object in the pair is formatted and parsed.
    return [_NETWORKS[version == 6]((value, length))
            for version, length, value in sorted(prefixes)]


class AllowedIPs(Generic[P]):
    """Prefix -> peer. A prefix belongs to one peer; inserting it again moves it."""

    __slots__ = ("_by_peer", "_families", "_listed")

    def __init__(self) -> None:
        self._families: dict[int, _Family[P]] = {4: _Family(32), 6: _Family(128)}
        self._by_peer: dict[P, set[Prefix]] = {}
        # _by_peer's sets as tuples, made when first asked for after a change (prefixes_for).
        self._listed: dict[P, tuple[Prefix, ...]] = {}

    def __repr__(self) -> str:
        return f"AllowedIPs({len(self)} prefixes, {len(self._by_peer)} peers)"

    def __len__(self) -> int:
        return sum(len(keys) for keys in self._by_peer.values())

    def insert(self, network: Network | str, peer: P) -> None:
        key = version, length, value = prefix_of(network)
        old = self._families[version].set(length, value, peer)
        if old is not None:
            self._forget(old, key)
        self._by_peer.setdefault(peer, set()).add(key)
        self._listed.pop(peer, None)

    def remove(self, network: Network | str) -> P | None:
        """Remove one prefix; return the peer that had it."""
        key = version, length, value = prefix_of(network)
        old = self._families[version].delete(length, value)
        if old is not None:
            self._forget(old, key)
        return old

    def _forget(self, peer: P, key: Prefix) -> None:
        keys = self._by_peer[peer]
        keys.discard(key)
        if not keys:
            del self._by_peer[peer]
        self._listed.pop(peer, None)

    def remove_by_peer(self, peer: P) -> None:
        self._listed.pop(peer, None)
        for version, length, value in self._by_peer.pop(peer, set()):
            self._families[version].delete(length, value)

    def entries_for(self, peer: P) -> list[Network]:
        return networks(self.prefixes_for(peer))

    def prefixes_for(self, peer: P) -> tuple[Prefix, ...]:
        """A peer's prefixes as plain numbers, in no order: a tuple kept until they change,
        so a snapshot of every peer copies nothing. Kept, it is also old enough for the
        garbage collector to have stopped tracking it: a snapshot row holding a tuple made
        in the same pass stays tracked until a later, older generation's collection (the
        collector reorders the young objects, the row before the tuple), and 10,000 such
        rows per get made a full collection (over 100 ms) due every few dozen gets."""
        listed = self._listed.get(peer)
        if listed is None:
            listed = tuple(self._by_peer.get(peer, ()))
            if peer in self._by_peer:
                self._listed[peer] = listed
        return listed

    def __iter__(self) -> Iterator[tuple[Network, P]]:
        for peer in list(self._by_peer):
            for net in self.entries_for(peer):
                yield net, peer

    def lookup(self, address: bytes | bytearray | memoryview) -> P | None:
        """The peer owning the longest prefix that contains a 4- or 16-byte address."""
        n = len(address)
        if n == 4:
            order = self._families[4].order
        elif n == 16:
            order = self._families[6].order
        else:
            return None
        a = _from_bytes(address, "big")
        for mask, table in order:
            peer = table.get(a & mask)
            if peer is not None:
                return peer
        return None

    def source_allowed(self, peer: P, source: bytes | bytearray | memoryview) -> bool:
        """Cryptokey routing's receive check: may `peer` send from this inner source?"""
        return self.lookup(source) is peer
