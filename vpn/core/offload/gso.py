"""GSO: turn one TUN read (a TCP/UDP super-packet or a packet with a partial checksum)
into complete IP packets whose every checksum is filled in, ready to encrypt and send.

``split`` is the native twin in _gso.c when that module was built and VPN_FAST_PATH is not
``python`` (decided once, at import, by vpn/core/native.py's rule; NATIVE says which).
``split_python`` is the readable reference in plain Python, tested byte for byte equal to
the native code: segments are written side by side into one fresh bytearray and returned
as memoryviews of it, as the native code returns them.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence

from vpn.core.drops import Drop
from vpn.core.native import twin
from vpn.core.packet.checksum import ones_complement_sum, pseudo_header_sum
from vpn.core.packet.errors import OffloadError
from vpn.core.packet.headers import (
    IPV4_CSUM,
    IPV4_ID,
    IPV4_SRC,
    IPV4_TOTAL_LEN,
    IPV6_PAYLOAD_LEN,
    IPV6_SRC,
    PROTO_TCP,
    PROTO_UDP,
    TCP_CSUM,
    TCP_CWR,
    TCP_FIN,
    TCP_FLAGS,
    TCP_PSH,
    TCP_SEQ,
    UDP_HDR_LEN,
    UDP_LEN,
    parse_ip,
    require_proto,
    tcp_header_len,
)
from vpn.core.packet.virtio import (
    FLAG_NEEDS_CSUM,
    GSO_ECN,
    GSO_NONE,
    GSO_TCPV4,
    GSO_TCPV6,
    GSO_UDP_L4,
    VirtioNetHeader,
    validate,
)
from vpn.core.types import Buffer

try:
    import vpn.core.offload._gso as _gso
except ImportError as error:  # not built: the Python path runs
    _gso = None  # type: ignore[assignment]  # only reached when NATIVE says "python"
    NATIVE = twin("GSO split", error)
else:
    NATIVE = twin("GSO split")

__all__ = ["NATIVE", "Fields", "RunRead", "shape_packet", "split", "split_fields", "split_into",
           "split_into_fields", "split_into_python", "split_python", "split_runs",
           "split_runs_python"]

# A virtio-net header's six fields in VirtioNetHeader's order (virtio.HEADER.unpack_from):
# what a TUN read hands the split without building a header object (0.8 us a read).
Fields = tuple[int, int, int, int, int, int]


_H16 = struct.Struct("!H")
_TCP_VARY = struct.Struct("!I")
_UDP_VARY = struct.Struct("!HH")
_IP_VARY = struct.Struct("!HH")


def split_python(hdr: VirtioNetHeader, packet: Buffer) -> list[Buffer]:
    """Return the complete IP packets that ``packet`` (read after ``hdr``) stands for.

    A plain packet comes back as is (no copy); one with NEEDS_CSUM gets its transport checksum
    completed; a TCP or UDP_L4 super-packet is cut into gso_size-payload segments. hdr_len is
    not trusted: header lengths come from the IP header and the TCP data offset. Anything
    malformed raises OffloadError, never another exception.
    """
    validate(hdr, len(packet))
    gso = hdr.gso_type & ~GSO_ECN
    if gso == GSO_NONE:
        if not hdr.flags & FLAG_NEEDS_CSUM:
            return [packet]
        return [_complete_checksum(packet, hdr.csum_start, hdr.csum_offset)]
    info = parse_ip(packet)
    want_version = 6 if gso == GSO_TCPV6 else 4 if gso == GSO_TCPV4 else info.version
    if info.version != want_version:
        raise OffloadError(
            Drop.IP_VERSION_MISMATCH, f"IPv{info.version} packet with gso_type {hdr.gso_type:#x}"
        )
    if gso == GSO_UDP_L4:
        require_proto(info, PROTO_UDP)
        if info.total_len < info.header_len + UDP_HDR_LEN:
            raise OffloadError(Drop.TRUNCATED_UDP, "packet too short for a UDP header")
        l4_len = UDP_HDR_LEN
    else:
        require_proto(info, PROTO_TCP)
        l4_len = tcp_header_len(packet, info)
    return _segment(packet, info.version == 4, info.header_len, l4_len, info.total_len,
                    info.proto, hdr.gso_size)


def _split_native(hdr: VirtioNetHeader, packet: Buffer) -> list[Buffer]:
    """split_python's result from _gso.c (memoryviews of one bytearray), in one call."""
    return _gso.segments(packet, hdr.flags, hdr.gso_type, hdr.hdr_len, hdr.gso_size,
                         hdr.csum_start, hdr.csum_offset)


def split_into_python(out: bytearray | memoryview, offset: int, hdr: VirtioNetHeader,
                      packet: Buffer, gap: int, tail: int) -> tuple[int, int, int]:
    """split_python's packets laid out in `out` for sealing in place: segment i at
    offset + gap + i * (gap + full + tail), each `full` bytes but the last, `last` bytes;
    returns (count, full, last). Raises OffloadError as split_python does, ValueError if out
    is too small; either way before anything is written."""
    segments = split_python(hdr, packet)
    count, full, last = len(segments), len(segments[0]), len(segments[-1])
    stride = gap + full + tail
    if not 0 <= offset <= len(out) - ((count - 1) * stride + gap + last + tail):
        raise ValueError(f"out buffer too small for {count} segments at offset {offset}")
    view = memoryview(out)
    for i, segment in enumerate(segments):
        at = offset + gap + i * stride
        view[at:at + len(segment)] = segment
    return count, full, last


