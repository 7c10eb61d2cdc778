"""receive_jobs.accept_runs (a worker job's ordered stage, a keypair's consecutive runs from one
source accepted in one call when every inner source is the peer's) against its reference
accept_runs_by_run (each run on its own, as the inline walk): the same records, counts,
drops, sessions and replay windows on hostile input: replays, counters out of order, the
keypair changing part way through a job, inner sources the peer may not use, messages from
another address."""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from lab.packets import tcp_packet
from tests.examples import examples
from vpn.core.wireguard import Device, ReceiveCounts
from vpn.core.wireguard.keypair import RECORD, Keypair
from vpn.core.wireguard.receive_jobs import (
    RunJob,
    accept_runs,
    accept_runs_by_run,
    dispatch,
    open_runs,
)

NOW = 1.0
ENDPOINTS = (("198.18.0.9", 40001), ("198.18.0.10", 40002))  # the peer's, and another
# Inner sources: the peer's (allowed), and one it may not use.
INNER = (bytes([198, 18, 20, 1]), bytes([198, 18, 21, 1]))
DST = bytes([198, 18, 10, 1])

# Per message: which keypair seals it (0: the first handshake's, 1: the second's), its
# inner source, its payload size.
MESSAGES = st.lists(st.tuples(st.integers(0, 1), st.sampled_from(INNER),
                              st.sampled_from([0, 40, 200, 1000])), min_size=1, max_size=40)
# How they arrive: (which message, from which address), repeats and any order allowed, cut
# into receives of at most this many.
ARRIVALS = st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 1)), min_size=1,
                    max_size=60)


def received(seed: int, messages: list[tuple[int, bytes, int]],
             arrivals: list[tuple[int, int]], group: int) -> tuple[Device, list]:
    """A device with one peer (AllowedIPs INNER[0]/32) that completed two handshakes, and
    the receives of `messages` as `arrivals` says. Equal arguments, equal devices and
    receives (everything comes from the seed)."""
    rng = random.Random(seed)

    def made() -> Device:
        clock = itertools.count(1_700_000_000)
        return Device(rng.randbytes(32), random_bytes=rng.randbytes,
                      wall_clock=lambda: float(next(clock)), jitter=lambda: 0.5)

    device, remote = made(), made()
    assert device.public_key is not None and remote.public_key is not None
    peer = device.add_peer(remote.public_key, endpoint=ENDPOINTS[0])
    device.allowed_ips.insert("198.18.20.1/32", peer)
    theirs = remote.add_peer(device.public_key, endpoint=("198.18.0.1", 51820))
    assert theirs is not None
    sealed: dict[int, bytes] = {}
    for k, now in enumerate((NOW - 20, NOW - 10)):  # the second leaves the first `previous`
        (init,) = peer.initiate_handshake(now)
        response = remote.handle_handshake_message(init, ("198.18.0.1", 51820), now).replies[0]
        device.handle_handshake_message(response, ENDPOINTS[0], now)
        kp = theirs.keypairs.next
        assert kp is not None
        for n, (which, src, size) in enumerate(messages):  # sealed before the next handshake
            if which == k:
                sealed[n] = kp.encrypt(tcp_packet(bytes(size), src=src, dst=DST, seq=n << 12),
                                       now)
    receives = []
    stream = [(sealed[i % len(sealed)], ENDPOINTS[e]) for i, e in arrivals]
    while stream:  # a GRO receive: one source, one size, only the last shorter
        (first, source), stream = stream[0], stream[1:]
        run = [first]
        while (stream and len(run) < group and stream[0][1] == source
               and len(stream[0][0]) <= len(first) and len(run[-1]) == len(first)):
            run.append(stream.pop(0)[0])
        receives.append((b"".join(run), len(first), source))
    return device, receives


def outcome(seed: int, messages: list[tuple[int, bytes, int]], arrivals: list[tuple[int, int]],
            group: int, accept: Callable[[RunJob, ReceiveCounts], None]) -> list:
    """Each job of the receives opened, then accepted by `accept`: what it made, and the
    device's keypairs' windows after."""
    device, receives = received(seed, messages, arrivals, group)
    out = bytearray(sum(len(data) for data, _, _ in receives))
    results = []
    for job in dispatch(device, receives, NOW).jobs:
        open_runs(job, memoryview(out))
        for (run, _, _, srcs, _), (other, _, _, _, _) in itertools.pairwise(job.opens):
            if run.kp is other.kp and run.source == other.source:
                event("runs together" + (", a source not allowed" if INNER[1] in srcs else ""))
        counts = ReceiveCounts()
        accept(job, counts)
        results.append((bytes(job.records[:RECORD.size * job.nrec]), job.nrec, job.drops,
                        counts.packets_written, dict(counts.drops),
                        [(kp.local_index, s.source, s.nbytes, s.packets)
                         for kp, s in job.sessions.items()]))
    for peer in device.peers.values():
        results.append([(kp.replay.greatest, bytes(kp.replay.seen)) for kp in peer.keypairs])
    return results


@settings(max_examples=examples(60), deadline=None)
@given(st.integers(0, 2**32 - 1), MESSAGES, ARRIVALS, st.integers(1, 12))
def test_accept_runs_matches_run_by_run(seed: int, messages: list[tuple[int, bytes, int]],
                                        arrivals: list[tuple[int, int]], group: int) -> None:
    merged = outcome(seed, messages, arrivals, group, accept_runs)
    assert merged == outcome(seed, messages, arrivals, group, accept_runs_by_run)


def test_one_source_one_keypair_is_one_accept_call(monkeypatch: pytest.MonkeyPatch) -> None:
    """A busy peer's job (one keypair, one address, its own inner source) is one call."""
    messages = [(1, INNER[0], 1000)] * 12
    device, receives = received(7, messages, [(i, 0) for i in range(12)], 3)
    (job,) = dispatch(device, receives, NOW).jobs
    assert len(job.runs) == 1 and len(job.runs[0].parts) == 4  # one Run, a part a receive
    open_runs(job, memoryview(bytearray(sum(len(d) for d, _, _ in receives))))
    assert len(job.opens) == 4
    calls = []
    accept_run = Keypair.accept_run

    def counted(*args: Any) -> tuple[int, int, int]:
        calls.append(args[2])
        return accept_run(*args)

    monkeypatch.setattr(Keypair, "accept_run", counted)
    accept_runs(job, ReceiveCounts())
    assert calls == [12] and job.nrec == 12
