"""A UDP proxy between two WireGuard endpoints that duplicates and reorders datagrams.

`python -m lab.udp_proxy LEFT A RIGHT B [--duplicate-every N] [--hold-every M]
[--depth K] [--max-delay S]`: what arrives on LEFT goes out of RIGHT to B, what arrives on
RIGHT goes out of LEFT to A, so A's peer Endpoint is LEFT and B's is RIGHT. In each direction
every Nth datagram is sent twice (the copy late, after K more datagrams, like a retransmitting
network would), and every Mth is held back until K later datagrams have passed it or
S seconds went by. Prints "ready", then on SIGTERM one JSON line of counters.
"""

from __future__ import annotations

import argparse
import json
import selectors
import signal
import socket
import sys
import time
from dataclasses import dataclass, field, fields

MESSAGE_TRANSPORT = 4
SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)
SO_SNDBUFFORCE = getattr(socket, "SO_SNDBUFFORCE", 32)
BUFFER_BYTES = 16 << 20  # a GSO burst from an endpoint is ~44 datagrams; bursts queue up


@dataclass
class Direction:
    """One way through the proxy: its counters and the datagrams it is holding back."""

    out: socket.socket
    to: tuple[str, int]
    received: int = 0
    sent: int = 0
    duplicated: int = 0
    duplicated_transport: int = 0
    held: int = 0
    held_transport: int = 0
    send_errors: int = 0
    # (datagrams still to pass it, deadline, datagram)
    holding: list[tuple[int, float, bytes]] = field(default_factory=list)

    def counters(self) -> dict[str, int]:
        skip = ("out", "to", "holding")  # sockets do not copy, and these are no counters
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name not in skip}

    def send(self, datagram: bytes) -> None:
        try:
            self.out.sendto(datagram, self.to)
            self.sent += 1
        except OSError:
            self.send_errors += 1  # a full buffer is loss, which the peers survive anyway

    def release(self, now: float, passed: int = 0) -> None:
        """Send what has waited long enough, counted in datagrams or in time."""
        keep = []
        for left, deadline, datagram in self.holding:
            left -= passed
            if left <= 0 or deadline <= now:
                self.send(datagram)
            else:
                keep.append((left, deadline, datagram))
        self.holding = keep


def address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host.strip("[]"), int(port)


def bound(addr: tuple[str, int]) -> socket.socket:
    family = socket.AF_INET6 if ":" in addr[0] else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, BUFFER_BYTES)
    sock.setsockopt(socket.SOL_SOCKET, SO_SNDBUFFORCE, BUFFER_BYTES)
    sock.bind(addr)
    sock.setblocking(False)
    return sock


def run(args: argparse.Namespace) -> dict[str, dict[str, int]]:
    left, right = bound(address(args.left)), bound(address(args.right))
    # Arriving on LEFT (from A) leaves by RIGHT towards B, and the other way round.
    ways = {left: Direction(right, address(args.b)), right: Direction(left, address(args.a))}
    names = {left: "a_to_b", right: "b_to_a"}
    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    selector = selectors.DefaultSelector()
    for way_sock in ways:
        selector.register(way_sock, selectors.EVENT_READ)
    print("ready", flush=True)
    while not stopping:
        ready = selector.select(timeout=0.005)
        now = time.monotonic()
        for key, _ in ready:
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            way = ways[sock]
            for _ in range(256):  # drain a burst, but let the other direction have a turn
                try:
                    datagram = sock.recv(65535)
                except BlockingIOError:
                    break
                way.received += 1
                transport = bool(datagram) and datagram[0] == MESSAGE_TRANSPORT
                if args.hold_every and way.received % args.hold_every == 0:
                    way.holding.append((args.depth, now + args.max_delay, datagram))
                    way.held += 1
                    way.held_transport += transport
                    continue
                way.send(datagram)
                way.release(now, passed=1)
                if args.duplicate_every and way.received % args.duplicate_every == 0:
                    # The copy arrives late, behind newer datagrams: the replay window must
                    # still know it, which an immediate copy would test less.
                    way.holding.append((args.depth, now + args.max_delay, datagram))
                    way.duplicated += 1
                    way.duplicated_transport += transport
        for way in ways.values():
            if way.holding:
                way.release(now)
    for way in ways.values():
        way.release(float("inf"))
    return {names[sock]: way.counters() for sock, way in ways.items()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("left", help="ADDR:PORT the proxy receives A's datagrams on")
    parser.add_argument("a", help="ADDR:PORT of A")
    parser.add_argument("right", help="ADDR:PORT the proxy receives B's datagrams on")
    parser.add_argument("b", help="ADDR:PORT of B")
    parser.add_argument("--duplicate-every", type=int, default=0)
    parser.add_argument("--hold-every", type=int, default=0)
    parser.add_argument("--depth", type=int, default=8, help="datagrams that overtake one")
    parser.add_argument("--max-delay", type=float, default=0.02, help="seconds, at most")
    counters = run(parser.parse_args(argv))
    print(json.dumps(counters, sort_keys=True), flush=True)
    sys.exit(0)


if __name__ == "__main__":
    main()
