"""Per-source token buckets that limit handshake processing while the device is under load.

IPv4 sources are keyed by address, IPv6 by /64; the table is bounded and collected by `now`.
"""

from __future__ import annotations

from dataclasses import dataclass

from .constants import (
    RATELIMIT_BURST,
    RATELIMIT_GC_INTERVAL,
    RATELIMIT_MAX_ENTRIES,
    RATELIMIT_PACKETS_PER_SECOND,
)

_NS = 1_000_000_000
PACKET_COST_NS = _NS // RATELIMIT_PACKETS_PER_SECOND
MAX_TOKENS_NS = PACKET_COST_NS * RATELIMIT_BURST


@dataclass(slots=True)
class _Bucket:
    last_ns: int
    tokens_ns: int


def source_key(ip_packed: bytes) -> bytes:
    """Bucket key: the whole IPv4 address, or the /64 of an IPv6 one."""
    return ip_packed if len(ip_packed) == 4 else ip_packed[:8]


class RateLimiter:
    """Token buckets in nanoseconds of credit: 20 packets/s with a burst of 5 per source."""

    __slots__ = ("_last_gc_ns", "_table", "max_entries")

    def __init__(self, max_entries: int = RATELIMIT_MAX_ENTRIES) -> None:
        self._table: dict[bytes, _Bucket] = {}
        self._last_gc_ns = 0
        self.max_entries = max_entries

    def __len__(self) -> int:
        return len(self._table)

    def allow(self, ip_packed: bytes, now: float) -> bool:
        now_ns = int(now * _NS)
        if now_ns - self._last_gc_ns >= RATELIMIT_GC_INTERVAL * _NS:
            self.collect(now)
        key = source_key(ip_packed)
        bucket = self._table.get(key)
        if bucket is None:
            if len(self._table) >= self.max_entries:
                return False  # table full: refuse rather than grow without bound
            self._table[key] = _Bucket(now_ns, MAX_TOKENS_NS - PACKET_COST_NS)
            return True
        tokens = min(MAX_TOKENS_NS, bucket.tokens_ns + now_ns - bucket.last_ns)
        bucket.last_ns = now_ns
        if tokens >= PACKET_COST_NS:
            bucket.tokens_ns = tokens - PACKET_COST_NS
            return True
        bucket.tokens_ns = tokens
        return False

    def collect(self, now: float) -> None:
        """Drop buckets idle for a second: by then they would be full again anyway."""
        now_ns = int(now * _NS)
        self._last_gc_ns = now_ns
        horizon = now_ns - int(RATELIMIT_GC_INTERVAL * _NS)
        stale = [k for k, b in self._table.items() if b.last_ns <= horizon]
        for key in stale:
            del self._table[key]
