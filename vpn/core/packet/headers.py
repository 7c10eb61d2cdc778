"""IPv4, IPv6, TCP and UDP header layout: field offsets, flag bits and strict parsing helpers.

The parsers raise OffloadError with a stable reason for anything malformed or unsupported.
"""

from __future__ import annotations

from typing import NamedTuple

from vpn.core.drops import Drop
from vpn.core.packet.errors import OffloadError
from vpn.core.types import Buffer

PROTO_TCP = 6
PROTO_UDP = 17

IPV4_HDR_LEN = 20
IPV6_HDR_LEN = 40
TCP_HDR_LEN = 20
UDP_HDR_LEN = 8

# IPv4 field offsets.
IPV4_TOTAL_LEN = 2
IPV4_ID = 4
IPV4_FRAG = 6
IPV4_TTL = 8
IPV4_PROTO = 9
IPV4_CSUM = 10
IPV4_SRC = 12
IPV4_DST = 16
IPV4_DF = 0x4000
IPV4_MF = 0x2000
IPV4_FRAG_OFFSET_MASK = 0x1FFF

# IPv6 field offsets.
IPV6_PAYLOAD_LEN = 4
IPV6_NEXT_HEADER = 6
IPV6_HOP_LIMIT = 7
IPV6_SRC = 8
IPV6_DST = 24
# Next-header values that are extension headers (RFC 8200 and the IANA registry).
IPV6_EXTENSION_HEADERS = frozenset({0, 43, 44, 50, 51, 60, 135, 139, 140, 253, 254})

# TCP field offsets (from the start of the TCP header) and flag bits.
TCP_SEQ = 4
TCP_ACK = 8
TCP_DATA_OFFSET = 12
TCP_FLAGS = 13
TCP_WINDOW = 14
TCP_CSUM = 16
TCP_FIN = 0x01
TCP_SYN = 0x02
TCP_RST = 0x04
TCP_PSH = 0x08
TCP_ACK_FLAG = 0x10
TCP_URG = 0x20
TCP_ECE = 0x40
TCP_CWR = 0x80

# UDP field offsets.
UDP_LEN = 4
UDP_CSUM = 6


class IPInfo(NamedTuple):
    """Where the parts of an IP packet are."""

    version: int
    header_len: int  # offset of the transport header
    total_len: int  # bytes of the packet that belong to it (trailing bytes are ignored)
    proto: int  # IPv4 protocol or IPv6 next header


def parse_ip(buf: Buffer) -> IPInfo:
    """Parse the IPv4 or IPv6 header of ``buf``; reject fragments and inconsistent lengths."""
    n = len(buf)
    if n == 0:
        raise OffloadError(Drop.TRUNCATED_IP, "empty packet")
    version = buf[0] >> 4
    if version == 4:
        if n < IPV4_HDR_LEN:
            raise OffloadError(Drop.TRUNCATED_IP, f"{n}-byte IPv4 packet")
        ihl = (buf[0] & 0x0F) * 4
        if ihl < IPV4_HDR_LEN:
            raise OffloadError(Drop.BAD_IP_HEADER_LEN, f"IPv4 IHL of {ihl} bytes")
        total = (buf[2] << 8) | buf[3]
        if total < ihl:
            raise OffloadError(Drop.BAD_IP_LENGTH, f"IPv4 total length {total} < header {ihl}")
        if total > n:
            raise OffloadError(Drop.TRUNCATED_IP, f"IPv4 total length {total} > {n} bytes")
        frag = (buf[6] << 8) | buf[7]
        if frag & (IPV4_MF | IPV4_FRAG_OFFSET_MASK):
            raise OffloadError(Drop.IP_FRAGMENT, "IPv4 fragment")
        return IPInfo(4, ihl, total, buf[IPV4_PROTO])
    if version == 6:
        if n < IPV6_HDR_LEN:
            raise OffloadError(Drop.TRUNCATED_IP, f"{n}-byte IPv6 packet")
        payload = (buf[4] << 8) | buf[5]
        if payload == 0:
            raise OffloadError(Drop.BAD_IP_LENGTH, "IPv6 payload length 0 (jumbogram)")
        total = IPV6_HDR_LEN + payload
        if total > n:
            raise OffloadError(Drop.TRUNCATED_IP, f"IPv6 length {total} > {n} bytes")
        return IPInfo(6, IPV6_HDR_LEN, total, buf[IPV6_NEXT_HEADER])
    raise OffloadError(Drop.BAD_IP_VERSION, f"IP version {version}")


def require_proto(info: IPInfo, proto: int) -> None:
    """Raise unless the transport protocol directly after the IP header is ``proto``."""
    if info.proto == proto:
        return
    if info.version == 6 and info.proto in IPV6_EXTENSION_HEADERS:
        raise OffloadError(Drop.IPV6_EXTENSION_HEADER, f"IPv6 next header {info.proto}")
    raise OffloadError(Drop.NOT_TCP if proto == PROTO_TCP else Drop.NOT_UDP,
                       f"IP protocol {info.proto}, expected {proto}")


def tcp_header_len(buf: Buffer, info: IPInfo) -> int:
    """Return the TCP header length (with options) from the data offset, checking bounds."""
    start = info.header_len
    if info.total_len < start + TCP_HDR_LEN:
        raise OffloadError(Drop.TRUNCATED_TCP, "packet too short for a TCP header")
    doff = (buf[start + TCP_DATA_OFFSET] >> 4) * 4
    if doff < TCP_HDR_LEN:
        raise OffloadError(Drop.BAD_TCP_OFFSET, f"TCP data offset of {doff} bytes")
    if start + doff > info.total_len:
        raise OffloadError(Drop.TRUNCATED_TCP, f"TCP header of {doff} bytes beyond the packet")
    return doff


def ip_destination(packet: Buffer) -> Buffer | None:
    """The destination address of an IPv4 or IPv6 packet (what AllowedIPs routes by), or
    None when the packet is neither."""
    version = packet[0] >> 4 if packet else 0
    if version == 4 and len(packet) >= IPV4_HDR_LEN:
        return packet[IPV4_DST:IPV4_DST + 4]
    if version == 6 and len(packet) >= IPV6_HDR_LEN:
        return packet[IPV6_DST:IPV6_DST + 16]
    return None
