"""The protocol policy the data path leaves to the core, through a real DataPath over the
in-memory TUN and socket and a fake clock: what puts the endpoint under load (cookies
demanded), and what a spoofed transport message for an unknown session may do."""

from __future__ import annotations

import os

from lab.doubles import ENDPOINT_A, MTU, MemoryTun, MemoryUdp, tun_frame
from tests.unit.core.wireguard.helpers import handshake_shaped, ipv4_packet, mac1_valid
from vpn.core.packet.virtio import NO_OFFLOAD, VirtioNetHeader
from vpn.core.wireguard import Device, HandshakeJob, Peer
from vpn.core.wireguard.constants import (
    COOKIE_REPLY_SIZE,
    HANDSHAKE_QUEUE_SIZE,
    MAX_TIMER_HANDSHAKES,
    MESSAGE_COOKIE_REPLY,
    MESSAGE_INITIATION,
    MESSAGE_RESPONSE,
    REKEY_TIMEOUT,
    UNDER_LOAD_FRACTION,
)
from vpn.io.datapath import DataPath

TICK = 0.1  # as the endpoint's timer


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def endpoint() -> tuple[DataPath, Clock, Peer, Device]:
    """Our data path with one peer at ENDPOINT_A (198.18.10.1), and that peer's device."""
    clock = Clock()
    device = Device(os.urandom(32), jitter=lambda: 0.0)
    remote = Device(os.urandom(32), jitter=lambda: 0.0)
    peer = device.add_peer(remote.public_key, endpoint=ENDPOINT_A)
    device.allowed_ips.insert("198.18.10.1/32", peer)
    remote.add_peer(device.public_key, endpoint=("198.18.0.2", 51820))
    path = DataPath(device, MemoryTun(), MemoryUdp(), mtu=MTU, clock=clock)  # type: ignore[arg-type]
    return path, clock, peer, remote


def receive(path: DataPath, datagrams: list[bytes], sources: list[tuple[str, int]]) -> None:
    """One wakeup that reads `datagrams`, each a lone datagram from its source."""
    path.udp.incoming = [(memoryview(d), len(d), s)  # type: ignore[attr-defined]
                         for d, s in zip(datagrams, sources, strict=True)]
    path.on_udp_readable()


def sent_types(path: DataPath) -> list[int]:
    return [data[0] for data, _ in path.udp.sent]  # type: ignore[attr-defined]


def strangers(n: int) -> list[tuple[str, int]]:
    return [(f"198.18.5.{2 + i % 200}", 1024 + i) for i in range(n)]


def test_handshake_sized_garbage_does_not_demand_cookies_of_a_peer() -> None:
    """Before: 65 datagrams a second of handshake size put every peer through the cookie
    round trip. Now about a thousand a second for three seconds change nothing."""
    path, clock, _, remote = endpoint()
    for wakeup in range(30):
        clock.now = wakeup * TICK
        receive(path, handshake_shaped(99), strangers(99))
    assert path.stats.all_drops()["bad_mac1"] == 30 * 66  # initiations and responses
    assert path.stats.all_drops()["unknown_receiver_index"] == 30 * 33  # cookie replies
    (init,) = next(iter(remote.peers.values())).initiate_handshake(clock.now)
    receive(path, [init], [ENDPOINT_A])
    assert sent_types(path) == [MESSAGE_RESPONSE]
    assert path.device.drops["cookie_sent"] == 0


def test_a_handshake_queue_an_eighth_full_demands_cookies() -> None:
    path, clock, _, remote = endpoint()
    queued: list[HandshakeJob] = []
    path.device.defer_handshake = queued.append  # a worker that has not caught up
    clock.now = 1.0
    for _ in range(3):
        flood = [mac1_valid(1, path.device.public_key) for _ in range(64)]
        receive(path, flood, strangers(64))
    # Queued until the queue held an eighth of its size, then cookies.
    load_at = HANDSHAKE_QUEUE_SIZE // UNDER_LOAD_FRACTION
    assert len(queued) == load_at
    assert sent_types(path) == [MESSAGE_COOKIE_REPLY] * (3 * 64 - load_at)
    clock.now = 1.5
    (init,) = next(iter(remote.peers.values())).initiate_handshake(clock.now)
    receive(path, [init], [ENDPOINT_A])
    data, size = path.udp.sent[-1]  # type: ignore[attr-defined]
    assert data[0] == MESSAGE_COOKIE_REPLY and size == COOKIE_REPLY_SIZE


def test_spoofed_unknown_index_every_second_does_not_keep_a_dead_peer_alive() -> None:
    """A packet for the peer with no session is staged and a handshake starts; the peer is
    dead. A 32-byte transport message with an unknown receiver index comes from the peer's
    endpoint every second. Before: each one restarted the count of attempts, and the
    endpoint never gave up. Now it gives up after the 20th timeout, as without them."""
    path, clock, peer, _ = endpoint()
    packet = ipv4_packet("198.18.10.2", "198.18.10.1")
    path.tun.reads.append(tun_frame(VirtioNetHeader.unpack(NO_OFFLOAD), packet))  # type: ignore[attr-defined]
    path.on_tun_readable()
    assert list(peer.staged) == [packet]
    gave_up = None
    for tick in range(1, 1500):
        clock.now = tick * TICK
        if tick % 10 == 0:
            spoofed = b"\x04\x00\x00\x00" + os.urandom(28)
            receive(path, [spoofed], [ENDPOINT_A])
        path.on_tick()
        if "give_up" in peer.events:
            gave_up = clock.now
            break
    assert gave_up is not None, peer.timers
    assert gave_up <= (MAX_TIMER_HANDSHAKES + 2) * (REKEY_TIMEOUT + TICK)
    assert not peer.staged
    assert path.stats.all_drops()["unknown_receiver_index"] == int(gave_up)
    # The first initiation and the timer's retries, no more: none was the spoofer's doing.
    assert sent_types(path) == [MESSAGE_INITIATION] * (MAX_TIMER_HANDSHAKES + 2)
    assert path.stats.lost_session_handshakes == 0


def test_a_restarted_endpoint_rehandshakes_on_data_for_a_lost_session() -> None:
    path, clock, _, _ = endpoint()
    clock.now = 3.0
    receive(path, [b"\x04\x00\x00\x00" + os.urandom(60)], [ENDPOINT_A])
    assert sent_types(path) == [MESSAGE_INITIATION]
    assert path.stats.lost_session_handshakes == 1
