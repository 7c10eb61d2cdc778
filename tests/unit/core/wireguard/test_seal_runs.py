"""Keypair.seal_runs_at (the native TransportKey.seal_runs and the Python reference): several
super-packets' segments, laid out back to back as gso.split_runs leaves them, sealed in one
call: the same messages, back to back, as encrypt_batch writes from copies of the segments,
on both paths; a run that does not fit its slots, or an out too short, refused before
anything is written."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.unit.core.wireguard.test_transport_native import PROPERTY, data, near_limit, pair

Run = tuple[int, int, int]  # count, full, cut (last = full - cut)
runs = st.lists(st.tuples(st.integers(1, 12),
                          st.one_of(st.integers(0, 100), st.integers(1380, 1440)),
                          st.integers(0, 2000)), min_size=1, max_size=4)


def laid_out(job: list[Run], gap: int, tail: int, offset: int, seed: int
             ) -> tuple[bytearray, list[bytes], list[tuple[int, int, int]]]:
    """The layout split_runs would leave (filler around the segments), the plaintexts in
    order, and the runs as (count, full, last)."""
    layout = bytearray(data(seed, offset))
    plaintexts: list[bytes] = []
    shapes = []
    for k, (count, full, cut) in enumerate(job):
        last = max(0, full - cut)
        for i in range(count):
            plain = data(seed + 100 * k + i, full if i + 1 < count else last)
            layout += data(seed - i, gap) + plain + data(seed + i, tail)
            plaintexts.append(plain)
        shapes.append((count, full, last))
    return layout, plaintexts, shapes


@PROPERTY
@given(job=runs, gap=st.sampled_from([16, 0, 3]), tail=st.sampled_from([31, 0, 16, 47]),
       mtu=st.one_of(st.just(0), st.sampled_from([1280, 1420, 1500]), st.integers(0, 1500)),
       offset=st.integers(0, 40), short=st.sampled_from([0, 0, 0, 1]),
       counter=st.one_of(st.integers(0, 2**20), near_limit), seed=st.integers(0, 2**32))
def test_seal_runs_matches_python_and_encrypt_batch(job: list[Run], gap: int, tail: int,
                                                    mtu: int, offset: int, short: int,
                                                    counter: int, seed: int) -> None:
    layout, plaintexts, shapes = laid_out(job, gap, tail, offset, seed)
    layout = layout[:len(layout) - short]
    native, python = pair()
    outs = [bytearray(layout) for _ in range(2)]
    results: list[object] = []
    for kp, out in zip((native, python), outs, strict=True):
        kp.send_counter = counter  # the counters reserved first, as reserve_jobs does
        first = kp.reserve(sum(count for count, _, _ in shapes))
        if first is None:
            results.append("exhausted")
            continue
        try:
            results.append(kp.seal_runs_at(first, out, offset, shapes, gap, tail, mtu))
        except ValueError as error:
            results.append(type(error).__name__)
    assert native.send_counter == python.send_counter
    assert results[0] == results[1]
    if isinstance(results[0], str):
        assert outs[0] == layout == outs[1]  # refused before anything was written
        return
    assert not short
    lengths = results[0]
    assert isinstance(lengths, list)
    end = offset + sum(lengths)
    assert outs[0][:end] == outs[1][:end]
    _, reference = pair()
    reference.send_counter = counter
    expected = bytearray(end)
    assert reference.encrypt_batch(plaintexts, expected, offset, mtu) == lengths
    assert outs[0][offset:end] == expected[offset:]


def test_seal_runs_refuses_what_it_cannot_seal() -> None:
    for kp in pair():
        out = bytearray(10_000)
        with pytest.raises(ValueError, match="out of range"):
            kp.seal_runs_at(0, out, 0, [(0, 100, 100)], 16, 31, 0)
        with pytest.raises(ValueError, match="would not fit"):
            kp.seal_runs_at(0, out, 0, [(2, 100, 100)], 0, 0, 0)
        with pytest.raises(ValueError, match="too short"):
            kp.seal_runs_at(0, out, 9_990, [(1, 100, 100)], 16, 31, 0)
        assert out == bytearray(10_000)
        assert kp.seal_runs_at(0, out, 0, [], 16, 31, 0) == []
