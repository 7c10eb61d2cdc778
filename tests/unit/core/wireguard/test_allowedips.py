"""Allowed-IPs: longest-prefix match against a brute-force reference, moves and removals."""

from __future__ import annotations

import ipaddress

from hypothesis import given, settings
from hypothesis import strategies as st

from vpn.core.wireguard.allowedips import AllowedIPs


def test_basic_longest_prefix_and_moves() -> None:
    t: AllowedIPs[str] = AllowedIPs()
    t.insert("198.18.0.0/15", "a")
    t.insert("198.18.5.0/24", "b")
    t.insert("0.0.0.0/0", "c")
    t.insert("fd00::/8", "a")
    t.insert("fd00:1::/32", "b")
    look = lambda s: t.lookup(ipaddress.ip_address(s).packed)  # noqa: E731
    assert look("198.18.5.7") == "b" and look("198.19.0.1") == "a" and look("8.8.8.8") == "c"
    assert look("fd00:1::9") == "b" and look("fd00:2::9") == "a" and look("fe80::1") is None
    t.insert("198.18.5.0/24", "a")  # moves from b to a
    assert look("198.18.5.7") == "a"
    assert [str(n) for n in t.entries_for("b")] == ["fd00:1::/32"]
    t.insert("198.18.5.9/24", "b")  # host bits are masked, as wg does
    assert look("198.18.5.7") == "b"
    assert t.remove("198.18.5.0/24") == "b" and look("198.18.5.7") == "a"
    t.remove_by_peer("a")
    assert look("198.19.0.1") == "c" and t.entries_for("a") == []
    assert t.source_allowed("c", ipaddress.ip_address("1.2.3.4").packed)
    assert not t.source_allowed("b", ipaddress.ip_address("1.2.3.4").packed)
    assert t.lookup(b"\x01\x02") is None


def _prefixes(bits: int):  # type: ignore[no-untyped-def]
    return st.tuples(st.integers(0, 2**bits - 1), st.integers(0, bits), st.sampled_from("pqrs"))


def _reference(entries: dict[tuple[int, int], str], addr: int, bits: int) -> str | None:
    best, best_len = None, -1
    for (value, length), peer in entries.items():
        mask = ((1 << length) - 1) << (bits - length)
        if addr & mask == value and length > best_len:
            best, best_len = peer, length
    return best


def _check(bits: int, inserts, removes, probes) -> None:  # type: ignore[no-untyped-def]
    t: AllowedIPs[str] = AllowedIPs()
    ref: dict[tuple[int, int], str] = {}
    net_type = ipaddress.IPv4Network if bits == 32 else ipaddress.IPv6Network
    for value, length, peer in inserts:
        net = net_type((value, length), strict=False)
        t.insert(net, peer)
        ref[(int(net.network_address), length)] = peer
    for index in removes:
        if ref:
            key = sorted(ref)[index % len(ref)]
            assert t.remove(net_type(key)) == ref.pop(key)
    candidates = list(probes) + [v for v, _ in ref]  # also probe each prefix's own base
    for addr in candidates:
        assert t.lookup(addr.to_bytes(bits // 8, "big")) == _reference(ref, addr, bits)
    for peer in "pqrs":
        expected = sorted(k for k, v in ref.items() if v == peer)
        got = sorted((int(n.network_address), n.prefixlen) for n in t.entries_for(peer))
        assert got == expected


@settings(max_examples=150, deadline=None)
@given(
    st.lists(_prefixes(32), max_size=40),
    st.lists(st.integers(0, 100), max_size=10),
    st.lists(st.integers(0, 2**32 - 1), max_size=40),
)
def test_ipv4_matches_brute_force(inserts, removes, probes) -> None:  # type: ignore[no-untyped-def]
    _check(32, inserts, removes, probes)


@settings(max_examples=150, deadline=None)
@given(
    st.lists(_prefixes(128), max_size=40),
    st.lists(st.integers(0, 100), max_size=10),
    st.lists(st.integers(0, 2**128 - 1), max_size=40),
)
def test_ipv6_matches_brute_force(inserts, removes, probes) -> None:  # type: ignore[no-untyped-def]
    _check(128, inserts, removes, probes)


def test_families_do_not_mix() -> None:
    t: AllowedIPs[str] = AllowedIPs()
    t.insert("::/0", "v6")
    assert t.lookup(bytes(4)) is None
    t.insert("0.0.0.0/0", "v4")
    assert t.lookup(bytes(4)) == "v4" and t.lookup(bytes(16)) == "v6"
    assert len(t) == 2


def test_prefixes_for_follows_every_change() -> None:
    """The kept tuple of a peer's prefixes is made again after each change that touches it."""
    t: AllowedIPs[str] = AllowedIPs()
    t.insert("198.18.0.0/16", "a")
    first = t.prefixes_for("a")
    assert first == ((4, 16, 0xC6120000),) and t.prefixes_for("a") is first
    t.insert("fd00::/8", "a")
    assert sorted(t.prefixes_for("a")) == [(4, 16, 0xC6120000), (6, 8, 0xFD << 120)]
    t.insert("fd00::/8", "b")  # moved: both peers' lists change
    assert t.prefixes_for("a") == ((4, 16, 0xC6120000),)
    assert t.prefixes_for("b") == ((6, 8, 0xFD << 120),)
    t.remove("198.18.0.0/16")
    assert t.prefixes_for("a") == ()
    t.remove_by_peer("b")
    assert t.prefixes_for("b") == () and len(t) == 0
