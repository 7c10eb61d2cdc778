"""The core's send half (vpn/core/wireguard/send.py): routing by destination, and sealing a
peer's reads into a send buffer of any size, a call at a time, with the same messages as
one call into a buffer large enough for all; staging, exhaustion and drops by reason."""

from __future__ import annotations

import struct

import pytest

from lab.doubles import DST, MTU, SRC, handshaken_pair
from lab.packets import split_gro, tcp_packet, tcp_super_packet, udp_super_packet
from vpn.core.offload.gso import split
from vpn.core.packet.virtio import HEADER, VirtioNetHeader
from vpn.core.wireguard import Device, Keypair, Peer
from vpn.core.wireguard.constants import REJECT_AFTER_MESSAGES
from vpn.core.wireguard.send import Read, Reserved, Sealed, SplitRuns, reserve_jobs, seal_job
from vpn.io.tun import TunRead, TunStats, split_reads

MSS = MTU - 40


def read(header: VirtioNetHeader, packet: bytes, stats: TunStats | None = None) -> TunRead:
    fields = HEADER.unpack(header.pack())
    return TunRead(fields, memoryview(packet), stats or TunStats())


def plain(payload: bytes, dst: bytes = DST) -> TunRead:
    return read(VirtioNetHeader(), tcp_packet(payload, src=SRC, dst=dst))


def session() -> tuple[Device, Peer, Device]:
    a, b = handshaken_pair(b"send")
    return a.device, next(iter(a.device.peers.values())), b.device


def mixed_reads() -> tuple[list[Read], list[bytes]]:
    """Super-packets of TCP and UDP with plain packets between them, and the packets they
    stand for, in order."""
    reads: list[Read] = []
    for i in range(3):
        reads.append(plain(bytes([i]) * (10 + i)))
        header, packet = tcp_super_packet(bytes([i]) * (MSS * 9 + 100 * i), MSS, src=SRC, dst=DST)
        reads.append(read(header, packet))
        reads.append(plain(b"ack"))
        header, packet = udp_super_packet(bytes([i]) * 5000, 1000 + i, src=SRC, dst=DST)
        reads.append(read(header, packet))
    packets = [bytes(p) for r in reads for p in r.packets()]
    return reads, packets


def opened(b: Device, messages: list[bytes]) -> list[bytes]:
    """The IP packets in transport messages, opened by b (padding cut by the IP length)."""
    out = []
    for message in messages:
        receiver = struct.unpack_from("<I", message, 4)[0]
        found = b.session(receiver)
        assert found is not None
        body = found[1].decrypt(message, 1.0)
        length = (struct.unpack_from("!H", body, 2)[0] if body[0] >> 4 == 4
                  else 40 + struct.unpack_from("!H", body, 4)[0])
        out.append(body[:length])
    return out


def seal_all(device: Device, peer: Peer, reads: list[Read], size: int
             ) -> tuple[list[bytes], list[Sealed]]:
    """Every message, a `size`-byte buffer's worth per call as the pump does, in order."""
    out = bytearray(size)
    messages: list[bytes] = []
    calls = []
    while True:
        sealed = device.seal(peer, reads, out, MTU, 1.0)
        calls.append(sealed)
        at = 0
        for n in sealed.lengths:
            messages.append(bytes(out[at:at + n]))
            at += n
        if not sealed.rest:
            return messages, calls
        reads = sealed.rest


def test_routing_by_destination_with_icmp_for_no_peer() -> None:
    device, peer, _ = session()
    first, second = plain(b"one"), plain(b"two")
    stranger = plain(b"lost", dst=bytes([198, 18, 99, 9]))
    garbage = read(VirtioNetHeader(), b"\x00" * 30)
    routed = device.route([first, stranger, garbage, second], 1.0)
    assert routed.by_peer == {peer: [first, second]}
    assert routed.drops == {"no_peer_for_destination": 1, "tun_not_ip": 1}
    (reply,) = routed.replies
    assert reply[9] == 1 and reply[16:20] == SRC  # ICMP, back to the sender


