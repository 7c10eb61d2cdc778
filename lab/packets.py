"""Test helpers: build IPv4/IPv6 TCP/UDP packets and kernel-style GSO super-packets, and
parse and verify packets with a deliberately naive reference checksum.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import TypedDict, Unpack

from vpn.core.packet.virtio import (
    FLAG_NEEDS_CSUM,
    GSO_TCPV4,
    GSO_TCPV6,
    GSO_UDP_L4,
    VirtioNetHeader,
)

SRC4 = bytes([198, 18, 0, 1])
DST4 = bytes([198, 18, 0, 2])
SRC6 = bytes.fromhex("fd000000000000000000000000000001")
DST6 = bytes.fromhex("fd000000000000000000000000000002")

FIN, SYN, RST, PSH, ACK, URG, ECE, CWR = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20, 0x40, 0x80

# TCP timestamps option padded with two NOPs, as Linux sends it.
TS_OPTION = bytes([1, 1, 8, 10]) + struct.pack("!II", 123456, 654321)


def ref_sum(data: bytes, start: int = 0) -> int:
    """RFC 1071 the slow way: add 16-bit big-endian words to `start` (a folded sum, such as
    a pseudo-header's), folding carries one at a time."""
    data = bytes(data)
    if len(data) % 2:
        data += b"\0"
    total = start
    for i in range(0, len(data), 2):
        total += (data[i] << 8) | data[i + 1]
        while total > 0xFFFF:
            total = (total & 0xFFFF) + (total >> 16)
    return total


def ref_checksum(data: bytes) -> int:
    return ~ref_sum(data) & 0xFFFF


def pseudo(src: bytes, dst: bytes, proto: int, length: int) -> bytes:
    if len(src) == 4:
        return src + dst + struct.pack("!BBH", 0, proto, length)
    return src + dst + struct.pack("!IxxxB", length, proto)


def ipv4_header(src: bytes, dst: bytes, proto: int, payload_len: int, *, ident: int = 0x1234,
                ttl: int = 64, tos: int = 0, df: bool = True, frag: int = 0,
                options: bytes = b"") -> bytes:
    ihl = (20 + len(options)) // 4
    frag_field = (0x4000 if df else 0) | frag
    hdr = struct.pack("!BBHHHBBH4s4s", 0x40 | ihl, tos, 20 + len(options) + payload_len, ident,
                      frag_field, ttl, proto, 0, src, dst) + options
    return hdr[:10] + ref_checksum(hdr).to_bytes(2, "big") + hdr[12:]


def ipv6_header(src: bytes, dst: bytes, next_header: int, payload_len: int, *, tclass: int = 0,
                flow: int = 0, hop_limit: int = 64) -> bytes:
    first = (6 << 28) | (tclass << 20) | flow
    return struct.pack("!IHBB16s16s", first, payload_len, next_header, hop_limit, src, dst)


def tcp_packet(payload: bytes = b"", *, version: int = 4, seq: int = 1000, ack: int = 5000,
               flags: int = ACK, window: int = 512, options: bytes = b"", sport: int = 40000,
               dport: int = 5201, src: bytes | None = None, dst: bytes | None = None,
               ident: int = 0x1234, ttl: int = 64, tos: int = 0, df: bool = True,
               csum: int | None = None) -> bytes:
    """A complete IPv4/IPv6 TCP packet with correct checksums (or ``csum`` forced)."""
    src = src or (SRC4 if version == 4 else SRC6)
    dst = dst or (DST4 if version == 4 else DST6)
    doff = (20 + len(options)) // 4
    tcp = struct.pack("!HHIIBBHHH", sport, dport, seq & 0xFFFFFFFF, ack, doff << 4, flags, window,
                      0, 0) + options + payload
    if csum is None:
        csum = ref_checksum(pseudo(src, dst, 6, len(tcp)) + tcp)
    tcp = tcp[:16] + csum.to_bytes(2, "big") + tcp[18:]
    if version == 4:
        return ipv4_header(src, dst, 6, len(tcp), ident=ident, ttl=ttl, tos=tos, df=df) + tcp
    return ipv6_header(src, dst, 6, len(tcp), tclass=tos, hop_limit=ttl) + tcp


def udp_packet(payload: bytes = b"", *, version: int = 4, sport: int = 51820, dport: int = 51821,
               src: bytes | None = None, dst: bytes | None = None, ident: int = 0x1234,
               ttl: int = 64, tos: int = 0, csum: int | None = None) -> bytes:
    src = src or (SRC4 if version == 4 else SRC6)
    dst = dst or (DST4 if version == 4 else DST6)
    udp = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    if csum is None:
        csum = ref_checksum(pseudo(src, dst, 17, len(udp)) + udp) or 0xFFFF
    udp = udp[:6] + csum.to_bytes(2, "big") + udp[8:]
    if version == 4:
        return ipv4_header(src, dst, 17, len(udp), ident=ident, ttl=ttl, tos=tos) + udp
    return ipv6_header(src, dst, 17, len(udp), tclass=tos, hop_limit=ttl) + udp


class UdpFields(TypedDict, total=False):
    """udp_packet's keywords that udp_super_packet passes on."""

    sport: int
    dport: int
    src: bytes | None
    dst: bytes | None
    ident: int
    ttl: int
    tos: int


class TcpFields(UdpFields, total=False):
    """tcp_packet's keywords that tcp_super_packet passes on."""

    seq: int
    ack: int
    flags: int
    window: int
    options: bytes
    df: bool


def tcp_super_packet(payload: bytes, mss: int, *, version: int = 4, **kw: Unpack[TcpFields]
                     ) -> tuple[VirtioNetHeader, bytes]:
    """A TSO super-packet as the kernel hands it to a TUN reader: NEEDS_CSUM, the folded
    pseudo-header sum (total TCP length) in the checksum field, csum_start at the TCP header."""
    src = kw.get("src") or (SRC4 if version == 4 else SRC6)
    dst = kw.get("dst") or (DST4 if version == 4 else DST6)
    options = kw.get("options", b"")
    assert isinstance(options, bytes)
    tcp_len = 20 + len(options) + len(payload)
    partial = ref_sum(pseudo(src, dst, 6, tcp_len))
    pkt = tcp_packet(payload, version=version, csum=partial, **kw)
    ihl = 20 if version == 4 else 40
    hdr = VirtioNetHeader(
        flags=FLAG_NEEDS_CSUM, gso_type=GSO_TCPV4 if version == 4 else GSO_TCPV6,
        hdr_len=ihl + 20 + len(options), gso_size=mss, csum_start=ihl, csum_offset=16,
    )
    return hdr, pkt


def udp_super_packet(payload: bytes, mss: int, *, version: int = 4, **kw: Unpack[UdpFields]
                     ) -> tuple[VirtioNetHeader, bytes]:
    """A UDP_L4 GSO super-packet as the kernel hands it over (partial sum in the field)."""
    src = kw.get("src") or (SRC4 if version == 4 else SRC6)
    dst = kw.get("dst") or (DST4 if version == 4 else DST6)
    partial = ref_sum(pseudo(src, dst, 17, 8 + len(payload)))
    pkt = udp_packet(payload, version=version, csum=partial, **kw)
    ihl = 20 if version == 4 else 40
    hdr = VirtioNetHeader(flags=FLAG_NEEDS_CSUM, gso_type=GSO_UDP_L4, hdr_len=ihl + 8,
                          gso_size=mss, csum_start=ihl, csum_offset=6)
    return hdr, pkt


@dataclass
class Parsed:
    version: int
    ihl: int
    tos: int
    ttl: int
    ident: int
    df: bool
    proto: int
    src: bytes
    dst: bytes
    sport: int
    dport: int
    seq: int = 0
    ack: int = 0
    flags: int = 0
    window: int = 0
    options: bytes = b""
    csum: int = 0
    payload: bytes = b""
    l4: bytes = b""


def parse(pkt: bytes | memoryview) -> Parsed:
    """Parse a packet, asserting its lengths are consistent (total length == buffer)."""
    pkt = bytes(pkt)
    if pkt[0] >> 4 == 4:
        ihl = (pkt[0] & 15) * 4
        total, ident, frag = struct.unpack_from("!HHH", pkt, 2)
        assert total == len(pkt)
        tos, ttl, proto = pkt[1], pkt[8], pkt[9]
        src, dst, df = pkt[12:16], pkt[16:20], bool(frag & 0x4000)
    else:
        ihl = 40
        first, plen, proto, ttl = struct.unpack_from("!IHBB", pkt, 0)
        assert plen + 40 == len(pkt)
        tos, ident, df, src, dst = (first >> 20) & 0xFF, 0, False, pkt[8:24], pkt[24:40]
    l4 = pkt[ihl:]
    sport, dport = struct.unpack_from("!HH", l4, 0)
    p = Parsed(4 if ihl < 40 else 6, ihl, tos, ttl, ident, df, proto, src, dst, sport, dport,
               l4=l4)
    if proto == 6:
        p.seq, p.ack, off, p.flags, p.window, p.csum = struct.unpack_from("!IIBBHH", l4, 4)
        thl = (off >> 4) * 4
        p.options, p.payload = l4[20:thl], l4[thl:]
    else:
        ulen, p.csum = struct.unpack_from("!HH", l4, 4)
        assert ulen == len(l4)
        p.payload = l4[8:]
    return p


def verify(pkt: bytes | memoryview) -> Parsed:
    """Parse ``pkt`` and assert its IPv4 header and TCP/UDP checksums are valid."""
    p = parse(pkt)
    raw = bytes(pkt)
    if p.version == 4:
        assert ref_sum(raw[:p.ihl]) == 0xFFFF, "bad IPv4 header checksum"
    assert ref_sum(pseudo(p.src, p.dst, p.proto, len(p.l4)) + p.l4) == 0xFFFF, "bad L4 checksum"
    if p.proto == 17:
        assert p.csum != 0
    return p


def split_gro(data: memoryview, segment_size: int) -> list[memoryview]:
    """Cut one GRO receive into its datagrams: all `segment_size` bytes but the last (what
    DataPath._receive walks through in place)."""
    if segment_size <= 0 or segment_size >= len(data):
        return [data]
    return [data[i : i + segment_size] for i in range(0, len(data), segment_size)]
