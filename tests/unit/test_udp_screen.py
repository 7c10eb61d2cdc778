"""The native receive's screen (vpn/_udp.c) against the Python rules it applies early:
Device.handle_handshake_message's message_type for everything that is not a transport
message, the receiver-index lookup for transport messages. `make sanitize` runs this file
against a build with AddressSanitizer and UBSan."""

from __future__ import annotations

import os
import socket
from array import array

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vpn import _udp
from vpn.udp import SCREEN_REASONS
from vpn.wireguard import constants
from vpn.wireguard.messages import MessageError, message_type

KNOWN = [7, 0x1234, 0xFFFFFFFF]


def verdict(datagram: bytes, known: list[int]) -> str | None:
    """None for a datagram the Python path would take further, else its drop reason."""
    if len(datagram) >= constants.TRANSPORT_MIN_SIZE and datagram[0] == 4:
        index = int.from_bytes(datagram[4:8], "little")
        return None if index in known else "unknown_receiver_index"
    try:
        message_type(datagram)
    except MessageError as error:
        return error.reason
    return None


def model(data: bytes, segment: int, known: list[int]
          ) -> tuple[list[tuple[int, int]], tuple[int, ...] | None, bool]:
    if not 0 < segment <= len(data):
        segment = len(data) or 1
    runs, counts, lost = [], dict.fromkeys(SCREEN_REASONS, 0), False
    start = None
    for pos in range(0, max(len(data), 1), segment):
        reason = verdict(data[pos:pos + segment], known)
        if reason is None:
            start = pos if start is None else start
            continue
        counts[reason] += 1
        lost |= reason == "unknown_receiver_index"
        if start is not None:
            runs.append((start, pos - start))
            start = None
    if start is not None:
        runs.append((start, len(data) - start))
    values = tuple(counts.values())
    return runs, values if any(values) else None, lost


def datagram(kind: int, size: int, index: int, seed: int) -> bytes:
    body = os.urandom(size) if seed % 2 else bytes(size)
    if kind == 0:
        return body
    head = bytes([kind, 0, 0, 0]) if seed % 3 else bytes([kind, 0, seed % 256, 0])
    if kind == 4:
        head += index.to_bytes(4, "little")
    return (head + body)[:max(size, 0)] if seed % 5 == 0 else head + body


@settings(max_examples=300, deadline=None)
@given(parts=st.lists(st.tuples(st.sampled_from([0, 1, 2, 3, 4, 4, 4, 5, 255]),
                                st.sampled_from([0, 1, 3, 4, 24, 28, 56, 60, 88, 144, 200]),
                                st.sampled_from([*KNOWN, 8, 0]), st.integers(0, 2**16)),
                      max_size=12),
       segment=st.one_of(st.just(0), st.integers(1, 300)), glue=st.booleans())
def test_screen_matches_the_python_rules(parts: list[tuple[int, int, int, int]], segment: int,
                                         glue: bool) -> None:
    datagrams = [datagram(*part) for part in parts]
    if glue and datagrams:  # one GRO receive: datagrams of one size, the last shorter
        size = max(len(d) for d in datagrams) or 1
        data = b"".join(d.ljust(size, b"\0") for d in datagrams[:-1]) + datagrams[-1][:size]
        segment = size
    else:
        data = datagrams[0] if datagrams else b""
    known = array("I", sorted(KNOWN)).tobytes()
    assert _udp.screen(data, segment, known) == model(data, segment, KNOWN)


def test_screen_constants_match_the_protocol() -> None:
    assert _udp.screen(bytes([1, 0, 0, 0]) + bytes(constants.INITIATION_SIZE - 4), 0, b"")[0]
    assert _udp.screen(bytes([2, 0, 0, 0]) + bytes(constants.RESPONSE_SIZE - 4), 0, b"")[0]
    assert _udp.screen(bytes([3, 0, 0, 0]) + bytes(constants.COOKIE_REPLY_SIZE - 4), 0, b"")[0]


def test_receive_checks_its_numbers() -> None:
    with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK) as sock:
        buffer = bytearray(1000)
        for slots, slot_size in ((0, 100), (11, 100), (1, 0), (2000, 1)):
            with pytest.raises(ValueError):
                _udp.receive(sock.fileno(), buffer, slot_size, slots, b"")
        with pytest.raises(ValueError):
            _udp.receive(sock.fileno(), buffer, 100, 10, b"123")  # not uint32s
        # Nothing queued (an unbound socket): nothing received, nothing raised.
        entries, counts, lost, stats = _udp.receive(sock.fileno(), buffer, 100, 10, b"")
        assert (entries, counts, lost) == ([], None, [])
        # A closed descriptor: counted as errors, never raised.
    *_, stats = _udp.receive(-1, buffer, 100, 10, b"")
    assert stats[-1] > 0
