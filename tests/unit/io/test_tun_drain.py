"""The TUN's read drain (vpn/io/tun.py's _frames): the native read_frames (vpn/io/_udp.c)
against its Python twin, on datagram sockets, which like a TUN give one frame per read."""

from __future__ import annotations

import errno
import os
import socket
from collections.abc import Callable, Iterator

import pytest

from vpn.io import _udp
from vpn.io.tun import read_frames_python

Drain = Callable[[int, list[memoryview]], list[int]]
DRAINS = [pytest.param(_udp.read_frames, id="native"),
          pytest.param(read_frames_python, id="python")]


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    b.setblocking(False)
    with a, b:
        yield a, b


def slots(count: int, size: int) -> list[memoryview]:
    whole = memoryview(bytearray(count * size))
    return [whole[i * size:(i + 1) * size] for i in range(count)]


@pytest.mark.parametrize("drain", DRAINS)
def test_reads_until_nothing_is_waiting(drain: Drain,
                                        pair: tuple[socket.socket, socket.socket]) -> None:
    sent = [b"x" * 60, b"", bytes(range(200)), b"\xff" * 1500]
    for frame in sent:
        pair[0].send(frame)
    into = slots(8, 2048)
    lengths = drain(pair[1].fileno(), into)
    assert lengths == [len(frame) for frame in sent]
    assert [bytes(slot[:n]) for slot, n in zip(into, lengths, strict=False)] == sent
    assert drain(pair[1].fileno(), into) == []  # nothing waiting: no error either


@pytest.mark.parametrize("drain", DRAINS)
def test_stops_when_the_slots_are_used(drain: Drain,
                                       pair: tuple[socket.socket, socket.socket]) -> None:
    for i in range(5):
        pair[0].send(bytes([i]) * 10)
    into = slots(3, 64)
    assert drain(pair[1].fileno(), into) == [10, 10, 10]
    assert [slot[0] for slot in into] == [0, 1, 2]
    assert drain(pair[1].fileno(), into) == [10, 10]
    assert [slot[0] for slot in into[:2]] == [3, 4]


@pytest.mark.parametrize("drain", DRAINS)
def test_an_error_before_any_read_raises(drain: Drain) -> None:
    r, w = os.pipe()
    os.close(r)
    os.close(w)  # a closed descriptor: EBADF (a deleted TUN says EBADFD the same way)
    with pytest.raises(OSError) as raised:
        drain(r, slots(2, 16))
    assert raised.value.errno == errno.EBADF


def test_native_refuses_a_read_only_slot(pair: tuple[socket.socket, socket.socket]) -> None:
    pair[0].send(b"abc")
    with pytest.raises(BufferError):
        _udp.read_frames(pair[1].fileno(), [memoryview(b"readonly")])
