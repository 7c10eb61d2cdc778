"""The native receive's screen (vpn/core/wireguard/_screen.c, run by vpn/io/_udp.c's
receive) against the Python rules it applies early:
Device.handle_handshake_message's message_type and mac1 check for everything that is not a
transport message, the receiver-index lookup for transport messages. `make sanitize` runs this file
against a build with AddressSanitizer and UBSan."""

from __future__ import annotations

import os
import socket
import sys
from array import array

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.examples import examples
from vpn.core.wireguard import constants
from vpn.core.wireguard.cookie import CookieChecker
from vpn.core.wireguard.crypto import mac
from vpn.core.wireguard.messages import MessageError, message_type
from vpn.core.wireguard.screen import SCREEN_REASONS, Screen
from vpn.io import _udp

KNOWN = [7, 0x1234, 0xFFFFFFFF]
CHECKER = CookieChecker(bytes(range(32)))
MAC1_KEY = CHECKER.mac1_key


def verdict(datagram: bytes, known: list[int], check_mac1: bool) -> str | None:
    """None for a datagram the Python path would take further, else its drop reason."""
    if len(datagram) >= constants.TRANSPORT_MIN_SIZE and datagram[0] == 4:
        index = int.from_bytes(datagram[4:8], "little")
        return None if index in known else "unknown_receiver_index"
    try:
        kind = message_type(datagram)
    except MessageError as error:
        return error.reason
    if check_mac1 and kind != constants.MESSAGE_COOKIE_REPLY and not CHECKER.valid_mac1(datagram):
        return "bad_mac1"
    return None


def model(data: bytes, segment: int, known: list[int], check_mac1: bool
          ) -> tuple[list[tuple[int, int]], tuple[int, ...] | None, bool]:
    if not 0 < segment <= len(data):
        segment = len(data) or 1
    runs, counts, lost = [], dict.fromkeys(SCREEN_REASONS, 0), False
    start = None
    for pos in range(0, max(len(data), 1), segment):
        reason = verdict(data[pos:pos + segment], known, check_mac1)
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


EXACT = {1: constants.INITIATION_SIZE, 2: constants.RESPONSE_SIZE,
         3: constants.COOKIE_REPLY_SIZE}


def datagram(kind: int, size: int, index: int, seed: int) -> bytes:
    if kind in EXACT and seed % 4 == 0:  # often a handshake message of the right length
        size = EXACT[kind] - 4
    body = os.urandom(size) if seed % 2 else bytes(size)
    if kind == 0:
        return body
    head = bytes([kind, 0, 0, 0]) if seed % 3 else bytes([kind, 0, seed % 256, 0])
    if kind == 4:
        head += index.to_bytes(4, "little")
    message = (head + body)[:max(size, 0)] if seed % 5 == 0 else head + body
    if kind in (1, 2) and seed % 7 < 3 and len(message) >= 32:  # a valid mac1, often
        cut = len(message) - 32
        message = message[:cut] + mac(MAC1_KEY, message[:cut]) + message[cut + 16:]
    return message


@settings(max_examples=examples(300), deadline=None)
@given(parts=st.lists(st.tuples(st.sampled_from([0, 1, 2, 3, 4, 4, 4, 5, 255]),
                                st.sampled_from([0, 1, 3, 4, 24, 28, 56, 60, 88, 144, 200]),
                                st.sampled_from([*KNOWN, 8, 0]), st.integers(0, 2**16)),
                      max_size=12),
       segment=st.one_of(st.just(0), st.integers(1, 300)), glue=st.booleans(),
       check_mac1=st.booleans())
def test_screen_matches_the_python_rules(parts: list[tuple[int, int, int, int]], segment: int,
                                         glue: bool, check_mac1: bool) -> None:
    datagrams = [datagram(*part) for part in parts]
    if glue and datagrams:  # one GRO receive: datagrams of one size, the last shorter
        size = max(len(d) for d in datagrams) or 1
        data = b"".join(d.ljust(size, b"\0") for d in datagrams[:-1]) + datagrams[-1][:size]
        segment = size
    else:
        data = datagrams[0] if datagrams else b""
    known = array("I", sorted(KNOWN)).tobytes()
    key = MAC1_KEY if check_mac1 else b""
    assert Screen(known, key).screen(data, segment) == model(data, segment, KNOWN, check_mac1)


def test_known_indexes_at_any_alignment() -> None:
    """The known array is the caller's buffer, at whatever address it lies: read without a
    misaligned uint32 load (UBSan, under `make sanitize`, aborts on one)."""
    known = array("I", sorted(KNOWN)).tobytes()
    data = b"".join(transport(index, 40) for index in (*KNOWN, 8, 0))
    expected = model(data, 40, KNOWN, False)
    for shift in range(4):
        shifted = memoryview(bytearray(shift) + known)[shift:]
        assert Screen(shifted, b"").screen(data, 40) == expected
        one = memoryview(bytearray(shift) + known[:4])[shift:]
        assert Screen(one, b"").screen(data, 40)[0] == [(0, 40)]


