"""Valid handshakes at a WireGuard endpoint, for `make bench` (bench/handshake_load.py).

`valid ADDR PORT SECONDS RATE VICTIM_PUBLIC_HEX KEYS_FILE SOURCE...`: initiations that the
victim can complete, from every private key in KEYS_FILE (one hex key a line; the victim
knows their public keys) in turn, round-robin from every SOURCE address, at up to RATE a
second. Each is a real Noise IK initiation: each key has one ephemeral and its two
Diffie-Hellmans done once, so a message costs the flooder an AEAD and two MACs while it costs
the victim a whole handshake (consume the initiation, make the response). Timestamps
increase by a microsecond a message, so none is a replay. Cookie replies are honoured as a
real peer would: the cookie is decrypted and later initiations from that source carry
mac2. Prints one JSON line: sent, responses, cookie replies, seconds.

`probe ADDR PORT VICTIM_PUBLIC_HEX TIMEOUT PRIVATE_HEX...`: one protocol client (the
project's vpn.core.wireguard, cookies and retransmits as the protocol times them) per
private key completes a handshake, one after the other; prints the seconds each took.
"""

from __future__ import annotations

import json
import socket
import struct
import sys
import time
from pathlib import Path

from lab.flood import Deadline, Sender, report_drops
from vpn.core.wireguard.constants import LABEL_COOKIE, LABEL_MAC1, TAI64_BASE
from vpn.core.wireguard.crypto import (
    PrivateKey,
    aead_encrypt,
    dh,
    hash_,
    kdf1,
    kdf2,
    mac,
    xaead_decrypt,
)
from vpn.core.wireguard.noise import INITIAL_CHAIN_KEY, INITIAL_HASH

_HEAD = struct.Struct("<II32s48s")  # type, sender index, ephemeral, encrypted static
_COOKIE_REPLY = struct.Struct("<II24s32s")
_ZERO_MAC = bytes(16)
BATCH = 4  # messages a send from one source
# Between probes: they sample the flood's whole length instead of its first moment.
PROBE_GAP = 0.25


class Initiator:
    """One flooding peer: its Noise IK state up to the timestamp, computed once."""

    def __init__(self, private: bytes, victim: bytes) -> None:
        static = PrivateKey(private)
        ephemeral = PrivateKey.generate()
        e_pub = ephemeral.public
        ck = kdf1(INITIAL_CHAIN_KEY, e_pub)
        h = hash_(hash_(INITIAL_HASH, victim), e_pub)
        ck, key = kdf2(ck, dh(ephemeral, victim))
        enc_static = aead_encrypt(key, 0, static.public, h)
        self.hash = hash_(h, enc_static)
        _, self.key = kdf2(ck, dh(static, victim))
        self.e_pub, self.enc_static = e_pub, enc_static

    def initiation(self, sender: int, timestamp: bytes) -> bytes:
        """The message up to mac1."""
        enc_ts = aead_encrypt(self.key, 0, timestamp, self.hash)
        return _HEAD.pack(1, sender, self.e_pub, self.enc_static) + enc_ts


class Source:
    """One bound socket and the cookie the victim last gave it."""

    def __init__(self, family: int, address: str) -> None:
        self.sock = socket.socket(family, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK)
        report_drops(self.sock)
        self.sock.bind((address, 0))
        self.cookie: bytes | None = None


