"""The native GSO split (_gso.c) against the Python reference (split_python), on the same
inputs: byte-identical segments for everything the reference accepts, the same OffloadError
reason for everything it rejects.

Inputs and outputs go through buffers of exactly their size (ctypes arrays, which are plain
malloc blocks under PYTHONMALLOC=malloc), so `make sanitize` catches a one-byte overrun.
"""

from __future__ import annotations

import ctypes
import itertools
import os
import random
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from lab.packets import (
    ACK,
    CWR,
    DST4,
    DST6,
    ECE,
    FIN,
    PSH,
    SRC4,
    SRC6,
    URG,
    ipv4_header,
    ipv6_header,
    verify,
)
from tests.examples import examples
from vpn.core.offload import _gso, gso
from vpn.core.packet.errors import OffloadError
from vpn.core.packet.virtio import (
    FLAG_NEEDS_CSUM,
    GSO_ECN,
    GSO_NONE,
    GSO_TCPV4,
    GSO_TCPV6,
    GSO_UDP_L4,
    VirtioNetHeader,
)

ROOT = Path(__file__).resolve().parents[3]
FILL = 0xA5  # what the output buffer holds where nothing may be written
Outcome = list[bytes] | str


def exact(data: bytes) -> ctypes.Array[ctypes.c_char]:
    """A copy of ``data`` in a buffer of exactly its length (no slack to overrun into)."""
    buf = (ctypes.c_char * len(data))()
    ctypes.memmove(buf, data, len(data))
    return buf


def fields(hdr: VirtioNetHeader) -> tuple[int, ...]:
    return (hdr.flags, hdr.gso_type, hdr.hdr_len, hdr.gso_size, hdr.csum_start,
            hdr.csum_offset)


def native(hdr: VirtioNetHeader, packet: bytes, gap: int = 0, tail: int = 0,
           offset: int = 0) -> Outcome:
    """The segments as _gso lays them out, checking that nothing outside them was written."""
    src = exact(packet)
    try:
        size = _gso.size(src, *fields(hdr), gap, tail)
    except OffloadError as err:
        # split_into must refuse it the same way, before touching its buffer.
        out = exact(bytes([FILL]) * 100)
        with pytest.raises(OffloadError) as again:
            _gso.split_into(out, 0, src, *fields(hdr), gap, tail)
        assert again.value.reason == err.reason
        with pytest.raises(OffloadError) as shaped:  # and shape too, the same way
            _gso.shape(src, *fields(hdr))
        assert shaped.value.reason == err.reason
        assert bytes(out) == bytes([FILL]) * 100
        return err.reason
    out = exact(bytes([FILL]) * (offset + size))
    count, full, last = _gso.split_into(out, offset, src, *fields(hdr), gap, tail)
    assert _gso.shape(src, *fields(hdr)) == (count, full, last)  # told before the split
    raw = bytes(out)
    expected = bytearray(raw[:offset])
    segments = []
    for i in range(count):
        length = full if i < count - 1 else last
        start = len(expected) + gap
        segments.append(raw[start:start + length])
        expected += bytes([FILL]) * gap + segments[-1] + bytes([FILL]) * tail
    assert bytes(expected) == raw  # the layout fills the buffer; gaps and tails untouched
    assert bytes(src) == packet  # the input is only read
    return segments


def reference(hdr: VirtioNetHeader, packet: bytes) -> Outcome:
    try:
        return [bytes(s) for s in gso.split_python(hdr, packet)]
    except OffloadError as err:
        return err.reason


def wrapper(hdr: VirtioNetHeader, packet: bytes) -> Outcome:
    try:
        return [bytes(s) for s in gso._split_native(hdr, exact(packet))]
    except OffloadError as err:
        return err.reason


