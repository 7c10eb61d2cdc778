"""The UDP socket's pure parts: GRO splitting, GSO chunking, the send error policy, addresses.

A scripted stand-in for the kernel socket reaches every error; tests/integration has the real one.
"""

from __future__ import annotations

import errno
import logging
import select
import socket
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lab.packets import split_gro
from vpn.io import udp
from vpn.io.udp import MAX_GSO_SEGMENTS, SOL_UDP, UDP_GRO, UDP_SEGMENT, UdpSocket


class FakeSocket:
    """Records sends; `fail` maps a call number (0-based, over all sends) to an errno."""

    def __init__(self, family: int = socket.AF_INET6) -> None:
        self.family = family
        self.sends: list[tuple[bytes, int | None, tuple]] = []  # (data, gso size, address)
        self.fail: dict[int, int] = {}
        self.incoming: list[tuple[bytes, list, int, tuple]] = []
        self.calls = 0
        self.closed = False

    def fileno(self) -> int:
        return 99

    def getsockname(self) -> tuple:
        return ("::", 51820, 0, 0)

    def getsockopt(self, level: int, option: int) -> int:
        return 1 << 20

    def _maybe_fail(self) -> None:
        call, self.calls = self.calls, self.calls + 1
        if call in self.fail:
            raise OSError(self.fail[call], errno.errorcode[self.fail[call]])

    def sendmsg(self, buffers: tuple, cmsgs: list, flags: int, address: tuple) -> int:
        self._maybe_fail()
        (level, kind, value), = cmsgs
        assert (level, kind) == (SOL_UDP, UDP_SEGMENT)
        data = b"".join(bytes(b) for b in buffers)
        self.sends.append((data, struct.unpack("=H", value)[0], address))
        return len(data)

    def sendto(self, data: bytes | memoryview, address: tuple) -> int:
        self._maybe_fail()
        self.sends.append((bytes(data), None, address))
        return len(data)

    def recvmsg_into(self, buffers: tuple, ancbufsize: int) -> tuple:
        if not self.incoming:
            raise BlockingIOError(errno.EAGAIN, "EAGAIN")
        data, anc, flags, addr = self.incoming.pop(0)
        buffers[0][: len(data)] = data
        return len(data), anc, flags, addr

    def close(self) -> None:
        self.closed = True


def make(family: int = socket.AF_INET6, gso: bool = True) -> tuple[UdpSocket, FakeSocket]:
    fake = FakeSocket(family)
    return UdpSocket(fake, gso=gso, gro=True, batch=4), fake  # type: ignore[arg-type]


def datagrams(count: int, size: int, last: int) -> tuple[memoryview, list[bytes]]:
    parts = [bytes([i % 251]) * size for i in range(count - 1)] + [bytes([250]) * last]
    return memoryview(b"".join(parts)), parts


def sent_datagrams(fake: FakeSocket) -> list[bytes]:
    out = []
    for data, gso, _ in fake.sends:
        out += [bytes(d) for d in split_gro(memoryview(data), gso or len(data))]
    return out


# -- split_gro ---------------------------------------------------------------------------------


def test_split_gro_cuts_equal_segments_and_a_short_last() -> None:
    view, parts = datagrams(5, 100, 37)
    assert [bytes(d) for d in split_gro(view, 100)] == parts


def test_split_gro_exact_multiple_and_single() -> None:
    view, parts = datagrams(3, 64, 64)
    assert [bytes(d) for d in split_gro(view, 64)] == parts
    one = memoryview(b"x" * 10)
    assert [bytes(d) for d in split_gro(one, 10)] == [b"x" * 10]
    assert [bytes(d) for d in split_gro(one, 0)] == [b"x" * 10]
    assert split_gro(memoryview(b""), 0)[0].nbytes == 0


# -- GSO chunking ------------------------------------------------------------------------------


def test_one_gso_send_for_44_segments_with_the_v4_mapped_address() -> None:
    sock, fake = make()
    view, parts = datagrams(44, 1452, 1000)
    sock.send_segments(("198.18.0.2", 51820), view, 1452, 44, 1000)
    assert [(gso, addr) for _, gso, addr in fake.sends] == [(1452, ("::ffff:198.18.0.2", 51820))]
    assert sent_datagrams(fake) == parts
    assert (sock.stats.gso_sends, sock.stats.gso_segments, sock.stats.plain_sends) == (1, 44, 0)


