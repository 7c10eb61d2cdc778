"""GRO coalesce: round trips with split, every merge rule, ordering, and robustness."""

from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lab.packets import (
    ACK,
    CWR,
    DST4,
    ECE,
    FIN,
    PSH,
    RST,
    SRC4,
    SYN,
    TS_OPTION,
    URG,
    parse,
    ref_sum,
    tcp_packet,
    tcp_super_packet,
    udp_packet,
    udp_super_packet,
    verify,
)
from vpn.core.offload import Coalesced, coalesce, split
from vpn.core.packet.virtio import (
    FLAG_NEEDS_CSUM,
    GSO_TCPV4,
    GSO_TCPV6,
    GSO_UDP_L4,
    NO_OFFLOAD,
    VirtioNetHeader,
)


def stream(count: int, size: int = 1000, *, version: int = 4, seq: int = 1000,
           changes: dict[int, dict[str, object]] | None = None, **common: object) -> list[bytes]:
    """``count`` consecutive segments of one flow; ``changes[i]`` overrides fields of segment i."""
    out = []
    for i in range(count):
        kw: dict[str, object] = {"ident": 100 + i, **common, **(changes or {}).get(i, {})}
        length = kw.pop("length", size)
        assert isinstance(length, int)
        seq_i = kw.pop("seq", seq)
        assert isinstance(seq_i, int)
        out.append(tcp_packet(os.urandom(length), version=version, seq=seq_i, **kw))  # type: ignore[arg-type]
        seq = seq_i + length
    return out


def unpack(frame: Coalesced) -> list[bytes]:
    """The segments a frame stands for, as the kernel would cut them."""
    hdr = VirtioNetHeader.unpack(frame.header)
    return [bytes(s) for s in split(hdr, frame.frame()[10:])]


def counts(frames: list[Coalesced]) -> list[int]:
    return [len(unpack(f)) for f in frames]


def check_frames(frames: list[Coalesced], packets: list[bytes]) -> None:
    """The frames, resegmented, give back exactly the packets, in order."""
    assert [s for f in frames for s in unpack(f)] == packets


@settings(max_examples=80, deadline=None)
@given(st.sampled_from([4, 6]), st.integers(1, 2000), st.integers(0, 30000),
       st.sampled_from([b"", TS_OPTION]), st.sampled_from([ACK, ACK | PSH]),
       st.integers(0, 2**32 - 1), st.booleans())
def test_split_then_coalesce_round_trip(version: int, mss: int, length: int, options: bytes,
                                        flags: int, seq: int, views: bool) -> None:
    payload = os.urandom(length)
    hdr, pkt = tcp_super_packet(payload, mss, version=version, options=options, flags=flags,
                                seq=seq)
    segs = split(hdr, pkt)
    frames = coalesce(segs if views else [bytes(s) for s in segs])
    assert len(frames) == 1
    (frame,) = frames
    if len(segs) == 1:
        assert frame.header == NO_OFFLOAD
        assert frame.parts == [segs[0]] if views else bytes(frame.parts[0]) == bytes(segs[0])
        verify(frame.parts[0])
        return
    assert VirtioNetHeader.unpack(frame.header) == hdr
    assert frame.frame()[10:] == pkt  # same headers, payload and partial-sum checksum field


def complete_per_kernel(frame: bytes) -> bytes:
    """Complete a NEEDS_CSUM frame as the kernel does (reference implementation)."""
    hdr = VirtioNetHeader.unpack(frame)
    pkt = bytearray(frame[10:])
    value = ~ref_sum(bytes(pkt[hdr.csum_start:])) & 0xFFFF or 0xFFFF
    pos = hdr.csum_start + hdr.csum_offset
    pkt[pos:pos + 2] = value.to_bytes(2, "big")
    return bytes(pkt)


@pytest.mark.parametrize("version", [4, 6])
def test_jumbo_frame_fields(version: int) -> None:
    packets = stream(5, 1000, version=version, options=TS_OPTION, changes={4: {"flags": ACK | PSH,
                                                                              "length": 10}})
    (frame,) = coalesce(packets)
    hdr = VirtioNetHeader.unpack(frame.header)
    ihl = 20 if version == 4 else 40
    assert hdr == VirtioNetHeader(FLAG_NEEDS_CSUM, GSO_TCPV4 if version == 4 else GSO_TCPV6,
                                  ihl + 32, 1000, ihl, 16)
    jumbo = verify(complete_per_kernel(frame.frame()))  # valid as one big TCP packet
    assert jumbo.flags == ACK | PSH
    assert jumbo.seq == 1000
    assert jumbo.payload == b"".join(parse(p).payload for p in packets)
    if version == 4:
        assert jumbo.ident == 100
    # Payload parts are views of the inputs, not copies.
    assert all(isinstance(p, memoryview) for p in frame.parts[1:])
    check_frames([frame], packets)


