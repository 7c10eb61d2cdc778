"""The send walk on worker threads (vpn/io/sendworkers.py) through a real DataPath over the
in-memory TUN and socket: whatever order the workers finish in, the datagrams leave as the
inline path sends them, byte for byte and in the order of the reads; shutdown with work in
flight loses nothing; a failing worker is counted and leaves no stale state."""

from __future__ import annotations

import os
import random
import threading
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lab.doubles import DST, MTU, NOW, SRC, MemoryTun, MemoryUdp, handshaken_pair, tun_frame
from lab.packets import tcp_packet, tcp_super_packet
from vpn.core.packet.virtio import NO_OFFLOAD
from vpn.core.wireguard import Device
from vpn.io import sendworkers
from vpn.io.datapath import DataPath

SEED = b"workers"
# A read: ("super", payload bytes, mss) or ("plain", payload bytes).
READS = st.lists(
    st.one_of(
        st.tuples(st.just("super"), st.integers(1, 60_000), st.sampled_from([500, 1300, 1380])),
        st.tuples(st.just("plain"), st.integers(0, 1380), st.just(0)),
    ),
    min_size=1, max_size=24)


def frames(reads: list[tuple[str, int, int]]) -> list[bytes]:
    out = []
    for i, (kind, size, mss) in enumerate(reads):
        payload = bytes([i % 251]) * size
        if kind == "super":
            header, packet = tcp_super_packet(payload, mss, src=SRC, dst=DST, seq=i << 20)
            out.append(tun_frame(header, packet))
        else:
            out.append(NO_OFFLOAD + tcp_packet(payload, src=SRC, dst=DST, seq=i << 20))
    return out


def datagrams(path: DataPath) -> list[bytes]:
    """Every datagram the path sent, each GSO send cut at its segment size, in order."""
    out = []
    for data, size in path.udp.sent:  # type: ignore[attr-defined]
        out += [data[i:i + size] for i in range(0, len(data), size)]
    return out


def send(path: DataPath, tun_frames: list[bytes], wakeup: int = 5) -> None:
    """The frames read `wakeup` at a time, as the TUN would hand them over."""
    for i in range(0, len(tun_frames), wakeup):
        path.tun.reads = list(tun_frames[i:i + wakeup])  # type: ignore[attr-defined]
        while path.tun.reads:  # type: ignore[attr-defined]
            path.on_tun_readable()  # a wakeup under backpressure reads nothing: again
            if path.send_workers is not None and not path.send_workers.ready():
                time.sleep(0.001)


