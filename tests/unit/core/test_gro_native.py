"""The native GRO coalescer (_gro.c) against the Python reference (gro.Coalescer), on the same
packets: byte-identical frames and the same segment counts, in the same order, for anything
(valid flows, interleaved, every flag mix, IPv4 options and fragments, IPv6 extension
headers, UDP, truncated and mutated packets, random bytes), with udp on and off and any
max_size; and the same bounded flow table (MAX_FLOWS).

Packets are laid out in one buffer at random offsets, the gaps between them filled with
random bytes, so a read outside a packet's record changes the native frames. Some examples
use a buffer of exactly the packets' size (a ctypes array, a plain malloc block under
PYTHONMALLOC=malloc) so `make sanitize` catches an overrun past its end.
"""

from __future__ import annotations

import ctypes
import gc
import os
import random
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lab.packets import (
    ACK,
    CWR,
    ECE,
    FIN,
    PSH,
    RST,
    SYN,
    TS_OPTION,
    URG,
    ipv6_header,
    tcp_packet,
    udp_packet,
)
from tests.examples import examples
from vpn.core.offload import _gro, gro
from vpn.core.packet.virtio import NO_OFFLOAD

ROOT = Path(__file__).resolve().parents[3]
Frames = list[tuple[bytes, int]]
MAX_SIZES = [0, 60, 100, 700, 1500, 3000, 20000, 65535]
FLAG_MIXES = [ACK, ACK, ACK, ACK | PSH, ACK | PSH, ACK | PSH, ACK | FIN, ACK | SYN, SYN,
              ACK | RST, ACK | URG, ACK | CWR, ACK | ECE, ACK | PSH | FIN, 0, PSH]


def layout(packets: list[bytes], rng: random.Random, *, exact: bool = False,
           slots: list[int] | None = None) -> tuple[bytearray | ctypes.Array[ctypes.c_char],
                                                     bytes]:
    """The packets in one buffer (shuffled places, random gaps), and their records in order."""
    order = list(range(len(packets)))
    rng.shuffle(order)
    data = bytearray()
    offsets = [0] * len(packets)
    for i in order:
        if not exact:
            data += rng.randbytes(rng.choice([0, 0, 1, 3, 17]))
        offsets[i] = len(data)
        data += packets[i]
    if not exact:
        data += rng.randbytes(rng.choice([0, 5]))
    slots = slots if slots is not None else list(range(len(packets)))
    records = b"".join(struct.pack("<III", off, len(p), slot)
                       for off, p, slot in zip(offsets, packets, slots, strict=True))
    if exact:
        buf = (ctypes.c_char * len(data))()
        ctypes.memmove(buf, bytes(data), len(data))
        return buf, records
    return data, records


def reference(packets: list[bytes], udp: bool, max_size: int) -> Frames:
    coalescer = gro.Coalescer(udp=udp, max_size=max_size)
    coalescer.add(packets)
    return [(f.frame(), f.segments) for f in coalescer.frames()]


def native_frames(coalescer: _gro.Coalescer) -> Frames:
    out = []
    for header, body, segments in coalescer.frames():
        assert type(header) is bytes and type(body) is bytes and len(header) == 10
        out.append((header + body, segments))
    return out


def native(packets: list[bytes], udp: bool, max_size: int, rng: random.Random,
           exact: bool = False) -> Frames:
    buf, records = layout(packets, rng, exact=exact)
    coalescer = _gro.Coalescer(buf, udp=udp, max_size=max_size)
    assert coalescer.add_records(records, 0, len(packets)) == 0
    got = native_frames(coalescer)
    assert coalescer.frames() == []  # empty again
    return got


def payload(rng: random.Random, n: int) -> bytes:
    return rng.randbytes(n)


