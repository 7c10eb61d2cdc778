"""The receive walk on worker threads (vpn/io/receiveworkers.py) through a real DataPath over
the in-memory TUN and socket: whatever order the workers finish in, the TUN gets what the
inline walk delivers, each peer's packets in order, with the same counters and peer state;
replays are dropped as inline; a keypair zeroed under a worker is a counted drop; shutdown
with work in flight delivers everything and every buffer comes back."""

from __future__ import annotations

import itertools
import random
import threading
import time

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
    ScreeningUdp,
    handshaken_pair,
)
from lab.packets import tcp_packet
from tests.examples import examples
from tests.unit.io.test_datapath_receive import FLOWS, Receive, apply, sent_by_a, traffic
from vpn.core.offload import split
from vpn.core.packet.virtio import VIRTIO_NET_HDR_LEN, VirtioNetHeader
from vpn.core.wireguard import Device
from vpn.io import receiveworkers
from vpn.io.datapath import DataPath
from vpn.io.tun import TunDevice

# The network's doings as test_datapath_receive has them, but tampering: a tampered copy of
# a message already accepted is dropped inline by the window before its AEAD (`replay`) and
# on workers, which open without the window, by the AEAD (`bad_auth`): dropped either way,
# under another name.
OPS = st.lists(st.tuples(st.sampled_from(["cut", "lose", "replay", "foreign", "garbage",
                                          "flood", "lone"]),
                         st.integers(0, 50), st.integers(0, 5000)), max_size=6)
# Counts of how the packets were written, which depend on how many receives a job holds.
WRITE_COUNTS = ("tun_writes", "jumbo_frames", "jumbo_segments", "full_receive_batches",
                "receive_backpressure")