def test_psh_only_on_last_segment_of_run() -> None:
    packets = stream(6, changes={2: {"flags": ACK | PSH}})
    frames = coalesce(packets)
    assert counts(frames) == [3, 3]
    assert parse(complete_per_kernel(frames[0].frame())).flags == ACK | PSH
    assert parse(complete_per_kernel(frames[1].frame())).flags == ACK
    check_frames(frames, packets)


MERGE_RULES = [
    # Only segment 2 differs, so it is a run of its own and segment 3 cannot join it.
    ({"ack": 9999}, [2, 1, 2]),
    ({"window": 1}, [2, 1, 2]),
    ({"ttl": 3}, [2, 1, 2]),
    ({"tos": 4}, [2, 1, 2]),
    ({"df": False}, [2, 1, 2]),
    ({"options": TS_OPTION}, [2, 1, 2]),
    ({"flags": ACK | PSH}, [3, 2]),
    ({"length": 500}, [3, 2]),  # shorter: ends the run
    # Bigger than the run's segment size: starts a run that segment 3 (shorter) ends.
    ({"length": 1001}, [2, 2, 1]),
    ({"seq": 5}, [2, 3]),  # a gap: later segments continue from the new seq
    ({"flags": ACK | FIN}, [2, 1, 2]),
    ({"flags": ACK | SYN}, [2, 1, 2]),
    ({"flags": ACK | RST}, [2, 1, 2]),
    ({"flags": ACK | URG}, [2, 1, 2]),
    ({"flags": ACK | CWR}, [2, 1, 2]),
    ({"flags": ACK | ECE}, [2, 1, 2]),
    ({"flags": 0}, [2, 1, 2]),
    ({"length": 0}, [2, 1, 2]),  # a pure ACK passes through
]


@pytest.mark.parametrize(("version", "change", "expected"), [
    (version, change, expected)
    for version in (4, 6) for change, expected in MERGE_RULES
    if not (version == 6 and "df" in change)  # IPv6 has no DF bit
])
def test_merge_rules(version: int, change: dict[str, object], expected: list[int]) -> None:
    packets = stream(5, version=version, changes={2: change})
    frames = coalesce(packets)
    assert counts(frames) == expected
    for f, n in zip(frames, expected, strict=True):
        if n == 1:
            assert f.header == NO_OFFLOAD
            assert len(f.parts) == 1
    check_frames(frames, packets)


def test_flow_label_difference_splits_ipv6() -> None:
    packets = stream(4, version=6)
    packets[2] = packets[2][:1] + bytes([packets[2][1] | 1]) + packets[2][2:]
    assert counts(coalesce(packets)) == [2, 1, 1]


def test_ipv4_with_options_passes_through() -> None:
    pkt = bytearray(tcp_packet(b"x" * 100))
    # Rebuild as IHL 6 with a NOP option word: not a GRO candidate.
    opt = bytes(pkt[:20]) + b"\x01\x01\x01\x00" + bytes(pkt[20:])
    opt = bytes([0x46]) + opt[1:2] + (len(opt)).to_bytes(2, "big") + opt[4:]
    packets = [*stream(2), opt, *stream(2, seq=3000)]
    frames = coalesce(packets)
    assert [len(f.parts) for f in frames] == [3, 1, 3]
    assert frames[1].parts == [opt]


def test_interleaved_flows_keep_per_flow_order() -> None:
    a = stream(6, sport=1)
    b = stream(6, sport=2, version=4)
    c = stream(6, sport=3, version=6)
    mixed = [p for trio in zip(a, b, c, strict=True) for p in trio]
    frames = coalesce(mixed)
    assert counts(frames) == [6, 6, 6]
    check_frames(frames[:1], a)
    check_frames(frames[1:2], b)
    check_frames(frames[2:], c)


def test_pass_through_keeps_flow_order() -> None:
    a = stream(6, sport=1, changes={3: {"flags": ACK | FIN}})
    b = stream(4, sport=2)
    packets = a[:3] + b[:2] + a[3:] + b[2:]
    frames = coalesce(packets)
    flow_a = [f for f in frames if parse(unpack(f)[0]).sport == 1]
    assert counts(flow_a) == [3, 1, 2]
    check_frames(flow_a, a)
    check_frames([f for f in frames if parse(unpack(f)[0]).sport == 2], b)