def same_layout(hdr: VirtioNetHeader, packet: bytes, gap: int, tail: int, offset: int) -> None:
    """gso.split_into_python lays the segments out exactly as _gso.split_into does, and
    refuses what it refuses, before writing anything."""
    try:
        size = _gso.size(packet, *fields(hdr), gap, tail)
    except OffloadError as err:
        with pytest.raises(OffloadError) as again:
            gso.split_into_python(bytearray(100), 0, hdr, packet, gap, tail)
        assert again.value.reason == err.reason
        return
    outs = [bytearray([FILL]) * (offset + size) for _ in range(2)]
    shapes = [_gso.split_into(outs[0], offset, packet, *fields(hdr), gap, tail),
              gso.split_into_python(outs[1], offset, hdr, packet, gap, tail)]
    assert shapes[0] == shapes[1] and outs[0] == outs[1]
    assert gso._shape_packet_python(packet, *fields(hdr)) == shapes[0]
    if not size:
        return
    short = bytearray([FILL]) * (offset + size - 1)
    with pytest.raises(ValueError):
        gso.split_into_python(short, offset, hdr, packet, gap, tail)
    assert short == bytearray([FILL]) * len(short)


def check_same(hdr: VirtioNetHeader, packet: bytes, gap: int = 0, tail: int = 0,
               offset: int = 0) -> Outcome:
    want = reference(hdr, packet)
    assert native(hdr, packet, gap, tail, offset) == want
    assert wrapper(hdr, packet) == want
    same_layout(hdr, packet, gap, tail, offset)
    return want


def label(outcome: Outcome) -> None:
    """Count outcomes by kind, shown by pytest --hypothesis-show-statistics."""
    event(outcome if isinstance(outcome, str) else "accepted")


def tcp_header(seq: int, flags: int, options: bytes, *, urg: int = 0) -> bytes:
    return struct.pack("!HHIIBBHHH", 40000, 5201, seq, 777, (20 + len(options)) // 4 << 4,
                       flags, 512, 0xBEEF, urg) + options


def build(version: int, l4_header: bytes, proto: int, payload: bytes, *, ident: int = 0,
          ip_options: bytes = b"", trailer: bytes = b"") -> bytes:
    """An IP packet as a TUN reader gets it; the transport checksum field holds junk, which
    segmentation must ignore (it recomputes every checksum)."""
    l4 = l4_header + payload
    if version == 4:
        ip = ipv4_header(SRC4, DST4, proto, len(l4), ident=ident, options=ip_options)
    else:
        ip = ipv6_header(SRC6, DST6, proto, len(l4))
    return ip + l4 + trailer


@st.composite
def super_packets(draw: st.DrawFn) -> tuple[VirtioNetHeader, bytes]:
    """Valid TSO4/TSO6/USO4/USO6 super-packets of any size up to the IP maximum."""
    version = draw(st.sampled_from([4, 6]))
    tcp = draw(st.booleans())
    ip_options = b""
    if version == 4:
        ip_options = draw(st.sampled_from([b"", b"\x01\x01\x01\x00", b"\x94\x04\x00\x00",
                                           bytes(40)]))
    ihl = 20 + len(ip_options) if version == 4 else 40
    if tcp:
        options = draw(st.binary(max_size=40))
        options += bytes(-len(options) % 4)
        flag_bits = draw(st.lists(st.sampled_from([FIN, PSH, URG, CWR, ECE]), unique=True))
        l4 = tcp_header(draw(st.integers(0, 2**32 - 1)), ACK | sum(flag_bits, 0), options,
                        urg=draw(st.integers(0, 0xFFFF)))
    else:
        l4 = struct.pack("!HHHH", 51820, 51821, 0, 0x1234)
    room = 65535 - len(l4) - (ihl if version == 4 else 0)
    length = draw(st.one_of(st.integers(0, 3000), st.integers(0, room)))
    mss = draw(st.one_of(st.integers(1, 9000), st.sampled_from([1, 1280, 1448, 8948, 9000])))
    payload = random.Random(draw(st.integers(0, 2**32))).randbytes(length)
    trailer = draw(st.sampled_from([b"", b"\x00", b"junk"]))
    packet = build(version, l4, 6 if tcp else 17, payload, ident=draw(st.integers(0, 0xFFFF)),
                   ip_options=ip_options, trailer=trailer)
    gso_type = (GSO_TCPV4 if version == 4 else GSO_TCPV6) if tcp else GSO_UDP_L4
    if tcp and draw(st.booleans()):
        gso_type |= GSO_ECN
    needs_csum = not tcp or draw(st.booleans())
    hdr = VirtioNetHeader(
        flags=FLAG_NEEDS_CSUM if needs_csum else 0, gso_type=gso_type,
        hdr_len=draw(st.sampled_from([0, ihl + len(l4)])), gso_size=mss,
        csum_start=ihl if needs_csum else 0,
        csum_offset=(16 if tcp else 6) if needs_csum else 0,
    )
    return hdr, packet