@st.composite
def flow_packets(draw: st.DrawFn, rng: random.Random, sport: int) -> list[bytes]:
    """Consecutive packets of one TCP or UDP flow, with occasional changes that end runs."""
    version = draw(st.sampled_from([4, 6]))
    count = draw(st.integers(1, 12))
    size = draw(st.sampled_from([1, 7, 100, 300, 536, 1000]))
    if draw(st.integers(0, 3)) == 0:
        def dgram(i: int) -> bytes:
            n = size if draw(st.integers(0, 5)) else draw(st.integers(0, size + 5))
            ttl = 64 if draw(st.integers(0, 7)) else 3
            return udp_packet(payload(rng, n), version=version, sport=sport, ident=i, ttl=ttl)
        return [dgram(i) for i in range(count)]
    options = draw(st.sampled_from([b"", b"", TS_OPTION, b"\x01\x01\x01\x01", bytes(4),
                                    bytes([1, 1, 4, 2]) * 10]))
    seq = draw(st.sampled_from([1000, 2**32 - 700, 0]))
    out = []
    for i in range(count):
        kw: dict[str, object] = {}
        n = size
        if not draw(st.integers(0, 5)):
            change = draw(st.sampled_from(["flags", "length", "seq", "ttl", "ack", "window",
                                           "tos", "df", "options"]))
            if change == "flags":
                kw["flags"] = draw(st.sampled_from(FLAG_MIXES))
            elif change == "length":
                n = draw(st.integers(0, size + 10))
            elif change == "seq":
                seq += draw(st.sampled_from([-1, 1, 5000]))
            elif change == "ttl":
                kw["ttl"] = 9
            elif change == "ack":
                kw["ack"] = 77
            elif change == "window":
                kw["window"] = 1
            elif change == "tos":
                kw["tos"] = 4
            elif change == "df" and version == 4:
                kw["df"] = False
            elif change == "options":  # zero options must differ from none too
                kw["options"] = draw(st.sampled_from([TS_OPTION, b"", bytes(4), bytes(12)]))
        kw.setdefault("options", options)
        out.append(tcp_packet(payload(rng, n), version=version, seq=seq & 0xFFFFFFFF,
                              sport=sport, ident=100 + i, **kw))  # type: ignore[arg-type]
        seq += n
    return out


def ipv4_options(pkt: bytes) -> bytes:
    """The packet rebuilt with IHL 6 (a NOP option word)."""
    opt = pkt[:20] + b"\x01\x01\x01\x00" + pkt[20:]
    return bytes([0x46]) + opt[1:2] + len(opt).to_bytes(2, "big") + opt[4:]


def fragment(pkt: bytes, field: int) -> bytes:
    return pkt[:6] + field.to_bytes(2, "big") + pkt[8:]


def mutate(pkt: bytes, pos: int, value: int) -> bytes:
    if not pkt:
        return bytes([value])
    pos %= min(len(pkt), 64)
    return pkt[:pos] + bytes([value]) + pkt[pos + 1:]


@st.composite
def odd_packet(draw: st.DrawFn, rng: random.Random, pool: list[bytes]) -> bytes:
    """Something that is not a plain segment: junk, or a valid packet damaged or disguised."""
    kind = draw(st.integers(0, 8))
    base = draw(st.sampled_from(pool)) if pool else tcp_packet(b"x" * 50)
    if kind == 0:
        return draw(st.binary(max_size=80))
    if kind == 1:
        return base[:draw(st.integers(0, len(base)))]
    if kind == 2:
        return mutate(base, draw(st.integers(0, 63)), draw(st.integers(0, 255)))
    if kind == 3:
        return ipv4_options(base) if base[0] == 0x45 else base
    if kind == 4:
        return fragment(base, draw(st.sampled_from([0x2000, 0x4001, 0x0001, 0x8000, 0x6000])))
    if kind == 5:  # IPv6 with a hop-by-hop header, or ICMPv6, or no next header
        nh = draw(st.sampled_from([0, 43, 58, 59, 44]))
        body = bytes([6, 0]) + bytes(6) + payload(rng, draw(st.integers(0, 40)))
        return ipv6_header(bytes(16), bytes(16), nh, len(body)) + body
    if kind == 6:  # another protocol
        return mutate(base, 9 if base[0] >> 4 == 4 else 6, draw(st.sampled_from([1, 47, 50])))
    if kind == 7:
        return draw(st.sampled_from([b"", b"\x45", b"\x60" * 47, b"\x45" + bytes(39),
                                     bytes([0x45]) + bytes(27), b"\x60" + bytes(59)]))
    return base + draw(st.binary(min_size=1, max_size=3))  # the IP length no longer fits