def test_unknown_ip_packet_closes_all_runs() -> None:
    a = stream(4, sport=1)
    # IPv6 with a hop-by-hop extension header: cannot tell its flow.
    ext = bytes([0x60, 0, 0, 0, 0, 8, 0, 64]) + bytes(32) + bytes([6, 0]) + bytes(6)
    frames = coalesce([*a[:2], ext, *a[2:]])
    assert [len(f.parts) for f in frames] == [3, 1, 3]


def test_max_size() -> None:
    packets = stream(50, 1448)
    frames = coalesce(packets)
    assert counts(frames) == [45, 5]
    assert all(len(f.frame()) - 10 <= 65535 for f in frames)
    check_frames(frames, packets)
    assert counts(coalesce(packets, max_size=20000)) == [13, 13, 13, 11]


def test_non_ip_and_short_pass_through() -> None:
    junk = [b"", b"\x00", b"\x45" * 3, b"\x60" * 47, b"\xff" * 100, b"\x45" + bytes(39)]
    frames = coalesce(junk)
    assert [f.parts for f in frames] == [[j] for j in junk]
    assert all(f.header == NO_OFFLOAD for f in frames)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(
    st.binary(max_size=120),
    st.sampled_from(stream(3) + stream(2, version=6) + [udp_packet(b"u" * 30)]).flatmap(
        lambda p: st.tuples(st.just(p), st.integers(0, len(p)), st.integers(0, 60),
                            st.integers(0, 255)).map(
            lambda t: t[0][:t[1]][:t[2]] + bytes([t[3]]) + t[0][:t[1]][t[2] + 1:]))),
    max_size=12), st.booleans())
def test_random_input_never_raises(packets: list[bytes], udp: bool) -> None:
    frames = coalesce(packets, udp=udp)
    n = sum(len(VirtioNetHeader.unpack(f.header).pack()) for f in frames)
    assert n == 10 * len(frames)
    total = sum(len(f.frame()) - 10 for f in frames)
    assert total >= 0


def test_udp_off_passes_through() -> None:
    packets = [udp_packet(b"x" * 100, ident=i) for i in range(4)]
    frames = coalesce(packets)
    assert [f.parts for f in frames] == [[p] for p in packets]


@pytest.mark.parametrize("version", [4, 6])
def test_udp_coalesce(version: int) -> None:
    payload = os.urandom(1200 * 10 + 500)
    hdr, pkt = udp_super_packet(payload, 1200, version=version)
    segs = [bytes(s) for s in split(hdr, pkt)]
    frames = coalesce(segs, udp=True)
    assert len(frames) == 1
    assert VirtioNetHeader.unpack(frames[0].header) == hdr
    assert frames[0].frame()[10:] == pkt
    assert VirtioNetHeader.unpack(frames[0].header).gso_type == GSO_UDP_L4
    jumbo = verify(complete_per_kernel(frames[0].frame()))
    assert jumbo.payload == payload


def test_udp_rules() -> None:
    def dgram(n: int, **kw: object) -> bytes:
        return udp_packet(os.urandom(n), **kw)  # type: ignore[arg-type]
    packets = [dgram(100), dgram(100), dgram(101), dgram(100), dgram(50), dgram(100),
               dgram(100, ttl=1), dgram(100, ttl=1), dgram(100, sport=9), dgram(100, dport=9)]
    frames = coalesce(packets, udp=True)
    # 101 is bigger than 100 (new run), the next 100 is shorter and closes that run.
    assert counts(frames) == [2, 2, 1, 1, 2, 1, 1]
    # Resegmenting renumbers IPv4 IDs, so compare what the receiver sees: payloads and ports.
    seen = [verify(s) for f in frames for s in unpack(f)]
    assert [(p.payload, p.sport, p.dport, p.ttl) for p in seen] == [
        (p.payload, p.sport, p.dport, p.ttl) for p in map(parse, packets)]
    # At most 64 segments per UDP frame.
    many = [dgram(10) for _ in range(130)]
    assert counts(coalesce(many, udp=True)) == [64, 64, 2]


def test_udp_frame_header_fields() -> None:
    packets = [udp_packet(bytes(100), src=SRC4, dst=DST4) for _ in range(3)]
    (frame,) = coalesce(packets, udp=True)
    head = frame.parts[0]
    assert int.from_bytes(head[24:26], "big") == 8 + 300  # UDP length covers every datagram
    assert VirtioNetHeader.unpack(frame.header) == VirtioNetHeader(
        FLAG_NEEDS_CSUM, GSO_UDP_L4, 28, 100, 20, 6)
