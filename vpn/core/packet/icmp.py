"""ICMP/ICMPv6 "destination unreachable" replies for packets the TUN gives us with no peer.

Pure: `unreachable` builds the reply from the offending packet; `UnreachableResponder` rate-limits.
"""

from __future__ import annotations

import struct

from vpn.core.packet.checksum import checksum, pseudo_header_sum
from vpn.core.packet.headers import (
    IPV4_DST,
    IPV4_FRAG,
    IPV4_FRAG_OFFSET_MASK,
    IPV4_HDR_LEN,
    IPV4_PROTO,
    IPV4_SRC,
    IPV6_DST,
    IPV6_HDR_LEN,
    IPV6_NEXT_HEADER,
    IPV6_SRC,
)
from vpn.core.types import Buffer

PROTO_ICMP = 1
PROTO_ICMPV6 = 58
# What the kernel's WireGuard sends (drivers/net/wireguard/device.c, wg_xmit's err_icmp):
# ICMP_DEST_UNREACH/ICMP_HOST_UNREACH and ICMPV6_DEST_UNREACH/ICMPV6_ADDR_UNREACH.
ICMP_DEST_UNREACH, ICMP_HOST_UNREACH = 3, 1
ICMPV6_DEST_UNREACH, ICMPV6_ADDR_UNREACH = 1, 3
# ICMP error types: an error is never answered with an error (RFC 1122 3.2.2, RFC 4443 2.4).
_ICMP_ERRORS = frozenset({3, 4, 5, 11, 12})
_ICMP_MAX_KNOWN = 18  # the kernel answers no ICMP type above NR_ICMP_TYPES either
_ICMPV6_REDIRECT = 137
# The quote: as much of the packet as keeps the reply within 576 bytes (IPv4, RFC 1812
# 4.3.2.3) or the IPv6 minimum MTU of 1280 (RFC 4443 2.4(c)).
IPV4_REPLY_MAX = 576
IPV6_REPLY_MAX = 1280
TTL = 64

_V4 = struct.Struct("!BBHHHBBH4s4s")
_V6 = struct.Struct("!IHBB16s16s")
_ICMP = struct.Struct("!BBHI")


def _v4_reply(packet: Buffer) -> bytes | None:
    ihl = (packet[0] & 0x0F) * 4
    if ihl < IPV4_HDR_LEN or len(packet) < ihl:
        return None
    src, dst = bytes(packet[IPV4_SRC:IPV4_SRC + 4]), bytes(packet[IPV4_DST:IPV4_DST + 4])
    # No reply to an unspecified, multicast or broadcast source, nor to a packet sent to a
    # multicast or broadcast address (224/4 and 240/4 take in 255.255.255.255).
    if src[0] == 0 or src[0] >= 224 or dst[0] >= 224:
        return None
    if ((packet[IPV4_FRAG] << 8) | packet[IPV4_FRAG + 1]) & IPV4_FRAG_OFFSET_MASK:
        return None  # only the first fragment is answered
    if packet[IPV4_PROTO] == PROTO_ICMP:
        if len(packet) <= ihl:
            return None
        kind = packet[ihl]
        if kind in _ICMP_ERRORS or kind > _ICMP_MAX_KNOWN:
            return None
    quote = bytes(packet[: IPV4_REPLY_MAX - 28])
    body = _ICMP.pack(ICMP_DEST_UNREACH, ICMP_HOST_UNREACH, 0, 0) + quote
    body = body[:2] + struct.pack("!H", checksum(body)) + body[4:]
    # The reply comes "from" the address that could not be reached: our own address would
    # be a martian source on the way in, and ping prints this one as the unreachable host.
    header = _V4.pack(0x45, 0, 20 + len(body), 0, 0, TTL, PROTO_ICMP, 0, dst, src)
    header = header[:10] + struct.pack("!H", checksum(header)) + header[12:]
    return header + body


def _v6_reply(packet: Buffer) -> bytes | None:
    src, dst = bytes(packet[IPV6_SRC:IPV6_SRC + 16]), bytes(packet[IPV6_DST:IPV6_DST + 16])
    if src == bytes(16) or src[0] == 0xFF or dst[0] == 0xFF:
        return None
    if packet[IPV6_NEXT_HEADER] == PROTO_ICMPV6:
        if len(packet) <= IPV6_HDR_LEN:
            return None
        kind = packet[IPV6_HDR_LEN]
        if kind < 128 or kind == _ICMPV6_REDIRECT:
            return None
    quote = bytes(packet[: IPV6_REPLY_MAX - 48])
    body = _ICMP.pack(ICMPV6_DEST_UNREACH, ICMPV6_ADDR_UNREACH, 0, 0) + quote
    partial = pseudo_header_sum(dst, src, PROTO_ICMPV6, len(body))
    body = body[:2] + struct.pack("!H", checksum(body, partial)) + body[4:]
    header = _V6.pack(6 << 28, len(body), PROTO_ICMPV6, TTL, dst, src)
    return header + body


def unreachable(packet: Buffer) -> bytes | None:
    """The host/address-unreachable reply to `packet`, or None where none may be sent."""
    n = len(packet)
    if n >= IPV4_HDR_LEN and packet[0] >> 4 == 4:
        return _v4_reply(packet)
    if n >= IPV6_HDR_LEN and packet[0] >> 4 == 6:
        return _v6_reply(packet)
    return None


class UnreachableResponder:
    """At most `per_second` replies a second (a token bucket with that burst), like the
    kernel's icmp_msgs_per_sec, so a scan of unrouted addresses cannot make us a flooder."""

    __slots__ = ("_last", "_tokens", "per_second", "suppressed")

    def __init__(self, per_second: int = 100) -> None:
        self.per_second = per_second
        self._tokens = float(per_second)
        self._last = float("-inf")
        self.suppressed = 0

    def reply(self, packet: Buffer, now: float) -> bytes | None:
        """The reply to send for `packet` at time `now`, or None (ineligible or limited)."""
        out = unreachable(packet)
        if out is None:
            return None
        refill = (now - self._last) * self.per_second
        self._tokens = min(float(self.per_second), self._tokens + refill)
        self._last = now
        if self._tokens < 1.0:
            self.suppressed += 1
            return None
        self._tokens -= 1.0
        return out