def delay_sealing(monkeypatch: pytest.MonkeyPatch, seed: int, most: float = 0.002) -> None:
    """The workers' sealing delayed at random (up to `most` seconds a chunk): jobs finish
    in any order."""
    rng = random.Random(seed)
    seal_chunk = sendworkers.seal_chunk

    def late(*args: object) -> None:
        time.sleep(rng.random() * most)
        seal_chunk(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(sendworkers, "seal_chunk", late)


@pytest.fixture
def jitter(monkeypatch: pytest.MonkeyPatch) -> None:
    delay_sealing(monkeypatch, 20)


@settings(max_examples=25, deadline=None)
@given(reads=READS, wakeup=st.integers(1, 8), seed=st.integers(0, 2**32 - 1))
def test_workers_send_what_the_inline_path_sends_in_read_order(
        reads: list[tuple[str, int, int]], wakeup: int, seed: int) -> None:
    inline, _ = handshaken_pair(SEED)
    threaded, _ = handshaken_pair(SEED, threads=3)
    tun_frames = frames(reads)
    send(inline, tun_frames, wakeup)
    with pytest.MonkeyPatch.context() as monkeypatch:
        delay_sealing(monkeypatch, seed, 0.0005)
        try:
            send(threaded, tun_frames, wakeup)
        finally:
            threaded.close()
    expected = datagrams(inline)
    assert expected and datagrams(threaded) == expected
    assert threaded.stats.summary()["datagrams_sent"] == len(expected)
    assert threaded.stats.all_drops() == inline.stats.all_drops()


@pytest.mark.usefixtures("jitter")
def test_order_holds_when_workers_finish_out_of_order() -> None:
    inline, _ = handshaken_pair(SEED)
    threaded, _ = handshaken_pair(SEED, threads=4)
    reads = [("super", 30_000, 1300), ("plain", 100, 0)] * 30
    try:
        send(inline, frames(reads), 3)
        send(threaded, frames(reads), 3)
    finally:
        threaded.close()
    assert datagrams(threaded) == datagrams(inline)


@pytest.mark.usefixtures("jitter")
def test_close_with_work_in_flight_sends_everything_and_ends_the_threads() -> None:
    before = set(threading.enumerate())
    inline, _ = handshaken_pair(SEED)
    threaded, _ = handshaken_pair(SEED, threads=2)
    reads = [("super", 60_000, 1380)] * 40
    send(inline, frames(reads), 8)
    send(threaded, frames(reads), 8)
    threaded.close()  # the jobs are still sealing: close finishes them first
    assert datagrams(threaded) == datagrams(inline)
    assert set(threading.enumerate()) <= before


def test_a_failing_worker_is_counted_and_the_next_jobs_go_on(
        monkeypatch: pytest.MonkeyPatch) -> None:
    threaded, _ = handshaken_pair(SEED, threads=2)
    seal_chunk = sendworkers.seal_chunk
    calls = 0

    def fails_once(*args: object) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("injected")
        seal_chunk(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(sendworkers, "seal_chunk", fails_once)
    try:
        send(threaded, frames([("plain", 100, 0)]), 1)
        send(threaded, frames([("plain", 200, 0)]), 1)
    finally:
        threaded.close()
    assert threaded.stats.all_drops()["internal_error"] == 1
    assert len(datagrams(threaded)) == 1  # the second job went out
    workers = threaded.send_workers
    assert workers is not None
    assert len(workers._free) == sendworkers.POOL_BUFFERS  # every buffer came back


def test_no_free_buffer_pauses_the_tun_until_one_returns(
        monkeypatch: pytest.MonkeyPatch) -> None:
    threaded, _ = handshaken_pair(SEED, threads=2)
    release = threading.Event()
    seal_chunk = sendworkers.seal_chunk

    def held(*args: object) -> None:
        release.wait()
        seal_chunk(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(sendworkers, "seal_chunk", held)
    workers = threaded.send_workers
    assert workers is not None
    paused, resumed = threading.Event(), threading.Event()
    workers.pause, workers.resume = paused.set, resumed.set
    workers._call_soon_threadsafe = lambda callback: callback()
    tun = threaded.tun
    reads = frames([("super", 60_000, 1380)] * 200)
    try:
        tun.reads = list(reads)  # type: ignore[attr-defined]
        while not paused.is_set():
            threaded.on_tun_readable()
        assert tun.reads  # type: ignore[attr-defined]  # the rest waits in the TUN
        release.set()
        assert resumed.wait(10)
        while tun.reads:  # type: ignore[attr-defined]
            threaded.on_tun_readable()
    finally:
        release.set()
        threaded.close()
    assert threaded.stats.send_backpressure >= 1
    assert threaded.stats.summary()["datagrams_sent"] == len(datagrams(threaded)) == 200 * 44


def hub(peers: int, threads: int) -> tuple[DataPath, list[bytes]]:
    """A data path whose device completed a handshake with each of `peers` peers (peer i
    at 198.18.20.i, endpoint port 40000 + i); the peers' tunnel addresses."""
    device = Device(os.urandom(32))
    path = DataPath(device, MemoryTun(), MemoryUdp(), mtu=MTU, clock=lambda: NOW,
                    threads=threads)
    addresses = []
    for i in range(1, peers + 1):
        remote = Device(os.urandom(32))
        assert remote.public_key is not None and device.public_key is not None
        peer = device.add_peer(remote.public_key, endpoint=("198.18.0.9", 40000 + i))
        device.allowed_ips.insert(f"198.18.20.{i}/32", peer)
        theirs = remote.add_peer(device.public_key, endpoint=("198.18.0.1", 51820))
        (init,) = peer.initiate_handshake(NOW)
        response = remote.handle_handshake_message(init, ("198.18.0.1", 51820), NOW).replies[0]
        device.handle_handshake_message(response, ("198.18.0.9", 40000 + i), NOW)
        assert theirs is not None
        addresses.append(bytes([198, 18, 20, i]))
    return path, addresses


@pytest.mark.usefixtures("jitter")
def test_each_peers_datagrams_leave_in_the_order_of_its_reads() -> None:
    """Several peers' reads interleaved, workers finishing in any order: per receiver
    index, the counters leave 1, 2, 3, ... (reserved in read order, so in read order)."""
    path, addresses = hub(3, threads=3)
    rng = random.Random(7)
    tun_frames = []
    for i in range(60):
        dst = rng.choice(addresses)
        if rng.random() < 0.5:
            header, packet = tcp_super_packet(bytes(rng.randrange(1, 30_000)), 1300, src=SRC,
                                              dst=dst, seq=i)
            tun_frames.append(tun_frame(header, packet))
        else:
            tun_frames.append(NO_OFFLOAD + tcp_packet(bytes(100), src=SRC, dst=dst, seq=i))
    try:
        send(path, tun_frames, 7)
    finally:
        path.close()
    counters: dict[bytes, list[int]] = {}
    for datagram in datagrams(path):
        counters.setdefault(datagram[4:8], []).append(
            int.from_bytes(datagram[8:16], "little"))
    assert len(counters) == 3
    for sent in counters.values():  # from 1: the handshake's keepalive took 0
        assert sent == list(range(1, len(sent) + 1))
    assert sum(map(len, counters.values())) == path.stats.summary()["datagrams_sent"]