@pytest.mark.parametrize("size", [1 << 20, 70_000, 20_000, MTU + 100])
def test_any_buffer_size_seals_the_same_packets_in_order(size: int) -> None:
    device, peer, b = session()
    reads, packets = mixed_reads()
    messages, calls = seal_all(device, peer, reads, size)
    assert opened(b, messages) == packets
    assert all(not c.drops and not c.exhausted for c in calls)
    if size < 70_000:
        assert len(calls) > 1  # the buffer filled up: the rest went in further calls
    lengths = [n for c in calls for n in c.lengths]
    assert peer.tx_bytes >= sum(lengths)


def reserve_and_seal(peer: Peer, reads: list[Read], budget: int, size: int,
                     split_runs: SplitRuns | None = None) -> tuple[list[bytes], Reserved]:
    """reserve_jobs then seal_job, as the loop thread and the send workers run them (the
    jobs sealed last first: the counters were reserved before, in read order)."""
    kp, endpoint = peer.keypair_for_sending(1.0), peer.endpoint
    assert kp is not None and endpoint is not None
    reserved = reserve_jobs(peer, kp, endpoint, reads, MTU, 1.0, budget)
    drops: dict[str, int] = {}
    per_job: list[list[bytes]] = []
    for job in reversed(reserved.jobs):
        messages = []
        for out, lengths in seal_job(kp, job, lambda _: memoryview(bytearray(size)), MTU,
                                     drops, split_runs):
            at = 0
            for n in lengths:
                messages.append(bytes(out[at:at + n]))
                at += n
        per_job.insert(0, messages)
    assert drops == {}
    return [m for messages in per_job for m in messages], reserved


@pytest.mark.parametrize(("budget", "size"), [(1 << 20, 1 << 20), (70_000, 70_000),
                                              (20_000, 20_000), (1, MTU + 100)])
def test_the_workers_jobs_seal_the_same_packets_in_order(budget: int, size: int) -> None:
    """What seal sends, in order, whatever the jobs' budget and the buffers' size; the
    counters reserved are the messages made, no more."""
    _, peer, b = session()
    reads, packets = mixed_reads()
    kp = peer.keypair_for_sending(1.0)
    assert kp is not None
    before, sent_before = kp.send_counter, peer.tx_bytes
    messages, reserved = reserve_and_seal(peer, reads, budget, size)
    assert opened(b, messages) == packets
    assert kp.send_counter - before == len(packets) == sum(j.messages for j in reserved.jobs)
    assert len(reserved.jobs) > 1 if budget < 70_000 else len(reserved.jobs) == 1
    assert peer.tx_bytes - sent_before == sum(map(len, messages))  # told before the split


@pytest.mark.parametrize(("budget", "size"), [(1 << 20, 1 << 20), (70_000, 70_000),
                                              (1, MTU + 100)])
@pytest.mark.parametrize("only_super", [True, False])
def test_a_job_split_and_sealed_in_one_call_each_is_what_the_walk_makes(
        budget: int, size: int, only_super: bool) -> None:
    """seal_job with the TUN's split_reads (one split and one seal per job of super-packets;
    the walk for a job with plain packets, or one its buffer cannot hold whole): the same
    messages byte for byte, with the same counters, as the walk alone."""
    _, peer, b = session()
    reads, packets = mixed_reads()
    if only_super:
        reads = [r for r in reads if r.segmented]
        packets = [bytes(p) for r in reads for p in r.packets()]
    kp = peer.keypair_for_sending(1.0)
    assert kp is not None
    before = kp.send_counter
    walked, _ = reserve_and_seal(peer, reads, budget, size)
    kp.send_counter = before  # the same counters again (a test's nonce reuse, not sent)
    messages, reserved = reserve_and_seal(peer, reads, budget, size, split_reads)
    assert messages == walked
    assert opened(b, messages) == packets
    assert kp.send_counter - before == len(packets) == sum(j.messages for j in reserved.jobs)


def test_a_job_drops_a_bad_read_by_its_header_before_reserving() -> None:
    _, peer, _ = session()
    header, packet = tcp_super_packet(b"x" * (MSS * 3), MSS, src=SRC, dst=DST)
    lying = VirtioNetHeader(header.flags, header.gso_type, header.hdr_len, 0,
                            header.csum_start, header.csum_offset)
    kp, endpoint = peer.keypair_for_sending(1.0), peer.endpoint
    assert kp is not None and endpoint is not None
    reserved = reserve_jobs(peer, kp, endpoint, [read(lying, packet), plain(b"fine")], MTU,
                            1.0, 1 << 20)
    assert reserved.drops == {"bad_gso_size": 1}
    assert [job.messages for job in reserved.jobs] == [1]


