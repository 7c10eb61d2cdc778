"""One TransportKey used by several threads at once (vpn/core/wireguard/_transport.c): each
batch takes an OpenSSL context of its own, so N threads seal and open with the same key in
parallel and write exactly what one thread would; zero() while they run wipes what is idle
at once and the rest as each batch ends. `make sanitize` runs this file under
ThreadSanitizer as well as AddressSanitizer and UBSan."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest

from vpn.core.wireguard import _transport
from vpn.core.wireguard.keypair import OPENED, transport_size

TransportKey = _transport.TransportKey
KEY = bytes(range(32))
RECEIVER = 0x1234
THREADS = 4
BATCHES = 40  # per thread
PACKETS = [bytes([i]) * (60 + 97 * i) for i in range(12)]  # short to one MTU
SIZE = sum(transport_size(len(p)) for p in PACKETS)


def run_threads(body: Callable[[int], None], threads: int = THREADS) -> None:
    """`body(i)` on `threads` threads started together; the first failure re-raised."""
    start = threading.Barrier(threads)
    failures: list[BaseException] = []

    def run(i: int) -> None:
        start.wait()
        try:
            body(i)
        except BaseException as error:  # re-raised below, on the test's thread
            failures.append(error)

    workers = [threading.Thread(target=run, args=(i,)) for i in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    if failures:
        raise failures[0]


def sealed_alone(first: int) -> bytes:
    out = bytearray(SIZE)
    TransportKey(KEY).seal_batch(PACKETS, out, 0, 0, RECEIVER, first)
    return bytes(out)


def test_threads_seal_with_one_key_as_one_thread_would() -> None:
    key = TransportKey(KEY)
    results: dict[int, bytes] = {}

    def seal(i: int) -> None:
        for b in range(BATCHES):
            first = (i * BATCHES + b) * len(PACKETS)  # each batch its own counters
            out = bytearray(SIZE)
            key.seal_batch(PACKETS, out, 0, 0, RECEIVER, first)
            results[first] = bytes(out)

    run_threads(seal)
    assert len(results) == THREADS * BATCHES
    for first, sealed in results.items():
        assert sealed == sealed_alone(first)


def test_threads_open_with_one_key_while_others_seal_with_it() -> None:
    """Both directions at once on one object: neither waits for nor disturbs the other."""
    key = TransportKey(KEY)
    data = sealed_alone(0)
    segment = transport_size(len(PACKETS[0]))
    message = data[:segment]  # open_run takes equal-sized segments: one message a run
    expected = PACKETS[0]

    def use(i: int) -> None:
        for _ in range(BATCHES):
            if i % 2:
                out, opened = bytearray(segment), bytearray(OPENED.size)
                stop, _, count, drops, _ = key.open_run(message, segment, 0, out, 0, RECEIVER,
                                                        1, opened, None, 0)
                assert (stop, count, drops) == (segment, 1, None)
                assert out[:len(expected)] == expected
            else:
                out = bytearray(SIZE)
                key.seal_batch(PACKETS, out, 0, 0, RECEIVER, 0)
                assert out == data

    run_threads(use)


def test_zero_while_workers_seal() -> None:
    """zero() lands while batches run: each batch either finishes (its context wiped when it
    returns) or is refused with ValueError; none crashes, and the key ends zeroed."""
    key = TransportKey(KEY)
    big = [bytes(1400)] * 2000
    running = threading.Barrier(THREADS + 1)
    outcomes: list[str] = []

    def seal(i: int) -> None:
        out = bytearray(sum(transport_size(1400) for _ in big))
        running.wait()
        for _ in range(BATCHES):
            try:
                key.seal_batch(big, out, 0, 0, RECEIVER, 0)
                outcomes.append("sealed")
            except ValueError as error:
                assert "zeroed" in str(error)
                outcomes.append("refused")

    threads = [threading.Thread(target=seal, args=(i,)) for i in range(THREADS)]
    for thread in threads:
        thread.start()
    running.wait()
    key.zero()
    for thread in threads:
        thread.join()
    assert len(outcomes) == THREADS * BATCHES
    assert outcomes.count("refused") > 0  # every thread's last batches came after zero()
    assert repr(key) == "TransportKey(zeroed)"
    with pytest.raises(ValueError, match="zeroed"):
        key.seal_batch([b""], bytearray(64), 0, 0, RECEIVER, 0)


def test_a_key_rekeyed_while_in_use_is_refused() -> None:
    """__init__ again on a key a batch is using would swap the key under it: refused."""
    key = TransportKey(KEY)
    big = [bytes(1400)] * 20_000
    out = bytearray(sum(transport_size(1400) for _ in big))
    refused: list[bool] = []
    sealing = threading.Thread(target=key.seal_batch, args=(big, out, 0, 0, RECEIVER, 0))
    sealing.start()
    while sealing.is_alive() and not refused:
        try:
            key.__init__(KEY)  # type: ignore[misc]
        except RuntimeError:
            refused.append(True)
    sealing.join()
    key.__init__(KEY)  # type: ignore[misc]  # idle again: allowed
    assert repr(key) == "TransportKey(<key>)"
