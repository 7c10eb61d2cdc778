"""GSO split: segments of kernel-style super-packets, checksum completion and rejection.

Every test runs against both implementations (the Python reference and, when built, the
native twin); tests/unit/core/test_gso_native.py compares the two on the same inputs."""

from __future__ import annotations

import os
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lab.packets import (
    ACK,
    CWR,
    ECE,
    FIN,
    PSH,
    SRC4,
    TS_OPTION,
    Parsed,
    ipv4_header,
    ipv6_header,
    parse,
    pseudo,
    ref_sum,
    tcp_packet,
    tcp_super_packet,
    udp_packet,
    udp_super_packet,
    verify,
)
from tests.examples import examples
from vpn.core.offload import OffloadError, gso, split
from vpn.core.packet.virtio import (
    FLAG_DATA_VALID,
    FLAG_NEEDS_CSUM,
    GSO_ECN,
    GSO_NONE,
    GSO_TCPV4,
    GSO_TCPV6,
    GSO_UDP_L4,
    VirtioNetHeader,
)

IMPLEMENTATIONS = [gso.split_python] + ([gso.split] if gso.NATIVE.native else [])


@pytest.fixture(autouse=True, params=IMPLEMENTATIONS, ids=lambda f: f.__name__)
def _implementation(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(globals(), "split", request.param)


def check_tcp_segments(segs: list[Parsed], payload: bytes, mss: int, *, seq: int, ident: int,
                       flags: int, version: int, options: bytes) -> None:
    count = max(1, -(-len(payload) // mss))
    assert len(segs) == count
    for i, s in enumerate(segs):
        assert s.payload == payload[i * mss:(i + 1) * mss]
        assert s.seq == (seq + i * mss) & 0xFFFFFFFF
        assert s.options == options
        if version == 4:
            assert s.ident == (ident + i) & 0xFFFF
        want = flags
        if i != count - 1:
            want &= ~(FIN | PSH)
        if i != 0:
            want &= ~CWR
        assert s.flags == want, i


@pytest.mark.parametrize("version", [4, 6])
@pytest.mark.parametrize("options", [b"", TS_OPTION])
@pytest.mark.parametrize(("mss", "length"), [
    (1448, 65535 - 40 - 12 - 20), (1448, 1448 * 45), (1380, 40000), (1447, 10001),
    (536, 1073), (1, 9), (1448, 1448), (1448, 100), (1448, 0), (2, 1), (3, 3),
])
def test_tcp_split(version: int, options: bytes, mss: int, length: int) -> None:
    payload = os.urandom(length)
    flags = ACK | PSH | FIN | CWR | ECE
    hdr, pkt = tcp_super_packet(payload, mss, version=version, options=options, flags=flags,
                                seq=0xFFFFF000, ident=0xFFF0)
    segs = [verify(s) for s in split(hdr, pkt)]
    check_tcp_segments(segs, payload, mss, seq=0xFFFFF000, ident=0xFFF0, flags=flags,
                       version=version, options=options)


@settings(max_examples=examples(60), deadline=None)
@given(st.sampled_from([4, 6]), st.integers(1, 3000), st.integers(0, 20000),
       st.sampled_from([b"", TS_OPTION, b"\x01\x01\x01\x00"]), st.integers(0, 2**32 - 1),
       st.integers(0, 0xFFFF), st.sampled_from([ACK, ACK | PSH, ACK | FIN | PSH, ACK | CWR]),
       st.booleans())
def test_tcp_split_property(version: int, mss: int, length: int, options: bytes, seq: int,
                            ident: int, flags: int, ecn: bool) -> None:
    payload = os.urandom(length)
    hdr, pkt = tcp_super_packet(payload, mss, version=version, options=options, flags=flags,
                                seq=seq, ident=ident, ttl=7, tos=0x2E)
    if ecn:
        hdr = VirtioNetHeader(hdr.flags, hdr.gso_type | GSO_ECN, hdr.hdr_len, hdr.gso_size,
                              hdr.csum_start, hdr.csum_offset)
    segs = [verify(s) for s in split(hdr, pkt)]
    check_tcp_segments(segs, payload, mss, seq=seq, ident=ident, flags=flags, version=version,
                       options=options)
    assert all(s.ttl == 7 and s.tos == 0x2E for s in segs)


def test_untrusted_hdr_len_and_no_needs_csum() -> None:
    payload = os.urandom(5000)
    _, pkt = tcp_super_packet(payload, 1000, options=TS_OPTION)
    for hdr_len in (0, 20, 40, 100):
        bad = VirtioNetHeader(0, GSO_TCPV4, hdr_len, 1000, 0, 0)
        segs = [verify(s) for s in split(bad, pkt)]
        assert b"".join(s.payload for s in segs) == payload
        assert len(segs) == 5


def test_trailing_bytes_after_ip_length_are_ignored() -> None:
    payload = os.urandom(3000)
    hdr, pkt = tcp_super_packet(payload, 1000)
    segs = [verify(s) for s in split(hdr, pkt + b"junk")]
    assert b"".join(s.payload for s in segs) == payload


def test_input_kinds() -> None:
    hdr, pkt = tcp_super_packet(os.urandom(3000), 1000, version=6)
    expected = [bytes(s) for s in split(hdr, pkt)]
    assert [bytes(s) for s in split(hdr, bytearray(pkt))] == expected
    assert [bytes(s) for s in split(hdr, memoryview(pkt))] == expected
    assert [bytes(s) for s in split(hdr, memoryview(b"xx" + pkt)[2:])] == expected


def test_plain_packet_is_returned_unchanged() -> None:
    pkt = tcp_packet(b"hello")
    assert split(VirtioNetHeader(), pkt)[0] is pkt
    assert split(VirtioNetHeader(flags=FLAG_DATA_VALID), pkt)[0] is pkt
    junk = b"\x00not even IP"
    assert split(VirtioNetHeader(), junk) == [junk]


@pytest.mark.parametrize("version", [4, 6])
@pytest.mark.parametrize("length", [0, 1, 100, 1447, 3000])
def test_needs_csum_completion(version: int, length: int) -> None:
    ihl = 20 if version == 4 else 40
    for hdr, pkt in (tcp_super_packet(os.urandom(length), 1448, version=version),
                     udp_super_packet(os.urandom(length), 1448, version=version)):
        plain = VirtioNetHeader(FLAG_NEEDS_CSUM, GSO_NONE, 0, 0, ihl, hdr.csum_offset)
        before = bytes(pkt)
        (out,) = split(plain, pkt)
        assert out is not pkt and pkt == before  # a completed copy; the input stays as it was
        verify(out)
        assert out[:ihl + hdr.csum_offset] == pkt[:ihl + hdr.csum_offset]
        assert out[ihl + hdr.csum_offset + 2:] == pkt[ihl + hdr.csum_offset + 2:]


def test_needs_csum_zero_result_becomes_ffff() -> None:
    # Choose two payload bytes so that the checksum comes out as zero.
    base = udp_packet(b"\0\0", csum=0)
    partial = ref_sum(pseudo(SRC4, base[16:20], 17, 10))
    pkt = bytearray(base)
    pkt[26:28] = partial.to_bytes(2, "big")
    total = ref_sum(bytes(pkt[20:]))
    pkt[28:30] = (0xFFFF - total).to_bytes(2, "big")  # now the whole sum is 0xFFFF
    assert ref_sum(bytes(pkt[20:])) == 0xFFFF
    (out,) = split(VirtioNetHeader(FLAG_NEEDS_CSUM, 0, 0, 0, 20, 6), pkt)
    assert out[26:28] == b"\xff\xff"
    verify(out)


@pytest.mark.parametrize("version", [4, 6])
@pytest.mark.parametrize(("mss", "length"), [(1400, 63000), (1200, 5000), (1201, 2403),
                                             (1400, 100), (7, 64)])
def test_udp_split(version: int, mss: int, length: int) -> None:
    payload = os.urandom(length)
    hdr, pkt = udp_super_packet(payload, mss, version=version, ident=0xFFFE)
    segs = [verify(s) for s in split(hdr, pkt)]
    assert len(segs) == max(1, -(-length // mss))
    for i, s in enumerate(segs):
        assert s.payload == payload[i * mss:(i + 1) * mss]
        assert (s.sport, s.dport) == (51820, 51821)
        if version == 4:
            assert s.ident == (0xFFFE + i) & 0xFFFF


def test_segments_are_views_of_one_buffer() -> None:
    hdr, pkt = tcp_super_packet(os.urandom(10000), 1000)
    segs = split(hdr, pkt)
    assert all(isinstance(s, memoryview) for s in segs)
    assert len({id(s.obj) for s in segs if isinstance(s, memoryview)}) == 1


def _with(pkt: bytes, offset: int, value: bytes) -> bytes:
    return pkt[:offset] + value + pkt[offset + len(value):]


TCP4_HDR, TCP4 = tcp_super_packet(os.urandom(3000), 1000)
TCP6_HDR, TCP6 = tcp_super_packet(os.urandom(3000), 1000, version=6)
UDP4_HDR, UDP4 = udp_super_packet(os.urandom(3000), 1000)


@pytest.mark.parametrize(("hdr", "pkt", "reason"), [
    (VirtioNetHeader(0, GSO_TCPV4, 0, 1000, 0, 0), TCP4[:10], "truncated_ip"),
    (VirtioNetHeader(0, GSO_TCPV4, 0, 1000, 0, 0), b"", "truncated_ip"),
    (TCP4_HDR, TCP4[:-1], "truncated_ip"),
    (TCP6_HDR, TCP6[:-1], "truncated_ip"),
    (TCP6_HDR, TCP6[:30], "csum_out_of_bounds"),
    (TCP4_HDR, _with(TCP4, 0, b"\x55"), "bad_ip_version"),
    (TCP4_HDR, _with(TCP4, 0, b"\x44"), "bad_ip_header_len"),
    (TCP4_HDR, _with(TCP4, 2, b"\x00\x10"), "bad_ip_length"),
    (TCP6_HDR, _with(TCP6, 4, b"\x00\x00"), "bad_ip_length"),
    (TCP4_HDR, _with(TCP4, 6, b"\x20\x00"), "ip_fragment"),
    (TCP4_HDR, _with(TCP4, 6, b"\x00\x08"), "ip_fragment"),
    (TCP4_HDR, _with(TCP4, 9, b"\x11"), "not_tcp"),
    (UDP4_HDR, _with(UDP4, 9, b"\x06"), "not_udp"),
    (TCP6_HDR, _with(TCP6, 6, b"\x00"), "ipv6_extension_header"),
    (TCP6_HDR, _with(TCP6, 6, b"\x3a"), "not_tcp"),
    (TCP4_HDR, TCP6, "ip_version_mismatch"),
    (TCP6_HDR, TCP4, "ip_version_mismatch"),
    (TCP4_HDR, _with(TCP4, 32, b"\x40"), "bad_tcp_offset"),
    (VirtioNetHeader(0, GSO_TCPV4, 0, 1000, 0, 0), ipv4_header(SRC4, SRC4, 6, 10) + bytes(10),
     "truncated_tcp"),
    (VirtioNetHeader(FLAG_NEEDS_CSUM, GSO_UDP_L4, 0, 1000, 0, 6),
     ipv4_header(SRC4, SRC4, 17, 6) + bytes(6), "truncated_udp"),
    (VirtioNetHeader(0, GSO_TCPV6, 0, 1000, 0, 0),
     ipv6_header(SRC4 * 4, SRC4 * 4, 6, 30) + bytes(12) + bytes([0xF0]) + bytes(17),
     "truncated_tcp"),
    (VirtioNetHeader(FLAG_NEEDS_CSUM, GSO_TCPV4, 0, 0, 20, 16), TCP4, "bad_gso_size"),
])
def test_rejects(hdr: VirtioNetHeader, pkt: bytes, reason: str) -> None:
    with pytest.raises(OffloadError) as info:
        split(hdr, pkt)
    assert info.value.reason == reason


@settings(max_examples=examples(300), deadline=None)
@given(st.tuples(st.integers(0, 3), st.sampled_from([0, 1, 4, 5, 0x81, 0x84, 7]),
                 st.integers(0, 200), st.integers(0, 2000), st.integers(0, 100),
                 st.integers(0, 40)),
       st.binary(max_size=300))
def test_random_input_only_raises_offload_error(fields: tuple[int, ...], data: bytes) -> None:
    try:
        for seg in split(VirtioNetHeader(*fields), data):
            assert len(seg) <= len(data) + 100
    except OffloadError as err:
        assert err.reason


@settings(max_examples=examples(300), deadline=None)
@given(st.sampled_from([(TCP4_HDR, TCP4), (TCP6_HDR, TCP6), (UDP4_HDR, UDP4)]),
       st.integers(0, 3100), st.lists(st.tuples(st.integers(0, 80), st.integers(0, 255)),
                                      max_size=4))
def test_mutated_super_packets(case: tuple[VirtioNetHeader, bytes], cut: int,
                               edits: list[tuple[int, int]]) -> None:
    hdr, pkt = case
    buf = bytearray(pkt[:cut])
    for offset, value in edits:
        if offset < len(buf):
            buf[offset] = value
    try:
        segs = split(hdr, bytes(buf))
    except OffloadError as err:
        assert err.reason
        return
    for seg in segs:
        parse(seg)  # lengths are consistent in anything we emit


def test_seq_and_id_wrap() -> None:
    payload = os.urandom(4000)
    hdr, pkt = tcp_super_packet(payload, 1000, seq=2**32 - 1500, ident=0xFFFF)
    segs = [verify(s) for s in split(hdr, pkt)]
    assert [s.seq for s in segs] == [2**32 - 1500, 2**32 - 500, 500, 1500]
    assert [s.ident for s in segs] == [0xFFFF, 0, 1, 2]
    assert struct.unpack_from("!H", bytes(split(hdr, pkt)[-1]), 2)[0] == 20 + 20 + 1000


def test_gso_tcpv6_header_constant() -> None:
    hdr, _ = tcp_super_packet(b"x", 1, version=6)
    assert hdr.gso_type == GSO_TCPV6


