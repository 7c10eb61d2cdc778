"""The 10-byte virtio-net header that precedes every packet on an IFF_VNET_HDR TUN device.

Packing, unpacking, and the checks the kernel applies before it accepts a header on write.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from vpn.core.drops import Drop
from vpn.core.packet.errors import OffloadError

__all__ = [
    "FLAG_DATA_VALID",
    "FLAG_NEEDS_CSUM",
    "GSO_ECN",
    "GSO_NONE",
    "GSO_TCPV4",
    "GSO_TCPV6",
    "GSO_UDP",
    "GSO_UDP_L4",
    "HEADER",
    "NO_OFFLOAD",
    "VIRTIO_NET_HDR_LEN",
    "OffloadError",
    "VirtioNetHeader",
    "validate",
]

VIRTIO_NET_HDR_LEN = 10

FLAG_NEEDS_CSUM = 1
FLAG_DATA_VALID = 2
_KNOWN_FLAGS = FLAG_NEEDS_CSUM | FLAG_DATA_VALID

GSO_NONE = 0
GSO_TCPV4 = 1
GSO_UDP = 3
GSO_TCPV6 = 4
GSO_UDP_L4 = 5
GSO_ECN = 0x80

TCP_CSUM_OFFSET = 16
UDP_CSUM_OFFSET = 6

# x86 and every other host we run on is little-endian; the header uses host byte order.
# HEADER.unpack_from gives the fields in VirtioNetHeader's order without building one.
HEADER = struct.Struct("<BBHHHH")


@dataclass(frozen=True, slots=True)
class VirtioNetHeader:
    """struct virtio_net_hdr: offload instructions for one packet."""

    flags: int = 0
    gso_type: int = 0
    hdr_len: int = 0
    gso_size: int = 0
    csum_start: int = 0
    csum_offset: int = 0

    def pack(self) -> bytes:
        """Return the 10-byte little-endian wire form."""
        return HEADER.pack(
            self.flags, self.gso_type, self.hdr_len, self.gso_size,
            self.csum_start, self.csum_offset,
        )

    @classmethod
    def unpack(cls, buf: bytes | bytearray | memoryview) -> VirtioNetHeader:
        """Parse the first 10 bytes of ``buf``; raise OffloadError if there are fewer."""
        if len(buf) < VIRTIO_NET_HDR_LEN:
            raise OffloadError(
                Drop.SHORT_VNET_HEADER, f"virtio-net header needs 10 bytes, got {len(buf)}"
            )
        return cls(*HEADER.unpack_from(buf, 0))


NO_OFFLOAD = bytes(VIRTIO_NET_HDR_LEN)


def validate(hdr: VirtioNetHeader, packet_len: int) -> None:
    """Raise OffloadError if the kernel would refuse ``hdr`` or we cannot act on it.

    ``packet_len`` is the length of the IP packet that follows the header. The number of
    UDP_L4 segments (at most 64 on write) depends on the payload and is the writer's concern.
    """
    if hdr.flags & ~_KNOWN_FLAGS:
        raise OffloadError(Drop.BAD_FLAGS, f"unknown virtio-net flag bits {hdr.flags:#x}")
    base = hdr.gso_type & ~GSO_ECN
    if base not in (GSO_NONE, GSO_TCPV4, GSO_UDP, GSO_TCPV6, GSO_UDP_L4):
        raise OffloadError(Drop.BAD_GSO_TYPE, f"unknown gso_type {hdr.gso_type:#x}")
    if hdr.gso_type & GSO_ECN and base not in (GSO_TCPV4, GSO_TCPV6):
        raise OffloadError(Drop.BAD_GSO_TYPE, f"ECN bit on non-TCP gso_type {hdr.gso_type:#x}")
    if base == GSO_UDP:
        # UFO (IP fragmentation of UDP) is never negotiated by this project.
        raise OffloadError(Drop.UNSUPPORTED_GSO_TYPE, "GSO_UDP (UFO) is not supported")
    needs_csum = hdr.flags & FLAG_NEEDS_CSUM
    if needs_csum and hdr.csum_start + hdr.csum_offset + 2 > packet_len:
        raise OffloadError(
            Drop.CSUM_OUT_OF_BOUNDS,
            f"checksum at {hdr.csum_start}+{hdr.csum_offset} outside a {packet_len}-byte packet",
        )
    if hdr.hdr_len > packet_len:
        raise OffloadError(
            Drop.HDR_LEN_TOO_BIG, f"hdr_len {hdr.hdr_len} beyond a {packet_len}-byte packet"
        )
    if base == GSO_NONE:
        return
    if hdr.gso_size == 0 or hdr.gso_size == 0xFFFF:
        raise OffloadError(Drop.BAD_GSO_SIZE, f"gso_size {hdr.gso_size} with gso_type {base}")
    if base in (GSO_TCPV4, GSO_TCPV6):
        if needs_csum and hdr.csum_offset != TCP_CSUM_OFFSET:
            raise OffloadError(Drop.BAD_CSUM_OFFSET, f"TCP GSO with csum_offset {hdr.csum_offset}")
    else:  # GSO_UDP_L4
        if not needs_csum:
            raise OffloadError(Drop.MISSING_NEEDS_CSUM, "UDP_L4 GSO without NEEDS_CSUM")
        if hdr.csum_offset != UDP_CSUM_OFFSET:
            raise OffloadError(Drop.BAD_CSUM_OFFSET,
                               f"UDP_L4 GSO with csum_offset {hdr.csum_offset}")
