"""The offload relay: copies packets between two TUN devices in two network namespaces.

In `offload` mode every super-packet read is split into MTU-sized segments and the segments
are coalesced again into jumbo frames on write: the endpoint's data path without the crypto
and the UDP socket, so the offload core can be proven and measured against the real kernel.
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import json
import signal
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import uvloop

from lab import netns
from vpn.core.offload import Coalesced, OffloadError, coalesce, split
from vpn.core.packet.virtio import NO_OFFLOAD
from vpn.core.types import Buffer
from vpn.host import netlink
from vpn.io.tun import TunDevice

MODES = ("offload", "passthrough", "plain")


@dataclass
class DirectionStats:
    """Counters for one direction; the relay's summary is built from these."""

    reads: int = 0
    bytes_read: int = 0
    super_packets: int = 0
    segments_split: int = 0
    frames_written: int = 0
    jumbo_frames: int = 0
    jumbo_segments: int = 0
    drops: Counter[str] = field(default_factory=Counter)

    def summary(self) -> dict:
        out = asdict(self)
        out["drops"] = dict(self.drops)
        out["segments_per_super_packet"] = round(
            self.segments_split / self.super_packets, 2) if self.super_packets else 0.0
        out["segments_per_jumbo_frame"] = round(
            self.jumbo_segments / self.jumbo_frames, 2) if self.jumbo_frames else 0.0
        return out


class Direction:
    """Moves what `src` reads into `dst`, in one of MODES."""

    def __init__(self, src: TunDevice, dst: TunDevice, mode: str) -> None:
        self.src = src
        self.dst = dst
        self.mode = mode
        self.stats = DirectionStats()

    def pump(self) -> None:
        """Reader callback: drain one batch from src and write it to dst."""
        stats = self.stats
        batch = self.src.read_batch()
        if not batch:
            return
        stats.reads += len(batch)
        if self.mode == "plain":
            for _, packet in batch:
                stats.bytes_read += len(packet)
                self.write(NO_OFFLOAD, (packet,))
            return
        if self.mode == "passthrough":
            for header, packet in batch:
                stats.bytes_read += len(packet)
                self.write(header.pack(), (packet,))
            return
        segments: list[Buffer] = []
        for header, packet in batch:
            stats.bytes_read += len(packet)
            try:
                pieces = split(header, packet)
            except OffloadError as err:
                stats.drops[err.reason] += 1
                continue
            if header.gso_type:
                stats.super_packets += 1
                stats.segments_split += len(pieces)
            segments.extend(pieces)
        for frame in coalesce(segments, udp=self.dst.offload.uso):
            self.write_frame(frame)

    def write_frame(self, frame: Coalesced) -> None:
        if self.write(frame.header, frame.parts) and frame.segments > 1:
            self.stats.jumbo_frames += 1
            self.stats.jumbo_segments += frame.segments

    def write(self, header: bytes, parts: Sequence[Buffer]) -> bool:
        try:
            self.dst.write(header, parts)
        except BlockingIOError:
            self.stats.drops["tun_write_full"] += 1
            return False
        except OSError as err:
            code = err.errno
            name = errno.errorcode.get(code, code) if code is not None else None
            self.stats.drops[f"tun_write_{name}"] += 1
            return False
        self.stats.frames_written += 1
        return True


def open_tun(ns: str, name: str, *, mode: str, mtu: int) -> TunDevice:
    """Create the TUN inside namespace `ns`, set its MTU and bring it up."""
    with netns.inside(ns):
        tun = TunDevice.open(name, vnet_hdr=mode != "plain", offload=mode != "plain")
        netlink.set_link(tun.name, mtu=mtu)
    return tun


async def serve(
    a: TunDevice, b: TunDevice, mode: str, direction: type[Direction] = Direction
) -> dict:
    """Relay until SIGINT/SIGTERM; returns the counters of both directions."""
    loop = asyncio.get_running_loop()
    forward, backward = direction(a, b, mode), direction(b, a, mode)
    loop.add_reader(a.fd, forward.pump)
    loop.add_reader(b.fd, backward.pump)
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    print(f"ready {a.name}: offload {a.offload.describe()}; "
          f"{b.name}: offload {b.offload.describe()}", flush=True)
    await stop.wait()
    loop.remove_reader(a.fd)
    loop.remove_reader(b.fd)
    return {"mode": mode, "a_to_b": forward.stats.summary(), "b_to_a": backward.stats.summary()}


def main(argv: Sequence[str] | None = None, direction: type[Direction] = Direction) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m lab.relay",
        description="Relay packets between TUN devices in two network namespaces.",
    )
    parser.add_argument("ns_a", help="network namespace of the first TUN")
    parser.add_argument("ns_b", help="network namespace of the second TUN")
    parser.add_argument("--mode", choices=MODES, default="offload",
                        help="offload: split and coalesce; passthrough: forward super-packets "
                        "unchanged; plain: no virtio-net header, no offload")
    parser.add_argument("--name", default="relay0", help="TUN name in both namespaces")
    parser.add_argument("--mtu", type=int, default=1420)
    args = parser.parse_args(argv)
    try:
        a = open_tun(args.ns_a, args.name, mode=args.mode, mtu=args.mtu)
        b = open_tun(args.ns_b, args.name, mode=args.mode, mtu=args.mtu)
    except (OSError, LookupError) as err:
        print(f"relay: {err}", file=sys.stderr)
        return 1
    with a, b:
        summary = uvloop.run(serve(a, b, args.mode, direction))
    print(json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