def valid(sender: Sender, seconds: float, victim: bytes, keys: list[bytes],
          addresses: list[str]) -> dict[str, object]:
    peers = [Initiator(key, victim) for key in keys]
    family = socket.AF_INET6 if ":" in sender.dest[0] else socket.AF_INET
    sources = [Source(family, address) for address in addresses]
    mac1_key = hash_(LABEL_MAC1, victim)
    cookie_key = hash_(LABEL_COOKIE, victim)
    mac1_of: dict[int, bytes] = {}  # sender index -> its initiation's mac1 (cookie replies' AD)
    counts = {"responses": 0, "cookie_replies": 0, "bad_cookie_replies": 0}
    clock_ns = int(time.time()) * 1_000_000_000
    turn = 0  # messages so far
    batches = 0
    deadline = Deadline(seconds)

    def drain(source: Source) -> None:
        while True:
            try:
                data = source.sock.recv(2048)
            except BlockingIOError:
                return
            except ConnectionRefusedError:
                continue
            if data[:1] == b"\x02":
                counts["responses"] += 1
            elif data[:1] == b"\x03" and len(data) == _COOKIE_REPLY.size:
                _, receiver, nonce, sealed = _COOKIE_REPLY.unpack(data)
                ad = mac1_of.get(receiver)
                try:
                    assert ad is not None
                    source.cookie = xaead_decrypt(cookie_key, nonce, sealed, ad)
                    counts["cookie_replies"] += 1
                except Exception:
                    counts["bad_cookie_replies"] += 1

    while deadline.running():
        # By batch, not by message: with `turn` (a multiple of BATCH here) only the sources
        # at multiples of gcd(BATCH, len(sources)) ever sent, half of 250, which halved the
        # per-source rate limit's ceiling the figure was read against.
        source = sources[batches % len(sources)]
        batches += 1
        batch = []
        for _ in range(BATCH):  # a few at a time from one source: one GSO send
            peer = peers[turn % len(peers)]
            turn += 1
            clock_ns += 1000
            seconds_part, nanos = divmod(clock_ns, 1_000_000_000)
            body = peer.initiation(turn, struct.pack(">QI", TAI64_BASE + seconds_part, nanos))
            mac1 = mac(mac1_key, body)
            mac1_of[turn] = mac1
            body += mac1
            batch.append(body + (mac(source.cookie, body) if source.cookie else _ZERO_MAC))
        sender.batch(batch, source.sock)
        if len(mac1_of) > 200_000:
            mac1_of.clear()
        if batches % len(sources) == 0:
            for s in sources:
                drain(s)
        sender.pace()
    time.sleep(0.5)  # the last responses in flight
    for s in sources:
        drain(s)
        s.sock.close()
    return {**counts, "peers": len(peers), "sources": len(sources)}


def probe(addr: str, port: int, victim: bytes, timeout: float,
          privates: list[bytes]) -> dict[str, object]:
    from vpn.core.wireguard import Device

    seconds: list[float | None] = []
    for private in privates:
        device = Device(private)
        peer = device.add_peer(victim, endpoint=(addr, port))
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            began = time.monotonic()
            outgoing = peer.initiate_handshake(began)
            took = None
            while time.monotonic() - began < timeout:
                for datagram in outgoing:
                    sock.sendto(datagram, (addr, port))
                wake = device.next_deadline()
                now = time.monotonic()
                sock.settimeout(max(0.001, min(wake - now if wake else 1.0, 1.0)))
                try:
                    data, source = sock.recvfrom(2048)
                except TimeoutError:
                    outgoing = [d for _, d in device.poll(time.monotonic())]  # retransmits
                    continue
                result = device.handle_handshake_message(data, source[:2], time.monotonic())
                outgoing = list(result.replies)
                if result.event == "response_consumed":
                    took = round(time.monotonic() - began, 4)
                    for reply in outgoing:  # the keepalive that confirms the session
                        sock.sendto(reply, (addr, port))
                    break
            seconds.append(took)
        time.sleep(PROBE_GAP)
    return {"seconds": seconds}


def main(argv: list[str]) -> None:
    mode, addr, port = argv[0], argv[1], int(argv[2])
    if mode == "probe":
        report = probe(addr, port, bytes.fromhex(argv[3]), float(argv[4]),
                       [bytes.fromhex(k) for k in argv[5:]])
        print(json.dumps(report), flush=True)
        return
    seconds, rate, victim = float(argv[3]), float(argv[4]), bytes.fromhex(argv[5])
    keys = [bytes.fromhex(line) for line in Path(argv[6]).read_text().split()]
    sock = socket.socket(socket.AF_INET6 if ":" in addr else socket.AF_INET, socket.SOCK_DGRAM)
    sender = Sender(sock, (addr, port), rate)
    began = time.monotonic()
    report = valid(sender, seconds, victim, keys, argv[7:])
    elapsed = time.monotonic() - began
    report.update(sent=sender.sent, unsent=sender.unsent, seconds=round(elapsed, 2),
                  rate=round(sender.sent / elapsed))
    print(json.dumps(report), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