def test_screen_constants_match_the_protocol() -> None:
    for kind, size in ((1, constants.INITIATION_SIZE), (2, constants.RESPONSE_SIZE)):
        body = bytes([kind, 0, 0, 0]) + bytes(size - 36)
        signed = body + mac(MAC1_KEY, body) + bytes(16)
        assert Screen(b"", MAC1_KEY).screen(signed, 0)[0] == [(0, size)]
        assert Screen(b"", MAC1_KEY).screen(body + bytes(32), 0)[1] == (0, 0, 0, 0, 0, 1, 0)
        assert Screen(b"", b"").screen(body + bytes(32), 0)[0] == [(0, size)]
    cookie = bytes([3, 0, 0, 0]) + bytes(constants.COOKIE_REPLY_SIZE - 4)
    assert Screen(b"", MAC1_KEY).screen(cookie, 0)[0] == [(0, constants.COOKIE_REPLY_SIZE)]
    with pytest.raises(ValueError, match="mac1 key"):
        Screen(b"", bytes(31))
    with pytest.raises(ValueError, match="uint32"):
        Screen(b"123", MAC1_KEY)


def test_receive_checks_its_numbers() -> None:
    screen = Screen(b"", MAC1_KEY).capsule
    with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK) as sock:
        buffer = bytearray(1000)
        for slots, slot_size in ((0, 100), (11, 100), (1, 0), (2000, 1)):
            with pytest.raises(ValueError):
                _udp.receive(sock.fileno(), buffer, slot_size, slots, screen)
        # The screen is a DatagramScreen's capsule, nothing else.
        for not_a_screen in (b"", MAC1_KEY, Screen(b"", MAC1_KEY)):
            with pytest.raises(ValueError, match="PyCapsule"):
                _udp.receive(sock.fileno(), buffer, 100, 10, not_a_screen)
        # Nothing queued (an unbound socket): nothing received, nothing raised.
        entries, counts, lost, stats = _udp.receive(sock.fileno(), buffer, 100, 10, screen)
        assert (entries, counts, lost) == ([], None, [])
        # A closed descriptor: counted as errors, never raised.
    *_, stats = _udp.receive(-1, buffer, 100, 10, screen)
    assert stats[-1] > 0


def transport(index: int, size: int) -> bytes:
    return b"\x04\x00\x00\x00" + index.to_bytes(4, "little") + os.urandom(size - 8)


def test_receive_moves_lone_datagrams_of_one_source_together() -> None:
    """recvmmsg on a datagram socketpair (no IP traffic at all): datagrams that came one per
    receive are laid together as GRO would have laid them (all of one size but the last),
    so Python opens them in one receive_run; a longer datagram, garbage or a full slot starts
    a new entry."""
    known = array("I", [7]).tobytes()
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    with a, b:
        sizes = [100] * 5 + [60, 100, 120, 100]
        sent = [transport(7, n) for n in sizes]
        for i, datagram in enumerate(sent):
            a.send(datagram)
            if i == 6:
                a.send(b"\xff" * 50)  # garbage between: dropped by the screen
        buffer = bytearray(1000 * 16)
        screen = Screen(known, b"").capsule
        entries, counts, lost, stats = _udp.receive(b.fileno(), buffer, 1000, 16, screen)
        assert counts == (0, 0, 1, 0, 0, 0, 0) and lost == []
        assert stats[0] == len(sent) + 1
        shapes = [(length, size) for _, length, size, _ in entries]
        # 5 x 100 + 60 ends a run (the last may be shorter); 100 starts one, the garbage
        # ends it, 120 is longer than 100 so it starts one, and 100 may follow it.
        assert shapes == [(560, 100), (100, 100), (220, 120)]
        got = b"".join(bytes(buffer[offset:offset + length]) for offset, length, _, _ in entries)
        assert got == b"".join(sent)
        # A slot holds what it holds: 300-byte slots take three 100-byte datagrams at most.
        for _ in range(7):
            a.send(transport(7, 100))
        entries, *_ = _udp.receive(b.fileno(), buffer, 300, 16, screen)
        assert [length for _, length, _, _ in entries] == [300, 300, 100]


def test_a_gro_receive_of_many_datagrams_keeps_every_run() -> None:
    """One GRO receive of 64 datagrams, known and unknown receiver indexes alternating: 32
    runs, more than the native receive keeps on its stack (it takes them from the heap)."""
    known = array("I", [7]).tobytes()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK) as rx, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:
        rx.bind(("127.0.0.1", 0))
        rx.setsockopt(17, 104, 1)  # UDP_GRO
        sent = [transport(7 if i % 2 == 0 else 8, 32) for i in range(64)]
        tx.sendmsg([b"".join(sent)], [(17, 103, (32).to_bytes(2, sys.byteorder))], 0,
                   rx.getsockname())  # UDP_SEGMENT: one send, one GRO receive
        buffer = bytearray(65535)
        entries, counts, lost, stats = _udp.receive(rx.fileno(), buffer, 65535, 1,
                                                    Screen(known, b"").capsule)
    assert stats[:3] == (1, 1, 64)
    assert counts is not None and sum(counts) == 32 and len(lost) == 1
    # Every run kept, each moved in after the one before (one source: as GRO lays them).
    assert [(offset, length, size) for offset, length, size, _ in entries] == [(0, 1024, 32)]
    assert bytes(buffer[:1024]) == b"".join(sent[::2])