def test_super_packets_are_counted_by_the_device() -> None:
    device, peer, _ = session()
    stats = TunStats()
    header, packet = tcp_super_packet(b"x" * (MSS * 5), MSS, src=SRC, dst=DST)
    device.seal(peer, [read(header, packet, stats)], bytearray(1 << 20), MTU, 1.0)
    assert (stats.super_packets, stats.segments_split) == (1, 5)


def test_a_super_packet_larger_than_any_buffer_is_sealed_in_parts() -> None:
    device, peer, b = session()
    header, packet = udp_super_packet(bytes(range(256)) * 40, 2, src=SRC, dst=DST)
    messages, calls = seal_all(device, peer, [read(header, packet)], 100_000)
    assert len(calls) > 1 and len(messages) == 5120
    assert opened(b, messages) == [bytes(p) for p in split(header, packet)]


def test_a_malformed_read_is_dropped_by_its_reason_and_the_rest_sent() -> None:
    device, peer, b = session()
    header, packet = tcp_super_packet(b"x" * (MSS * 3), MSS, src=SRC, dst=DST)
    lying = VirtioNetHeader(header.flags, header.gso_type, header.hdr_len, 0,
                            header.csum_start, header.csum_offset)
    good = plain(b"fine")
    messages, (sealed,) = seal_all(device, peer, [read(lying, packet), good], 1 << 20)
    assert sealed.drops == {"bad_gso_size": 1}
    assert opened(b, messages) == [bytes(p) for p in good.packets()]


def test_no_endpoint_drops_for_the_peer_and_no_session_stages() -> None:
    device, peer, _ = session()
    endpoint, peer.endpoint = peer.endpoint, None
    sealed = device.seal(peer, [plain(b"a"), plain(b"b")], bytearray(4096), MTU, 1.0)
    assert sealed.drops == {"peer_without_endpoint": 2} == peer.drops
    assert sealed.lengths == [] and sealed.control == []

    peer.endpoint = endpoint
    peer.keypairs.clear()
    # (10 s on: the initiation of the pair's own handshake went out at 1.0)
    sealed = device.seal(peer, [plain(b"a"), plain(b"b")], bytearray(4096), MTU, 10.0)
    assert sealed.lengths == [] and len(peer.staged) == 2
    (initiation,) = sealed.control
    assert initiation[0] == 1


def test_running_out_of_nonces_stages_the_rest_behind_a_handshake() -> None:
    device, peer, _ = session()
    kp = peer.keypairs.current
    assert isinstance(kp, Keypair)
    kp.send_counter = REJECT_AFTER_MESSAGES - 2
    header, packet = tcp_super_packet(b"x" * (MSS * 4), MSS, src=SRC, dst=DST)
    sealed = device.seal(peer, [plain(b"a"), plain(b"b"), read(header, packet)],
                         bytearray(1 << 20), MTU, 10.0)
    assert sealed.exhausted and len(sealed.lengths) == 2
    assert len(peer.staged) == 4 and [d[0] for d in sealed.control] == [1]


def test_udp_split_gro_reads_what_seal_laid_out() -> None:
    """The layout is what one GSO send needs: all messages the size of the first but the
    last, so the receiver's GRO cut gives them back."""
    device, peer, b = session()
    header, packet = tcp_super_packet(b"y" * (MSS * 7 + 5), MSS, src=SRC, dst=DST)
    out = bytearray(1 << 20)
    sealed = device.seal(peer, [read(header, packet)], out, MTU, 1.0)
    total = sum(sealed.lengths)
    cut = [bytes(m) for m in split_gro(memoryview(out)[:total], sealed.lengths[0])]
    assert opened(b, cut) == [bytes(p) for p in split(header, packet)]


def test_a_buffer_that_cannot_hold_one_message_is_refused_not_looped_on() -> None:
    device, peer, _ = session()
    with pytest.raises(ValueError, match="cannot hold one message"):
        device.seal(peer, [plain(b"x" * 1000)], bytearray(500), MTU, 1.0)
