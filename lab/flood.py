"""Floods of hostile datagrams at a WireGuard UDP port, for tests/integration/test_hostile.py.

Each mode runs for SECONDS (or until SIGTERM) at up to RATE datagrams a second and prints
one JSON line of what it sent, by kind. Batches of equal-sized datagrams go out with UDP GSO
(one sendmsg for up to 64), so a Python sender reaches millions of datagrams in seconds.
The sockets set IP_RECVERR, so a datagram the local stack drops on the way out (ENOBUFS: a
full veth backlog) fails its send and is reported as `unsent` instead of counted as sent;
`total` is what the kernel took.

`garbage ADDR PORT SECONDS RATE [PCAP] [--limit=N]`: random bytes, too short, type bytes
1-4 with wrong lengths, nonzero reserved bytes, bad mac1, unknown receiver indices,
oversized datagrams and, from the transport messages in PCAP (a tcpdump capture), exact
replays and forgeries; with --limit, it stops once N datagrams are sent (a burst of a
known size).

`initiations ADDR PORT SECONDS RATE VICTIM_PUBLIC_HEX SOURCE...`: handshake initiations with
a valid mac1 for the victim (so each costs it a Diffie-Hellman unless it demands cookies),
sent round-robin from every SOURCE address (bound locally, a few ports each); counts the
cookie replies that come back.

`clients ADDR PORT VICTIM_PUBLIC_HEX PRIVATE_HEX...`: one protocol client (vpn.core.wireguard) per
private key completes a handshake with the victim and confirms it with a keepalive.
"""

from __future__ import annotations

import errno
import json
import os
import random
import signal
import socket
import struct
import sys
import time
from collections import Counter
from pathlib import Path

from vpn.core.wireguard.constants import LABEL_MAC1
from vpn.core.wireguard.crypto import hash_, mac
from vpn.core.wireguard.messages import INITIATION_MAC1_OFFSET, TRANSPORT_HEADER

SOL_UDP, UDP_SEGMENT = 17, 103
# <linux/in.h>, <linux/in6.h>: not in Python's socket module.
IP_RECVERR, IPV6_RECVERR = 11, 25
# A send that fails with one of these sent nothing (EAGAIN: the socket buffer is full;
# ENOBUFS: a queue on the way out dropped it; ECONNREFUSED: an ICMP error was pending).
_UNSENT = frozenset({errno.EAGAIN, errno.ENOBUFS, errno.ECONNREFUSED})
MAX_SEGMENTS = 64
MAX_UDP = 65507
PLAIN_MAX = 1472  # larger datagrams are sent one by one and fragmented by IP


class Deadline:
    """`seconds` from now, or sooner: SIGTERM ends the flood early and the report is still
    printed, so a test stops it by pid as soon as it has its answer."""

    def __init__(self, seconds: float) -> None:
        self._at = time.monotonic() + seconds
        signal.signal(signal.SIGTERM, self._stop)

    def _stop(self, signum: int, frame: object) -> None:
        self._at = float("-inf")

    def running(self) -> bool:
        return time.monotonic() < self._at


def transport_messages(pcap: Path) -> list[bytes]:
    """The WireGuard transport messages (type 4) in an Ethernet/IPv4 tcpdump capture."""
    data = pcap.read_bytes()
    if len(data) < 24:
        return []
    endian = "<" if data[:4] in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1") else ">"
    record = struct.Struct(endian + "IIII")
    out: list[bytes] = []
    offset = 24
    while offset + 16 <= len(data):
        _, _, caplen, length = record.unpack_from(data, offset)
        frame = data[offset + 16 : offset + 16 + caplen]
        offset += 16 + caplen
        # A UDP GSO super-packet crosses veth whole: its payload is many messages, not one.
        if length != caplen or length > 1514 or len(frame) < 42:
            continue
        if frame[12:14] != b"\x08\x00" or frame[23] != 17:  # IPv4, UDP
            continue
        ihl = (frame[14] & 0x0F) * 4
        payload = frame[14 + ihl + 8 :]
        if len(payload) >= 32 and payload[:4] == b"\x04\x00\x00\x00":
            out.append(payload)
    return out


def report_drops(sock: socket.socket) -> None:
    """Without IP_RECVERR the kernel hides a local drop (ENOBUFS) from a UDP send: it only
    counts it in Udp SndbufErrors and the send "succeeds"."""
    if sock.family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVERR, 1)
    else:
        sock.setsockopt(socket.IPPROTO_IP, IP_RECVERR, 1)


