"""common_source: IP packets laid at a fixed stride (the plaintexts of one GRO receive),
checked all at once for one IP version, one source address and lengths that fit."""

from __future__ import annotations

import random
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.unit.packets import DST4, DST6, SRC4, SRC6, tcp_packet, udp_packet
from vpn.packet.strided import common_source

MIN_ROOM = 40  # the caller guarantees the last packet at least this much room


def packets_from(rng: random.Random, version: int, src: bytes, count: int, most: int
                 ) -> list[bytes]:
    """`count` TCP/UDP packets from `src`, none longer than `most` bytes, to various hosts."""
    header = 20 if version == 4 else 40
    packets = []
    for _ in range(count):
        dst = bytearray(DST4 if version == 4 else DST6)
        dst[-1] = rng.randrange(256)
        if rng.random() < 0.5:
            payload = rng.randbytes(rng.randint(0, most - header - 20))
            packets.append(tcp_packet(payload, version=version, src=src, dst=bytes(dst),
                                      seq=rng.getrandbits(32)))
        else:
            payload = rng.randbytes(rng.randint(0, most - header - 8))
            packets.append(udp_packet(payload, version=version, src=src, dst=bytes(dst),
                                      sport=rng.randrange(65536)))
    return packets


def lay(rng: random.Random, packets: list[bytes], stride: int, offset: int, last_room: int,
        tail: int) -> bytearray:
    """Packet i at offset + i * stride; the slack between them is random bytes."""
    size = offset + (len(packets) - 1) * stride + max(last_room, MIN_ROOM) + tail
    buf = bytearray(rng.randbytes(size))
    for i, packet in enumerate(packets):
        buf[offset + i * stride:offset + i * stride + len(packet)] = packet
    return buf


def set_length(buf: bytearray, at: int, length: int) -> None:
    """Write an IP length (header included) into the packet at `at`."""
    if buf[at] >> 4 == 4:
        struct.pack_into(">H", buf, at + 2, length)
    else:
        struct.pack_into(">H", buf, at + 4, length - 40)


def setup(version: int, count: int = 10, stride: int = 200, offset: int = 7, seed: int = 1,
          src: bytes | None = None) -> tuple[bytearray, list[bytes], int]:
    """A positive case: the buffer, its packets and the last packet's room."""
    rng = random.Random(seed)
    src = src or (SRC4 if version == 4 else SRC6)
    packets = packets_from(rng, version, src, count, stride)
    last_room = max(len(packets[-1]), MIN_ROOM)
    return lay(rng, packets, stride, offset, last_room, 3), packets, last_room


@st.composite
def positive_cases(draw: st.DrawFn) -> tuple[bytearray, int, int, int, int, bytes, list[bytes]]:
    version = draw(st.sampled_from([4, 6]))
    src = draw(st.binary(min_size=4 if version == 4 else 16, max_size=4 if version == 4 else 16))
    stride = draw(st.integers(68, 400))
    count = draw(st.integers(1, 40))
    offset = draw(st.integers(0, 64))
    rng = random.Random(draw(st.integers(0, 2**32)))
    packets = packets_from(rng, version, src, count, stride)
    last_room = draw(st.integers(max(len(packets[-1]), MIN_ROOM), stride))
    buf = lay(rng, packets, stride, offset, last_room, draw(st.integers(0, 16)))
    return buf, offset, stride, count, last_room, src, packets


@settings(max_examples=150, deadline=None)
@given(positive_cases())
def test_one_version_one_source_gives_source_and_lengths(
    case: tuple[bytearray, int, int, int, int, bytes, list[bytes]],
) -> None:
    buf, offset, stride, count, last_room, src, packets = case
    before = bytes(buf)
    assert common_source(buf, offset, stride, count, last_room) == (
        src, [len(p) for p in packets])
    assert buf == before  # only read


@pytest.mark.parametrize("version", [4, 6])
def test_lengths_exactly_filling_their_room_are_accepted(version: int) -> None:
    buf, _, _ = setup(version, count=5, stride=120)
    for i in range(5):
        set_length(buf, 7 + i * 120, 120 if i < 4 else 90)
    src = SRC4 if version == 4 else SRC6
    assert common_source(buf, 7, 120, 5, 90) == (src, [120, 120, 120, 120, 90])


@pytest.mark.parametrize("version", [4, 6])
@pytest.mark.parametrize("row", [0, 1, 6, 9])
def test_mixed_versions_give_none(version: int, row: int) -> None:
    buf, _, last_room = setup(version)
    other = 6 if version == 4 else 4
    assert common_source(buf, 7, 200, 10, last_room) is not None
    intruder = udp_packet(b"z" * 10, version=other)  # its own source: only the version differs
    buf[7 + row * 200:7 + row * 200 + len(intruder)] = intruder
    assert common_source(buf, 7, 200, 10, max(last_room, len(intruder))) is None


@pytest.mark.parametrize("version", [4, 6])
@pytest.mark.parametrize("row", [0, 1, 5, 9])
def test_a_different_source_in_any_row_gives_none(version: int, row: int) -> None:
    width = 4 if version == 4 else 16
    source_at = 12 if version == 4 else 8
    for byte in range(width):  # every byte of the address counts (each 32-bit word of a v6)
        buf, _, last_room = setup(version, seed=row * 100 + byte)
        buf[7 + row * 200 + source_at + byte] ^= 0x01
        assert common_source(buf, 7, 200, 10, last_room) is None, (row, byte)


