"""IP packets laid at a fixed stride in one buffer (the plaintexts of one GRO receive), seen
through numpy, so that what they all share is checked once rather than per packet."""

from __future__ import annotations

import numpy as np

__all__ = ["common_source"]

_U8 = np.uint8


def common_source(buf: bytearray, offset: int, stride: int, count: int,
                  last_room: int) -> tuple[bytes, list[int]] | None:
    """Packet i starts at ``offset + i * stride`` and has ``stride`` bytes of room, the last
    one ``last_room`` (at least 40). If all are IPv4 or all IPv6, from one source address,
    each with an honest IP length (at least its header, at most its room), return that
    source and the IP lengths; otherwise None, and the caller checks them one by one."""
    b0 = buf[offset]
    if b0 >> 4 == 4:
        length_at, header, source_at, source_len = 2, 0, 12, 4
    elif b0 >> 4 == 6:
        length_at, header, source_at, source_len = 4, 40, 8, 16
    else:
        return None
    versions = np.ndarray((count,), _U8, buf, offset, (stride,)) & 0xF0
    if not (versions == (b0 & 0xF0)).all():
        return None
    lengths = (np.ndarray((count,), ">u2", buf, offset + length_at, (stride,)).astype(np.intp)
               + header).tolist()
    if lengths[-1] > last_room or max(lengths) > stride or min(lengths) < 20:
        return None
    # Source addresses as one or two native words per packet: only equality matters.
    words = np.ndarray((count, source_len // 4), "<u4", buf, offset + source_at, (stride, 4))
    if not (words == words[0]).all():
        return None
    return bytes(buf[offset + source_at:offset + source_at + source_len]), lengths
