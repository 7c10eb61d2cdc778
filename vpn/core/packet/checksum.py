"""Internet (RFC 1071) one's-complement checksums for IPv4, TCP and UDP.

A buffer is summed as one big integer: 2**16 == 1 (mod 0xFFFF), so the number's residue
modulo 0xFFFF is the sum of its 16-bit digits. Both steps (int.from_bytes and the remainder by
a one-digit divisor) are linear in the length.
"""

from __future__ import annotations

from vpn.core.types import Buffer

__all__ = ["checksum", "fold", "ones_complement_sum", "pseudo_header_sum"]


def fold(value: int) -> int:
    """Fold a non-negative integer sum of 16-bit words into 16 bits with end-around carry."""
    while value >> 16:
        value = (value & 0xFFFF) + (value >> 16)
    return value


def ones_complement_sum(data: Buffer) -> int:
    """Return the folded 16-bit one's-complement sum of big-endian words of ``data``.

    An odd trailing byte is padded with zero. The result is 0 only when every byte is zero;
    otherwise it lies in 1..0xFFFF, as the carry-folding reference algorithm gives.
    """
    value = int.from_bytes(data, "big")
    if len(data) & 1:
        value <<= 8
    if not value:
        return 0
    return value % 0xFFFF or 0xFFFF


def checksum(data: Buffer, initial: int = 0) -> int:
    """Return the Internet checksum (complement of the folded sum) of ``data`` plus ``initial``."""
    return ~fold(ones_complement_sum(data) + initial) & 0xFFFF


def pseudo_header_sum(src: Buffer, dst: Buffer, proto: int, length: int) -> int:
    """Return the folded sum of the TCP/UDP pseudo-header for IPv4 or IPv6 addresses."""
    value = int.from_bytes(src, "big") + int.from_bytes(dst, "big")
    # Reduce each address modulo 0xFFFF first; the result is congruent to the true sum.
    total = value % 0xFFFF + proto + length
    total = fold(total)
    # A congruent residue of 0 could stand for 0xFFFF; both are the same in one's complement,
    # but return the canonical non-zero form when any input was non-zero.
    if not total and (value or proto or length):
        return 0xFFFF
    return total
