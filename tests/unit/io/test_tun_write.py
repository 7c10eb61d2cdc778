"""The TUN's write side (TunDevice.deliver, flush, clear): GRO on write, its counters and the
EINVAL fallback, over lab.doubles.MemoryTun, which replaces only the system call."""

from __future__ import annotations

import errno
from collections.abc import Sequence

import pytest

from lab.doubles import DST, SRC, MemoryTun, handshaken_pair
from lab.packets import ACK, tcp_packet, udp_packet
from tests.unit.io.test_datapath_batches import Flows, Receive, run_batch
from vpn.core.offload.gro import RECORD, receive_coalescer
from vpn.core.packet.virtio import VirtioNetHeader
from vpn.core.types import Buffer
from vpn.io.datapath import DataPath

SIZES = [1420] * 5 + [200]  # one flow: one jumbo frame of six segments


def receives(a: DataPath, flows: Flows, count: int) -> list[Receive]:
    return [flows.gro_receive(flows.segments(SRC, 40000 + i, SIZES)) for i in range(count)]


class RefusingTun(MemoryTun):
    """A kernel that refuses coalesced writes with EINVAL (some stable kernels did)."""

    def write(self, header: bytes, parts: Sequence[Buffer]) -> None:
        if VirtioNetHeader.unpack(header).gso_type:
            raise OSError(errno.EINVAL, "Invalid argument")
        super().write(header, parts)


class FullTun(MemoryTun):
    def write(self, header: bytes, parts: Sequence[Buffer]) -> None:
        raise BlockingIOError(errno.EAGAIN, "full")


def test_coalesced_writes_are_counted_by_the_tun() -> None:
    a, b = handshaken_pair(b"tun-write")
    flows = Flows(a)
    assert run_batch(b, receives(a, flows, 3)) == flows.allowed
    assert len(b.tun.frames) == 3  # type: ignore[attr-defined]
    assert b.tun.stats.counts() == {"super_packets": 0, "segments_split": 0, "tun_writes": 3,
                                    "jumbo_frames": 3, "jumbo_segments": 18}
    summary = b.stats.summary()
    assert (summary["tun_writes"], summary["jumbo_segments"], summary["packets_written"]) == (
        3, 18, 18)


def test_a_refused_coalesced_write_turns_coalescing_off_for_good(
        caplog: pytest.LogCaptureFixture) -> None:
    a, b = handshaken_pair(b"tun-einval")
    b.tun = RefusingTun()
    b.stats.tun = b.tun.stats
    flows = Flows(a)
    with caplog.at_level("WARNING", logger="vpn.io.tun"):
        assert run_batch(b, receives(a, flows, 2)) == flows.allowed
    # Both frames gathered in that wakeup refused, each then written segment by segment;
    # from then on, no GRO.
    assert not b.tun.coalescing and "refused a coalesced TUN write" in caplog.text
    assert all(VirtioNetHeader.unpack(f).gso_type == 0 for f in b.tun.frames)
    assert b.stats.all_drops() == {"gro_write_refused": 2}
    assert (b.stats.tun_writes, b.stats.jumbo_frames, b.stats.jumbo_segments) == (12, 0, 0)
    later = Flows(a)
    assert run_batch(b, receives(a, later, 1)) == later.allowed
    assert len(b.tun.frames) == 6 and b.stats.all_drops() == {"gro_write_refused": 2}


def test_a_full_tun_drops_every_segment_of_a_frame() -> None:
    a, b = handshaken_pair(b"tun-full")
    b.tun = FullTun()
    b.stats.tun = b.tun.stats
    run_batch(b, receives(a, Flows(a), 2))
    assert b.stats.all_drops() == {"tun_write_full": 12}
    assert b.stats.tun_writes == 0 and b.stats.packets_written == 12


class FailingTun(MemoryTun):
    """A kernel that refuses every write with the errno given."""

    def __init__(self, code: int) -> None:
        super().__init__()
        self.code = code

    def write(self, header: bytes, parts: Sequence[Buffer]) -> None:
        raise OSError(self.code, "refused")


