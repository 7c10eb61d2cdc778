"""TransportKey.open_runs (a worker job's runs of one keypair opened in one native call, the GIL
released once) against its Python reference, ReferenceTransportKey.open_runs (open_run of
each run, stretch by stretch): the same stretches, plaintexts and descriptions on any
receives, an attacker's included. `make sanitize` runs this file under ASan/UBSan and TSan."""

from __future__ import annotations

import threading

import pytest
from hypothesis import event, given
from hypothesis import strategies as st

from tests.unit.core.wireguard.test_transport_native import (
    LOCAL,
    PROPERTY,
    RECV_KEY,
    gro_receive,
    inner,
    pair,
    seal,
)
from vpn.core.wireguard import keypair
from vpn.core.wireguard.constants import MESSAGE_TRANSPORT, TRANSPORT_MIN_SIZE
from vpn.core.wireguard.keypair import Keypair, TransportError

Run = tuple[bytes, int, int, int, int]
HEADER = MESSAGE_TRANSPORT.to_bytes(4, "little") + LOCAL.to_bytes(4, "little")


def open_both(runs: list[Run], out_size: int, room: int
              ) -> list[tuple[list, bytearray, bytearray] | type[BaseException]]:
    """open_runs on the native and the Python keypair: (stretches, out, opened) or the
    exception's type."""
    outcomes: list[tuple[list, bytearray, bytearray] | type[BaseException]] = []
    for kp in pair():
        out, opened = bytearray(b"\xaa" * out_size), bytearray(keypair.OPENED.size * room)
        try:
            outcomes.append((kp.open_runs(runs, out, opened), out, opened))
        except (ValueError, RuntimeError) as error:
            outcomes.append(type(error))
    return outcomes


@PROPERTY
# A run starts at a message, so an empty receive (one datagram of 0 bytes) is never one.
@given(receives=st.lists(gro_receive().filter(lambda receive: receive[0]), min_size=1,
                         max_size=4), data=st.data())
def test_open_runs_matches_python(receives: list[tuple[bytes, int]], data: st.DataObject
                                  ) -> None:
    """Runs over hostile receives (foreign indexes, handshakes, runts, forgeries, replays,
    more than MAX_SOURCES sources), cut anywhere, with room for all or for few messages."""
    runs: list[Run] = []
    out_at = data.draw(st.integers(0, 40))
    for blob, segment_size in receives:
        starts = range(0, len(blob), segment_size)
        # Mostly where the dispatch starts a run: a message for this keypair (else neither
        # path makes progress there).
        ours = [p for p in starts if blob[p:p + 8] == HEADER and len(blob) - p >= 32]
        pos = data.draw(st.sampled_from(ours if ours and data.draw(st.integers(0, 4))
                                        else list(starts)))
        stop = data.draw(st.sampled_from([len(blob), min(len(blob), pos + segment_size)]))
        runs.append((blob, segment_size, pos, stop, out_at))
        out_at += stop - pos
    room = data.draw(st.one_of(st.just(4096), st.just(4096), st.integers(0, 90)))
    native, python = open_both(runs, out_at, room)
    assert type(native) is type(python)
    event(f"outcome: {'opened' if isinstance(native, tuple) else native.__name__}")
    if isinstance(native, tuple) and isinstance(python, tuple):
        stretches, out, opened = native
        assert stretches == python[0] and opened == python[2]
        count = sum(s[2] for s in stretches)
        event(f"stretches: {min(len(stretches), 6)}, messages described: {min(count, 1) * 'some'}")
        for entry in keypair.OPENED.iter_unpack(opened[:keypair.OPENED.size * count]):
            if entry[4] == keypair.OPENED_PACKET:  # the plaintexts each path kept
                at, length = entry[2], entry[3]
                assert out[at:at + length] == python[1][at:at + length]
    else:
        assert native is python  # both refused: no progress (a foreign message first)


def sealed_run(first: int, n: int, size: int = 100) -> bytes:
    return b"".join(seal(RECV_KEY, first + i, inner("v4", size, i, i)) for i in range(n))


def test_runs_are_opened_one_after_the_other_and_cut_at_max_sources() -> None:
    """70 sources in one run: two stretches (MAX_SOURCES, then the rest); a second run's
    messages described after them, its plaintexts where its out_at says."""
    segment = 100 + TRANSPORT_MIN_SIZE
    one, two = sealed_run(1, 70), sealed_run(100, 3)
    runs = [(one, segment, 0, len(one), 0), (two, segment, 0, len(two), len(one))]
    for kp in pair():
        out, opened = bytearray(len(one) + len(two)), bytearray(keypair.OPENED.size * 73)
        stretches = kp.open_runs(runs, out, opened)
        assert [(run, stop, count, len(sources)) for run, stop, count, sources, _ in stretches
                ] == [(0, 64 * segment, 64, 64), (0, len(one), 6, 6), (1, len(two), 3, 3)]
        counters = [e[0] for e in keypair.OPENED.iter_unpack(opened)]
        assert counters == [*range(1, 71), 100, 101, 102]
        third = keypair.OPENED.unpack_from(opened, keypair.OPENED.size * 70)
        assert third[2] == len(one)  # the second run's first plaintext at its out_at


@pytest.mark.parametrize("run", [
    (b"", 0, 0, 0, 0),  # no segment size
    (bytes(64), 32, 40, 32, 0),  # pos past stop
    (bytes(64), 32, 0, 65, 0),  # stop past the data
    (bytes(64), 32, 0, 64, 10**6),  # out too short
])
def test_open_runs_checks_every_run_before_opening_any(run: Run) -> None:
    good = sealed_run(1, 1)
    for kp in pair():
        out = bytearray(len(good) + 64)
        with pytest.raises(ValueError):
            kp.open_runs([(good, len(good), 0, len(good), 0), run], out,
                         bytearray(keypair.OPENED.size * 8))
        assert out == bytes(len(out))  # nothing opened


def test_a_zeroed_keypair_refuses_the_runs() -> None:
    for kp in pair():
        kp.zero()
        with pytest.raises(TransportError, match="keypair_expired"):
            kp.open_runs([(sealed_run(1, 1), 132, 0, 132, 0)], bytearray(200), bytearray(28))


def test_open_runs_on_threads_at_once() -> None:
    """One keypair's runs opened by four threads at once (the workers of one peer): each
    gets its own messages back, whole (TSan sees the native calls under `make sanitize`)."""
    kp: Keypair = pair()[0]
    segment = 100 + TRANSPORT_MIN_SIZE
    blobs = [sealed_run(1 + 40 * i, 40) for i in range(4)]
    results: list[list | None] = [None] * 4

    def work(i: int) -> None:
        out, opened = bytearray(len(blobs[i])), bytearray(keypair.OPENED.size * 40)
        for _ in range(20):
            stretches = kp.open_runs([(blobs[i], segment, 0, len(blobs[i]), 0)], out, opened)
        results[i] = [(e[0], e[4]) for e in keypair.OPENED.iter_unpack(opened)] + stretches

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for i, got in enumerate(results):
        assert got is not None
        assert got[:40] == [(1 + 40 * i + j, keypair.OPENED_PACKET) for j in range(40)]
        assert got[40][1:3] == (len(blobs[i]), 40)
