"""In-memory stand-ins for the TUN device and the UDP socket around a real `DataPath`, and a
pair of data paths whose devices completed a handshake: for the receive path's equivalence
test and for `bench/pipeline.py`. Only the system calls are replaced: every line of the
data path, and of the devices' offload (the TUN's split, the socket's GSO runs), runs. What
the kernel does with the frames is the integration tests' business."""

from __future__ import annotations

import hashlib
import os
import socket
import sys
from collections.abc import Callable, Sequence

from vpn.core.packet.virtio import VirtioNetHeader
from vpn.core.types import Buffer
from vpn.core.wireguard import Device
from vpn.io.datapath import DataPath
from vpn.io.receivebuffers import ReceiveBuffer
from vpn.io.tun import OFFLOAD_LADDER, OffloadResult, TunDevice
from vpn.io.udp import DatagramScreen, UdpSocket

MTU = 1420
SRC, DST = bytes([198, 18, 10, 1]), bytes([198, 18, 10, 2])
ENDPOINT_A, ENDPOINT_B = ("198.18.0.1", 51820), ("198.18.0.2", 51820)
NOW = 1.0


class MemoryTun(TunDevice):
    """A TunDevice whose system calls are replaced: reads come from `reads` (whole frames,
    the virtio-net header first, with IFF_VNET_HDR: `tun_frame` makes one), written frames
    are kept (or not). The device's own code (the header, the split, GRO on write, the
    counted writes, the EINVAL fallback) runs as on a real TUN."""

    def __init__(self, *, vnet_hdr: bool = True) -> None:
        every = OFFLOAD_LADDER[0] if vnet_hdr else 0
        super().__init__(-1, "memory", vnet_hdr=vnet_hdr, offload=OffloadResult(every, every),
                         batch=64)
        self.reads: list[Buffer] = []
        self.frames: list[bytes] = []
        self.keep = True

    def _frames(self, slots: Sequence[memoryview]) -> list[memoryview]:
        taken = self.reads[:len(slots)]
        del self.reads[:len(slots)]
        return [memoryview(read) for read in taken]

    def write(self, header: bytes, parts: Sequence[Buffer]) -> None:
        if self.keep:  # as the device: the virtio-net header only with IFF_VNET_HDR
            self.frames.append(b"".join((header, *parts) if self.vnet_hdr else parts))


def tun_frame(header: VirtioNetHeader, packet: Buffer) -> bytes:
    """What a TUN read with IFF_VNET_HDR returns: the header, then the packet."""
    return header.pack() + bytes(packet)


class MemoryUdp(UdpSocket):
    """A UdpSocket whose system calls are replaced: sends kept as (datagrams, segment size),
    as a GSO send would hand them to the receiver's GRO; receives taken from `incoming`. The
    socket's own code (the GSO runs, chunks and fallbacks) runs as on a real one."""

    screens = False

    def __init__(self) -> None:
        # A real socket, never bound, for what UdpSocket asks of one at start.
        super().__init__(socket.socket(socket.AF_INET6, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC),
                         gso=True, gro=True)
        self.sent: list[tuple[bytes, int]] = []
        self.incoming: list[tuple[memoryview, int, tuple[str, int]]] = []

    def _sendmsg(self, data: memoryview, cmsg: list[tuple[int, int, bytes]],
                 addr: tuple[str, int]) -> None:
        self.sent.append((bytes(data), int.from_bytes(cmsg[0][2], sys.byteorder)))

    def _sendto(self, data: Buffer, addr: tuple[str, int]) -> None:
        self.sent.append((bytes(data), len(data)))

    def receive_batch(self, into: ReceiveBuffer | None = None
                      ) -> list[tuple[memoryview, int, tuple[str, int]]]:
        """What is `incoming`, as it is (no copy: the benchmark's loop thread would pay for
        one the kernel makes); with `into`, at most as many receives as it has slots."""
        if into is None:
            incoming, self.incoming = self.incoming, []
        else:
            most = len(into.slots)
            incoming, self.incoming = self.incoming[:most], self.incoming[most:]
        self.stats.receives += len(incoming)
        return incoming


class ScreeningUdp(MemoryUdp):
    """MemoryUdp with the native receive's screen (the Screen's `screen`, the same code
    vpn/io/_udp.c's `receive` runs on what recvmmsg got) applied to each incoming receive."""

    screens = True

    def receive_screened(self, screen: DatagramScreen, into: ReceiveBuffer | None = None
                         ) -> tuple[
            list[tuple[memoryview, int, tuple[str, int]]], tuple[int, ...] | None,
            list[tuple[str, int]]]:
        passed: list[tuple[memoryview, int, tuple[str, int]]] = []
        lost: list[tuple[str, int]] = []
        totals: list[int] = []
        for data, size, source in self.receive_batch(into):
            runs, counts, unknown = screen.screen(data, size)
            for start, length in runs:
                passed.append((data[start:start + length], min(size, length) or length,
                               source))
            if counts:
                totals = [t + n for t, n in zip(totals or [0] * len(counts), counts,
                                                 strict=True)]
            if unknown and (not lost or lost[-1] != source):
                lost.append(source)
        return passed, tuple(totals) if any(totals) else None, lost


def _deterministic(seed: bytes) -> Callable[[int], bytes]:
    """Random bytes (ephemeral keys too) from a seed, so two pairs built alike are alike."""
    counter = [0]

    def random_bytes(n: int) -> bytes:
        counter[0] += 1
        out = b""
        while len(out) < n:
            out += hashlib.sha256(seed + counter[0].to_bytes(8, "little") + out).digest()
        return out[:n]

    return random_bytes


def handshaken_pair(seed: bytes | None = None, *, mtu: int = MTU, threads: int = 0,
                    b_threads: int = 0) -> tuple[DataPath, DataPath]:
    """Data paths a (198.18.10.1) and b (198.18.10.2) whose devices completed a handshake,
    a as the initiator, with tunnel MTU `mtu` (a on `threads` workers, b on `b_threads`). With a
    seed, everything is derived from it: equal seeds give equal pairs, down to the session
    keys."""
    paths = []
    devices = []
    for side in (b"a", b"b"):
        if seed is None:
            devices.append(Device(os.urandom(32)))
            continue
        random_bytes = _deterministic(seed + side)
        devices.append(Device(random_bytes(32), random_bytes=random_bytes,
                              wall_clock=lambda: 1_700_000_000.0, jitter=lambda: 0.5))
    for me, other, theirs, endpoint in ((0, 1, DST, ENDPOINT_B), (1, 0, SRC, ENDPOINT_A)):
        public = devices[other].public_key
        assert public is not None  # made with a key above
        peer = devices[me].add_peer(public, endpoint=endpoint)
        devices[me].allowed_ips.insert(f"{'.'.join(map(str, theirs))}/32", peer)
        paths.append(DataPath(devices[me], MemoryTun(), MemoryUdp(), mtu=mtu,
                              clock=lambda: NOW, threads=b_threads if me else threads))
    a, b = paths
    initiator = next(iter(a.device.peers.values()))
    (init,) = initiator.initiate_handshake(NOW)
    response = b.device.handle_handshake_message(init, ENDPOINT_A, NOW).replies[0]
    a.device.handle_handshake_message(response, ENDPOINT_B, NOW)
    return a, b