layouts = st.tuples(st.sampled_from([0, 16, 3]), st.sampled_from([0, 32, 1]),
                    st.integers(0, 5))


@settings(max_examples=examples(300), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(super_packets(), layouts)
def test_super_packets_identical(case: tuple[VirtioNetHeader, bytes],
                                 layout: tuple[int, int, int]) -> None:
    hdr, packet = case
    segments = check_same(hdr, packet, *layout)
    assert isinstance(segments, list), segments  # a valid super-packet is accepted
    if len(packet) < 6000:
        for segment in segments:
            verify(segment)


@pytest.mark.parametrize("version", [4, 6])
@pytest.mark.parametrize("tcp", [True, False])
@pytest.mark.parametrize("mss", [1, 7, 536, 1448, 9000, 0xFFFE])
def test_largest_super_packets_identical(version: int, tcp: bool, mss: int) -> None:
    l4 = tcp_header(0xFFFFFF00, ACK | PSH | FIN | CWR | ECE | URG, b"\x01" * 12) if tcp \
        else struct.pack("!HHHH", 1, 2, 0, 0)
    room = 65535 - len(l4) - (20 if version == 4 else 0)
    packet = build(version, l4, 6 if tcp else 17, os.urandom(room), ident=0xFFFF)
    gso_type = (GSO_TCPV4 if version == 4 else GSO_TCPV6) if tcp else GSO_UDP_L4
    hdr = VirtioNetHeader(FLAG_NEEDS_CSUM, gso_type, 0, mss, 20 if version == 4 else 40,
                          16 if tcp else 6)
    segments = check_same(hdr, packet, 16, 32, 1)
    assert len(segments) == -(-room // mss)


@settings(max_examples=examples(300), deadline=None)
@given(st.binary(max_size=2000), st.integers(0, 2100), st.integers(0, 40),
       st.sampled_from([0, 1, 2, 3]), layouts)
def test_needs_csum_identical(packet: bytes, start: int, offset: int, flags: int,
                              layout: tuple[int, int, int]) -> None:
    # GSO_NONE: the packet is not parsed, only its checksum completed (or it is copied).
    label(check_same(VirtioNetHeader(flags, GSO_NONE, 0, 0, start, offset), packet, *layout))


def test_needs_csum_zero_sum_gives_ffff() -> None:
    # A packet whose bytes from csum_start sum to zero (all zero) gets 0xFFFF, as the kernel.
    packet = build(4, struct.pack("!HHHH", 1, 2, 12, 0), 17, bytes(4))
    packet = packet[:20] + bytes(len(packet) - 20)
    (out,) = check_same(VirtioNetHeader(FLAG_NEEDS_CSUM, GSO_NONE, 0, 0, 20, 6), packet)
    assert out[26:28] == b"\xff\xff"


def valid_cases() -> list[tuple[VirtioNetHeader, bytes]]:
    """TCP and UDP over IPv4 (with options) and IPv6, with several segments or a few bytes."""
    cases = []
    for version, tcp, length in itertools.product((4, 6), (True, False), (3000, 3)):
        l4 = tcp_header(5, ACK, b"\x01\x01\x08\x0a" + bytes(8)) if tcp \
            else struct.pack("!HHHH", 1, 2, 0, 0)
        packet = build(version, l4, 6 if tcp else 17, os.urandom(length),
                       ip_options=b"\x01\x01\x01\x00" if version == 4 else b"")
        gso_type = (GSO_TCPV4 if version == 4 else GSO_TCPV6) if tcp else GSO_UDP_L4
        ihl = 24 if version == 4 else 40
        cases.append((VirtioNetHeader(FLAG_NEEDS_CSUM, gso_type, ihl + len(l4), 1000, ihl,
                                      16 if tcp else 6), packet))
    return cases


VALID = valid_cases()
# Offsets of the length and layout fields that a liar would change.
LIES = [0, 2, 3, 4, 5, 6, 7, 9, 24 + 12, 40 + 4, 40 + 5, 40 + 12, 24 + 4, 24 + 5]


@settings(max_examples=examples(1500), deadline=None)
@given(st.sampled_from(VALID), st.one_of(st.just(None), st.integers(0, 3100)),
       st.lists(st.tuples(st.one_of(st.sampled_from(LIES), st.integers(0, 120)),
                          st.integers(0, 255)), max_size=4),
       layouts)
def test_hostile_packets_same_outcome(case: tuple[VirtioNetHeader, bytes], cut: int | None,
                                      edits: list[tuple[int, int]],
                                      layout: tuple[int, int, int]) -> None:
    # Cut short, or with header bytes (mostly the length and layout fields) rewritten.
    hdr, packet = case
    buf = bytearray(packet[:cut])
    for offset, value in edits:
        if offset < len(buf):
            buf[offset] = value
    label(check_same(hdr, bytes(buf), *layout))


@settings(max_examples=examples(600), deadline=None)
@given(st.sampled_from(VALID), st.sampled_from(["ihl", "ip_length", "l4_offset"]),
       st.one_of(st.integers(-12, 12), st.integers(-0xFFFF, 0xFFFF)), st.integers(-8, 64))
def test_lying_length_fields_same_outcome(case: tuple[VirtioNetHeader, bytes], field: str,
                                          delta: int, extra: int) -> None:
    # One length field a little (or a lot) off the truth, on a packet a little short or with
    # trailing bytes (which no length may reach into).
    hdr, packet = case
    buf = bytearray(packet)
    ihl = (buf[0] & 15) * 4 if buf[0] >> 4 == 4 else 40
    if field == "ihl":  # IPv4 IHL, or the IPv6 traffic class nibble beside the version
        buf[0] = buf[0] & 0xF0 | (buf[0] + delta) & 0x0F
    elif field == "ip_length":  # IPv4 total length or IPv6 payload length
        at = 2 if ihl < 40 else 4
        buf[at:at + 2] = ((int.from_bytes(buf[at:at + 2], "big") + delta) & 0xFFFF
                          ).to_bytes(2, "big")
    elif buf[9 if ihl < 40 else 6] == 6:  # TCP data offset (the protocol: byte 9, or next header)
        buf[ihl + 12] = ((buf[ihl + 12] >> 4) + delta) % 16 << 4
    else:  # UDP length: split takes lengths from the IP header, never from here
        buf[ihl + 4:ihl + 6] = ((int.from_bytes(buf[ihl + 4:ihl + 6], "big") + delta) & 0xFFFF
                                ).to_bytes(2, "big")
    buf = buf[:len(buf) + extra] if extra < 0 else buf + bytes(extra)
    label(check_same(hdr, bytes(buf)))


def mostly(usual: st.SearchStrategy[int], other: st.SearchStrategy[int]
           ) -> st.SearchStrategy[int]:
    """``usual`` nine times in ten: hostile headers that still reach the later checks."""
    return st.integers(0, 9).flatmap(lambda k: other if k == 0 else usual)


u16 = st.one_of(st.integers(0, 0xFFFF), st.integers(0, 200), st.sampled_from([0, 1, 0xFFFF]))
headers = st.builds(
    VirtioNetHeader,
    flags=mostly(st.integers(0, 3), st.integers(0, 0xFF)),
    gso_type=mostly(st.sampled_from([0, 1, 4, 5, 0x81, 0x84]), st.integers(0, 0xFF)),
    hdr_len=u16, gso_size=mostly(st.integers(1, 3000), u16),
    csum_start=mostly(st.sampled_from([0, 20, 24, 40]), u16),
    csum_offset=mostly(st.sampled_from([6, 16]), u16),
)


@settings(max_examples=examples(1500), deadline=None)
@given(st.one_of(headers, st.sampled_from([hdr for hdr, _ in VALID])), st.sampled_from(VALID),
       st.one_of(st.just(None), st.integers(0, 3100)))
def test_hostile_headers_same_outcome(hdr: VirtioNetHeader,
                                      case: tuple[VirtioNetHeader, bytes], cut: int | None
                                      ) -> None:
    # Valid packets (or cut ones) under random headers, or under another packet's header.
    label(check_same(hdr, case[1][:cut]))


@settings(max_examples=examples(1500), deadline=None)
@given(headers, st.one_of(st.binary(max_size=400),
                          st.tuples(st.sampled_from([b"\x45", b"\x46", b"\x4f", b"\x60"]),
                                    st.binary(max_size=400)).map(b"".join)),
       layouts)
def test_random_bytes_same_outcome(hdr: VirtioNetHeader, data: bytes,
                                   layout: tuple[int, int, int]) -> None:
    label(check_same(hdr, data, *layout))


@pytest.mark.parametrize("gso_size", [0, 0xFFFF])
def test_gso_size_extremes(gso_size: int) -> None:
    hdr, packet = VALID[0]
    hdr = VirtioNetHeader(hdr.flags, hdr.gso_type, hdr.hdr_len, gso_size, hdr.csum_start,
                          hdr.csum_offset)
    assert check_same(hdr, packet) == "bad_gso_size"


def test_small_out_buffer_is_refused_before_any_write() -> None:
    hdr, packet = VALID[0]
    size = _gso.size(packet, *fields(hdr), 16, 32)
    for length, offset in ((size - 1, 0), (size, 1), (size + 10, size + 11), (size, -1)):
        out = bytearray([FILL]) * length
        with pytest.raises(ValueError, match="too small"):
            _gso.split_into(out, offset, packet, *fields(hdr), 16, 32)
        assert out == bytearray([FILL]) * length


def test_bad_arguments() -> None:
    hdr, packet = VALID[0]
    out = bytearray(100_000)
    with pytest.raises(ValueError, match="out of range"):
        _gso.split_into(out, 0, packet, *fields(hdr), 65536, 0)
    with pytest.raises(ValueError, match="out of range"):
        _gso.size(packet, 256, *fields(hdr)[1:], 0, 0)
    with pytest.raises(ValueError, match="out of range"):
        _gso.size(packet, *fields(hdr)[:5], -1, 0, 0)
    with pytest.raises(BufferError):
        _gso.split_into(bytes(100_000), 0, packet, *fields(hdr), 0, 0)  # read-only
    with pytest.raises(TypeError):
        _gso.size(packet, *fields(hdr), 0)
    assert out == bytearray(100_000)


def run_import(env_value: str | None) -> str:
    env = {k: v for k, v in os.environ.items() if k != "VPN_FAST_PATH"}
    if env_value is not None:
        env["VPN_FAST_PATH"] = env_value
    code = ("from vpn.core.offload import gso; "
            "print(gso.NATIVE.path, gso.split is gso.split_python)")
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, check=True,
                          capture_output=True, text=True, timeout=60).stdout.strip()


def test_fast_path_switch() -> None:
    assert run_import(None) == "native False"
    assert run_import("native") == "native False"
    assert run_import("python") == "python True"