def delay_opening(monkeypatch: pytest.MonkeyPatch, seed: int, most: float = 0.002) -> None:
    """The workers' opening delayed at random (up to `most` seconds a job): jobs finish in
    any order."""
    rng = random.Random(seed)
    open_runs = receiveworkers.open_runs

    def late(*args: object) -> None:
        time.sleep(rng.random() * most)
        open_runs(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(receiveworkers, "open_runs", late)


def hold_opening(monkeypatch: pytest.MonkeyPatch) -> threading.Event:
    """The workers' opening held until the event returned is set."""
    release = threading.Event()
    open_runs = receiveworkers.open_runs

    def held(*args: object) -> None:
        assert release.wait(10)
        open_runs(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(receiveworkers, "open_runs", held)
    return release


def packets(frames: list[bytes]) -> list[bytes]:
    """The IP packets the TUN frames stand for (a coalesced frame cut back into its
    segments): what the kernel gets, however many a frame carried."""
    out: list[bytes] = []
    for frame in frames:
        header = VirtioNetHeader.unpack(frame[:VIRTIO_NET_HDR_LEN])
        out += [bytes(p) for p in split(header, frame[VIRTIO_NET_HDR_LEN:])]
    return out


def by_flow(frames: list[bytes]) -> dict[bytes, list[bytes]]:
    """packets() by flow (IPv4 protocol, addresses and ports), each flow's in order: the
    order that counts (GRO, inline too, puts one flow's packets of a batch together). The
    IPv4 ID and header checksum are left out: a frame's split numbers its packets from its
    first, so they tell where a frame began (how many receives a job held), not what came."""
    flows: dict[bytes, list[bytes]] = {}
    for packet in packets(frames):
        flows.setdefault(packet[9:10] + packet[12:24], []).append(
            packet[:4] + packet[6:10] + packet[12:])
    return flows


def receive_all(path: DataPath, receives: list[Receive], batches: int) -> None:
    """`receives` in `batches` wakeups; a wakeup without a free buffer reads nothing, so the
    same batch is offered again once a buffer is back."""
    step = max(1, -(-len(receives) // batches))
    udp = path.udp
    assert isinstance(udp, MemoryUdp)
    for start in range(0, len(receives), step):
        udp.incoming = [(memoryview(d), s, src) for d, s, src in receives[start:start + step]]
        while udp.incoming:
            path.on_udp_readable()
            workers = path.receive_workers
            while workers is not None and not workers.buffers.free:
                time.sleep(0.0005)


def outcome(path: DataPath) -> dict:
    """The TUN's packets, every counter but WRITE_COUNTS, and the peers' state."""
    stats = path.stats.summary()
    for name in WRITE_COUNTS:
        del stats[name]
    peers = {}
    for peer in path.device.peers.values():
        peers[peer.public_key] = (peer.endpoint, peer.rx_bytes, peer.drops,
                                  [(kp.replay.greatest, bytes(kp.replay.seen))
                                   for kp in peer.keypairs])
    tun = path.tun
    assert isinstance(tun, MemoryTun)
    return {"flows": by_flow(tun.frames), "stats": stats,
            "protocol_drops": dict(path.device.drops), "peers": peers}


@settings(max_examples=examples(40), deadline=None)
@given(FLOWS, OPS, st.integers(1, 3), st.binary(min_size=4, max_size=4),
       st.integers(0, 2**32 - 1), st.booleans())
def test_workers_deliver_what_the_inline_walk_delivers(
        flows: list[tuple[int, int, bool]], ops: list[tuple[str, int, int]], batches: int,
        seed: bytes, delays: int, screened: bool) -> None:
    reads = traffic(flows)
    results = []
    for threads in (0, 3):
        a, b = handshaken_pair(seed, b_threads=threads)
        if screened:
            b.udp = ScreeningUdp()
            b.stats.udp = b.udp.stats
        receives = apply(sent_by_a(a, reads), ops)
        with pytest.MonkeyPatch.context() as monkeypatch:
            delay_opening(monkeypatch, delays, 0.0005)
            try:
                receive_all(b, receives, batches)
            finally:
                b.close()
        results.append(outcome(b))
    inline, threaded = results
    assert inline["stats"]["packets_written"]
    assert threaded == inline


def hub(seed: int, peers: int, threads: int) -> tuple[DataPath, list[Receive]]:
    """A data path with `peers` peers (peer i at 198.18.20.i, endpoint port 40000 + i), and
    what they sent it, interleaved at random: each peer's messages on two keypairs (before
    and after a second handshake), of two sizes, grouped as GRO would (one peer's datagrams
    of one size, the last smaller) or one by one. Equal seeds give equal messages."""
    rng = random.Random(seed)

    def made() -> Device:  # everything from the seed, ephemeral keys too
        clock = itertools.count(1_700_000_000)  # each initiation's timestamp a later one
        return Device(rng.randbytes(32), random_bytes=rng.randbytes,
                      wall_clock=lambda: float(next(clock)), jitter=lambda: 0.5)

    device = made()
    path = DataPath(device, MemoryTun(), MemoryUdp(), mtu=MTU, clock=lambda: NOW,
                    threads=threads)
    streams: list[list[Receive]] = []
    for i in range(1, peers + 1):
        remote = made()
        assert remote.public_key is not None and device.public_key is not None
        endpoint = ("198.18.0.9", 40000 + i)
        peer = device.add_peer(remote.public_key, endpoint=endpoint)
        device.allowed_ips.insert(f"198.18.20.{i}/32", peer)
        theirs = remote.add_peer(device.public_key, endpoint=("198.18.0.1", 51820))
        assert theirs is not None
        messages = []
        for now in (NOW - 20, NOW - 10):  # the second leaves the first keypair `previous`
            (init,) = peer.initiate_handshake(now)
            response = remote.handle_handshake_message(init, ("198.18.0.1", 51820),
                                                       now).replies[0]
            device.handle_handshake_message(response, endpoint, now)
            kp = theirs.keypairs.next
            assert kp is not None
            for n in range(rng.randrange(1, 60)):
                size = rng.choice((1000, 1000, 1000, 200))
                packet = tcp_packet(bytes(size), src=bytes([198, 18, 20, i]),
                                    dst=bytes([198, 18, 10, 1]), seq=len(messages) << 12 | n)
                messages.append(kp.encrypt(packet, now))
        stream = []
        while messages:
            count = rng.randrange(1, 12)
            group, messages = messages[:count], messages[count:]
            size = len(group[0])
            run = [group[0]]
            for message in group[1:]:  # a GRO run: one size, only the last shorter
                if len(run[-1]) != size or len(message) > size:
                    break
                run.append(message)
            messages = group[len(run):] + messages
            stream.append((b"".join(run), size, endpoint))
        streams.append(stream)
    receives = []
    while any(streams):
        stream = rng.choice([s for s in streams if s])
        receives.append(stream.pop(0))
    return path, receives


@pytest.mark.parametrize("seed", range(6))
def test_several_peers_and_keypairs_interleaved_arrive_in_order_per_peer(
        seed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    results = []
    for threads in (0, 3):
        path, receives = hub(seed, 3, threads)
        if threads:
            delay_opening(monkeypatch, seed)
        try:
            receive_all(path, receives, 4)
        finally:
            path.close()
        results.append(outcome(path))
    inline, threaded = results
    assert len(inline["flows"]) == 3  # a flow a peer
    assert threaded == inline  # each peer's packets in its order
    assert inline["stats"]["drops"] == {}


def test_a_replayed_batch_on_workers_is_dropped_as_replayed() -> None:
    results = []
    reads = traffic([(44, 1368, False), (9, 1000, True)])
    for threads in (0, 2):
        a, b = handshaken_pair(b"replay", b_threads=threads)
        receives = sent_by_a(a, reads)
        try:
            receive_all(b, receives, 1)
            receive_all(b, receives, 1)  # the same batch again, a wakeup later
            receive_all(b, receives + receives, 1)  # and twice in one wakeup
        finally:
            b.close()
        results.append(outcome(b))
    inline, threaded = results
    assert threaded == inline
    assert threaded["stats"]["drops"] == {"replay": 3 * (44 + 9)}


def test_a_keypair_zeroed_while_a_worker_opens_with_it_is_a_counted_drop(
        monkeypatch: pytest.MonkeyPatch) -> None:
    a, b = handshaken_pair(b"zeroed", b_threads=2)
    receives = sent_by_a(a, traffic([(44, 1368, False)]))
    opening, zeroed = threading.Event(), threading.Event()
    open_runs = receiveworkers.open_runs

    def held(*args: object) -> None:
        opening.set()
        assert zeroed.wait(10)
        open_runs(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(receiveworkers, "open_runs", held)
    peer = next(iter(b.device.peers.values()))
    try:
        b.udp.incoming = [(memoryview(d), s, src) for d, s, src in receives]  # type: ignore[attr-defined]
        b.on_udp_readable()
        assert opening.wait(10)
        for kp in peer.keypairs:
            kp.zero()  # as a session's end does, on the loop thread
        zeroed.set()
    finally:
        zeroed.set()
        b.close()
    assert b.stats.all_drops() == {"keypair_expired": 44}
    assert peer.drops == {"keypair_expired": 44}
    assert b.stats.packets_written == 0
    assert b.receive_workers is not None
    assert b.receive_workers.buffers.free == b.receive_workers.buffers.count


def test_a_peer_removed_while_its_job_is_in_flight_is_left_alone(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Its messages are dropped (its keys went with it) and its bookkeeping is not done: no
    timer of a removed peer comes back to life."""
    a, b = handshaken_pair(b"removed", b_threads=2)
    receives = sent_by_a(a, traffic([(9, 1368, False)]))
    release = hold_opening(monkeypatch)
    peer = next(iter(b.device.peers.values()))
    rx_bytes = peer.rx_bytes
    try:
        receive_all(b, receives, 1)
        b.device.remove_peer(peer.public_key)
    finally:
        release.set()
        b.close()
    assert peer.rx_bytes == rx_bytes and peer.drops is None
    assert not len(b.device._deadlines)  # no timer armed for it
    assert b.stats.all_drops() == {"keypair_expired": 9}  # zeroed with the peer's sessions


def test_a_failing_worker_is_counted_and_its_buffer_comes_back(
        monkeypatch: pytest.MonkeyPatch) -> None:
    a, b = handshaken_pair(b"fails", b_threads=2)
    first = sent_by_a(a, traffic([(9, 1368, False)]))
    a.udp.sent.clear()  # type: ignore[attr-defined]
    second = sent_by_a(a, traffic([(3, 1368, False)]))
    open_runs = receiveworkers.open_runs
    calls = 0

    def fails_once(*args: object) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("injected")
        open_runs(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(receiveworkers, "open_runs", fails_once)
    try:
        receive_all(b, first, 1)
        receive_all(b, second, 1)
    finally:
        b.close()
    assert b.stats.all_drops() == {"internal_error": 1}
    assert len(packets(b.tun.frames)) == 3  # type: ignore[attr-defined]  # the next job's
    assert b.receive_workers is not None
    assert b.receive_workers.buffers.free == b.receive_workers.buffers.count


def test_close_with_work_in_flight_delivers_everything_and_ends_the_threads(
        monkeypatch: pytest.MonkeyPatch) -> None:
    before = set(threading.enumerate())
    a, inline = handshaken_pair(b"close")
    receives = sent_by_a(a, traffic([(44, 1368, False)] * 20, one_flow=True))
    _, threaded = handshaken_pair(b"close", b_threads=2)
    receive_all(inline, receives, 2)
    delay_opening(monkeypatch, 5)
    receive_all(threaded, receives, 2)
    workers = threaded.receive_workers
    assert workers is not None and workers.buffers.free < workers.buffers.count
    threaded.close()  # the jobs are still opening: close finishes them first
    assert outcome(threaded)["flows"] == outcome(inline)["flows"]
    assert outcome(threaded)["peers"] == outcome(inline)["peers"]
    assert workers.buffers.free == workers.buffers.count  # every buffer came back
    assert set(threading.enumerate()) <= before


def test_no_free_buffer_pauses_the_socket_until_one_returns(
        monkeypatch: pytest.MonkeyPatch) -> None:
    a, b = handshaken_pair(b"pause", b_threads=2)
    workers = b.receive_workers
    assert workers is not None
    wakeups = workers.buffers.count + 4  # a buffer each: more than the pool holds
    receives = sent_by_a(a, traffic([(44, 1368, False)] * wakeups, one_flow=True))
    release = hold_opening(monkeypatch)
    paused, resumed = threading.Event(), threading.Event()
    workers.buffers.pause, workers.buffers.resume = paused.set, resumed.set
    workers.buffers._call_soon_threadsafe = lambda callback: callback()
    udp = b.udp
    assert isinstance(udp, MemoryUdp)
    try:
        for data, size, source in receives:  # a wakeup a receive: a buffer each
            udp.incoming.append((memoryview(data), size, source))
            b.on_udp_readable()
        assert paused.is_set() and udp.incoming  # the rest waits in the socket
        release.set()
        assert resumed.wait(10)
        while udp.incoming:
            b.on_udp_readable()
            while not workers.buffers.free:
                time.sleep(0.0005)
    finally:
        release.set()
        b.close()
    assert b.stats.receive_backpressure >= 1
    assert b.stats.packets_written == wakeups * 44
    assert b.stats.all_drops() == {}


def test_a_dispatch_that_fails_gives_its_buffer_back(monkeypatch: pytest.MonkeyPatch) -> None:
    """The loop thread's part failing in a way no drop reason foresaw: the receive is dropped
    whole at the pump's boundary (internal_error), as inline, and its buffer is free again."""
    a, b = handshaken_pair(b"dispatch", b_threads=2)
    receives = sent_by_a(a, traffic([(9, 1368, False)]))

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("injected")

    monkeypatch.setattr(receiveworkers, "dispatch", broken)
    try:
        receive_all(b, receives, 1)
    finally:
        b.close()
    assert b.stats.all_drops() == {"internal_error": 1}
    assert b.receive_workers is not None
    assert b.receive_workers.buffers.free == b.receive_workers.buffers.count


def test_a_handshake_that_drops_a_keypair_mid_wakeup_ends_its_run() -> None:
    """A wakeup of data on b's unconfirmed keypair, a new initiation from a (which replaces
    that keypair, its index gone) and more data on the old keypair: the dispatch cuts the
    second run after the handshake as inline (unknown_receiver_index), not as the first's."""
    a, b = handshaken_pair(b"mid wakeup", b_threads=1)
    # A later initiation's timestamp (Sources is frozen: its peers share it).
    object.__setattr__(a.device.sources, "wall_clock", lambda: 1_700_000_060.0)
    initiator = next(iter(a.device.peers.values()))
    old = initiator.keypairs.current
    assert old is not None
    sealed = [old.encrypt(tcp_packet(bytes(100), src=SRC, dst=DST, seq=n), NOW) for n in (1, 2)]
    (init,) = initiator.initiate_handshake(NOW + 10)
    assert isinstance(b.udp, MemoryUdp) and b.receive_workers is not None
    b.receive_workers._clock = lambda: NOW + 10  # past the first initiation's flood limit
    b.udp.incoming = [(memoryview(d), len(d), ENDPOINT_A) for d in (sealed[0], init, sealed[1])]
    try:
        b.on_udp_readable()
    finally:
        b.close()
    drops = b.stats.summary()["drops"]
    # The first run's keypair was zeroed before a worker opened it (keypair_expired); the
    # second is not the first's run: its index names nothing any more.
    assert drops == {"keypair_expired": 1, "unknown_receiver_index": 1}, drops


def test_frames_made_while_opening_are_written_unless_the_turn_finds_otherwise(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A job's frames are made on the worker that opened it (TunDevice.gather) and written in
    the peer's turn when accept_runs kept every packet; a batch that turns out replayed is
    delivered from accept_runs' records instead (the same outcome as inline, above)."""
    calls: list[str] = []
    for name in ("write_gathered", "deliver_now"):
        method = getattr(TunDevice, name)
        monkeypatch.setattr(TunDevice, name, lambda self, *args, _m=method, _n=name: (
            calls.append(_n), _m(self, *args))[1])
    reads = traffic([(44, 1368, False), (9, 1000, True)])
    a, b = handshaken_pair(b"gathered", b_threads=2)
    receives = sent_by_a(a, reads)
    try:
        receive_all(b, receives, 1)
        deadline = time.monotonic() + 10
        while b.stats.packets_written < 44 + 9 and time.monotonic() < deadline:
            time.sleep(0.001)  # the job done
        assert calls == ["write_gathered"]
        receive_all(b, [receives[0], *receives], 1)  # a replayed copy first: all replays
    finally:
        b.close()
    assert calls == ["write_gathered", "deliver_now"]
    assert b.stats.packets_written == 44 + 9
    data, size, _ = receives[0]
    assert b.stats.summary()["drops"] == {"replay": -(-len(data) // size) + 44 + 9}