class Sender:
    """Sends batches with GSO where it can, paced to `rate` datagrams a second; counts the
    datagrams the kernel took (`sent`) and those it refused (`unsent`, in `errors` sends)."""

    def __init__(self, sock: socket.socket, dest: tuple[str, int], rate: float) -> None:
        report_drops(sock)
        self.sock = sock
        self.dest = dest
        self.rate = rate
        self.start = time.monotonic()
        self.sent = 0
        self.unsent = 0
        self.errors = 0

    def pace(self) -> None:
        ahead = self.sent / self.rate - (time.monotonic() - self.start)
        if ahead > 0:
            time.sleep(ahead)

    def batch(self, datagrams: list[bytes], sock: socket.socket | None = None) -> int:
        """Send equal-sized datagrams (the last may be shorter) in one GSO sendmsg."""
        sock = sock or self.sock
        size = len(datagrams[0])
        if len(datagrams) == 1 or size == 0 or size > PLAIN_MAX:
            return sum(self._send(sock, [d], []) for d in datagrams)
        cmsg = [(SOL_UDP, UDP_SEGMENT, struct.pack("=H", size))]
        return self._send(sock, datagrams, cmsg)

    def _send(self, sock: socket.socket, datagrams: list[bytes], cmsg: list) -> int:
        """One sendmsg; returns how many datagrams the kernel took (all or none)."""
        try:
            sock.sendmsg([b"".join(datagrams)], cmsg, 0, self.dest)
        except OSError as err:
            if err.errno not in _UNSENT:
                raise
            self.errors += 1
            self.unsent += len(datagrams)
            return 0
        self.sent += len(datagrams)
        return len(datagrams)


