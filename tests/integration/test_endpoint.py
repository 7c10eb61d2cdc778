"""The endpoint end to end: `vpn up` against itself and against Debian's wireguard-go.

Real kernel, real TUN offloads, real UDP GSO/GRO, iperf3 and a sha256-checked transfer in
both directions, with each side taking the initiator's role.
"""

from __future__ import annotations

import shutil

import pytest

from tests.integration.relay_lab import checked_transfer
from tests.integration.wg_lab import build, final_counters
from tests.netns import Lab, iperf3_gbps

pytestmark = pytest.mark.netns


def _need_wireguard_go(kind: str) -> None:
    if kind == "wireguard-go" and shutil.which("wireguard-go") is None:
        pytest.fail("wireguard-go is not installed (scripts/bootstrap.sh installs it)")


@pytest.mark.parametrize("peer_kind", ["ours", "wireguard-go"])
@pytest.mark.parametrize("initiator", ["a", "b"])
def test_traffic_both_ways(lab: Lab, peer_kind: str, initiator: str) -> None:
    _need_wireguard_go(peer_kind)
    pair = build(lab)
    pair.start_ours(pair.a)
    if peer_kind == "ours":
        pair.start_ours(pair.b)
    else:
        pair.start_wireguard_go(pair.b)
    first, second = (pair.a, pair.b) if initiator == "a" else (pair.b, pair.a)
    # The first packet starts the handshake from the initiator's side.
    first.host.run("ping", "-c", "3", "-i", "0.2", "-W", "5", second.tunnel4)
    first.host.run("ping", "-c", "2", "-i", "0.2", "-W", "2", second.tunnel6)
    forward = iperf3_gbps(pair.a.host.iperf3(pair.b.host, pair.b.tunnel4, seconds=2))
    backward = iperf3_gbps(pair.a.host.iperf3(pair.b.host, pair.b.tunnel4, seconds=2,
                                              reverse=True))
    sent, received = checked_transfer(pair.a.host, pair.b.host, pair.b.tunnel4, 32 << 20)
    assert sent == received
    sent, received = checked_transfer(pair.b.host, pair.a.host, pair.a.tunnel6, 32 << 20)
    assert sent == received
    output = pair.stop(pair.a)
    counters = final_counters(output)
    assert forward > 0.05 and backward > 0.05
    assert "handshake completed" in output
    # The offload picture on our side: super-packets from the TUN, GSO sends, jumbo writes.
    assert counters["super_packets"] > 0, counters
    assert counters["jumbo_frames"] > 0, counters
    assert counters["datagrams_sent"] > counters["send_batches"], counters


def test_offload_off_still_carries_traffic(lab: Lab) -> None:
    pair = build(lab)
    pair.start_ours(pair.a, offload=False)
    pair.start_ours(pair.b)
    sent, received = checked_transfer(pair.a.host, pair.b.host, pair.b.tunnel4, 8 << 20)
    assert sent == received
    counters = final_counters(pair.stop(pair.a))
    assert counters["super_packets"] == 0 and counters["jumbo_frames"] == 0


def test_shutdown_removes_the_interface(lab: Lab) -> None:
    pair = build(lab)
    pair.start_ours(pair.a)
    assert pair.a.ifname in pair.a.host.run("ip", "link").stdout
    proc = pair.a.process
    assert proc is not None
    pair.stop(pair.a)
    assert proc.popen.returncode == 0
    assert pair.a.ifname not in pair.a.host.run("ip", "link").stdout
    assert "198.18.10.0/24" not in pair.a.host.run("ip", "route").stdout
