"""What puts a running endpoint "under load" (cookies demanded before any Diffie-Hellman
work): a backlog of handshake messages that passed mac1, never datagrams that merely have a
handshake message's size. A third namespace floods b while a's handshake with b runs.

Run as a module, this file is the flooder of handshake-sized garbage:
`python -m tests.integration.test_under_load ADDR PORT SECONDS RATE`.
"""

from __future__ import annotations

import os
import socket
import sys
import time

import pytest

from lab.flood import MAX_SEGMENTS, Sender
from lab.flood_lab import (
    VICTIM,
    flood_host,
    stats_of,
)
from lab.netns import Lab, Process
from lab.wg_lab import PORT, ROOT, WgPair, build
from vpn.core.wireguard.constants import COOKIE_REPLY_SIZE, INITIATION_SIZE, RESPONSE_SIZE

pytestmark = pytest.mark.netns

# Each flood is bounded in time; a test stops its flooder as soon as it has its answer.
# The flood's bound; each test stops it by pid as soon as a's handshake is through. Long
# enough for ten handshake attempts of a's on a loaded machine.
FLOOD_SECONDS = 70
SHAPES = [(1, INITIATION_SIZE), (2, RESPONSE_SIZE), (3, COOKIE_REPLY_SIZE)]


def shapes(sender: Sender, seconds: float) -> None:
    """Random bytes with a handshake message's type byte, zero reserved bytes and exact size
    (so they pass every length check; mac1 fails, a cookie reply's index is no one's), one
    size per GSO send of MAX_SEGMENTS."""
    deadline = time.monotonic() + seconds
    turn = 0
    while time.monotonic() < deadline:
        kind, size = SHAPES[turn % len(SHAPES)]
        turn += 1
        sender.batch([bytes([kind, 0, 0, 0]) + os.urandom(size - 4)
                      for _ in range(MAX_SEGMENTS)])
        sender.pace()


def protocol_drops(ifname: str) -> dict[str, int]:
    drops = stats_of(ifname).get("protocol_drops", {})  # absent until the first drop
    assert isinstance(drops, dict)
    return drops


def wait_for_drops(ifname: str, reason: str, flooder: Process, timeout: float = 30) -> int:
    """Until the flood shows in b's protocol counters under `reason`; returns the count."""
    deadline = time.monotonic() + timeout
    while (count := protocol_drops(ifname).get(reason, 0)) == 0:
        assert flooder.popen.poll() is None, flooder.output()
        assert time.monotonic() < deadline, f"no {reason} after {timeout} s"
        time.sleep(0.1)
    return count


def handshake_during_flood(pair: WgPair, flooder: Process, reason: str
                           ) -> tuple[int, bool, dict[str, int]]:
    """Once the flood shows in b's counters under `reason`, a starts and pings b (its
    handshake meets the flood), then the flood stops. Returns b's count under `reason`
    before a started, whether the flood still ran when a's ping was answered, and b's
    protocol drops then."""
    before = wait_for_drops(pair.b.ifname, reason, flooder)
    pair.start_ours(pair.a)
    ping = pair.a.host.run("ping", "-c", "1", "-w", "50", pair.b.tunnel4, check=False)
    during = flooder.popen.poll() is None
    drops = protocol_drops(pair.b.ifname)
    flooder.stop()
    print(f"\nb protocol drops: {drops}")
    assert ping.returncode == 0, ping.stdout
    return before, during, drops


def test_handshake_sized_garbage_demands_no_cookies(lab: Lab) -> None:
    """Before, 65 such datagrams a second put b under load, and every peer's handshake
    through the cookie round trip. Now thousands a second change nothing: b sends no cookie
    and a's handshake completes."""
    pair = build(lab)
    flood = flood_host(lab, pair)
    pair.start_ours(pair.b)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    flooder = flood.start(sys.executable, "-m", "tests.integration.test_under_load", VICTIM,
                          str(PORT["b"]), str(FLOOD_SECONDS), "5000", env=env)
    before, during, drops = handshake_during_flood(pair, flooder, "bad_mac1")
    assert during and drops["bad_mac1"] > before, drops  # the flood ran through the handshake
    assert drops.get("unknown_receiver_index", 0) > 0, drops  # cookie-reply-sized ones too
    assert drops.get("cookie_sent", 0) == 0, drops


def main(argv: list[str]) -> None:
    addr, port, seconds, rate = argv
    with socket.socket(socket.AF_INET6 if ":" in addr else socket.AF_INET,
                       socket.SOCK_DGRAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
        shapes(Sender(sock, (addr, int(port)), float(rate)), float(seconds))


if __name__ == "__main__":
    main(sys.argv[1:])