def _split_into_native(out: bytearray | memoryview, offset: int, hdr: VirtioNetHeader,
                       packet: Buffer, gap: int, tail: int) -> tuple[int, int, int]:
    return _gso.split_into(out, offset, packet, hdr.flags, hdr.gso_type, hdr.hdr_len,
                           hdr.gso_size, hdr.csum_start, hdr.csum_offset, gap, tail)


def _split_fields_native(fields: Fields, packet: Buffer) -> list[Buffer]:
    return _gso.segments(packet, *fields)


def _split_fields_python(fields: Fields, packet: Buffer) -> list[Buffer]:
    return split_python(VirtioNetHeader(*fields), packet)


def _split_into_fields_native(out: bytearray | memoryview, offset: int, fields: Fields,
                              packet: Buffer, gap: int, tail: int) -> tuple[int, int, int]:
    return _gso.split_into(out, offset, packet, *fields, gap, tail)


def _split_into_fields_python(out: bytearray | memoryview, offset: int, fields: Fields,
                              packet: Buffer, gap: int, tail: int) -> tuple[int, int, int]:
    return split_into_python(out, offset, VirtioNetHeader(*fields), packet, gap, tail)


def _shape_packet_python(packet: Buffer, flags: int, gso_type: int, hdr_len: int,
                         gso_size: int, csum_start: int, csum_offset: int
                         ) -> tuple[int, int, int]:
    segments = split_python(VirtioNetHeader(flags, gso_type, hdr_len, gso_size, csum_start,
                                            csum_offset), packet)
    return len(segments), len(segments[0]), len(segments[-1])


# A read for split_runs: the packet and its virtio-net header's fields.
RunRead = tuple[Buffer, int, int, int, int, int, int]


def split_runs_python(out: bytearray | memoryview, offset: int, reads: Sequence[RunRead],
                      gap: int, tail: int) -> list[tuple[int, int, int]]:
    """split_into_python for each of `reads`, back to back from `offset` (read k's layout
    where read k - 1's last tail ends); each read's (count, full, last). OffloadError for
    the first read split_python rejects, ValueError if out is too small; either way before
    anything is written."""
    if not 0 <= gap <= 0xFFFF or not 0 <= tail <= 0xFFFF:
        raise ValueError("gap or tail out of range")
    laid: list[list[Buffer]] = [split_python(VirtioNetHeader(*read[1:]), read[0])
                                for read in reads]
    need = sum(len(segments) * (gap + tail) + sum(map(len, segments)) for segments in laid)
    if not 0 <= offset <= len(out) - need:
        raise ValueError(f"out buffer too small: {need} bytes needed at offset {offset}")
    view = memoryview(out)
    shapes = []
    for segments in laid:
        count, full, last = len(segments), len(segments[0]), len(segments[-1])
        stride = gap + full + tail
        for i, segment in enumerate(segments):
            at = offset + gap + i * stride
            view[at:at + len(segment)] = segment
        offset += (count - 1) * stride + gap + last + tail
        shapes.append((count, full, last))
    return shapes


def _split_runs_native(out: bytearray | memoryview, offset: int, reads: Sequence[RunRead],
                       gap: int, tail: int) -> list[tuple[int, int, int]]:
    return _gso.split_runs(out, offset, reads, gap, tail)


def _complete_checksum(packet: Buffer, start: int, offset: int) -> bytes:
    """Apply the kernel's rule for CHECKSUM_PARTIAL: sum from ``start`` to the end with the
    field as it is (it holds the pseudo-header sum) and store the complement in the field."""
    view = memoryview(packet)
    value = ~ones_complement_sum(view[start:]) & 0xFFFF
    # The kernel stores 0xFFFF for a zero result (CSUM_MANGLED_0); for UDP zero would mean
    # "no checksum", and for TCP both forms are equivalent.
    pos = start + offset
    return b"".join((view[:pos], (value or 0xFFFF).to_bytes(2, "big"), view[pos + 2:]))


