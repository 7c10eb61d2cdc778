"""The send walk on worker threads (vpn/io/sendworkers.py) through a real DataPath over the
in-memory TUN and socket: whatever order the workers finish in, the datagrams leave as the
inline path sends them, byte for byte and in the order of the reads; shutdown with work in
flight loses nothing; a failing worker is counted and leaves no stale state."""

from __future__ import annotations

import os
import random
import threading
import time
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lab.doubles import (
    DST,
    ENDPOINT_A,
    MTU,
    NOW,
    SRC,
    MemoryTun,
    MemoryUdp,
    handshaken_pair,
    tun_frame,
)
from lab.packets import tcp_packet, tcp_super_packet
from vpn.core.packet.errors import OffloadError
from vpn.core.packet.virtio import NO_OFFLOAD
from vpn.core.wireguard import Device
from vpn.io import receiveworkers, sendworkers, tun
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
        path.on_tun_readable()
        while path.tun.reads:  # type: ignore[attr-defined]
            time.sleep(0.001)  # the wakeup found no read slots free: until some come back
            path.on_tun_readable()


def all_slots_back(path: DataPath) -> bool:
    workers = path.send_workers
    assert workers is not None
    return workers.slots.free == workers.slots.count


def delay_sealing(monkeypatch: pytest.MonkeyPatch, seed: int, most: float = 0.002) -> None:
    """The workers' sealing delayed at random (up to `most` seconds a job): jobs finish
    in any order."""
    rng = random.Random(seed)
    seal_job = sendworkers.seal_job

    def late(*args: object) -> object:
        time.sleep(rng.random() * most)
        return seal_job(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(sendworkers, "seal_job", late)


@pytest.fixture
def jitter(monkeypatch: pytest.MonkeyPatch) -> None:
    delay_sealing(monkeypatch, 20)


@settings(max_examples=25, deadline=None)
@given(reads=READS, wakeup=st.integers(1, 8), seed=st.integers(0, 2**32 - 1),
       job_bytes=st.sampled_from([sendworkers.JOB_BYTES, 20_000, 3_000]))
def test_workers_send_what_the_inline_path_sends_in_read_order(
        reads: list[tuple[str, int, int]], wakeup: int, seed: int, job_bytes: int) -> None:
    """Whatever the jobs' size (a job per read, or a super-packet sealed across several of
    a worker's buffers) and the order the workers finish in."""
    inline, _ = handshaken_pair(SEED)
    tun_frames = frames(reads)
    send(inline, tun_frames, wakeup)
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setattr(sendworkers, "JOB_BYTES", job_bytes)
        threaded, _ = handshaken_pair(SEED, threads=3)
        delay_sealing(monkeypatch, seed, 0.0005)
        try:
            send(threaded, tun_frames, wakeup)
        finally:
            threaded.close()
    expected = datagrams(inline)
    assert expected and datagrams(threaded) == expected
    assert threaded.stats.summary()["datagrams_sent"] == len(expected)
    assert threaded.stats.all_drops() == inline.stats.all_drops()
    assert threaded.stats.summary()["segments_split"] == inline.stats.summary()["segments_split"]
    assert all_slots_back(threaded)


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


def test_a_sealed_job_keeps_its_buffers_while_it_waits_for_its_turn(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The first job's seal held back: the other worker seals the next ones, which wait
    (parked) for the first's send, and goes on sealing; none of their messages may be
    overwritten by the seals after them before they are sent."""
    inline, _ = handshaken_pair(SEED)
    reads = [("super", 20_000, 1300)] * 4
    send(inline, frames(reads), 4)
    monkeypatch.setattr(sendworkers, "JOB_BYTES", 25_000)  # a job per read
    seal_job = sendworkers.seal_job
    sealed = threading.Semaphore(0)
    first = threading.Event()

    def held(*args: object) -> object:
        if not first.is_set():
            first.set()
            for _ in range(3):  # the other three jobs, sealed meanwhile
                assert sealed.acquire(timeout=30)
            return seal_job(*args)  # type: ignore[arg-type]
        result = seal_job(*args)  # type: ignore[arg-type]
        sealed.release()
        return result

    monkeypatch.setattr(sendworkers, "seal_job", held)
    threaded, _ = handshaken_pair(SEED, threads=2)
    try:
        send(threaded, frames(reads), 4)
    finally:
        threaded.close()
    assert datagrams(threaded) == datagrams(inline)
    assert all_slots_back(threaded)


@pytest.mark.usefixtures("jitter")
def test_each_worker_seals_into_buffers_of_its_own(monkeypatch: pytest.MonkeyPatch) -> None:
    """A job's seal buffers go back to the worker that sealed it, whichever worker sent it:
    no buffer one core wrote is the next job's on another (its lines in the first's cache)."""
    inline, _ = handshaken_pair(SEED)
    reads = [("super", 20_000, 1300)] * 24
    send(inline, frames(reads), 8)
    monkeypatch.setattr(sendworkers, "JOB_BYTES", 25_000)  # a job per read
    seal_job = sendworkers.seal_job
    used: dict[int, set[int]] = {}  # thread -> the seal buffers it sealed into

    def recorded(kp: object, job: object, buffer: Callable[[int], memoryview],
                 *args: object) -> object:
        used.setdefault(threading.get_ident(), set()).add(id(buffer(0)))
        return seal_job(kp, job, buffer, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(sendworkers, "seal_job", recorded)
    threaded, _ = handshaken_pair(SEED, threads=2)
    try:
        send(threaded, frames(reads), 8)
    finally:
        threaded.close()
    assert datagrams(threaded) == datagrams(inline)
    assert sum(len(buffers) for buffers in used.values()) == len(set().union(*used.values()))
    assert all_slots_back(threaded)


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
    assert all_slots_back(threaded)


def test_a_failing_worker_is_counted_and_the_next_jobs_go_on(
        monkeypatch: pytest.MonkeyPatch) -> None:
    threaded, _ = handshaken_pair(SEED, threads=2)
    seal_job = sendworkers.seal_job
    calls = 0

    def fails_once(*args: object) -> object:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("injected")
        return seal_job(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(sendworkers, "seal_job", fails_once)
    try:
        send(threaded, frames([("plain", 100, 0)]), 1)
        send(threaded, frames([("plain", 200, 0)]), 1)
    finally:
        threaded.close()
    assert threaded.stats.all_drops()["internal_error"] == 1
    assert len(datagrams(threaded)) == 1  # the second job went out
    assert all_slots_back(threaded)


def test_the_buffers_in_flight_grow_with_the_workers() -> None:
    """Each worker gets its own depth of queued work (up to MAX_DEPTH_THREADS workers), so
    that the queue does not run dry while the loop thread waits for a core."""
    assert [sendworkers.read_batches(n) for n in (1, 2, 4, 64)] == [6, 12, 24, 24]
    assert [receiveworkers.receive_buffers(n) for n in (1, 2, 4, 64)] == [6, 10, 18, 18]
    threaded, _ = handshaken_pair(SEED, threads=2)
    try:
        assert threaded.send_workers is not None and threaded.receive_workers is not None
        assert threaded.send_workers.slots.count == 12
        assert threaded.receive_workers.buffers.count == 10
    finally:
        threaded.close()


def test_no_free_buffer_pauses_the_tun_until_one_returns(
        monkeypatch: pytest.MonkeyPatch) -> None:
    threaded, _ = handshaken_pair(SEED, threads=2)
    release = threading.Event()
    seal_job = sendworkers.seal_job

    def held(*args: object) -> object:
        release.wait()
        return seal_job(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(sendworkers, "seal_job", held)
    workers = threaded.send_workers
    assert workers is not None
    paused, resumed = threading.Event(), threading.Event()
    workers.slots.pause, workers.slots.resume = paused.set, resumed.set
    workers.slots._call_soon_threadsafe = lambda callback: callback()
    tun = threaded.tun
    count = (workers.slots.count + 1) * tun.batch  # more than every batch of slots holds
    reads = frames([("super", 60_000, 1380)] * count)
    try:
        tun.reads = list(reads)  # type: ignore[attr-defined]
        while not paused.is_set():
            threaded.on_tun_readable()
        assert tun.reads  # type: ignore[attr-defined]  # the rest waits in the TUN
        release.set()
        assert resumed.wait(10)
        while tun.reads:  # type: ignore[attr-defined]
            threaded.on_tun_readable()
            if tun.reads:  # type: ignore[attr-defined]
                time.sleep(0.001)  # paused again: until a batch of slots comes back
    finally:
        release.set()
        threaded.close()
    assert threaded.stats.send_backpressure >= 1
    assert threaded.stats.summary()["datagrams_sent"] == len(datagrams(threaded)) == count * 44
    assert all_slots_back(threaded)


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


def test_a_split_that_fails_on_a_worker_is_counted_by_its_reason_and_gives_its_slots_back(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The header passed the loop's check, the split on the worker refuses it anyway: the
    job's one split refuses it (before writing a byte), the walk takes the job over and
    drops the read by its reason, its counters left unused (a gap the receiver's window
    allows), the reads around it sent, every slot back."""
    threaded, receiver = handshaken_pair(SEED, threads=2)
    split_into_fields = tun.split_into_fields
    calls = 0

    def refuses(*args: object) -> list[tuple[int, int, int]]:
        raise OffloadError("ip_fragment", "injected")

    def refuses_the_second(*args: object) -> tuple[int, int, int]:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise OffloadError("ip_fragment", "injected")
        return split_into_fields(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(tun, "split_into_fields", refuses_the_second)
    monkeypatch.setattr(tun, "split_runs", refuses)
    try:
        send(threaded, frames([("super", 5000, 1300)] * 3), 3)
    finally:
        threaded.close()
    assert threaded.stats.all_drops() == {"ip_fragment": 1}
    sent = datagrams(threaded)
    assert len(sent) == 8 == threaded.stats.summary()["datagrams_sent"]
    counters = [int.from_bytes(d[8:16], "little") for d in sent]
    # The job's counters are handed out in order: the failed read's four are its last ones.
    assert counters == list(range(1, 9))
    assert all_slots_back(threaded)
    receiver.udp.incoming = [  # type: ignore[attr-defined]
        (memoryview(d), len(d), ENDPOINT_A) for d in sent]
    receiver.on_udp_readable()
    assert not receiver.stats.all_drops()
    assert receiver.stats.datagrams_received == 8
