"""IndexTable's keypair indexes, kept sorted as keypairs come and go, against a rebuild from
scratch (what it did before: sort every keypair index on each change)."""

from __future__ import annotations

import os
from array import array

from hypothesis import given, settings
from hypothesis import strategies as st

from vpn.core.wireguard.index import IndexTable, RandomPages
from vpn.core.wireguard.keypair import Keypair
from vpn.core.wireguard.noise import SessionKeys

PEERS = 4

# (peer, what): a handshake, its keypair (under the handshake's index, as a session does,
# or under an index already a keypair's), or the peer's oldest keypair forgotten.
steps = st.lists(st.tuples(st.integers(0, PEERS - 1),
                           st.sampled_from(["handshake", "keypair", "same_index", "forget"])),
                 max_size=60)


def _keypair(index: int) -> Keypair:
    return Keypair(SessionKeys(os.urandom(32), os.urandom(32), True, index, 1), 0.0)


@settings(max_examples=300, deadline=None)
@given(steps, st.randoms(use_true_random=False))
def test_keypair_indexes_are_every_keypairs_sorted(sequence: list, rng: object) -> None:
    table: IndexTable[int] = IndexTable(lambda n: rng.randbytes(n))  # type: ignore[attr-defined]
    pending: dict[int, int] = {}  # peer -> its handshake index
    held: dict[int, list[Keypair]] = {peer: [] for peer in range(PEERS)}
    for peer, what in sequence:
        if what == "handshake":
            pending[peer] = table.new_handshake(peer)
        elif what == "keypair" and peer in pending:
            keypair = _keypair(pending.pop(peer))
            table.add_keypair(peer, keypair)
            held[peer].append(keypair)
        elif what == "same_index" and held[peer]:
            keypair = _keypair(held[peer][-1].local_index)  # replaces the one under it
            table.add_keypair(peer, keypair)
            held[peer][-1] = keypair
        elif what == "forget" and held[peer]:
            table.forget_keypair(held[peer].pop(0))
        expected = sorted({kp.local_index for kps in held.values() for kp in kps})
        assert array("I", table.keypair_indexes()).tolist() == expected
        for kps in held.values():
            for kp in kps:
                assert table.session(kp.local_index) is not None


@settings(max_examples=100)
@given(sizes=st.lists(st.integers(0, 40), max_size=200), page_size=st.integers(1, 64))
def test_random_pages_hand_out_each_page_in_order(sizes: list[int], page_size: int) -> None:
    """Each draw is the next slice of the current page; a new page only when the draw does
    not fit in what is left (one of the draw's size when it is larger than a page)."""
    pages: list[bytes] = []

    def source(size: int) -> bytes:  # page k is all k: which page a draw came from shows
        pages.append(bytes([len(pages) % 256]) * size)
        return pages[-1]

    draw = RandomPages(source, page_size)
    page, used = -1, 0
    for size in sizes:
        got = draw(size)
        assert len(got) == size
        if size == 0:
            continue
        if page < 0 or used + size > len(pages[page]):
            page, used = page + 1, 0
            assert len(pages[page]) == max(page_size, size)
        assert got == pages[page][used:used + size]
        used += size
    assert len(pages) == page + 1


def test_random_pages_call_the_source_once_a_page() -> None:
    calls: list[int] = []

    def source(size: int) -> bytes:
        calls.append(size)
        return bytes(size)

    draw = RandomPages(source, 4096)
    for _ in range(2048):
        draw(4)
    assert calls == [4096, 4096]
