"""GRO: coalesce consecutive TCP (and optionally UDP) packets of a flow, decrypted in one
batch, into jumbo frames with a virtio-net header so one TUN write carries many segments.

Checksums of the input packets are not verified: WireGuard has already authenticated every
decrypted packet, and the kernel completes the checksum of a coalesced frame from the
pseudo-header partial sum we leave in it (NEEDS_CSUM), exactly as for a locally built packet.

``Coalescer`` is the readable reference. Its C twin (_gro.c) runs when it was built and
VPN_FAST_PATH is not ``python`` (decided once, at import, by vpn/core/native.py's rule;
NATIVE says which), and ``NativeCoalescer`` wraps it: the same frames, for packets that lie
in one buffer, named by (offset, length, slot) records, as ``RecordCoalescer`` takes them
from the reference; both are a ``FrameCoalescer``. Both bound the flow table by MAX_FLOWS
alike.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol, final

from vpn.core.native import twin
from vpn.core.packet.checksum import fold, ones_complement_sum, pseudo_header_sum
from vpn.core.packet.headers import (
    IPV4_CSUM,
    IPV4_TOTAL_LEN,
    IPV6_PAYLOAD_LEN,
    PROTO_TCP,
    PROTO_UDP,
    TCP_CSUM,
    TCP_FLAGS,
    TCP_PSH,
    UDP_CSUM,
    UDP_LEN,
)
from vpn.core.packet.virtio import (
    FLAG_NEEDS_CSUM,
    GSO_TCPV4,
    GSO_TCPV6,
    GSO_UDP_L4,
    NO_OFFLOAD,
    VirtioNetHeader,
)
from vpn.core.types import Buffer

try:
    import vpn.core.offload._gro as _gro
except ImportError as error:  # not built: the Python path runs
    _gro = None  # type: ignore[assignment]  # NativeCoalescer checks, NATIVE says so
    NATIVE = twin("GRO coalescer", error)
else:
    NATIVE = twin("GRO coalescer")

__all__ = ["MAX_FLOWS", "MAX_UDP_SEGMENTS", "NATIVE", "Coalesced", "Coalescer",
           "FrameCoalescer", "NativeCoalescer", "RecordCoalescer", "coalesce",
           "receive_coalescer"]


# The kernel refuses UDP_L4 writes of more than 64 segments (128 on newer kernels).
MAX_UDP_SEGMENTS = 64

# At most this many flows are tracked: before a new flow's run goes in while this many are
# held, every flow is forgotten (runs already gathered still become their frames). Bounds the
# table whatever a batch holds; _gro.c has the same rule.
MAX_FLOWS = 1024

_ACK = 0x10
_ACK_PSH = 0x18

# Fixed IPv4 (IHL 5) + TCP headers: tos, total, frag, ttl, src+dst, ports, seq, ack,
# data offset, flags, window (skipping what is known or not compared).
_V4_TCP = struct.Struct("!xBH2xHB3xQIIIBBH")
# IPv6 + TCP: first word, payload length, next header, hop limit, src (2 x Q), dst (2 x Q),
# ports, seq, ack, data offset, flags, window.
_V6_TCP = struct.Struct("!IHBBQQQQIIIBBH")
# IPv4 (IHL 5) + UDP: as above up to the addresses, then ports and the UDP length.
_V4_UDP = struct.Struct("!BBHHHBBHQIH")
_V6_UDP = struct.Struct("!IHBBQQQQIH")

_H16 = struct.Struct("!H")

# What every packet of a run must share beyond its flow key: for TCP (tos or the IPv6 first
# word, ttl or hop limit, frag, ack, window, data offset, the options' bytes), for UDP (tos
# or first word, ttl or hop limit, frag).
_TcpSignature = tuple[int, int, int, int, int, int, bytes]
_UdpSignature = tuple[int, int, int]
_Signature = _TcpSignature | _UdpSignature


@final  # so that `type(item) is Coalesced` tells a frame from a _Run for mypy too
@dataclass(slots=True)
class Coalesced:
    """One frame to write to the TUN: the packed virtio-net header, then ``parts`` in order.

    ``parts`` is meant for ``os.writev([header, *parts])``; the payload parts are views of the
    input packets, not copies.
    """

    header: bytes
    parts: list[Buffer]
    segments: int = 1  # how many input packets the frame carries

    def frame(self) -> bytes:
        """The whole write (header and parts) as one bytes object."""
        return b"".join((self.header, *self.parts))


@dataclass(slots=True, kw_only=True)
class _Run:
    """Consecutive segments of one flow waiting to become a single frame."""

    sig: _Signature
    packets: list[Buffer]
    ihl: int  # IP header length
    hlen: int  # IP and transport headers
    seg_size: int  # the first segment's payload: every other but the last must match
    total: int  # the frame's IP length so far
    next_seq: int  # TCP: the sequence number the next segment must carry
    is_v4: bool
    is_tcp: bool
    open: bool  # False once a segment ended the run (short, PSH, other flags)
    psh: bool = False
    count: int = 1


def coalesce(packets: Iterable[Buffer], *, udp: bool = False,
             max_size: int = 65535) -> list[Coalesced]:
    """Coalesce in-order IP packets into frames for a vnet-header TUN write.

    Per-flow order is kept; different flows may be reordered relative to each other. A packet
    that is not coalesced (including anything non-IP, truncated or malformed, which never
    raises) comes out unchanged with the NO_OFFLOAD header. ``max_size`` bounds the IP length
    of a coalesced frame. With ``udp`` false, UDP passes through unchanged.
    """
    coalescer = Coalescer(udp=udp, max_size=max_size)
    coalescer.add(packets)
    return coalescer.frames()


class Coalescer:
    """GRO state across the receives of one wakeup: packets go in with `add`, and `frames`
    turns what was gathered into the writes, in order."""

    __slots__ = ("_flows", "_out", "max_size", "udp")

    def __init__(self, *, udp: bool = False, max_size: int = 65535) -> None:
        self.udp = udp
        self.max_size = max_size
        self._out: list[Coalesced | _Run] = []
        self._flows: dict[object, _Run] = {}

    def frames(self) -> list[Coalesced]:
        """The frames gathered so far, in order; the coalescer starts empty again."""
        out = self._out
        self.clear()
        return [item if type(item) is Coalesced else _finish(item) for item in out]

    def clear(self) -> None:
        """Forget everything gathered (and every view into the caller's buffers)."""
        self._out = []
        self._flows.clear()

    def add(self, packets: Iterable[Buffer]) -> None:
        """Add packets one by one (the general path)."""
        out = self._out
        flows = self._flows
        udp = self.udp
        max_size = self.max_size
        for pkt in packets:
            n = len(pkt)
            if n < 28:
                if n == 0 or pkt[0] >> 4 not in (4, 6):
                    out.append(Coalesced(NO_OFFLOAD, [pkt]))
                    continue
                flows.clear()  # an IP packet we cannot place: keep every flow's order around it
                out.append(Coalesced(NO_OFFLOAD, [pkt]))
                continue
            b0 = pkt[0]
            if b0 == 0x45:
                proto = pkt[9]
                if proto == PROTO_TCP:
                    if n < 40:
                        flows.clear()
                        out.append(Coalesced(NO_OFFLOAD, [pkt]))
                        continue
                    (tos, total, frag, ttl, addrs, ports, seq, ack, off, flags,
                     win) = _V4_TCP.unpack_from(pkt, 0)
                    key = (addrs << 32) | ports
                    thl = (off >> 4) << 2
                    hlen = 20 + thl
                    if (total != n or frag & 0xBFFF or thl < 20 or hlen > n
                            or (flags != _ACK and flags != _ACK_PSH) or off & 0x0F or hlen == n):
                        if frag & 0x3FFF:
                            flows.clear()  # a fragment: the ports we read may not be ports
                        _pass_flow(out, flows, key, pkt)
                        continue
                    sig = (tos, ttl, frag, ack, win, off,
                           bytes(pkt[40:hlen]) if thl > 20 else b"")
                    _add_tcp(out, flows, key, sig, pkt, 20, hlen, n, seq, flags, True, max_size)
                    continue
                if proto == PROTO_UDP and udp:
                    (_, tos, total, _, frag, ttl, _, _, addrs, ports,
                     ulen) = _V4_UDP.unpack_from(pkt, 0)
                    key = (addrs, ports, PROTO_UDP)
                    if total != n or frag & 0xBFFF or ulen != n - 20 or ulen == 8:
                        if frag & 0x3FFF:
                            flows.clear()
                        _pass_flow(out, flows, key, pkt)
                        continue
                    _add_udp(out, flows, key, (tos, ttl, frag), pkt, 20, n, True, max_size)
                    continue
                # Other protocols, and UDP when no UDP runs are kept, have no run to keep in order.
                out.append(Coalesced(NO_OFFLOAD, [pkt]))
                continue
            if b0 >> 4 == 6 and n >= 48:
                nh = pkt[6]
                if nh == PROTO_TCP and n >= 60:
                    (first, plen, _, hop, s1, s2, d1, d2, ports, seq, ack, off, flags,
                     win) = _V6_TCP.unpack_from(pkt, 0)
                    key = (s1, s2, d1, d2, ports)
                    thl = (off >> 4) << 2
                    hlen = 40 + thl
                    if (plen + 40 != n or thl < 20 or hlen > n
                            or (flags != _ACK and flags != _ACK_PSH) or off & 0x0F or hlen == n):
                        _pass_flow(out, flows, key, pkt)
                        continue
                    sig = (first, hop, 0, ack, win, off,
                           bytes(pkt[60:hlen]) if thl > 20 else b"")
                    _add_tcp(out, flows, key, sig, pkt, 40, hlen, n, seq, flags, False, max_size)
                    continue
                if nh == PROTO_UDP:
                    if not udp:
                        out.append(Coalesced(NO_OFFLOAD, [pkt]))
                        continue
                    first, plen, _, hop, s1, s2, d1, d2, ports, ulen = _V6_UDP.unpack_from(pkt, 0)
                    key = (s1, s2, d1, d2, ports, PROTO_UDP)
                    if plen + 40 != n or ulen != plen or ulen == 8:
                        _pass_flow(out, flows, key, pkt)
                        continue
                    _add_udp(out, flows, key, (first, hop, 0), pkt, 40, n, False, max_size)
                    continue
                if nh in _V6_TRANSPARENT:
                    out.append(Coalesced(NO_OFFLOAD, [pkt]))
                    continue
            elif b0 >> 4 != 4 or (pkt[9] != PROTO_TCP and pkt[9] != PROTO_UDP):
                # Not IP, or IPv4 (with options) of a protocol we never coalesce.
                out.append(Coalesced(NO_OFFLOAD, [pkt]))
                continue
            # IPv4 with options, IPv6 with extension headers, short TCP...: we cannot tell which
            # flow it belongs to cheaply, so close every run to keep all flows in order.
            flows.clear()
            out.append(Coalesced(NO_OFFLOAD, [pkt]))


# IPv6 next headers that cannot belong to a TCP or UDP flow (ICMPv6, no next header).
_V6_TRANSPARENT = frozenset({58, 59})

def _pass_flow(out: list[Coalesced | _Run], flows: dict[object, _Run], key: object,
               pkt: Buffer) -> None:
    """Pass a packet of a known flow through, closing that flow's run to keep its order."""
    flows.pop(key, None)
    out.append(Coalesced(NO_OFFLOAD, [pkt]))


def _add_tcp(out: list[Coalesced | _Run], flows: dict[object, _Run], key: object,
             sig: _TcpSignature, pkt: Buffer, ihl: int, hlen: int, n: int, seq: int,
             flags: int, is_v4: bool, max_size: int) -> None:
    payload = n - hlen
    run = flows.get(key)
    if (run is not None and run.open and run.sig == sig and run.next_seq == seq
            and payload <= run.seg_size and run.total + payload <= max_size):
        run.packets.append(pkt)
        run.count += 1
        run.total += payload
        run.next_seq = (seq + payload) & 0xFFFFFFFF
        if flags == _ACK_PSH:
            run.psh = True
            run.open = False
        elif payload < run.seg_size:
            run.open = False
        return
    if run is None and len(flows) >= MAX_FLOWS:
        flows.clear()
    run = _Run(sig=sig, packets=[pkt], ihl=ihl, hlen=hlen, seg_size=payload, total=n,
               next_seq=(seq + payload) & 0xFFFFFFFF, is_v4=is_v4, is_tcp=True,
               open=flags == _ACK, psh=flags == _ACK_PSH)
    flows[key] = run
    out.append(run)


def _add_udp(out: list[Coalesced | _Run], flows: dict[object, _Run], key: object,
             sig: _UdpSignature, pkt: Buffer, ihl: int, n: int, is_v4: bool,
             max_size: int) -> None:
    payload = n - ihl - 8
    run = flows.get(key)
    if (run is not None and run.open and run.sig == sig and payload <= run.seg_size
            and run.total + payload <= max_size and run.count < MAX_UDP_SEGMENTS):
        run.packets.append(pkt)
        run.count += 1
        run.total += payload
        if payload < run.seg_size:
            run.open = False
        return
    if run is None and len(flows) >= MAX_FLOWS:
        flows.clear()
    run = _Run(sig=sig, packets=[pkt], ihl=ihl, hlen=ihl + 8, seg_size=payload, total=n,
               next_seq=0, is_v4=is_v4, is_tcp=False, open=True)
    flows[key] = run
    out.append(run)


def _finish(run: _Run) -> Coalesced:
    """Turn a run into its frame: the first packet alone, or a GSO frame with a partial sum."""
    first = run.packets[0]
    if run.count == 1:
        return Coalesced(NO_OFFLOAD, [first])
    ihl, hlen, total = run.ihl, run.hlen, run.total
    head = bytearray(memoryview(first)[:hlen])
    l4_len = total - ihl
    if run.is_v4:
        _H16.pack_into(head, IPV4_TOTAL_LEN, total)
        head[IPV4_CSUM:IPV4_CSUM + 2] = b"\0\0"
        _H16.pack_into(head, IPV4_CSUM, ~ones_complement_sum(head[:ihl]) & 0xFFFF)
        src, dst = head[12:16], head[16:20]
    else:
        _H16.pack_into(head, IPV6_PAYLOAD_LEN, l4_len)
        src, dst = head[8:24], head[24:40]
    if run.is_tcp:
        if run.psh:
            head[ihl + TCP_FLAGS] |= TCP_PSH
        proto, csum_offset = PROTO_TCP, TCP_CSUM
        gso_type = GSO_TCPV4 if run.is_v4 else GSO_TCPV6
    else:
        _H16.pack_into(head, ihl + UDP_LEN, l4_len)
        proto, csum_offset, gso_type = PROTO_UDP, UDP_CSUM, GSO_UDP_L4
    # NEEDS_CSUM: the field holds the folded pseudo-header sum (length of the whole frame's
    # transport part), not complemented; the kernel adds the rest.
    _H16.pack_into(head, ihl + csum_offset, fold(pseudo_header_sum(src, dst, proto, l4_len)))
    vnet = VirtioNetHeader(FLAG_NEEDS_CSUM, gso_type, hlen, run.seg_size, ihl, csum_offset)
    parts: list[Buffer] = [bytes(head)]
    for pkt in run.packets:
        parts.append(pkt[hlen:] if type(pkt) is memoryview else memoryview(pkt)[hlen:])
    return Coalesced(vnet.pack(), parts, run.count)


# A record of the receive walk (keypair.RECORD, wire.h): offset in the buffer, IP length, slot.
RECORD = struct.Struct("<III")


class FrameCoalescer(Protocol):
    """What the TUN's write side holds: RecordCoalescer, or NativeCoalescer, its C twin."""

    def add_records(self, records: Buffer, start: int, stop: int,
                    denied: Buffer | None = None) -> int: ...

    def frames(self) -> list[Coalesced]: ...

    def clear(self) -> None: ...


class RecordCoalescer(Coalescer):
    """A Coalescer over one receive buffer, fed the records of Keypair.accept_run: the
    reference for the native twin in _gro.c, which takes the same calls."""

    __slots__ = ("_view",)

    def __init__(self, buffer: Buffer, *, udp: bool = False, max_size: int = 65535) -> None:
        super().__init__(udp=udp, max_size=max_size)
        self._view = memoryview(buffer)

    def add_records(self, records: Buffer, start: int, stop: int,
                    denied: Buffer | None = None) -> int:
        """Add the packets of records[start:stop] ((offset, length, slot), three
        little-endian uint32 each), skipping those whose slot is marked in `denied`;
        returns how many were skipped."""
        view = self._view
        if not 0 <= start <= stop <= len(records) // RECORD.size:
            raise ValueError("add_records: start or stop outside the records")
        packets = []
        skipped = 0
        for at, length, slot in RECORD.iter_unpack(
                memoryview(records)[start * RECORD.size:stop * RECORD.size]):
            # Every record is checked against the buffer first, a denied one too (as _gro.c).
            if at + length > len(view):
                raise ValueError("add_records: a record outside the buffer")
            if denied is not None and slot < len(denied) and denied[slot]:
                skipped += 1
            else:
                packets.append(view[at:at + length])
        self.add(packets)
        return skipped


class NativeCoalescer:
    """`Coalescer` in C (_gro.c) over packets that lie in one buffer: records name them, and
    `frames` gives the same frames as the reference fed those packets, each as
    ``Coalesced(header, [body], segments)`` (body: the frame after the header, one copy)."""

    __slots__ = ("_native",)

    def __init__(self, buffer: Buffer, *, udp: bool = False, max_size: int = 65535) -> None:
        if _gro is None:
            raise RuntimeError(NATIVE.reason)
        self._native = _gro.Coalescer(buffer, udp=udp, max_size=max_size)

    def add_records(self, records: Buffer, start: int, stop: int,
                    denied: Buffer | None = None) -> int:
        """Add the packets of records start..stop-1 (little-endian uint32 offset, length,
        slot each), skipping those whose slot is set in ``denied``; returns how many were."""
        return self._native.add_records(records, start, stop, denied)

    def frames(self) -> list[Coalesced]:
        """The frames gathered so far, in order; the coalescer starts empty again."""
        return [Coalesced(header, [body], segments)
                for header, body, segments in self._native.frames()]

    def clear(self) -> None:
        """Forget everything gathered."""
        self._native.clear()


def receive_coalescer(buffer: Buffer, *, udp: bool = False) -> FrameCoalescer:
    """The data path's coalescer over its receive buffer: the native one where it runs."""
    if NATIVE.native:
        return NativeCoalescer(buffer, udp=udp)
    return RecordCoalescer(buffer, udp=udp)
