"""The virtio-net header: wire format round trip and the kernel's acceptance rules."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vpn.core.offload import OffloadError as ReexportedError
from vpn.core.packet.errors import OffloadError
from vpn.core.packet.virtio import (
    FLAG_DATA_VALID,
    FLAG_NEEDS_CSUM,
    GSO_ECN,
    GSO_NONE,
    GSO_TCPV4,
    GSO_TCPV6,
    GSO_UDP,
    GSO_UDP_L4,
    NO_OFFLOAD,
    VIRTIO_NET_HDR_LEN,
    VirtioNetHeader,
    validate,
)
from vpn.core.packet.virtio import OffloadError as VirtioError

u8, u16 = st.integers(0, 0xFF), st.integers(0, 0xFFFF)


@given(u8, u8, u16, u16, u16, u16)
def test_round_trip(flags: int, gso: int, hl: int, size: int, start: int, off: int) -> None:
    hdr = VirtioNetHeader(flags, gso, hl, size, start, off)
    raw = hdr.pack()
    assert len(raw) == VIRTIO_NET_HDR_LEN
    assert raw == struct.pack("<BBHHHH", flags, gso, hl, size, start, off)
    assert VirtioNetHeader.unpack(raw) == hdr
    assert VirtioNetHeader.unpack(memoryview(raw + b"trailing packet")) == hdr


def test_little_endian_layout() -> None:
    raw = VirtioNetHeader(FLAG_NEEDS_CSUM, GSO_TCPV4, 52, 1448, 20, 16).pack()
    assert raw == bytes([1, 1, 52, 0, 0xA8, 0x05, 20, 0, 16, 0])
    assert bytes(10) == NO_OFFLOAD == VirtioNetHeader().pack()


def test_short_header() -> None:
    with pytest.raises(OffloadError) as info:
        VirtioNetHeader.unpack(b"\x01" * 9)
    assert info.value.reason == "short_vnet_header"
    assert isinstance(info.value, ValueError)
    assert ReexportedError is OffloadError is VirtioError


TCP4 = dict(flags=FLAG_NEEDS_CSUM, gso_type=GSO_TCPV4, hdr_len=52, gso_size=1448,
            csum_start=20, csum_offset=16)
UDP = dict(flags=FLAG_NEEDS_CSUM, gso_type=GSO_UDP_L4, hdr_len=28, gso_size=1400,
           csum_start=20, csum_offset=6)


@pytest.mark.parametrize("fields", [
    {},
    dict(flags=FLAG_DATA_VALID),
    dict(flags=FLAG_NEEDS_CSUM, csum_start=20, csum_offset=16),
    TCP4,
    {**TCP4, "gso_type": GSO_TCPV4 | GSO_ECN},
    {**TCP4, "gso_type": GSO_TCPV6, "csum_start": 40},
    {**TCP4, "flags": 0, "csum_offset": 0},  # TCP GSO without NEEDS_CSUM is accepted
    UDP,
])
def test_validate_accepts(fields: dict[str, int]) -> None:
    validate(VirtioNetHeader(**fields), 60000)


@pytest.mark.parametrize(("fields", "length", "reason"), [
    (dict(flags=4), 100, "bad_flags"),
    (dict(flags=0x80), 100, "bad_flags"),
    ({**TCP4, "gso_type": 2}, 60000, "bad_gso_type"),
    ({**TCP4, "gso_type": 6}, 60000, "bad_gso_type"),
    ({**TCP4, "gso_type": 0x41}, 60000, "bad_gso_type"),
    ({**UDP, "gso_type": GSO_UDP_L4 | GSO_ECN}, 60000, "bad_gso_type"),
    (dict(gso_type=GSO_ECN), 100, "bad_gso_type"),
    ({**TCP4, "gso_type": GSO_UDP}, 60000, "unsupported_gso_type"),
    ({**TCP4, "gso_size": 0}, 60000, "bad_gso_size"),
    ({**TCP4, "gso_size": 0xFFFF}, 60000, "bad_gso_size"),
    ({**TCP4, "csum_offset": 6}, 60000, "bad_csum_offset"),
    ({**TCP4, "gso_type": GSO_TCPV6, "csum_offset": 17}, 60000, "bad_csum_offset"),
    ({**UDP, "csum_offset": 16}, 60000, "bad_csum_offset"),
    ({**UDP, "flags": 0}, 60000, "missing_needs_csum"),
    ({**UDP, "flags": FLAG_DATA_VALID}, 60000, "missing_needs_csum"),
    (dict(flags=FLAG_NEEDS_CSUM, csum_start=20, csum_offset=16), 37, "csum_out_of_bounds"),
    (dict(flags=FLAG_NEEDS_CSUM, csum_start=100, csum_offset=0), 101, "csum_out_of_bounds"),
    ({**TCP4, "hdr_len": 200}, 100, "hdr_len_too_big"),
])
def test_validate_rejects(fields: dict[str, int], length: int, reason: str) -> None:
    with pytest.raises(OffloadError) as info:
        validate(VirtioNetHeader(**fields), length)
    assert info.value.reason == reason
    assert str(info.value)


def test_checksum_exactly_at_end_is_accepted() -> None:
    validate(VirtioNetHeader(flags=FLAG_NEEDS_CSUM, csum_start=20, csum_offset=16), 38)
    validate(VirtioNetHeader(gso_type=GSO_NONE, gso_size=0), 0)