def _segment(packet: Buffer, is_v4: bool, ihl: int, l4_len: int, total: int, proto: int,
             mss: int) -> list[Buffer]:
    """Cut the payload into mss-sized segments, each behind a copy of the headers with its
    own lengths, TCP sequence and flags, IPv4 ID and checksums. The segments are written side
    by side into one fresh bytearray (one allocation) and returned as memoryviews of it.

    Every checksum is the sum of the headers without the fields that vary (computed once),
    plus the varying fields and the segment's payload sum. Sums are only kept modulo 0xFFFF,
    which is what a one's-complement sum is (2**16 == 1 mod 0xFFFF), so nothing is folded."""
    hl = ihl + l4_len
    count = max(1, -(-(total - hl) // mss))
    stride = hl + mss
    view = memoryview(packet)
    head = bytearray(view[:hl])
    if is_v4:
        src, dst = head[IPV4_SRC:IPV4_SRC + 4], head[IPV4_SRC + 4:IPV4_SRC + 8]
        ip_id = (head[IPV4_ID] << 8) | head[IPV4_ID + 1]
        head[IPV4_CSUM:IPV4_CSUM + 2] = bytes(2)
        head[IPV4_TOTAL_LEN:IPV4_ID + 2] = bytes(4)
        ip_base = ones_complement_sum(head[:ihl])
    else:
        src, dst = head[IPV6_SRC:IPV6_SRC + 16], head[IPV6_SRC + 16:IPV6_SRC + 32]
        ip_id = ip_base = 0
    pseudo = pseudo_header_sum(src, dst, proto, 0)
    tcp = proto == PROTO_TCP
    if tcp:
        seq = int.from_bytes(head[ihl + TCP_SEQ:ihl + TCP_SEQ + 4], "big")
        flags = head[ihl + TCP_FLAGS]
        head[ihl + TCP_SEQ:ihl + TCP_SEQ + 4] = bytes(4)
        head[ihl + TCP_FLAGS] = 0
        head[ihl + TCP_CSUM:ihl + TCP_CSUM + 2] = bytes(2)
    else:
        seq = flags = 0
        head[ihl + UDP_LEN:ihl + UDP_LEN + 4] = bytes(4)
    base = ones_complement_sum(head[ihl:]) + pseudo
    buf = bytearray(count * stride)
    out = memoryview(buf)
    segments: list[Buffer] = []
    last = count - 1
    for i in range(count):
        start = hl + i * mss
        payload = view[start:min(start + mss, total)]
        seg_l4 = l4_len + len(payload)
        if tcp:
            seg_seq = (seq + i * mss) & 0xFFFFFFFF
            seg_flags = flags & ~(TCP_FIN | TCP_PSH | TCP_CWR)
            if i == 0:
                seg_flags |= flags & TCP_CWR  # the kernel keeps CWR on the first segment only
            if i == last:
                seg_flags |= flags & (TCP_FIN | TCP_PSH)
            value = base + ones_complement_sum(payload) + seg_seq + seg_flags + seg_l4
            _TCP_VARY.pack_into(head, ihl + TCP_SEQ, seg_seq)
            head[ihl + TCP_FLAGS] = seg_flags
            # 0xFFFF - (x mod 0xFFFF) is ~fold(x), except that a sum congruent to 0 gives
            # 0xFFFF rather than 0: the same in one's complement, and never 0 for UDP.
            _H16.pack_into(head, ihl + TCP_CSUM, 0xFFFF - value % 0xFFFF)
        else:
            # The length counts twice: once in the pseudo-header, once in the UDP header.
            value = base + ones_complement_sum(payload) + 2 * seg_l4
            _UDP_VARY.pack_into(head, ihl + UDP_LEN, seg_l4, 0xFFFF - value % 0xFFFF)
        if is_v4:
            seg_id = (ip_id + i) & 0xFFFF
            ip_sum = ip_base + seg_id + ihl + seg_l4
            _IP_VARY.pack_into(head, IPV4_TOTAL_LEN, ihl + seg_l4, seg_id)
            _H16.pack_into(head, IPV4_CSUM, 0xFFFF - ip_sum % 0xFFFF)
        else:
            _H16.pack_into(head, IPV6_PAYLOAD_LEN, seg_l4)
        at = i * stride
        out[at:at + hl] = head
        out[at + hl:at + hl + len(payload)] = payload
        segments.append(out[at:at + hl + len(payload)])
    return segments


# Which implementation `split` is: NATIVE's choice.
split: Callable[[VirtioNetHeader, Buffer], list[Buffer]] = (
    _split_native if NATIVE.native else split_python)
split_into: Callable[[bytearray | memoryview, int, VirtioNetHeader, Buffer, int, int],
                     tuple[int, int, int]] = (
    _split_into_native if NATIVE.native else split_into_python)
# The same two, for a header given as its fields.
split_fields: Callable[[Fields, Buffer], list[Buffer]] = (
    _split_fields_native if NATIVE.native else _split_fields_python)
split_into_fields: Callable[[bytearray | memoryview, int, Fields, Buffer, int, int],
                            tuple[int, int, int]] = (
    _split_into_fields_native if NATIVE.native else _split_into_fields_python)
# (count, full, last) as split_into_fields would return them, nothing written: what the
# send walk reserves counters by before a worker splits, for the packet and its header's
# fields. The native one is _gso.shape itself: the loop thread asks it of every read.
shape_packet: Callable[[Buffer, int, int, int, int, int, int], tuple[int, int, int]] = (
    _gso.shape if NATIVE.native else _shape_packet_python)
# Several reads' split_into in one call (the native one releases the GIL once): a send
# job's super-packets, laid out for seal_runs.
split_runs: Callable[[bytearray | memoryview, int, Sequence[RunRead], int, int],
                     list[tuple[int, int, int]]] = (
    _split_runs_native if NATIVE.native else split_runs_python)