def test_a_refused_write_counts_one_reason_and_logs_each_errno_once(
        caplog: pytest.LogCaptureFixture) -> None:
    a, b = handshaken_pair(b"tun-eio")
    b.tun = FailingTun(errno.EIO)
    b.stats.tun = b.tun.stats
    with caplog.at_level("WARNING", logger="vpn.io.tun"):
        run_batch(b, receives(a, Flows(a), 2))
        b.tun.code = errno.EPERM  # type: ignore[attr-defined]
        run_batch(b, receives(a, Flows(a), 1))
    assert b.stats.all_drops() == {"tun_write_error": 3}
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 2
    assert "(EIO)" in warnings[0] and "(EPERM)" in warnings[1]


def test_without_a_virtio_header_each_packet_is_written_as_it_is() -> None:
    tun = MemoryTun(vnet_hdr=False)
    assert not tun.coalescing
    packets = [bytes([0x45]) + bytes([i]) * 39 for i in range(3)]
    buffer = bytearray(b"".join(packets))
    records = b"".join(RECORD.pack(40 * i, 40, 0) for i in range(3))
    tun.deliver(memoryview(buffer), records, 3)
    tun.flush()
    assert tun.frames == packets  # no virtio-net header on such a device
    assert tun.stats.tun_writes == 3


def test_clear_forgets_what_was_gathered() -> None:
    """What _internal_error relies on: gathered packets point into a buffer the next batch
    overwrites, so a cleared TUN writes none of them."""
    tun = MemoryTun()
    packets = [tcp_packet(bytes(1380), src=SRC, dst=DST, sport=40000, seq=1 + 1380 * i,
                          flags=ACK) for i in range(2)]
    buffer = bytearray(b"".join(packets))
    records = b"".join(RECORD.pack(1420 * i, 1420, 0) for i in range(2))
    tun.deliver(memoryview(buffer), records, 2)
    tun.clear()
    tun.flush()
    assert tun.frames == [] and tun.stats.tun_writes == 0
    tun.deliver(memoryview(buffer), records, 2)
    tun.flush()
    assert len(tun.frames) == 1 and tun.stats.jumbo_segments == 2


@pytest.mark.parametrize("packet", [
    tcp_packet(bytes(100), src=SRC, dst=DST, sport=40000, flags=ACK),
    tcp_packet(bytes(100), version=6, sport=40000, flags=ACK),
    udp_packet(bytes(64), src=SRC, dst=DST),
    udp_packet(bytes(64), version=6),
], ids=["tcp4", "tcp6", "udp4", "udp6"])
def test_a_lone_packet_is_written_as_the_coalescer_would_frame_it(packet: bytes) -> None:
    """A wakeup of one packet (a ping) skips the coalescer: the same frame, written now."""
    buffer = memoryview(bytearray(b"\0" * 8 + packet))
    record = RECORD.pack(8, len(packet), 0)
    coalescer = receive_coalescer(buffer, udp=True)
    coalescer.add_records(record, 0, 1)
    (expected,) = coalescer.frames()
    tun = MemoryTun()
    tun.deliver(buffer, record, 1)
    assert tun.frames == [expected.header + b"".join(expected.parts)]
    tun.flush()
    assert len(tun.frames) == 1 and tun.stats.tun_writes == 1


def test_a_lone_packet_after_gathered_ones_waits_its_turn() -> None:
    """Order holds: once packets are gathered, a lone one joins them until the flush."""
    packets = [tcp_packet(bytes(1380), src=SRC, dst=DST, sport=40000, seq=1 + 1380 * i,
                          flags=ACK) for i in range(3)]
    buffer = memoryview(bytearray(b"".join(packets)))
    records = b"".join(RECORD.pack(1420 * i, 1420, 0) for i in range(3))
    tun = MemoryTun()
    tun.deliver(buffer, records, 2)
    tun.deliver(buffer, records[2 * RECORD.size:], 1)
    assert tun.frames == []
    tun.flush()
    assert len(tun.frames) == 1 and tun.stats.jumbo_segments == 3
