"""Handshake rate limiting per source: burst, refill, IPv6 /64 grouping, a bounded table."""

from __future__ import annotations

import ipaddress

from vpn.core.wireguard.ratelimiter import RateLimiter


def ip(text: str) -> bytes:
    return ipaddress.ip_address(text).packed


def test_burst_of_five_then_twenty_per_second() -> None:
    rl = RateLimiter()
    src = ip("198.18.0.1")
    assert [rl.allow(src, 10.0) for _ in range(6)] == [True] * 5 + [False]
    assert not rl.allow(src, 10.04)
    assert rl.allow(src, 10.05)  # one packet's worth of credit after 1/20 s
    assert not rl.allow(src, 10.05)
    # A steady 20/s stream is all allowed.
    assert all(rl.allow(src, 11.0 + i / 20) for i in range(100))


def test_sources_are_independent_and_ipv6_is_grouped_by_64() -> None:
    rl = RateLimiter()
    for _ in range(5):
        assert rl.allow(ip("fd00:1:2:3::1"), 0.0)
    assert not rl.allow(ip("fd00:1:2:3:ffff::9"), 0.0)  # same /64
    assert rl.allow(ip("fd00:1:2:4::1"), 0.0)  # another /64
    assert rl.allow(ip("198.18.0.2"), 0.0)


def test_table_is_bounded_and_collected() -> None:
    rl = RateLimiter(max_entries=10)
    for i in range(10):
        assert rl.allow(bytes([198, 18, 1, i]), 0.0)
    assert not rl.allow(bytes([198, 18, 2, 0]), 0.5)  # full: new sources refused
    assert len(rl) == 10
    assert rl.allow(bytes([198, 18, 2, 0]), 2.0)  # collection by `now` made room
    assert len(rl) == 1
