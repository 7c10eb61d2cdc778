"""The busy-poll (vpn/io/busypoll.py): its budget's parsing, the spin's rules against a
scripted poll and clock, and the native poll against its Python twin on real sockets."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import pytest

from vpn.endpoint.tuning import parse_busy_poll
from vpn.io import busypoll
from vpn.io.busypoll import HOLD_NS, TUN, UDP, BusyPoll, wait_readable_python


def test_budgets_parse() -> None:
    assert [parse_busy_poll(t) for t in ("0", " 50 ", str(busypoll.MAX_BUSY_POLL_US))] == [
        0, 50, busypoll.MAX_BUSY_POLL_US]


@pytest.mark.parametrize(("text", "reason"), [("x", "not a number"), ("-1", "outside"),
                                              (str(busypoll.MAX_BUSY_POLL_US + 1), "outside")])
def test_bad_budgets_say_why(text: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        parse_busy_poll(text)


class Script:
    """A scripted wait (what each poll finds, then nothing; (bits, ns) found after ns) and
    a clock it advances."""

    def __init__(self, found: list[int | tuple[int, int]], walk_ns: int = 1000) -> None:
        self.found = found
        self.now = 0
        self.walk_ns = walk_ns
        self.walks: list[str] = []
        self.waits: list[tuple[int, int, int]] = []
        self.fds = (3, 4)

    def wait(self, tun_fd: int, udp_fd: int, budget_ns: int) -> int:
        self.waits.append((tun_fd, udp_fd, budget_ns))
        if self.found:
            found = self.found.pop(0)
            if isinstance(found, tuple):
                found, after_ns = found
                self.now += after_ns
            return found
        self.now += budget_ns  # ran out
        return 0

    def walk(self, name: str) -> None:
        self.walks.append(name)
        self.now += self.walk_ns

    def poller(self, budget_us: int = 50) -> BusyPoll:
        return BusyPoll(budget_us, lambda: self.walk("tun"), lambda: self.walk("udp"),
                        lambda: self.fds, wait=self.wait, clock_ns=lambda: self.now)


def test_a_wakeup_walks_then_polls_once_when_nothing_follows() -> None:
    script = Script([])
    poller = script.poller(50)
    poller.on_udp_readable()
    assert script.walks == ["udp"]
    assert script.waits == [(3, 4, 50_000)]
    assert (poller.caught, poller.spins_empty) == (0, 1)


def test_what_a_poll_finds_is_walked_at_once_and_the_poll_goes_on() -> None:
    """The ping-pong: the socket's packet, then the TUN's answer, then the next packet."""
    script = Script([TUN, UDP, TUN | UDP])
    poller = script.poller()
    poller.on_udp_readable()
    assert script.walks == ["udp", "tun", "udp", "tun", "udp"]
    assert len(script.waits) == 4  # the last came back empty: back to the loop
    assert (poller.caught, poller.spins_empty) == (4, 1)


def test_a_busy_wakeup_returns_to_the_loop_after_the_hold() -> None:
    """Under load every poll finds something: the loop (timers, management) still runs."""
    walk_ns = 100_000
    script = Script([UDP] * 1000, walk_ns=walk_ns)
    script.poller().on_udp_readable()
    walks_after_the_first = len(script.walks) - 1
    assert walks_after_the_first == HOLD_NS // walk_ns
    assert script.found  # there was more to walk: the loop's next wakeup will


def test_a_budget_over_the_hold_is_the_hold() -> None:
    script = Script([UDP] * 100, walk_ns=1_000_000)
    script.poller(5000).on_tun_readable()
    assert len(script.walks) == 1 + 5  # 5 ms of 1 ms walks


def test_only_the_descriptors_being_read_are_polled() -> None:
    script = Script([])
    script.fds = (-1, 4)  # the TUN paused (backpressure) or gone
    script.poller().on_udp_readable()
    assert script.waits == [(-1, 4, 50_000)]
    script.fds = (-1, -1)  # stopping: no poll at all
    script.poller().on_tun_readable()
    assert len(script.waits) == 1


def _wakeups(script: Script, poller: BusyPoll, readable: str, gap_ns: int, n: int) -> list[int]:
    """`n` loop wakeups for `readable`, each `gap_ns` after the last spin began (a packet
    the spin missed: `gap_ns` past its budget); the budget each wakeup's spin was given."""
    budgets = []
    for _ in range(n):
        _, _, budget = script.waits[-1]
        script.now += gap_ns - budget  # the spin ran its budget out; the packet came later
        getattr(poller, f"on_{readable}_readable")()
        budgets.append(script.waits[-1][2])
    return budgets


