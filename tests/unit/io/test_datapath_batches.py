"""Whole receive batches through a real `DataPath` (in-memory TUN and socket): whatever the
batch's shape, every frame written to the TUN holds only packets that passed every check,
and nothing of one batch survives into the next, not even after an internal error."""

from __future__ import annotations

import logging
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lab.doubles import DST, ENDPOINT_A, SRC, handshaken_pair, tun_frame
from lab.packets import ACK, PSH, tcp_packet, udp_super_packet
from vpn.core.offload import split
from vpn.core.packet.virtio import NO_OFFLOAD, VirtioNetHeader
from vpn.core.wireguard import Keypair
from vpn.io.datapath import DataPath

FORGED_SRC = bytes([198, 18, 10, 77])  # not in a's AllowedIPs at b
HEADERS = 40  # IPv4 + TCP, no options
Receive = tuple[memoryview, int, tuple[str, int]]
Sent = dict[tuple[bytes, int, int], bytes]  # (source, port, seq) -> TCP payload


def sending_keypair(a: DataPath) -> Keypair:
    kp = next(iter(a.device.peers.values())).keypairs.current
    assert kp is not None
    return kp


class Flows:
    """TCP segments of a few flows from a's side, encrypted by a as GRO receives for b,
    and the record of which of them b may write (those with an allowed source)."""

    def __init__(self, a: DataPath) -> None:
        self.kp = sending_keypair(a)
        self.mtu = a.mtu
        self.seq: dict[tuple[bytes, int], int] = {}
        self.allowed: Sent = {}

    def segments(self, src: bytes, sport: int, sizes: list[int]) -> list[bytes]:
        """IP packets of one flow with these IP lengths, in sequence order."""
        out = []
        for i, size in enumerate(sizes):
            seq = self.seq.get((src, sport), 1000)
            payload = bytes([seq % 251]) * (size - HEADERS)
            flags = ACK | PSH if i == len(sizes) - 1 else ACK
            out.append(tcp_packet(payload, src=src, dst=DST, sport=sport, seq=seq, flags=flags))
            if src == SRC:
                self.allowed[(src, sport, seq)] = payload
            self.seq[(src, sport)] = seq + len(payload)
        return out

    def gro_receive(self, packets: list[bytes]) -> Receive:
        """The packets as one GRO receive: transport messages back to back, the segment
        size that of the first (UDP GRO merges equal sizes; only the last may be shorter)."""
        out = bytearray(sum(len(p) + 48 for p in packets))
        lengths = self.kp.encrypt_batch(packets, out, 0, self.mtu)
        assert all(n == lengths[0] for n in lengths[:-1]) and lengths[-1] <= lengths[0]
        data = memoryview(bytes(out[:sum(lengths)]))
        assert len(data) <= 65535
        return data, lengths[0], ENDPOINT_A


def written(b: DataPath) -> Sent:
    """Every TCP segment in the frames b wrote (jumbo frames split again), by flow and
    sequence number; a segment written twice fails the test at once."""
    out: Sent = {}
    for frame in b.tun.frames:  # type: ignore[attr-defined]
        for segment in split(VirtioNetHeader.unpack(frame[:10]), memoryview(frame)[10:]):
            seg = bytes(segment)
            src = seg[12:16]
            sport, _, seq = struct.unpack_from("!HHI", seg, 20)
            key = (src, sport, seq)
            assert key not in out, f"segment written twice: {key}"
            out[key] = seg[HEADERS:]
    return out


def run_batch(b: DataPath, receives: list[Receive]) -> Sent:
    b.tun.frames = []  # type: ignore[attr-defined]
    b.udp.incoming = receives  # type: ignore[attr-defined]
    b.on_udp_readable()
    return written(b)


def test_full_batch_of_big_mtu_gro_receives_writes_only_checked_packets() -> None:
    """The batch that overran the receive buffer: 64 GRO receives of 7 x 8920 + 100 bytes
    (tunnel MTU 8920 over a 9000-byte underlay), every fifth with a forged source."""
    a, b = handshaken_pair(b"big", mtu=8920)
    flows = Flows(a)
    for _ in range(2):  # the second batch shows nothing of the first survived
        receives = [flows.gro_receive(flows.segments(FORGED_SRC if i % 5 == 0 else SRC, 40000,
                                                     [8920] * 7 + [100]))
                    for i in range(64)]
        assert run_batch(b, receives) == flows.allowed
        flows.allowed.clear()
    assert b.stats.all_drops() == {"source_not_allowed": 2 * 13 * 8}
    assert "internal_error" not in b.stats.all_drops()


SHAPES = st.lists(
    st.tuples(st.integers(0, 7), st.integers(HEADERS + 1, 9000), st.booleans(),
              st.sampled_from([40000, 40001])),
    min_size=1, max_size=64)


