"""receive_jobs.run_stop, the loop's cut of a receive into keypair runs for the workers: never past
the point where open_run would stop (another index, another type, a message too short), and
never before the first message. Its native twin (_screen.run_stop, what the dispatch runs)
answers as it does on any bytes, hostile ones included."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.examples import examples
from vpn.core.wireguard import receive_jobs, screen
from vpn.core.wireguard._screen import run_stop as native_run_stop
from vpn.core.wireguard.constants import MESSAGE_TRANSPORT, TRANSPORT_MIN_SIZE
from vpn.core.wireguard.receive_jobs import run_stop

RunStop = Callable[[bytes | memoryview, int, int], int]
BOTH = pytest.mark.parametrize("cut", [run_stop, native_run_stop], ids=["python", "native"])

INDEXES = (b"\x01\x00\x00\x00", b"\x02\x00\x00\x00")


def expected(data: bytes, segment_size: int, pos: int) -> int:
    """open_run's stop, message by message, for the first message's type and index."""
    end = pos
    while end < len(data):
        stop = min(end + segment_size, len(data))
        if (stop - end < TRANSPORT_MIN_SIZE or data[end] != MESSAGE_TRANSPORT
                or data[end + 4:end + 8] != data[pos + 4:pos + 8]):
            break
        end = stop
    return end


@st.composite
def receives(draw: st.DrawFn) -> tuple[bytes, int, int]:
    """A GRO receive of transport messages: one size (any, not only multiples of 4), the
    last possibly shorter (too short, even), here and there another index, type or
    reserved bytes."""
    size = draw(st.integers(TRANSPORT_MIN_SIZE, 200))
    count = draw(st.integers(1, 40))
    messages = []
    for _ in range(count):
        index = INDEXES[draw(st.integers(0, 9)) == 0]
        kind = b"\x04" if draw(st.integers(0, 19)) else draw(st.sampled_from([b"\x01", b"\x05"]))
        reserved = b"\x00\x00\x00" if draw(st.integers(0, 19)) else b"\x00\x01\x00"
        messages.append((kind + reserved + index).ljust(size, b"\xaa"))
    last = draw(st.integers(1, size))
    data = b"".join(messages)[:size * (count - 1) + last]
    first = draw(st.integers(0, count - 1)) * size
    data = data[:first] + b"\x04\x00\x00\x00" + data[first + 4:]  # the run starts on one
    return data, size, first


@BOTH
@settings(max_examples=examples(500), deadline=None)
@given(receive=receives())
def test_a_run_ends_where_open_run_would_stop_or_before(cut: RunStop,
                                                        receive: tuple[bytes, int, int]
                                                        ) -> None:
    data, size, pos = receive
    if len(data) - pos < TRANSPORT_MIN_SIZE:
        return  # the dispatch hands such a message to the handshake code, not to a run
    stop = cut(memoryview(data), size, pos)
    assert pos < stop <= expected(data, size, pos)
    assert (stop - pos) % size == 0 or stop == len(data)  # on a message's boundary
    # Short of open_run's stop only at other reserved bytes, where the next run begins.
    if stop < expected(data, size, pos):
        assert data[stop + 1:stop + 4] != data[pos + 1:pos + 4]


@BOTH
def test_a_whole_gro_receive_of_one_keypair_is_one_run(cut: RunStop) -> None:
    message = (b"\x04\x00\x00\x00" + INDEXES[0]).ljust(1452, b"\x00")
    data = message * 44 + message[:100]
    assert cut(data, 1452, 0) == len(data)
    assert cut(data, 1452, 1452 * 3) == len(data)
    assert cut(message * 44 + message[:20], 1452, 0) == 1452 * 44  # a runt last


@BOTH
def test_a_new_keypair_part_way_starts_a_new_run(cut: RunStop) -> None:
    old = (b"\x04\x00\x00\x00" + INDEXES[0]).ljust(1000, b"\x00")
    new = (b"\x04\x00\x00\x00" + INDEXES[1]).ljust(1000, b"\x00")
    data = old * 5 + new * 3
    assert cut(data, 1000, 0) == 5000
    assert cut(data, 1000, 5000) == 8000


@settings(max_examples=examples(1000), deadline=None)
@given(st.data())
def test_the_native_twin_answers_as_the_reference_on_any_bytes(data: st.DataObject) -> None:
    """Any bytes, any segment size, any start: hostile receives included (runts, garbage,
    segment sizes under a message's), and the receives of the strategy above."""
    if data.draw(st.booleans()):
        raw, size, pos = data.draw(receives())
    else:
        raw = data.draw(st.binary(min_size=1, max_size=600))
        size = data.draw(st.integers(1, 700))
        pos = data.draw(st.integers(0, len(raw) - 1))
    assert native_run_stop(raw, size, pos) == run_stop(raw, size, pos)
    assert native_run_stop(memoryview(bytearray(raw)), size, pos) == run_stop(raw, size, pos)


@pytest.mark.parametrize(("size", "pos"), [(0, 0), (-1, 0), (32, -1), (32, 64), (32, 65)])
def test_the_native_twin_refuses_a_start_outside_or_no_segment_size(size: int, pos: int
                                                                     ) -> None:
    with pytest.raises(ValueError, match="run_stop"):
        native_run_stop(bytes(64), size, pos)


def test_the_dispatch_cuts_with_the_native_twin_unless_the_reference_is_forced() -> None:
    assert receive_jobs.cut_run is (native_run_stop if screen.NATIVE.native else run_stop)