@pytest.mark.parametrize("version", [4, 6])
@pytest.mark.parametrize("row", [0, 3, 8])
def test_a_length_past_the_stride_gives_none(version: int, row: int) -> None:
    buf, _, last_room = setup(version)
    set_length(buf, 7 + row * 200, 201)
    assert common_source(buf, 7, 200, 10, last_room) is None
    set_length(buf, 7 + row * 200, 200)
    assert common_source(buf, 7, 200, 10, last_room) is not None
    set_length(buf, 7 + row * 200, 0xFFFF if version == 4 else 0xFFFF + 40)
    assert common_source(buf, 7, 200, 10, last_room) is None


@pytest.mark.parametrize("version", [4, 6])
def test_a_last_length_past_the_last_room_gives_none(version: int) -> None:
    buf, _, _ = setup(version)
    last = 7 + 9 * 200
    set_length(buf, last, 150)
    assert common_source(buf, 7, 200, 10, 150) is not None
    assert common_source(buf, 7, 200, 10, 149) is None  # 150 does not fit in 149
    assert common_source(buf, 7, 200, 10, MIN_ROOM) is None


@pytest.mark.parametrize("first", [0x00, 0x10, 0x35, 0x50, 0x7F, 0xF4, 0xFF])
@pytest.mark.parametrize("row", [0, 4, 9])
def test_a_non_ip_version_nibble_gives_none(first: int, row: int) -> None:
    for version in (4, 6):
        buf, _, last_room = setup(version)
        buf[7 + row * 200] = first
        assert common_source(buf, 7, 200, 10, last_room) is None


def test_single_packet() -> None:
    packet = tcp_packet(b"hello", version=6, src=SRC6)
    buf = bytearray(packet) + bytes(8)
    assert common_source(buf, 0, 1500, 1, len(buf)) == (SRC6, [len(packet)])
    assert common_source(buf, 0, 1500, 1, len(packet) - 1) is None


def reference(buf: bytes, offset: int, stride: int, count: int, last_room: int
              ) -> tuple[bytes, list[int]] | None:
    """common_source packet by packet, for the GRO-shaped case last_room <= stride."""
    starts = [offset + i * stride for i in range(count)]
    version = buf[offset] >> 4
    if version not in (4, 6) or any(buf[s] >> 4 != version for s in starts):
        return None
    if version == 4:
        lengths = [int.from_bytes(buf[s + 2:s + 4], "big") for s in starts]
        sources = {bytes(buf[s + 12:s + 16]) for s in starts}
    else:
        lengths = [40 + int.from_bytes(buf[s + 4:s + 6], "big") for s in starts]
        sources = {bytes(buf[s + 8:s + 24]) for s in starts}
    rooms = [stride] * (count - 1) + [last_room]
    if any(n > room for n, room in zip(lengths, rooms, strict=True)) or len(sources) != 1:
        return None
    return sources.pop(), lengths


@st.composite
def noisy_buffers(draw: st.DrawFn) -> tuple[bytearray, int, int, int, int]:
    """Random bytes, with version nibbles, sources and lengths often made to agree."""
    stride = draw(st.integers(MIN_ROOM, 160))
    count = draw(st.integers(1, 12))
    offset = draw(st.integers(0, 20))
    last_room = draw(st.integers(MIN_ROOM, stride))
    rng = random.Random(draw(st.integers(0, 2**32)))
    size = offset + (count - 1) * stride + last_room + draw(st.integers(0, 8))
    buf = bytearray(rng.randbytes(size))
    first = draw(st.sampled_from([0x45, 0x60, 0x4F, 0x6A, None]))
    agree = draw(st.floats(0.0, 1.0))
    for i in range(count):
        at = offset + i * stride
        if first is not None and rng.random() < agree + 0.3:
            buf[at] = first
        if rng.random() < agree:
            buf[at + 8:at + 24] = buf[offset + 8:offset + 24]  # v4 src+dst / v6 src
        if rng.random() < agree + 0.2:
            room = last_room if i == count - 1 else stride
            set_length(buf, at, rng.randint(40, room + 1))
    return buf, offset, stride, count, last_room


@settings(max_examples=300, deadline=None)
@given(noisy_buffers())
def test_matches_a_packet_by_packet_reference(case: tuple[bytearray, int, int, int, int]
                                              ) -> None:
    buf, offset, stride, count, last_room = case
    assert common_source(buf, offset, stride, count, last_room) == reference(
        bytes(buf), offset, stride, count, last_room)


@settings(max_examples=300, deadline=None)
@given(
    st.integers(0, 300),  # stride, down to 0 (overlapping rows)
    st.integers(1, 16),
    st.integers(0, 32),
    st.integers(0, 400),  # last_room, even below the documented minimum
    st.integers(0, 2**32),
    st.sampled_from([None, 0x40, 0x60]),
)
def test_never_raises_on_random_buffers(stride: int, count: int, offset: int, last_room: int,
                                        seed: int, first: int | None) -> None:
    rng = random.Random(seed)
    size = offset + (count - 1) * stride + max(last_room, MIN_ROOM) + rng.randint(0, 4)
    buf = bytearray(rng.randbytes(size))
    if first is not None:
        for i in range(count):
            buf[offset + i * stride] = first | (buf[offset + i * stride] & 0x0F)
    result = common_source(buf, offset, stride, count, last_room)
    if result is not None:  # whatever it accepts is sound
        source, lengths = result
        version = buf[offset] >> 4
        assert version in (4, 6) and len(lengths) == count
        assert len(source) == (4 if version == 4 else 16)
        assert all(n <= stride for n in lengths) and lengths[-1] <= last_room
        for i in range(count):
            at = offset + i * stride
            assert buf[at] >> 4 == version
            at += 12 if version == 4 else 8
            assert buf[at:at + len(source)] == source
