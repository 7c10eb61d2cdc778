"""_gso.split_runs (a send job's super-packets split in one call) against its Python
reference, gso.split_runs_python, and against split_into read by read: the same layout
byte for byte, the same shapes, and for a job with a read the split rejects (or an out
buffer too small) the same refusal, before a byte is written.

Buffers are ctypes arrays of exactly their size, so `make sanitize` catches an overrun."""

from __future__ import annotations

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from tests.examples import examples
from tests.unit.core.test_gso_native import FILL, VALID, exact, fields, headers
from vpn.core.offload import _gso, gso
from vpn.core.packet.errors import OffloadError
from vpn.core.packet.virtio import VirtioNetHeader

Read = tuple[VirtioNetHeader, bytes]
# Valid super-packets mostly; now and then one under a hostile header, or cut short.
reads = st.one_of(
    st.sampled_from(VALID), st.sampled_from(VALID),
    st.tuples(headers, st.sampled_from(VALID).map(lambda case: case[1])),
    st.tuples(st.sampled_from(VALID), st.integers(0, 3100)).map(
        lambda cut: (cut[0][0], cut[0][1][:cut[1]])),
)


def outcome(split: object, out: bytearray | object, offset: int, job: list[Read], gap: int,
            tail: int, native: bool) -> tuple[object, bytes]:
    """What the split returned (or the refusal's reason), and the buffer after it."""
    runs = [(exact(packet) if native else packet, *fields(hdr)) for hdr, packet in job]
    try:
        result: object = split(out, offset, runs, gap, tail)  # type: ignore[operator]
    except OffloadError as err:
        result = err.reason
    except ValueError:
        result = "ValueError"
    return result, bytes(out)  # type: ignore[call-overload]


def one_by_one(job: list[Read], gap: int, tail: int, offset: int, size: int
               ) -> tuple[object, bytes]:
    """split_into read by read, each where the last one's layout ends."""
    out = bytearray([FILL]) * size
    shapes = []
    at = offset
    for hdr, packet in job:
        shapes.append(_gso.split_into(out, at, packet, *fields(hdr), gap, tail))
        at += _gso.size(packet, *fields(hdr), gap, tail)
    return shapes, bytes(out)


@settings(max_examples=examples(600), deadline=None)
@given(st.lists(reads, min_size=0, max_size=4), st.sampled_from([16, 0, 3]),
       st.sampled_from([31, 0, 1]), st.integers(0, 5), st.integers(-2, 2))
def test_split_runs_matches_the_reference_and_split_into(job: list[Read], gap: int, tail: int,
                                                        offset: int, slack: int) -> None:
    try:
        need = sum(_gso.size(packet, *fields(hdr), gap, tail) for hdr, packet in job)
    except OffloadError:
        need = 200  # some read is refused: the call is too, whatever the buffer
    size = max(0, offset + need + slack)
    native = outcome(_gso.split_runs, exact(bytes([FILL]) * size), offset, job, gap, tail,
                     True)
    python = outcome(gso.split_runs_python, bytearray([FILL]) * size, offset, job, gap, tail,
                     False)
    assert native == python
    if isinstance(native[0], str):
        event(native[0])
        assert native[1] == bytes([FILL]) * size  # refused before anything was written
    else:
        event("accepted")
        assert size >= offset + need
        assert (native[0], native[1]) == one_by_one(job, gap, tail, offset, size)


def test_split_runs_refuses_bad_arguments_before_writing() -> None:
    hdr, packet = VALID[0]
    out = bytearray([FILL]) * 100_000
    with pytest.raises(ValueError, match="out of range"):
        _gso.split_runs(out, 0, [(packet, *fields(hdr))], 65536, 0)
    with pytest.raises(TypeError, match="7-tuple"):
        _gso.split_runs(out, 0, [(packet, *fields(hdr)[:5])], 0, 0)
    with pytest.raises(TypeError):
        _gso.split_runs(out, 0, 5, 0, 0)
    with pytest.raises(ValueError, match="too small"):
        _gso.split_runs(out, 99_999, [(packet, *fields(hdr))], 0, 0)
    with pytest.raises(BufferError):
        _gso.split_runs(bytes(100), 0, [], 0, 0)  # read-only
    assert out == bytearray([FILL]) * 100_000
    assert _gso.split_runs(out, 0, [], 0, 0) == []
