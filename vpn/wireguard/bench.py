"""Micro-benchmarks of the protocol core: handshakes per second and transport cost per 64 KiB.

`run()` returns a dict of figures; `make bench` prints it. Pure CPU work, no I/O.
"""

from __future__ import annotations

import os
import time

from .device import Device
from .keypair import Keypair, transport_size
from .noise import SessionKeys

_ADDR = ("198.18.0.1", 51820)
SUPER_PACKET = 64 * 1024
MTU = 1420


def _handshakes_per_second(count: int) -> float:
    clock = [1_700_000_000.0]
    a = Device(os.urandom(32), wall_clock=lambda: clock[0])
    b = Device(os.urandom(32), wall_clock=lambda: clock[0])
    pa = a.add_peer(b.public_key, preshared_key=os.urandom(32))
    b.add_peer(a.public_key, preshared_key=pa.handshake.psk)
    start = time.perf_counter()
    for i in range(count):
        now = 10.0 * i  # past every per-peer rate limit
        clock[0] += 10.0
        (init,) = pa.initiate_handshake(now)
        response = b.handle_handshake_message(init, _ADDR, now).replies[0]
        if a.handle_handshake_message(response, _ADDR, now).drop_reason:
            raise RuntimeError("benchmark handshake failed")
    return count / (time.perf_counter() - start)


def _transport_us_per_64k(rounds: int) -> tuple[float, float]:
    k1, k2 = os.urandom(32), os.urandom(32)
    sender = Keypair(SessionKeys(k1, k2, True, 1, 2), 0.0)
    receiver = Keypair(SessionKeys(k2, k1, False, 2, 1), 0.0)
    payload = os.urandom(SUPER_PACKET)
    view = memoryview(payload)
    sizes = [min(MTU, SUPER_PACKET - off) for off in range(0, SUPER_PACKET, MTU)]
    wire = bytearray(sum(transport_size(n, MTU) for n in sizes))
    plain = bytearray(SUPER_PACKET + 16 * len(sizes))
    wire_view = memoryview(wire)

    enc_total = dec_total = 0.0
    for _ in range(rounds):
        spans = []
        t0 = time.perf_counter()
        off = pos = 0
        for n in sizes:
            written = sender.encrypt_into(view[off : off + n], wire, pos, MTU)
            spans.append((pos, written))
            off += n
            pos += written
        t1 = time.perf_counter()
        out = 0
        for start, length in spans:
            out += receiver.decrypt_into(wire_view[start : start + length], plain, out)
        t2 = time.perf_counter()
        enc_total += t1 - t0
        dec_total += t2 - t1
    return enc_total / rounds * 1e6, dec_total / rounds * 1e6


def run(handshakes: int = 300, rounds: int = 300) -> dict[str, float]:
    hs = _handshakes_per_second(handshakes)
    enc_us, dec_us = _transport_us_per_64k(rounds)
    bits = SUPER_PACKET * 8
    return {
        "handshakes_per_s": round(hs, 1),
        "encrypt_us_per_64k": round(enc_us, 1),
        "decrypt_us_per_64k": round(dec_us, 1),
        "encrypt_gbps": round(bits / enc_us / 1e3, 2),
        "decrypt_gbps": round(bits / dec_us / 1e3, 2),
        "packets_per_64k": float(-(-SUPER_PACKET // MTU)),
    }


if __name__ == "__main__":
    for key, value in run().items():
        print(f"{key}: {value}")
