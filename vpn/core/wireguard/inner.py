"""What the receive path checks of a decrypted packet before cryptokey routing: that it is
IPv4 or IPv6 and that its length field is honest. Keypair.open_run's reference applies it
(its native twin, transport_open.c's inner_packet, is tested equal), and every receive goes
through open_run: the one receive walk (Device.receive)."""

from __future__ import annotations

from vpn.core.packet.headers import (
    IPV4_HDR_LEN,
    IPV4_SRC,
    IPV4_TOTAL_LEN,
    IPV6_HDR_LEN,
    IPV6_PAYLOAD_LEN,
    IPV6_SRC,
)
from vpn.core.types import Buffer


def inner_packet(packet: Buffer) -> tuple[int, Buffer] | str:
    """The IP length and the source address of a decrypted packet (its padding starts at
    that length), or the reason to drop it: `inner_not_ip` for neither IPv4 nor IPv6,
    `dishonest_packet_size` (the kernel's name) for a length under the IP header or past
    what was decrypted. The source is a slice of `packet`, within the header, so it is
    read only from bytes the packet keeps."""
    n = len(packet)
    version = packet[0] >> 4 if n else 0
    if version == 4:
        if n >= IPV4_HDR_LEN and IPV4_HDR_LEN <= (length := _u16(packet, IPV4_TOTAL_LEN)) <= n:
            return length, packet[IPV4_SRC:IPV4_SRC + 4]
    elif version == 6:
        if n >= IPV6_HDR_LEN and (length := IPV6_HDR_LEN + _u16(packet, IPV6_PAYLOAD_LEN)) <= n:
            return length, packet[IPV6_SRC:IPV6_SRC + 16]
    else:
        return "inner_not_ip"
    return "dishonest_packet_size"


def _u16(packet: Buffer, at: int) -> int:
    return (packet[at] << 8) | packet[at + 1]