@st.composite
def packet_lists(draw: st.DrawFn) -> tuple[list[bytes], random.Random]:
    rng = random.Random(draw(st.integers(0, 2**32)))
    flows = [draw(flow_packets(rng, sport)) for sport in range(draw(st.integers(1, 4)))]
    pool = [p for f in flows for p in f]
    # Interleave the flows, keeping each one's order, with odd packets in between.
    cursors = [0] * len(flows)
    out: list[bytes] = []
    while any(c < len(f) for c, f in zip(cursors, flows, strict=True)):
        live = [i for i, f in enumerate(flows) if cursors[i] < len(f)]
        i = live[draw(st.integers(0, len(live) - 1))] if len(live) > 1 else live[0]
        out.append(flows[i][cursors[i]])
        cursors[i] += 1
        if not draw(st.integers(0, 7)):
            out.append(draw(odd_packet(rng, pool)))
    return out, rng


@settings(max_examples=examples(250), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(packet_lists(), st.booleans(), st.sampled_from(MAX_SIZES), st.booleans())
def test_same_frames_as_reference(case: tuple[list[bytes], random.Random], udp: bool,
                                  max_size: int, exact: bool) -> None:
    packets, rng = case
    assert native(packets, udp, max_size, rng, exact) == reference(packets, udp, max_size)


@settings(max_examples=examples(150), deadline=None)
@given(st.lists(st.binary(max_size=120), max_size=20), st.booleans(), st.integers(0, 2**32))
def test_random_bytes(packets: list[bytes], udp: bool, seed: int) -> None:
    rng = random.Random(seed)
    assert native(packets, udp, 65535, rng) == reference(packets, udp, 65535)
    assert native(packets, udp, 65535, rng, exact=True) == reference(packets, udp, 65535)


@settings(max_examples=examples(150), deadline=None)
@given(st.sampled_from([4, 6]), st.booleans(), st.integers(0, 2**32),
       st.lists(st.tuples(st.integers(0, 63), st.integers(0, 255)), min_size=1, max_size=6))
def test_mutated_headers(version: int, is_udp: bool, seed: int,
                         changes: list[tuple[int, int]]) -> None:
    """A clean run with one packet's header bytes changed: every field that rules read."""
    rng = random.Random(seed)
    if is_udp:
        packets = [udp_packet(payload(rng, 200), version=version, ident=i) for i in range(6)]
    else:
        packets = [tcp_packet(payload(rng, 200), version=version, seq=1000 + 200 * i,
                              options=TS_OPTION, ident=i) for i in range(6)]
    victim = rng.randrange(len(packets))
    for pos, value in changes:
        packets[victim] = mutate(packets[victim], pos, value)
    for udp in (False, True):
        assert native(packets, udp, 65535, rng) == reference(packets, udp, 65535)


@pytest.mark.parametrize("version", [4, 6])
@pytest.mark.parametrize("udp", [False, True])
def test_long_runs_and_max_size(version: int, udp: bool) -> None:
    rng = random.Random(version * 2 + udp)
    tcp = [tcp_packet(payload(rng, 1368), version=version, seq=1 + 1368 * i,
                      options=TS_OPTION, ident=i) for i in range(100)]
    dgrams = [udp_packet(payload(rng, 50), version=version, ident=i) for i in range(150)]
    for packets in (tcp, dgrams, [p for pair in zip(tcp, dgrams[:100], strict=True) for p in pair]):
        for max_size in MAX_SIZES:
            want = reference(packets, udp, max_size)
            assert native(packets, udp, max_size, rng) == want
    # The run is cut by max_size (TCP) and by MAX_UDP_SEGMENTS (UDP).
    assert [s for _, s in reference(tcp, udp, 65535)] == [47, 47, 6]
    if udp:
        assert [s for _, s in reference(dgrams, True, 65535)] == [64, 64, 22]


def interleaved_flows(count: int, version: int = 4, udp: bool = False) -> list[bytes]:
    """Two segments of each of ``count`` flows: every flow's first, then every second."""
    def make(sport: int, i: int) -> bytes:
        if udp:
            return udp_packet(b"u" * 40, version=version, sport=sport & 0xFFFF,
                              dport=1 + (sport >> 16))
        return tcp_packet(b"t" * 40, version=version, sport=sport & 0xFFFF,
                          dport=1 + (sport >> 16), seq=1000 + 40 * i)
    return [make(sport, i) for i in range(2) for sport in range(count)]


@pytest.mark.parametrize(("version", "udp"), [(4, False), (6, False), (4, True), (6, True)])
def test_bounded_flow_table(version: int, udp: bool) -> None:
    assert gro.MAX_FLOWS == _gro.MAX_FLOWS == 1024
    assert gro.MAX_UDP_SEGMENTS == _gro.MAX_UDP_SEGMENTS
    rng = random.Random(version)
    # Up to MAX_FLOWS flows every pair coalesces; one more and the table is cleared.
    fits = interleaved_flows(1024, version, udp)
    assert [s for _, s in reference(fits, udp, 65535)] == [2] * 1024
    assert native(fits, udp, 65535, rng) == reference(fits, udp, 65535)
    packets = interleaved_flows(1100, version, udp)
    want = reference(packets, udp, 65535)
    assert len(want) > 1100  # the bound mattered
    assert native(packets, udp, 65535, rng) == want
    # The same over many calls, and with the flows of three batches mixed.
    buf, records = layout(packets, rng)
    coalescer = _gro.Coalescer(buf, udp=udp)
    for start in range(0, len(packets), 97):
        coalescer.add_records(records, start, min(start + 97, len(packets)))
    assert native_frames(coalescer) == want
    shuffled = packets[:]
    random.Random(3).shuffle(shuffled)
    many = shuffled + interleaved_flows(3000, version, udp)[::7]
    assert native(many, udp, 65535, rng) == reference(many, udp, 65535)


@pytest.mark.parametrize("version", [4, 6])
@pytest.mark.parametrize("udp", [False, True])
def test_flows_closed_one_by_one(version: int, udp: bool) -> None:
    """Many flows, some closed by a packet of their own between two segments (the table's
    pop), in several orders: what stays must still be found."""
    def seg(sport: int, i: int, n: int = 40) -> bytes:
        if udp and sport % 2:
            return udp_packet(b"u" * n, version=version, sport=sport)
        return tcp_packet(b"t" * n, version=version, sport=sport, seq=1000 + 40 * i)
    for order in range(6):
        rng = random.Random(order)
        sports = list(range(1 + 1000 * order, 1001 + 1000 * order))
        packets = [seg(p, 0) for p in sports]
        rng.shuffle(sports)
        packets += [seg(p, 1, 0) if p % 3 else seg(p, 1, 39) for p in sports[:700]]
        rng.shuffle(sports)
        packets += [seg(p, 1) for p in sports]
        assert native(packets, udp, 65535, rng) == reference(packets, udp, 65535)


def test_flow_table_churn() -> None:
    """A half-full table, flows closed and reopened over and over: every lookup after a
    deletion must still find what the reference's dict finds (a lost key changes a run)."""
    rng = random.Random(7)
    sports = list(range(1, 1001))
    seqs = dict.fromkeys(sports, 1)
    packets = []
    for _ in range(12):
        rng.shuffle(sports)
        packets += [tcp_packet(sport=p, seq=seqs[p]) for p in sports[:350]]  # pure ACKs
        rng.shuffle(sports)
        for p in sports:
            packets.append(tcp_packet(b"d" * 8, sport=p, seq=seqs[p]))
            seqs[p] += 8
    want = reference(packets, False, 65535)
    assert max(s for _, s in want) > 6
    assert native(packets, False, 65535, rng) == want


@pytest.mark.parametrize("version", [4, 6])
@pytest.mark.parametrize(("first", "second"), [(b"", bytes(4)), (bytes(4), bytes(8)),
                                               (TS_OPTION, bytes(12)), (bytes(40), bytes(36))])
def test_options_of_zeros_are_not_none(version: int, first: bytes, second: bytes) -> None:
    rng = random.Random(0)
    opts = [first, second, first, first]
    packets = [tcp_packet(b"o" * 100, version=version, seq=1 + 100 * i, options=o)
               for i, o in enumerate(opts)]
    want = reference(packets, False, 65535)
    assert [s for _, s in want] == [1, 1, 2]
    assert native(packets, False, 65535, rng) == want


@pytest.mark.parametrize("residue", [0, 1, 0xFFFE])
def test_ipv4_checksum_edges(residue: int) -> None:
    """The coalesced IPv4 header's checksum when its sum is (near) a multiple of 0xFFFF."""
    rng = random.Random(residue)
    def run(ident: int) -> list[bytes]:
        return [tcp_packet(b"c" * 100, seq=1 + 100 * i, ident=ident) for i in range(3)]
    frame, _ = reference(run(0), False, 65535)[0]
    head = bytearray(frame[10:30])
    head[10:12] = b"\0\0"
    total = sum(int.from_bytes(head[i:i + 2], "big") for i in range(0, 20, 2))
    ident = (residue - total) % 0xFFFF
    for value in {ident, 0xFFFF} if ident == 0 else {ident}:  # 0 and 0xFFFF: both congruent
        packets = run(value)
        want = reference(packets, False, 65535)
        csum = int.from_bytes(want[0][0][20:22], "big")
        assert csum == {0: 0, 1: 0xFFFE, 0xFFFE: 1}[residue]
        assert native(packets, False, 65535, rng) == want


@pytest.mark.parametrize("field", [0x2000, 0x4001, 0x0001, 0x3FFF])
def test_fragment_closes_every_flow(field: int) -> None:
    rng = random.Random(field)
    a = [tcp_packet(b"a" * 100, sport=1, seq=1 + 100 * i) for i in range(4)]
    b = [udp_packet(b"b" * 100, sport=2) for _ in range(4)]
    frag_tcp, frag_udp = fragment(a[0], field), fragment(b[0], field)
    for udp in (False, True):
        for frag in (frag_tcp, frag_udp):
            packets = [a[0], b[0], a[1], b[1], frag, a[2], b[2], a[3], b[3]]
            want = reference(packets, udp, 65535)
            # With udp off a UDP packet, fragment or not, is no flow's and closes nothing.
            closes = udp or frag is frag_tcp
            assert [s for _, s in want if s > 1] == (
                [2, 2, 2, 2] if udp else [2, 2] if closes else [4])
            assert native(packets, udp, 65535, rng) == want


@settings(max_examples=examples(60), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(packet_lists(), st.booleans(), st.data())
def test_denied_slots_are_skipped(case: tuple[list[bytes], random.Random], udp: bool,
                                  data: st.DataObject) -> None:
    packets, rng = case
    slots = [data.draw(st.integers(0, 40)) for _ in packets]
    denied = bytes(data.draw(st.lists(st.sampled_from([0, 0, 1, 255]), max_size=30)))
    buf, records = layout(packets, rng, slots=slots)
    coalescer = _gro.Coalescer(buf, udp=udp)
    skip = [slot < len(denied) and denied[slot] != 0 for slot in slots]
    assert coalescer.add_records(records, 0, len(packets), denied) == sum(skip)
    kept = [p for p, s in zip(packets, skip, strict=True) if not s]
    assert native_frames(coalescer) == reference(kept, udp, 65535)
    # denied given as a bytearray or memoryview works alike; None denies nothing.
    assert coalescer.add_records(records, 0, len(packets), memoryview(bytearray(denied))) \
        == sum(skip)
    assert native_frames(coalescer) == reference(kept, udp, 65535)
    assert coalescer.add_records(records, 0, len(packets), None) == 0
    assert native_frames(coalescer) == reference(packets, udp, 65535)


@settings(max_examples=examples(60), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(packet_lists(), st.booleans(), st.data())
def test_calls_accumulate_and_clear(case: tuple[list[bytes], random.Random], udp: bool,
                                    data: st.DataObject) -> None:
    packets, rng = case
    buf, records = layout(packets, rng)
    n = len(packets)
    cuts = sorted(data.draw(st.lists(st.integers(0, n), max_size=4)))
    coalescer = _gro.Coalescer(buf, udp=udp, max_size=3000)
    for start, stop in zip([0, *cuts], [*cuts, n], strict=True):
        assert coalescer.add_records(records, start, stop) == 0
    assert native_frames(coalescer) == reference(packets, udp, 3000)
    # clear() forgets the packets and the flows: only what follows counts.
    cut = data.draw(st.integers(0, n))
    coalescer.add_records(records, 0, cut)
    coalescer.clear()
    coalescer.add_records(records, cut, n)
    assert native_frames(coalescer) == reference(packets[cut:], udp, 3000)
    coalescer.add_records(records, 0, n)
    coalescer.clear()
    assert coalescer.frames() == []


def test_errors_change_nothing() -> None:
    rng = random.Random(1)
    packets = [tcp_packet(payload(rng, 100), seq=1000 + 100 * i) for i in range(4)]
    buf, records = layout(packets, rng)
    coalescer = _gro.Coalescer(buf)
    coalescer.add_records(records, 0, 2)
    bad = [
        (records, -1, 2), (records, 3, 2), (records, 0, 5), (records[:47], 0, 4),
        (records + b"\0" * 11, 0, 5),
        (struct.pack("<III", len(buf) - 10, 11, 0), 0, 1),
        (struct.pack("<III", len(buf) + 1, 0, 0), 0, 1),
        (struct.pack("<III", 2**32 - 1, 2**32 - 1, 0), 0, 1),
        (records[24:] + struct.pack("<III", 0, len(buf) + 1, 0), 0, 3),  # the last is bad
    ]
    for args in bad:
        with pytest.raises(ValueError):
            coalescer.add_records(*args)
        with pytest.raises(ValueError):
            coalescer.add_records(*args, b"\0" * 8)
    with pytest.raises(TypeError):
        coalescer.add_records("records", 0, 0)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        coalescer.add_records(records, 0, 1, 5)  # type: ignore[arg-type]
    assert coalescer.add_records(records[:47] + b"x", 0, 4) == 0  # 48 bytes: four records
    coalescer.clear()
    coalescer.add_records(records, 0, 2)
    coalescer.add_records(records, 2, 2)  # empty range
    coalescer.add_records(records, 2, 4)
    assert native_frames(coalescer) == reference(packets, False, 65535)
    # A record may name any bytes of the buffer, even an empty packet at its end.
    assert coalescer.add_records(struct.pack("<III", len(buf), 0, 0), 0, 1) == 0
    assert native_frames(coalescer) == [(NO_OFFLOAD, 1)]
    for max_size in (-1, 65536):
        with pytest.raises(ValueError):
            _gro.Coalescer(buf, max_size=max_size)
    with pytest.raises(TypeError):
        _gro.Coalescer(buf, False)  # type: ignore[misc]
    with pytest.raises(TypeError):
        _gro.Coalescer(42)  # type: ignore[arg-type]


def test_a_denied_record_outside_the_buffer_is_refused_on_both_paths() -> None:
    """Both paths check every record against the buffer before they look at its slot: a
    record outside the buffer is a ValueError even when its slot is denied."""
    buf = bytearray(tcp_packet(b"x" * 10))
    record = struct.pack("<III", len(buf) - 5, 10, 3)
    for coalescer in (_gro.Coalescer(buf), gro.RecordCoalescer(buf)):
        with pytest.raises(ValueError):
            coalescer.add_records(record, 0, 1, b"\0\0\0\1")


def test_a_call_from_a_finalizer_during_frames_is_refused() -> None:
    """frames() is busy from its first allocation on: an allocation can run the cyclic GC,
    and a __del__ run there must not add packets to a run whose frame may already be sized
    (that overflowed the frame's body), nor clear or take the frames under it."""
    rng = random.Random(3)
    flow = [tcp_packet(payload(rng, 1000), seq=1 + 1000 * i) for i in range(8)]
    first = [*flow[:2], *[b"\x00junk"] * 6]  # one run, then frames of one packet each
    buf, records = layout(first + flow[2:], rng)
    coalescer = _gro.Coalescer(buf)
    coalescer.add_records(records, 0, len(first))
    answers: list[object] = []

    class CallsOnCollection:
        def __init__(self) -> None:
            self.cycle = self  # only the cyclic GC frees it

        def __del__(self) -> None:
            for call in (lambda: coalescer.add_records(records, len(first), len(records) // 12),
                         coalescer.clear, coalescer.frames):
                try:
                    answers.append(call())
                except RuntimeError as error:
                    answers.append(str(error))

    threshold = gc.get_threshold()
    gc.collect()
    try:
        CallsOnCollection()
        # A collection a few allocations of tracked objects into frames() (the list, then
        # one per frame: nine), after the run's body was sized: ASan saw it overflow.
        gc.set_threshold(4)
        frames = coalescer.frames()
    finally:
        gc.set_threshold(*threshold)
    assert answers == ["Coalescer in use by another call"] * 3  # the finalizer ran in it
    assert [(h + b, n) for h, b, n in frames] == reference(first, False, 65535)


def test_buffer_is_held() -> None:
    buf = bytearray(tcp_packet(b"x" * 10))
    coalescer = _gro.Coalescer(buf, udp=True, max_size=1000)
    assert (coalescer.udp, coalescer.max_size) == (True, 1000)
    with pytest.raises(BufferError):
        buf.extend(b"more")  # exported: the buffer cannot move or shrink
    del coalescer
    buf.extend(b"more")


def test_wrapper_gives_coalesced() -> None:
    rng = random.Random(2)
    packets = [tcp_packet(payload(rng, 500), seq=1 + 500 * i, options=TS_OPTION)
               for i in range(5)] + [b"\x00junk"]
    buf, records = layout(packets, rng)
    wrapped = gro.NativeCoalescer(buf, max_size=2000)
    assert wrapped.add_records(records, 0, len(packets), b"\0" * 10) == 0
    frames = wrapped.frames()
    assert all(type(f) is gro.Coalesced and len(f.parts) == 1 for f in frames)
    assert [(f.frame(), f.segments) for f in frames] == reference(packets, False, 2000)
    wrapped.add_records(records, 0, 2)
    wrapped.clear()
    assert wrapped.frames() == []


def run_import(env_value: str | None) -> str:
    env = {k: v for k, v in os.environ.items() if k != "VPN_FAST_PATH"}
    if env_value is not None:
        env["VPN_FAST_PATH"] = env_value
    code = ("from vpn.core.offload import gro; "
            "print(gro.NATIVE.native, repr(gro.NATIVE.reason))")
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, check=True,
                          capture_output=True, text=True, timeout=60).stdout.strip()


def test_fast_path_switch() -> None:
    assert run_import(None) == "True ''"
    assert run_import("python") == "False 'VPN_FAST_PATH=python'"