def _count(size: int) -> int:
    return max(1, min(MAX_SEGMENTS, MAX_UDP // size))


def garbage(
    sender: Sender, seconds: float, captured: list[bytes], *, limit: int | None = None
) -> Counter[str]:
    """Hostile datagrams of every kind for `seconds`, or until `limit` are sent."""
    rng = random.Random(1)
    sent: Counter[str] = Counter()
    by_size: dict[int, list[bytes]] = {}
    for message in captured:
        by_size.setdefault(len(message), []).append(message)
    sizes = sorted(by_size)
    kinds = ["random", "too_short", "wrong_length", "reserved_nonzero", "bad_mac1",
             "unknown_index", "oversized"]
    if captured:
        kinds += ["replay", "replay", "forged", "truncated_transport"]
    deadline = Deadline(seconds)
    while deadline.running() and (limit is None or sender.sent < limit):
        kind = rng.choice(kinds)
        if kind == "random":
            size = rng.randint(4, 1400)
            blob = os.urandom(size * _count(size))
            batch = [blob[i : i + size] for i in range(0, len(blob), size)]
            # A random first word is almost never a valid type with zero reserved bytes.
            batch = [b"\xff" + d[1:] if d[0] in (1, 2, 3, 4) else d for d in batch]
        elif kind == "too_short":
            size = rng.randint(0, 3)  # zero-length datagrams too: no type byte at all
            batch = [os.urandom(size) for _ in range(MAX_SEGMENTS if size else 8)]
        elif kind == "wrong_length":
            msg_type = rng.randint(1, 4)
            right = {1: 148, 2: 92, 3: 64, 4: 32}[msg_type]
            size = rng.randint(4, 31) if msg_type == 4 else rng.choice(
                [n for n in range(4, 200) if n != right])
            head = bytes([msg_type, 0, 0, 0])
            batch = [head + os.urandom(size - 4) for _ in range(_count(size))]
        elif kind == "reserved_nonzero":
            batch = [bytes([1, 0, 1, 0]) + os.urandom(144) for _ in range(_count(148))]
        elif kind == "bad_mac1":
            msg_type, size = rng.choice([(1, 148), (2, 92)])
            batch = [bytes([msg_type, 0, 0, 0]) + os.urandom(size - 4)
                     for _ in range(_count(size))]
        elif kind == "unknown_index":
            size = rng.randint(32, 1400)
            batch = [b"\x04\x00\x00\x00" + os.urandom(size - 4) for _ in range(_count(size))]
        elif kind == "oversized":
            size = rng.choice([1500, 4000, 9000, 65507])
            batch = [bytes([rng.randint(0, 255)]) + os.urandom(size - 1)]
        elif kind == "replay":
            group = by_size[rng.choice(sizes)]
            batch = [rng.choice(group) for _ in range(_count(len(group[0])))]
        elif kind == "forged":
            # A live receiver index with a counter ahead of the peer's: costs an AEAD each.
            size = rng.choice(sizes)
            _, index, counter = TRANSPORT_HEADER.unpack_from(by_size[size][0])
            batch = [TRANSPORT_HEADER.pack(4, index, counter + 100_000 + rng.randrange(1 << 20))
                     + os.urandom(size - 16) for _ in range(_count(size))]
        else:  # truncated_transport: a real message cut short
            size = rng.randint(4, 31)
            batch = [rng.choice(captured)[:size] for _ in range(MAX_SEGMENTS)]
        sent[kind] += sender.batch(batch)
        sender.pace()
    return sent


def initiation(mac1_key: bytes, rng: random.Random) -> bytes:
    """A well-formed initiation from nobody, with a valid mac1 and an empty mac2."""
    body = b"\x01\x00\x00\x00" + rng.randbytes(INITIATION_MAC1_OFFSET - 4)
    return body + mac(mac1_key, body) + bytes(16)


def initiations(
    sender: Sender, seconds: float, victim: bytes, sources: list[str]
) -> dict[str, object]:
    rng = random.Random(2)
    mac1_key = hash_(LABEL_MAC1, victim)
    messages = [initiation(mac1_key, rng) for _ in range(512)]
    family = socket.AF_INET6 if ":" in sender.dest[0] else socket.AF_INET
    socks = []
    for address in sources:
        for _ in range(2):  # two ports per address: more distinct sources for cookies
            sock = socket.socket(family, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK)
            report_drops(sock)
            sock.bind((address, 0))
            socks.append(sock)
    cookies = 0
    deadline = Deadline(seconds)
    turn = 0
    while deadline.running():
        sock = socks[turn % len(socks)]
        turn += 1
        start = rng.randrange(len(messages) - 8)
        sender.batch(messages[start : start + 8], sock)
        if turn % len(socks) == 0:
            cookies += sum(_drain(s) for s in socks)
        sender.pace()
    time.sleep(0.5)
    cookies += sum(_drain(s) for s in socks)
    for sock in socks:
        sock.close()
    return {"initiation": sender.sent, "sources": len(socks), "cookie_replies": cookies}


def _drain(sock: socket.socket) -> int:
    """Cookie replies (type 3) waiting on a flood socket."""
    n = 0
    while True:
        try:
            data = sock.recv(2048)
        except BlockingIOError:
            return n
        except ConnectionRefusedError:
            continue  # an ICMP error, reported once (IP_RECVERR): no datagram to count
        n += data[:1] == b"\x03"


def clients(addr: str, port: int, victim: bytes, privates: list[bytes]) -> dict[str, object]:
    from vpn.core.wireguard import Device

    completed, seconds = 0, []
    for private in privates:
        device = Device(private)
        peer = device.add_peer(victim, endpoint=(addr, port))
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.settimeout(5)
            began = time.monotonic()
            for datagram in peer.initiate_handshake(began):
                sock.sendto(datagram, (addr, port))
            try:
                data, source = sock.recvfrom(2048)
            except TimeoutError:
                continue
            result = device.handle_handshake_message(data, source[:2], time.monotonic())
            for reply in result.replies:  # the keepalive that confirms the session
                sock.sendto(reply, (addr, port))
            if result.event == "response_consumed":
                completed += 1
                seconds.append(round(time.monotonic() - began, 3))
    return {"completed": completed, "seconds": seconds}


def main(argv: list[str]) -> None:
    if argv[0] == "clients":
        victim = bytes.fromhex(argv[3])
        privates = [bytes.fromhex(k) for k in argv[4:]]
        print(json.dumps(clients(argv[1], int(argv[2]), victim, privates)), flush=True)
        return
    options = [a for a in argv if a.startswith("--limit=")]
    argv = [a for a in argv if a not in options]
    limit = int(options[-1].partition("=")[2]) if options else None
    mode, addr, port, seconds, rate = argv[:5]
    family = socket.AF_INET6 if ":" in addr else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
    sender = Sender(sock, (addr, int(port)), float(rate))
    began = time.monotonic()
    if mode == "garbage":
        captured = transport_messages(Path(argv[5])) if len(argv) > 5 else []
        report: dict[str, object] = dict(garbage(sender, float(seconds), captured, limit=limit))
        report["captured"] = len(captured)
    else:
        report = initiations(sender, float(seconds), bytes.fromhex(argv[5]), argv[6:])
    elapsed = time.monotonic() - began
    report.update(total=sender.sent, seconds=round(elapsed, 2),
                  rate=round(sender.sent / elapsed), send_errors=sender.errors,
                  unsent=sender.unsent)
    print(json.dumps(report), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
