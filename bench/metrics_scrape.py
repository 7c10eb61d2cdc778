"""What one /metrics scrape costs the event loop, at 100, 1,000 and 10,000 peers: the
snapshot (`gather`, the loop's only pause for the data path) and the rendering, each the
best of several runs. `python -m bench.metrics_scrape`."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from functools import partial

from vpn.control.counters import Counters, gather
from vpn.control.metrics import render
from vpn.core.wireguard import Device


def device_with(peers: int) -> Device:
    device = Device(os.urandom(32))
    device.max_peers = max(device.max_peers, peers)
    for i in range(peers):
        peer = device.add_peer(Device(os.urandom(32)).public_key or b"",
                               endpoint=(f"198.18.{i >> 8 & 255}.{i & 255}", 51820))
        peer.rx_bytes, peer.tx_bytes = i * 1000, i * 2000
        device.allowed_ips.insert(f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}/32", peer)
        device.allowed_ips.insert(f"fd00::{i:x}/128", peer)
    return device


def best_ms(work: Callable[[], object], runs: int = 20) -> float:
    best = float("inf")
    for _ in range(runs):
        start = time.perf_counter()
        work()
        best = min(best, time.perf_counter() - start)
    return best * 1000


def main() -> None:
    stats = {"tun_reads": 1, "drops": {"replay": 1}}
    for peers in (100, 1000, 10000):
        device = device_with(peers)

        def snapshot(device: Device = device) -> Counters:
            return gather("wg0", device, mtu=1420, tun_offloads="", fast_path="native",
                          udp_gso=True, udp_gro=True, datapath=stats, udp={},
                          handshakes_completed=0)

        taken = snapshot()
        body = render(taken)
        print(f"{peers:6d} peers: snapshot {best_ms(snapshot):7.2f} ms, "
              f"render {best_ms(partial(render, taken)):7.2f} ms, "
              f"{len(body) / 1024:7.0f} KiB")


if __name__ == "__main__":
    main()
