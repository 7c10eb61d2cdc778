"""The receive path's check of a decrypted packet (vpn/core/wireguard/inner.py), on any bytes."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from lab.packets import SRC4, SRC6, tcp_packet
from vpn.core.wireguard.inner import inner_packet


@given(st.binary(max_size=120))
def test_any_bytes_give_an_honest_length_or_a_reason(packet: bytes) -> None:
    checked = inner_packet(packet)
    if isinstance(checked, str):
        assert checked in ("inner_not_ip", "dishonest_packet_size")
        return
    length, source = checked
    header, at = (20, 12) if packet[0] >> 4 == 4 else (40, 8)
    assert header <= length <= len(packet)
    assert bytes(source) == packet[at:at + len(source)] and len(source) in (4, 16)


@given(st.binary(max_size=15), st.sampled_from([4, 6]))
def test_padding_is_not_part_of_the_length(padding: bytes, version: int) -> None:
    packet = tcp_packet(b"data", version=version)
    assert inner_packet(packet + padding) == (len(packet), SRC4 if version == 4 else SRC6)


def test_lies_and_strangers() -> None:
    v4 = bytearray(tcp_packet(b"x" * 30))
    for claimed in (0, 19, len(v4) + 1):
        v4[2:4] = claimed.to_bytes(2, "big")
        assert inner_packet(v4) == "dishonest_packet_size"
    assert inner_packet(bytes([0x60]) + bytes(38)) == "dishonest_packet_size"  # under 40
    assert inner_packet(b"") == "inner_not_ip"
    assert inner_packet(bytes([0x50]) + bytes(40)) == "inner_not_ip"