def test_chunks_respect_64_segments_and_65507_bytes() -> None:
    sock, fake = make()
    view, parts = datagrams(200, 1452, 1452)  # 45 x 1452 fit in 65507 bytes, 46 do not
    sock.send_segments(("fd00::2", 1), view, 1452, 200, 1452)
    sizes = [len(data) // 1452 for data, _, _ in fake.sends]
    assert sizes == [45, 45, 45, 45, 20]
    assert sent_datagrams(fake) == parts
    assert fake.sends[0][2] == ("fd00::2", 1)  # IPv6 peers go out unchanged

    sock, fake = make()
    view, parts = datagrams(130, 100, 60)
    sock.send_segments(("fd00::2", 1), view, 100, 130, 60)
    assert [len(d) for d, _, _ in fake.sends] == [6400, 6400, 160]
    assert max(len(d) // 100 for d, _, _ in fake.sends) == MAX_GSO_SEGMENTS
    assert sent_datagrams(fake) == parts


def test_a_lone_trailing_datagram_and_single_datagrams_go_out_plain() -> None:
    sock, fake = make()
    view, parts = datagrams(46, 1452, 10)
    sock.send_segments(("fd00::2", 1), view, 1452, 46, 10)
    assert [gso for _, gso, _ in fake.sends] == [1452, None]
    assert sent_datagrams(fake) == parts
    sock.send_segments(("fd00::2", 1), memoryview(b"abc"), 1452, 1, 3)
    assert fake.sends[-1] == (b"abc", None, ("fd00::2", 1))
    sock.send_segments(("fd00::2", 1), memoryview(b""), 1452, 0, 0)
    assert len(fake.sends) == 3


def test_a_segment_size_that_cannot_be_is_a_programming_error() -> None:
    sock, _ = make()
    for size in (0, 65508):
        with pytest.raises(ValueError, match="not a UDP datagram size"):
            sock.send_segments(("fd00::2", 1), memoryview(b"x" * 10), size, 2, 5)


def test_gso_off_sends_one_datagram_per_call() -> None:
    sock, fake = make(gso=False)
    view, parts = datagrams(5, 100, 50)
    sock.send_segments(("198.18.0.2", 7), view, 100, 5, 50)
    assert [gso for _, gso, _ in fake.sends] == [None] * 5
    assert sent_datagrams(fake) == parts
    assert sock.stats.plain_sends == 5


def test_ipv4_only_socket_keeps_ipv4_addresses() -> None:
    sock, fake = make(family=socket.AF_INET)
    sock.send(("198.18.0.2", 7), b"x")
    assert fake.sends == [(b"x", None, ("198.18.0.2", 7))]


# -- the error policy --------------------------------------------------------------------------


@pytest.mark.parametrize("code", [errno.EIO, errno.EINVAL, errno.EOPNOTSUPP])
def test_offload_refused_falls_back_for_good(code: int, caplog: pytest.LogCaptureFixture) -> None:
    sock, fake = make()
    view, parts = datagrams(100, 1452, 500)
    # The first chunk (45 segments) goes out with GSO, the second one is refused.
    fake.fail = {1: code}
    with caplog.at_level(logging.WARNING, logger="vpn.io.udp"):
        sock.send_segments(("198.18.0.2", 7), view, 1452, 100, 500)
        sock.send_segments(("198.18.0.2", 7), view, 1452, 100, 500)
    assert not sock.gso_enabled
    assert sock.stats.gso_fallbacks == 1
    assert sent_datagrams(fake) == parts + parts
    assert [gso for _, gso, _ in fake.sends].count(1452) == 1
    assert sock.stats.plain_sends == 55 + 100
    assert sock.stats.send_errors == {}
    assert len([r for r in caplog.records if "one datagram per call" in r.message]) == 1


def test_einval_that_plain_sends_share_is_not_blamed_on_gso() -> None:
    sock, fake = make()
    fake.fail = {0: errno.EINVAL, 1: errno.EINVAL}  # e.g. port 0: the plain probe fails too
    view, _ = datagrams(10, 100, 100)
    sock.send_segments(("198.18.0.2", 0), view, 100, 10, 100)
    assert sock.gso_enabled and sock.stats.gso_fallbacks == 0
    assert sock.stats.send_errors == {"EINVAL": 1}
    assert sock.stats.send_dropped == 10


@pytest.mark.parametrize("code", [errno.EAGAIN, errno.ENOBUFS])
def test_congestion_drops_the_rest_of_the_batch(code: int) -> None:
    sock, fake = make()
    fake.fail = {1: code}
    view, parts = datagrams(100, 1452, 1452)
    sock.send_segments(("198.18.0.2", 7), view, 1452, 100, 1452)
    assert sent_datagrams(fake) == parts[:45]
    assert sock.stats.send_errors == {errno.errorcode[code]: 1}
    assert sock.stats.send_dropped == 55
    assert sock.gso_enabled

    sock, fake = make(gso=False)
    fake.fail = {3: code}
    sock.send_segments(("198.18.0.2", 7), view, 1452, 100, 1452)
    assert len(fake.sends) == 3 and sock.stats.send_dropped == 97


@pytest.mark.parametrize("code", [errno.ENETUNREACH, errno.EHOSTUNREACH, errno.EPERM])
def test_other_errors_are_counted_and_never_raised(code: int) -> None:
    sock, fake = make()
    fake.fail = {0: code, 1: code}
    view, _ = datagrams(4, 100, 100)
    sock.send_segments(("198.18.0.2", 7), view, 100, 4, 100)
    sock.send(("198.18.0.2", 7), b"x")
    assert sock.stats.send_errors == {errno.errorcode[code]: 2}
    assert sock.gso_enabled and not fake.sends


def test_emsgsize_resends_that_batch_plain_and_keeps_gso() -> None:
    sock, fake = make()
    fake.fail = {0: errno.EMSGSIZE}
    view, parts = datagrams(5, 1452, 1452)
    sock.send_segments(("198.18.0.2", 7), view, 1452, 5, 1452)
    assert sent_datagrams(fake) == parts
    assert sock.gso_enabled and sock.stats.send_errors == {"EMSGSIZE": 1}


def test_ipv6_peer_on_ipv4_only_socket_is_counted() -> None:
    sock = UdpSocket(socket.socket(socket.AF_INET, socket.SOCK_DGRAM), gso=False, gro=False,
                     batch=1)
    with sock:
        sock.send(("fd00::2", 7), b"x")
    assert sock.stats.send_errors == {"EAFNOSUPPORT": 1}


# -- receiving ---------------------------------------------------------------------------------


def test_receive_batch_reports_gro_size_and_normalised_sources() -> None:
    sock, fake = make()
    gro = [(SOL_UDP, UDP_GRO, struct.pack("=i", 1000))]
    fake.incoming = [
        (b"a" * 2500, gro, 0, ("::ffff:198.18.0.1", 5, 0, 0)),
        (b"b" * 60, [], 0, ("fd00::1", 6, 0, 0)),
        (b"c" * 10, [], socket.MSG_TRUNC, ("fd00::1", 6, 0, 0)),
        (b"d" * 10, [], 0, ("::ffff:198.18.0.1", 5, 0, 0)),
        (b"e" * 10, [], 0, ("::ffff:198.18.0.1", 5, 0, 0)),  # beyond batch=4
    ]
    got = sock.receive_batch()
    assert [(bytes(d), size, src) for d, size, src in got] == [
        (b"a" * 2500, 1000, ("198.18.0.1", 5)),
        (b"b" * 60, 60, ("fd00::1", 6)),
        (b"d" * 10, 10, ("198.18.0.1", 5)),
    ]
    assert [len(d) for d in split_gro(got[0][0], 1000)] == [1000, 1000, 500]
    stats = sock.stats
    assert (stats.receives, stats.gro_receives, stats.gro_segments, stats.truncated) == (3, 1, 3, 1)
    assert len(sock.receive_batch()) == 1 and sock.receive_batch() == []


# -- opening -----------------------------------------------------------------------------------


def test_falls_back_to_ipv4_when_the_kernel_has_no_ipv6(monkeypatch: pytest.MonkeyPatch) -> None:
    real = udp._make_socket

    def no_ipv6(family: int) -> socket.socket:
        if family == socket.AF_INET6:
            raise OSError(errno.EAFNOSUPPORT, "Address family not supported by protocol")
        return real(family)

    monkeypatch.setattr(udp, "_make_socket", no_ipv6)
    with UdpSocket.open(0, batch=2) as a, UdpSocket.open(0, batch=2) as b:
        assert a.family == socket.AF_INET and a.port > 0
        a.send(("127.0.0.1", b.port), b"hello")
        select.select([b.fd], [], [], 5)
        got = b.receive_batch()
        assert [(bytes(d), src) for d, _, src in got] == [(b"hello", ("127.0.0.1", a.port))]
    assert a.fd == -1


# -- the GSO run rule (send_messages) ----------------------------------------------------------


def runs_ok(fake: FakeSocket, lengths: list[int]) -> None:
    """Every GSO send is datagrams all of its segment size but the last, which is not
    larger; together the sends are the datagrams in order."""
    for data, gso, _ in fake.sends:
        if gso is not None:
            sizes = [len(d) for d in split_gro(memoryview(data), gso)]
            assert all(n == gso for n in sizes[:-1]) and sizes[-1] <= gso
    assert [len(d) for d in sent_datagrams(fake)] == lengths


@pytest.mark.parametrize("lengths,gso_sends", [
    ([1452] * 44 + [1000], 1),  # a sealed super-packet: one run
    ([1452] * 44 + [1000] + [1452] * 3 + [80], 2),  # two, back to back
    ([100, 100, 200, 200, 200, 50, 60], 2),  # larger ends a run, smaller is its last
    ([32], 0),  # a lone keepalive goes out plain
    ([], 0),
])
def test_send_messages_cuts_runs_all_the_same_size_only_the_last_smaller(
        lengths: list[int], gso_sends: int) -> None:
    sock, fake = make()
    data = b"".join(bytes([i % 251]) * n for i, n in enumerate(lengths))
    sock.send_messages(("198.18.0.2", 7), memoryview(data), lengths)
    runs_ok(fake, lengths)
    assert b"".join(sent_datagrams(fake)) == data
    assert sock.stats.gso_sends == gso_sends


@given(st.lists(st.integers(32, 1500), max_size=200))
def test_send_messages_obeys_the_run_rule_for_any_lengths(lengths: list[int]) -> None:
    sock, fake = make()
    data = b"".join(bytes([i % 251]) * n for i, n in enumerate(lengths))
    sock.send_messages(("fd00::2", 7), memoryview(data), lengths)
    runs_ok(fake, lengths)
    assert b"".join(sent_datagrams(fake)) == data
