"""Message codecs: exact sizes, reserved bytes, and only MessageError for bad input."""

from __future__ import annotations

import contextlib
import os

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vpn.core.wireguard import messages as m
from vpn.core.wireguard.constants import (
    COOKIE_REPLY_SIZE,
    INITIATION_SIZE,
    RESPONSE_SIZE,
    TRANSPORT_MIN_SIZE,
)


def _initiation() -> m.Initiation:
    return m.Initiation(
        0x01020304, os.urandom(32), os.urandom(48), os.urandom(28), os.urandom(16), os.urandom(16)
    )


def _response() -> m.Response:
    return m.Response(7, 9, os.urandom(32), os.urandom(16), os.urandom(16), os.urandom(16))


def test_round_trips_and_sizes() -> None:
    init, resp = _initiation(), _response()
    reply = m.CookieReply(5, os.urandom(24), os.urandom(32))
    assert len(init.pack()) == INITIATION_SIZE
    assert len(resp.pack()) == RESPONSE_SIZE
    assert len(reply.pack()) == COOKIE_REPLY_SIZE
    assert m.parse(init.pack()) == init
    assert m.parse(resp.pack()) == resp
    assert m.parse(reply.pack()) == reply
    transport = m.pack_transport_header(0xAABBCCDD, 2**63 + 5) + bytes(16)
    assert len(transport) == TRANSPORT_MIN_SIZE
    assert m.parse(transport) == m.TransportHeader(0xAABBCCDD, 2**63 + 5)


def test_layout_is_little_endian_with_type_first() -> None:
    raw = _initiation().pack()
    assert raw[:4] == b"\x01\x00\x00\x00"
    assert raw[4:8] == bytes([4, 3, 2, 1])


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "too_short"),
        (b"\x01\x00", "too_short"),
        (b"\x05\x00\x00\x00" + bytes(60), "unknown_type"),
        (b"\x00\x00\x00\x00" + bytes(60), "unknown_type"),
        (b"\x01\x00\x00\x00" + bytes(143), "bad_length"),
        (b"\x01\x00\x00\x00" + bytes(145), "bad_length"),
        (b"\x02\x00\x00\x00" + bytes(87), "bad_length"),
        (b"\x03\x00\x00\x00" + bytes(61), "bad_length"),
        (b"\x04\x00\x00\x00" + bytes(27), "transport_too_short"),
        (b"\x01\x00\x01\x00" + bytes(144), "reserved_nonzero"),
        (b"\x04\x01\x00\x00" + bytes(28), "reserved_nonzero"),
    ],
)
def test_malformed_messages_have_stable_reasons(data: bytes, reason: str) -> None:
    with pytest.raises(m.MessageError) as info:
        m.parse(data)
    assert info.value.reason == reason


def test_typed_parsers_refuse_other_types() -> None:
    with pytest.raises(m.MessageError) as info:
        m.parse_response(_initiation().pack())
    assert info.value.reason == "wrong_type"


@given(st.binary(max_size=200))
def test_arbitrary_bytes_raise_only_message_error(data: bytes) -> None:
    try:
        m.parse(data)
    except m.MessageError as exc:
        assert exc.reason.replace("_", "").isalnum()


@given(st.sampled_from([1, 2, 3, 4]), st.binary(max_size=200))
def test_arbitrary_bodies_with_valid_types(kind: int, body: bytes) -> None:
    with contextlib.suppress(m.MessageError):
        m.parse(bytes([kind, 0, 0, 0]) + body)
