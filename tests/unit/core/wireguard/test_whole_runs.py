"""receive_jobs.whole_runs, the dispatch's cut of a busy peer's receives (each one whole run
for the latest run's header, from its source) into parts of that Run, and its native twin
(_screen.whole_runs, what the dispatch runs): the same answer and the same parts on any
batch, hostile ones included, and no crash when a source's __eq__ changes the batch."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.examples import examples
from vpn.core.wireguard import receive_jobs, screen
from vpn.core.wireguard._screen import whole_runs as native_whole_runs
from vpn.core.wireguard.constants import TRANSPORT_MIN_SIZE
from vpn.core.wireguard.receive_jobs import run_stop, whole_runs

HEADER = b"\x04\x00\x00\x00\x01\x00\x00\x00"
OTHERS = (b"\x04\x00\x00\x00\x02\x00\x00\x00", b"\x01\x00\x00\x00\x01\x00\x00\x00",
          b"\x04\x00\x01\x00\x01\x00\x00\x00")
SOURCE = ("198.18.0.9", 40001)
SOURCES = (SOURCE, ("198.18.0.9", 40001 + 0), ("198.18.0.10", 40002))  # equal, not the same


@st.composite
def receive(draw: st.DrawFn) -> tuple[Any, int, tuple[str, int]]:
    """A receive as the socket gives it, mostly one whole run of HEADER (the last message
    possibly shorter), else a runt, another header part way or first, garbage, or a
    segment size that is not the messages' (none, negative, larger than the receive)."""
    size = draw(st.integers(1, 120))
    count = draw(st.integers(1, 8))
    messages = [(HEADER if draw(st.integers(0, 9)) else draw(st.sampled_from(OTHERS)))
                .ljust(size, b"\xaa")[:size] for _ in range(count)]
    data = b"".join(messages)[:size * (count - 1) + draw(st.integers(1, size))]
    if draw(st.integers(0, 9)) == 0:
        data = draw(st.binary(max_size=300))
    segment = draw(st.one_of(st.just(size), st.integers(-3, 400)))
    kind = draw(st.sampled_from([bytes, bytearray, "view"]))
    made = memoryview(bytearray(data)) if kind == "view" else kind(data)  # type: ignore[operator]
    return made, segment, draw(st.sampled_from(SOURCES))


def part_values(parts: list[tuple[Any, int, int, int, int]]) -> list[tuple]:
    return [(bytes(data), rest) for data, *rest in parts]


@settings(max_examples=examples(1000), deadline=None)
@given(st.lists(receive(), max_size=8), st.data())
def test_the_native_twin_answers_as_the_reference(batch: list, data: st.DataObject) -> None:
    start = data.draw(st.integers(0, len(batch) + 1))
    offset = data.draw(st.integers(0, 1 << 40))
    ours: list = [("kept",)]
    theirs: list = [("kept",)]
    assert native_whole_runs(batch, start, HEADER, SOURCE, offset, ours) == whole_runs(
        batch, start, HEADER, SOURCE, offset, theirs)
    assert part_values(ours[1:]) == part_values(theirs[1:]) and ours[0] == theirs[0]
    assert all(a[0] is b[0] for a, b in zip(ours[1:], theirs[1:], strict=True))


@settings(max_examples=examples(300), deadline=None)
@given(st.lists(receive(), max_size=8))
def test_each_part_is_a_whole_run_of_the_header_from_the_source(batch: list) -> None:
    parts: list = []
    stop, offset, datagrams = whole_runs(batch, 0, HEADER, SOURCE, 100, parts)
    assert len(parts) == stop and offset == 100 + sum(len(bytes(d)) for d, *_ in batch[:stop])
    at = 100
    for (data, segment, pos, end, out_at), (sent, _, source) in zip(parts, batch, strict=False):
        raw = bytes(data)
        assert data is sent and source == SOURCE and pos == 0 and end == len(raw)
        assert len(raw) >= TRANSPORT_MIN_SIZE and raw[:8] == HEADER and out_at == at
        assert 0 < segment <= len(raw) and run_stop(raw, segment, 0) == len(raw)
        at += len(raw)
    assert datagrams == sum(-(-end // segment) for _, segment, _, end, _ in parts)
    if stop < len(batch):  # the one it stopped at is no such run
        data, segment, source = batch[stop]
        raw = bytes(data)
        segment = segment if 0 < segment < len(raw) else len(raw)
        assert (source != SOURCE or len(raw) < TRANSPORT_MIN_SIZE or raw[:8] != HEADER
                or run_stop(raw, segment, 0) != len(raw))


BOTH = pytest.mark.parametrize("cut", [whole_runs, native_whole_runs],
                               ids=["python", "native"])
MESSAGE = HEADER.ljust(100, b"\x00")


@BOTH
@pytest.mark.parametrize(("args", "error"), [
    (([(MESSAGE,)], 0, HEADER, SOURCE, 0, []), (TypeError, ValueError)),  # not a 3-tuple
    (([(MESSAGE, 100, SOURCE)], 0, HEADER[:7], SOURCE, 0, []), ValueError),
    (([(MESSAGE, 100, SOURCE)], -1, HEADER, SOURCE, 0, []), ValueError),
    (([(MESSAGE, 100, SOURCE)], 0, HEADER, SOURCE, -1, []), ValueError),
    (([("text", 100, SOURCE)], 0, HEADER, SOURCE, 0, []), TypeError),  # not a buffer
    (([(MESSAGE, "100", SOURCE)], 0, HEADER, SOURCE, 0, []), TypeError),
])
def test_a_bad_call_raises_a_clear_error(cut: Any, args: tuple,
                                        error: type | tuple[type, ...]) -> None:
    with pytest.raises(error):
        cut(*args)


@BOTH
def test_a_source_that_fails_to_compare_raises(cut: Any) -> None:
    class Broken:
        def __ne__(self, other: object) -> bool:
            raise RuntimeError("no")

    with pytest.raises(RuntimeError, match="no"):
        cut([(MESSAGE, 100, Broken())], 0, HEADER, SOURCE, 0, [])


@BOTH
def test_a_batch_shrunk_by_a_sources_comparison_stops_where_it_ends(cut: Any) -> None:
    """A source's comparison may run any Python, the batch's shrinking included: the walk
    reads its length again and holds each receive while it uses it."""
    batch: list = []

    class Shrinking(tuple):  # type: ignore[type-arg]
        def __ne__(self, other: object) -> bool:
            del batch[1:]
            return False

    batch.extend([(MESSAGE, 100, Shrinking(SOURCE)), (MESSAGE, 100, SOURCE),
                  (MESSAGE, 100, SOURCE)])
    parts: list = []
    assert cut(batch, 0, HEADER, SOURCE, 0, parts) == (1, 100, 1)
    assert len(parts) == 1 and parts[0][0] is MESSAGE


def test_the_dispatch_cuts_with_the_native_twin_unless_the_reference_is_forced() -> None:
    assert receive_jobs.cut_whole_runs is (native_whole_runs if screen.NATIVE.native
                                           else whole_runs)