def test_spins_shrink_while_packets_come_further_apart_than_the_cap() -> None:
    """A flow of one packet a millisecond against a 200 us cap: each spin ran out, and the
    next packet came long after; the spins shrink to the floor instead of 200 us each."""
    script = Script([], walk_ns=0)
    poller = script.poller(200)
    poller.on_udp_readable()
    assert _wakeups(script, poller, "udp", 1_000_000, 5) == [200_000, 200_000, 100_000,
                                                             50_000, 50_000]
    assert poller.spins_empty == 6


def test_spins_grow_back_while_the_next_packet_comes_within_the_cap() -> None:
    script = Script([], walk_ns=0)
    poller = script.poller(200)
    poller.on_udp_readable()
    _wakeups(script, poller, "udp", 1_000_000, 5)
    assert _wakeups(script, poller, "udp", 120_000, 2) == [100_000, 200_000]


def test_what_follows_a_tun_packet_and_a_sockets_packet_have_their_own_budgets() -> None:
    """The sender of a 1 kHz ping: after the ping from the TUN its spin catches the answer
    150 us later; after the answer, the next ping comes a millisecond later. The spin after
    the ping keeps the cap, the one after the answer shrinks to the floor."""
    script = Script([], walk_ns=0)
    poller = script.poller(200)
    for _ in range(6):
        script.found = [(UDP, 150_000)]
        poller.on_tun_readable()
        script.now += 1_000_000
    after_ping, after_answer = script.waits[::2], script.waits[1::2]
    assert [w[2] for w in after_ping] == [200_000] * 6
    assert [w[2] for w in after_answer] == [200_000] * 3 + [100_000, 50_000, 50_000]
    assert poller.caught == 6


def test_a_caught_packet_counts_for_the_budget_of_what_was_walked_last() -> None:
    """A spin after the socket's packet catches the TUN's answer: the next spin is the
    TUN's; its budget is the one the next gap teaches."""
    script = Script([], walk_ns=0)
    poller = script.poller(200)
    for _ in range(3):
        script.found = [(TUN, 20_000)]
        poller.on_udp_readable()
        script.now += 1_000_000
    assert [w[2] for w in script.waits] == [200_000] * 6
    poller.on_udp_readable()
    assert (poller.budgets[UDP].ns, poller.budgets[TUN].ns) == (200_000, 100_000)


@pytest.fixture
def pairs() -> Iterator[tuple[socket.socket, socket.socket, socket.socket, socket.socket]]:
    a, a_peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    b, b_peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    yield a, a_peer, b, b_peer
    for s in (a, a_peer, b, b_peer):
        s.close()


def _waits() -> list[busypoll.WaitReadable]:
    from vpn.io import _udp

    return [wait_readable_python, _udp.wait_readable]


@pytest.mark.parametrize("wait", _waits(), ids=["python", "native"])
def test_the_poll_says_which_is_readable(wait: busypoll.WaitReadable, pairs: tuple) -> None:
    a, a_peer, b, b_peer = pairs
    start = time.monotonic_ns()
    assert wait(a.fileno(), b.fileno(), 2_000_000) == 0  # nothing: the whole budget
    assert time.monotonic_ns() - start >= 2_000_000
    b_peer.send(b"x")
    assert wait(a.fileno(), b.fileno(), 10**9) == UDP
    assert wait(a.fileno(), -1, 1000) == 0  # the readable one left out
    a_peer.send(b"y")
    assert wait(a.fileno(), b.fileno(), 10**9) == TUN | UDP
    assert wait(-1, -1, 1000) == 0


@pytest.mark.parametrize("wait", _waits(), ids=["python", "native"])
def test_a_hung_up_peer_counts_as_ready(wait: busypoll.WaitReadable) -> None:
    """An error or a hang-up is the walk's to see (a deleted TUN reports only errors)."""
    a, a_peer = socket.socketpair()
    with a, a_peer:
        a_peer.close()
        assert wait(a.fileno(), -1, 10**9) == TUN
