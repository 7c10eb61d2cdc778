"""The receive path, whatever the network did to a's datagrams (cut, lost, replayed,
tampered with, mixed with garbage, sent from elsewhere) and however GRO grouped them: the
same datagrams as GRO receives and as one receive each must write the same frames to the
TUN, count the same drops and leave the peer in the same state (endpoint, bytes, replay
window)."""

from __future__ import annotations

import os
import random

from hypothesis import given, settings
from hypothesis import strategies as st

from lab.doubles import DST, ENDPOINT_A, SRC, ScreeningUdp, handshaken_pair, tun_frame
from lab.packets import ACK, PSH, TS_OPTION, tcp_packet, tcp_super_packet
from vpn.core.packet.virtio import NO_OFFLOAD, VirtioNetHeader
from vpn.io.datapath import DataPath

FOREIGN = ("198.18.99.9", 4444)
Receive = tuple[bytes, int, tuple[str, int]]


def sent_by_a(a: DataPath, reads: list[tuple[VirtioNetHeader, bytes]]) -> list[Receive]:
    """What a sends for these TUN reads, as the GRO receives b would get (one per send)."""
    a.tun.reads = [tun_frame(h, p) for h, p in reads]  # type: ignore[attr-defined]
    a.on_tun_readable()
    return [(data, size, ENDPOINT_A) for data, size in a.udp.sent]  # type: ignore[attr-defined]