@settings(max_examples=40, deadline=None)
@given(st.integers(576, 9000), st.lists(SHAPES, min_size=1, max_size=3))
def test_any_gro_shape_writes_exactly_the_checked_packets(mtu: int,
                                                          batches: list[list]) -> None:
    """Random GRO receives (full segments and a last one of any size up to the MTU), some
    with a forged source, in up to three batches: each batch writes exactly the segments
    with an allowed source that it carried."""
    a, b = handshaken_pair(b"shape", mtu=mtu)
    flows = Flows(a)
    for shapes in batches:
        receives = []
        for full, last, forged, sport in shapes:
            full = min(full, 65535 // (mtu + 32) - 1)
            sizes = [mtu] * full + [min(last, mtu)]
            src = FORGED_SRC if forged else SRC
            receives.append(flows.gro_receive(flows.segments(src, sport, sizes)))
        assert run_batch(b, receives) == flows.allowed
        flows.allowed.clear()
    assert set(b.stats.all_drops()) <= {"source_not_allowed"}


def lying_packet(version: int, claimed: int, size: int) -> bytes:
    """An IP packet of `size` bytes whose length field claims `claimed` bytes (IPv4 total
    length; IPv6 payload length + 40)."""
    if version == 4:
        packet = bytearray(tcp_packet(bytes(max(size - HEADERS, 0)), src=SRC, dst=DST)[:size])
        packet[2:4] = claimed.to_bytes(2, "big")
    else:
        packet = bytearray(size)
        packet[0] = 0x60
        packet[4:6] = max(claimed - 40, 0).to_bytes(2, "big")
        packet[8:24] = bytes(10) + b"\xff\xff" + SRC  # not allowed either way
    return bytes(packet)


@pytest.mark.parametrize("version,claimed,size", [
    # (padding makes 100 bytes 112 on the wire: a claim of 113 is the first lie past it)
    (4, 0, 100), (4, 19, 100), (4, 113, 100), (4, 20, 16), (6, 1000, 200), (6, 40, 30),
])
@pytest.mark.parametrize("count", [1, 12])  # lone datagrams, and a GRO receive of many
def test_dishonest_ip_lengths_are_dropped_in_every_receive_path(
        version: int, claimed: int, size: int, count: int) -> None:
    a, b = handshaken_pair(b"lie")
    kp = sending_keypair(a)
    packets = [lying_packet(version, claimed, size)] * count
    out = bytearray(count * (size + 48))
    lengths = kp.encrypt_batch(packets, out, 0, a.mtu)
    data = memoryview(bytes(out[:sum(lengths)]))
    receives = ([(data, lengths[0], ENDPOINT_A)] if count > 1 else
                [(data, len(data), ENDPOINT_A)])
    assert run_batch(b, receives) == {}
    assert b.tun.frames == []  # type: ignore[attr-defined]
    assert b.stats.all_drops() == {"dishonest_packet_size": count}


def test_an_internal_error_mid_batch_leaves_nothing_for_the_next(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """An exception nobody expected, half-way through a batch (here in the core's receive
    walk, at a keypair's accept stage): the pump catches it, counts it, logs its traceback
    (at most once a minute), and the next batch writes only its own frames."""
    a, b = handshaken_pair(b"boom")
    flows = Flows(a)
    first = [flows.gro_receive(flows.segments(SRC, 40000, [1420] * 5 + [200]))
             for _ in range(6)]
    flows.allowed.clear()
    calls = {"n": 0}
    real = Keypair.accept_run

    def failing(self: Keypair, *args: object, **kwargs: object) -> tuple:
        calls["n"] += 1
        if calls["n"] == 4:
            raise RuntimeError("injected")
        return real(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Keypair, "accept_run", failing)
    with caplog.at_level(logging.ERROR, logger="vpn.io.datapath"):
        assert run_batch(b, first) == {}
        second = [flows.gro_receive(flows.segments(SRC, 40001, [1420] * 5 + [200]))
                  for _ in range(6)]
        assert run_batch(b, second) == flows.allowed
        calls["n"] = 0
        run_batch(b, first[:5])  # fails again within the minute: counted, not logged
    assert b.stats.all_drops()["internal_error"] == 2
    tracebacks = [r for r in caplog.records if r.exc_info]
    assert len(tracebacks) == 1 and "injected" in str(tracebacks[0].exc_info[1])


def test_an_internal_error_on_the_send_side_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    a, _ = handshaken_pair(b"send")
    packet = tcp_packet(b"x" * 100, src=SRC, dst=DST)

    def failing(*args: object) -> None:
        raise RuntimeError("injected")

    monkeypatch.setattr(a, "send_to_peer", failing)
    a.tun.reads = [tun_frame(VirtioNetHeader.unpack(NO_OFFLOAD), packet)]  # type: ignore[attr-defined]
    a.on_tun_readable()
    assert a.stats.all_drops()["internal_error"] == 1
    monkeypatch.undo()
    a.udp.sent = []  # type: ignore[attr-defined]
    a.tun.reads = [tun_frame(VirtioNetHeader.unpack(NO_OFFLOAD), packet)]  # type: ignore[attr-defined]
    a.on_tun_readable()
    assert len(a.udp.sent) == 1  # type: ignore[attr-defined]


def test_a_super_packet_of_more_segments_than_the_send_buffer_holds_is_sent_whole() -> None:
    """A local app's UDP GSO send with 2-byte segments: 30,000 of them do not fit the send
    buffer's in-place layout, so they go the chunked way, every one sent and received."""
    a, b = handshaken_pair(b"tiny")
    header, packet = udp_super_packet(bytes(range(256)) * 234 + bytes(96), 2, src=SRC, dst=DST)
    a.tun.reads = [tun_frame(header, packet)]  # type: ignore[attr-defined]
    a.on_tun_readable()
    assert a.stats.all_drops() == {} and a.stats.segments_split == 30_000
    assert a.stats.datagrams_sent == 30_000
    b.udp.incoming = [(memoryview(d), s, ENDPOINT_A) for d, s in a.udp.sent]  # type: ignore[attr-defined]
    b.on_udp_readable()
    assert b.stats.all_drops() == {} and b.stats.packets_written == 30_000
