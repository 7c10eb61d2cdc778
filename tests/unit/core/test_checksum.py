"""Checksum helpers against a naive RFC 1071 reference."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from lab.packets import pseudo, ref_checksum, ref_sum
from vpn.core.packet.checksum import checksum, fold, ones_complement_sum, pseudo_header_sum

# Small and MTU-sized buffers, odd lengths included.
buffers = st.one_of(st.binary(max_size=64), st.binary(min_size=1000, max_size=3000))


def test_rfc1071_example() -> None:
    data = bytes.fromhex("0001f203f4f5f6f7")
    assert ones_complement_sum(data) == 0xDDF2
    assert checksum(data) == 0x220D


def test_zero_and_all_ones() -> None:
    assert ones_complement_sum(b"") == 0
    assert ones_complement_sum(bytes(5000)) == 0
    assert ones_complement_sum(b"\xff\xff") == 0xFFFF
    # A non-zero sum that is a multiple of 0xFFFF folds to 0xFFFF, never 0.
    assert ones_complement_sum(b"\x80\x00\x7f\xff") == 0xFFFF
    assert ones_complement_sum(b"\xff" * 3000) == 0xFFFF


@given(buffers)
def test_sum_matches_reference(data: bytes) -> None:
    assert ones_complement_sum(data) == ref_sum(data)
    assert ones_complement_sum(memoryview(data)) == ref_sum(data)
    assert ones_complement_sum(bytearray(data)) == ref_sum(data)


@given(buffers, st.integers(0, 0xFFFF))
def test_checksum_with_initial(data: bytes, initial: int) -> None:
    expected = ~fold(ref_sum(data) + initial) & 0xFFFF
    assert checksum(data, initial) == expected
    if not initial:
        assert checksum(data) == ref_checksum(data)


@given(st.integers(0, 2**200))
def test_fold(value: int) -> None:
    folded = fold(value)
    assert folded <= 0xFFFF
    assert folded % 0xFFFF == value % 0xFFFF
    assert (folded == 0) == (value == 0)


@given(st.sampled_from([4, 16]).flatmap(lambda n: st.tuples(
    st.binary(min_size=n, max_size=n), st.binary(min_size=n, max_size=n))),
    st.sampled_from([6, 17]), st.integers(0, 0xFFFF))
def test_pseudo_header_sum(addrs: tuple[bytes, bytes], proto: int, length: int) -> None:
    src, dst = addrs
    assert pseudo_header_sum(src, dst, proto, length) == ref_sum(pseudo(src, dst, proto, length))


def test_pseudo_header_zero_addresses() -> None:
    assert pseudo_header_sum(bytes(4), bytes(4), 0, 0) == 0
    assert pseudo_header_sum(b"\xff\xff\x00\x00", bytes(4), 0, 0) == 0xFFFF