def apply(receives: list[Receive], ops: list[tuple[str, int, int]]) -> list[Receive]:
    """The network's doings, each op (kind, which receive, where) on the list."""
    out = list(receives)
    for kind, which, where in ops:
        if not out:
            break
        i = which % len(out)
        data, size, source = out[i]
        count = -(-len(data) // size)
        k = 1 + where % max(count - 1, 1)
        if kind == "cut" and count > 1:  # GRO stopped at another boundary
            out[i:i + 1] = [(data[:k * size], size, source), (data[k * size:], size, source)]
        elif kind == "lose" and count > 2:  # one datagram lost on the way
            out[i:i + 1] = [piece for piece in ((data[:k * size], size, source),
                                                (data[(k + 1) * size:], size, source))
                            if piece[0]]
        elif kind == "replay":  # the same again, from its source or from elsewhere
            out.insert(min(len(out), i + 1 + where % 3),
                       (data, size, FOREIGN if where & 1 else source))
        elif kind == "tamper" and data:  # a flood's zero-length datagram has no byte to flip
            position = where % len(data)
            out[i] = (data[:position] + bytes([data[position] ^ 0x40]) + data[position + 1:],
                      size, source)
        elif kind == "foreign":
            out[i] = (data, size, FOREIGN)
        elif kind == "garbage":  # the same junk in both runs: it comes from `where`
            junk = random.Random(where).randbytes(16 + where % 200)
            out.insert(i, (junk, len(junk), FOREIGN))
        elif kind == "flood":  # what a flood sends: one kind of junk, GRO-merged or not
            junk = flood_datagram(where, data)
            count = 1 + where % 5
            out.insert(i, (junk * count, len(junk) or 1, FOREIGN if where & 1 else source))
        elif kind == "lone":  # no GRO: one datagram per receive
            out[i:i + 1] = [(data[j:j + size], min(size, len(data) - j), source)
                            for j in range(0, len(data), size)]
    return out


def flood_datagram(where: int, real: bytes) -> bytes:
    """One of the garbage kinds a flood sends (lab/flood.py), decided by
    `where`; `real` is one of a's receives, for a live receiver index."""
    rng = random.Random(where)
    kind = where % 9
    if kind == 0:
        return bytes([rng.choice([0, 5, 255])]) + rng.randbytes(rng.randint(3, 300))
    if kind == 1:
        return rng.randbytes(where % 4)  # too short, zero-length included
    if kind == 2:  # a type byte with the wrong length for it
        msg_type = 1 + where % 4
        return bytes([msg_type, 0, 0, 0]) + rng.randbytes(rng.choice([0, 27, 60, 87, 143, 150]))
    if kind == 3:  # reserved bytes set
        return bytes([1 + where % 3, 0, 1, 0]) + rng.randbytes((144, 88, 60)[where % 3])
    if kind == 4:  # the right lengths, a bad mac1
        return bytes([1 + where % 3, 0, 0, 0]) + rng.randbytes((144, 88, 60)[where % 3])
    if kind == 5:  # a transport message for no index of ours
        return b"\x04\x00\x00\x00" + rng.randbytes(28 + where % 300)
    if kind == 6:  # a live index, a forged body
        return real[:8] + rng.randbytes(max(24, min(len(real), 1452) - 8))
    if kind == 7:  # a real message cut short
        return real[:4 + where % 28]
    return b"\x04\x00\x00\x00" + real[4:8] + rng.randbytes(where % 24)  # live, too short


def one_datagram_each(receives: list[Receive]) -> list[Receive]:
    """The same datagrams as if GRO had merged none of them."""
    return [(data[j:j + size], min(size, len(data) - j), source)
            for data, size, source in receives for j in range(0, max(len(data), 1), size)]


def receive(b: DataPath, receives: list[Receive], batches: int, *, ungrouped: bool = False
            ) -> dict:
    step = max(1, -(-len(receives) // batches))
    for start in range(0, len(receives), step):
        batch = receives[start:start + step]
        if ungrouped:
            batch = one_datagram_each(batch)
        b.udp.incoming = [(memoryview(d), s, src)  # type: ignore[attr-defined]
                          for d, s, src in batch]
        b.on_udp_readable()
    peer = next(iter(b.device.peers.values()))
    kp = peer.keypairs.current or peer.keypairs.next
    stats = b.stats.summary()
    stats["protocol_drops"] = dict(b.device.drops)
    del stats["full_receive_batches"]  # more receives per batch when ungrouped
    del stats["udp"]["receives"]
    return {"frames": b.tun.frames, "stats": stats, "endpoint": peer.endpoint,  # type: ignore[attr-defined]
            "rx_bytes": peer.rx_bytes, "greatest": kp.replay.greatest if kp else None,
            "seen": bytes(kp.replay.seen) if kp else None}


def traffic(flows: list[tuple[int, int, bool]], *, one_flow: bool = False
            ) -> list[tuple[VirtioNetHeader, bytes]]:
    """TUN reads from a to b: per entry a TCP super-packet (segments, mss, PSH at the end) of
    one of two flows taking turns (or of one), or a lone small packet for segments 0."""
    reads = []
    seq = {40000: 1000, 40001: 9000}
    for i, (segments, mss, psh) in enumerate(flows):
        sport = 40000 if one_flow else 40000 + i % 2
        if segments == 0:
            packet = tcp_packet(os.urandom(100), src=SRC, dst=DST, sport=sport, seq=seq[sport],
                                flags=ACK | PSH)
            reads.append((VirtioNetHeader.unpack(NO_OFFLOAD), packet))
            seq[sport] += 100
            continue
        payload = os.urandom(mss * segments - (mss // 3 if psh else 0))
        header, packet = tcp_super_packet(payload, mss, src=SRC, dst=DST, sport=sport,
                                          seq=seq[sport], options=TS_OPTION,
                                          flags=ACK | PSH if psh else ACK)
        reads.append((header, packet))
        seq[sport] += len(payload)
    return reads


OPS = st.lists(st.tuples(st.sampled_from(["cut", "lose", "replay", "tamper", "foreign",
                                          "garbage", "flood", "lone"]),
                         st.integers(0, 50), st.integers(0, 5000)), max_size=6)
FLOWS = st.lists(st.tuples(st.sampled_from([0, 1, 3, 9, 20, 44]),
                           st.sampled_from([1368, 1000, 536]), st.booleans()),
                 min_size=1, max_size=4)


@settings(max_examples=60, deadline=None)
@given(FLOWS, OPS, st.integers(1, 3), st.binary(min_size=4, max_size=4))
def test_grouped_and_ungrouped_receives_agree(flows: list[tuple[int, int, bool]],
                                              ops: list[tuple[str, int, int]], batches: int,
                                              seed: bytes) -> None:
    """...and the native screen (vpn/io/_udp.c), which drops garbage before the dispatch, ends
    in the same frames, counters and state as the Python dispatch of every datagram."""
    reads = traffic(flows)
    results = []
    for ungrouped, screened in ((False, False), (True, False), (False, True)):
        a, b = handshaken_pair(seed)
        if screened:
            b.udp = ScreeningUdp()
            b.stats.udp = b.udp.stats
        receives = apply(sent_by_a(a, reads), ops)
        results.append(receive(b, receives, batches, ungrouped=ungrouped))
    grouped, one_each, screened_first = results
    assert grouped == one_each
    assert screened_first == grouped


def test_clean_bulk_traffic_arrives_whole() -> None:
    reads = traffic([(44, 1368, False), (44, 1368, True)], one_flow=True)
    a, b = handshaken_pair(b"seed")
    receives = sent_by_a(a, reads)
    assert len(receives) == 2  # 45 datagrams of 1452 bytes fill one GSO send (64 KiB)
    result = receive(b, receives, 1)
    payload_in = b"".join(p[52:] for _, p in reads)
    # 88 segments of one flow in order: two jumbo frames (64 KiB at most each).
    assert len(result["frames"]) == 2
    assert b"".join(f[10 + 52:] for f in result["frames"]) == payload_in
    assert result["stats"]["drops"] == {}


def test_replayed_gro_receive_from_elsewhere_moves_nothing() -> None:
    """In the same wakeup as the real receive, and in a later one."""
    a, b = handshaken_pair(b"seed")
    receives = sent_by_a(a, traffic([(44, 1368, False)]))
    replayed = [(d, s, FOREIGN) for d, s, _ in receives]
    first = receive(b, receives + replayed, 1)
    second = receive(b, replayed, 1)
    assert first["endpoint"] == second["endpoint"] == ENDPOINT_A
    handshake = 148  # the initiation b consumed counts too, as in the kernel
    assert second["rx_bytes"] == first["rx_bytes"] == handshake + sum(
        len(d) for d, _, _ in receives)
    assert second["stats"]["drops"]["replay"] == 2 * 44


def test_the_screen_counts_every_flood_kind_as_the_python_dispatch() -> None:
    """Every kind of flood garbage, many times over, around real traffic: the native screen
    and the Python dispatch end alike, and each kind was seen."""
    reads = traffic([(9, 1368, False), (0, 1368, False), (3, 1000, True)])
    ops = [("flood", i, where) for i, where in enumerate(range(300))]
    results = []
    for screened in (False, True):
        a, b = handshaken_pair(b"flood")
        if screened:
            b.udp = ScreeningUdp()
            b.stats.udp = b.udp.stats
        results.append(receive(b, apply(sent_by_a(a, reads), ops), 2))
    assert results[0] == results[1]
    drops = results[0]["stats"]["drops"]
    for reason in ("too_short", "transport_too_short", "unknown_type", "bad_length",
                   "reserved_nonzero", "bad_mac1", "unknown_receiver_index", "bad_auth"):
        assert drops.get(reason), (reason, drops)
    assert len(results[0]["frames"]) >= 3  # and the real traffic got through
