"""Micro-benchmarks of the protocol core: handshakes per second and transport cost per 64 KiB.

`run()` returns a dict of figures; `make bench` prints it. Pure CPU work, no I/O. The
transport figures come per packet (encrypt_into / decrypt_into) and per batch (encrypt_batch /
decrypt_batch), beside the bare AEAD calls on the same segments, so the `*_overhead_ns_per_packet`
figures are what Python adds per packet on top of ChaCha20-Poly1305 itself. The keypairs
use fastpath.NATIVE: on the native path those figures are negative, since one native
batch beats `cryptography`'s bare calls (bench/pipeline.py compares the two paths).
"""

from __future__ import annotations

import os
import random
import statistics
import time

from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from bench import handshake
from lab.flood import initiation as flood_initiation
from vpn.core.wireguard.constants import LABEL_MAC1, TRANSPORT_HEADER_SIZE, TRANSPORT_MIN_SIZE
from vpn.core.wireguard.crypto import hash_
from vpn.core.wireguard.device import Device
from vpn.core.wireguard.keypair import Keypair, padded_length, transport_size
from vpn.core.wireguard.noise import SessionKeys

_ADDR = ("198.18.0.1", 51820)
SUPER_PACKET = 64 * 1024
MTU = 1420


def _transport_us_per_64k(rounds: int) -> dict[str, float]:
    """Microseconds to encrypt and decrypt one 64 KiB super-packet cut into MTU segments:
    a packet at a time (encrypt_into / decrypt_into), as a batch (encrypt_batch /
    decrypt_batch), and the bare AEAD calls on the same sizes, the floor under both. Each is
    the median over `rounds`."""
    k1, k2 = os.urandom(32), os.urandom(32)
    sender = Keypair(SessionKeys(k1, k2, True, 1, 2), 0.0)
    receiver = Keypair(SessionKeys(k2, k1, False, 2, 1), 0.0)
    payload = os.urandom(SUPER_PACKET)
    view = memoryview(payload)
    offsets = range(0, SUPER_PACKET, MTU)
    sizes = [min(MTU, SUPER_PACKET - off) for off in offsets]
    segments = [view[off : off + n] for off, n in zip(offsets, sizes, strict=True)]
    wire = bytearray(sum(transport_size(n, MTU) for n in sizes))
    plain = bytearray(SUPER_PACKET + 16 * len(sizes))
    wire_view = memoryview(wire)
    plain_view = memoryview(plain)

    # The bare AEAD: the same nonces, padded plaintexts and output slices, made in advance.
    aead = ChaCha20Poly1305(k1)
    nonce = bytes(12)
    enc_args: list[tuple[bytes, memoryview]] = []
    dec_args: list[tuple[bytes, memoryview]] = []
    pos = out = 0
    for n in sizes:
        body = padded_length(n, MTU)
        size = body + TRANSPORT_MIN_SIZE
        ciphertext = wire_view[pos + TRANSPORT_HEADER_SIZE : pos + size]
        enc_args.append((bytes(body), ciphertext))
        dec_args.append((aead.encrypt(nonce, bytes(body), None), plain_view[out : out + body]))
        pos += size
        out += body

    keys = ("encrypt", "decrypt", "encrypt_batch", "decrypt_batch", "aead_encrypt", "aead_decrypt")
    samples: dict[str, list[float]] = {key: [] for key in keys}
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
        lengths = sender.encrypt_batch(segments, wire, 0, MTU)
        t3 = time.perf_counter()
        messages, pos = [], 0
        for length in lengths:
            messages.append(wire_view[pos : pos + length])
            pos += length
        if -1 in receiver.decrypt_batch(messages, plain, 0):
            raise RuntimeError("benchmark decrypt_batch dropped a packet")
        t4 = time.perf_counter()
        for plaintext, ciphertext in enc_args:
            aead.encrypt_into(nonce, plaintext, None, ciphertext)
        t5 = time.perf_counter()
        for sealed, opened in dec_args:
            aead.decrypt_into(nonce, sealed, None, opened)
        t6 = time.perf_counter()
        times = (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4, t6 - t5)
        for key, seconds in zip(keys, times, strict=True):
            samples[key].append(seconds)
    # Medians: one busy moment on a shared machine should not move a figure.
    return {key: statistics.median(times) * 1e6 for key, times in samples.items()}


def _cookie_reply_us(count: int = 5_000) -> float:
    """Microseconds to answer one valid-mac1 initiation with a cookie reply under load: the
    whole price a handshake flood makes the endpoint pay per datagram (lab/flood.py's
    initiations, from 200 source addresses)."""
    device = Device(os.urandom(32))
    assert device.public_key is not None
    mac1_key = hash_(LABEL_MAC1, device.public_key)
    rng = random.Random(1)
    messages = [flood_initiation(mac1_key, rng) for _ in range(256)]
    sources = [(f"198.18.{i // 250}.{i % 250 + 1}", 40_000) for i in range(200)]
    start = time.perf_counter()
    for i in range(count):
        result = device.handle_handshake_message(messages[i % 256], sources[i % 200], 1.0,
                                                 under_load=True)
        if not result.replies:
            raise RuntimeError("benchmark initiation got no cookie reply")
    return (time.perf_counter() - start) / count * 1e6


def _timer_wakeup_us(peers: int, wakeups: int = 200) -> float:
    """Microseconds of one Device.poll with `peers` idle peers (each with a persistent
    keepalive due in 25 s) and one peer whose keepalive is due: the median wakeup."""
    device = Device(os.urandom(32))
    for _ in range(peers):
        device.add_peer(os.urandom(32), persistent_keepalive=25.0).timers.set_persistent_keepalive(
            25.0, 0.0)
    busy = device.add_peer(os.urandom(32), endpoint=_ADDR)
    samples = []
    for i in range(wakeups):
        now = 1.0 + i * 1e-3
        busy.timers.set_persistent_keepalive(1e-3, now - 1e-3)  # due at this wakeup
        start = time.perf_counter()
        device.poll(now)
        samples.append(time.perf_counter() - start)
    return statistics.median(samples) * 1e6


def run(handshakes: int = 300, rounds: int = 300) -> dict[str, float]:
    sides = handshake.handshake_sides_us(handshakes)
    hs = 1e6 / sum(sides.values())  # one handshake: both sides' medians
    us = _transport_us_per_64k(rounds)
    bits = SUPER_PACKET * 8
    packets = -(-SUPER_PACKET // MTU)
    figures = {"handshakes_per_s": round(hs, 1)}
    figures["cookie_reply_us"] = round(_cookie_reply_us(), 1)
    # Goal (the "use every core" issue): 10,000 idle peers cost at most 2x what 100 do.
    few, many = _timer_wakeup_us(100), _timer_wakeup_us(10_000)
    figures["timer_wakeup_us_100_peers"] = round(few, 1)
    figures["timer_wakeup_us_10000_peers"] = round(many, 1)
    figures["timer_wakeup_10000_over_100"] = round(many / few, 2)
    for key, value in us.items():
        label = f"{key}_only" if key.startswith("aead") else key
        figures[f"{label}_us_per_64k"] = round(value, 1)
        figures[f"{label}_gbps"] = round(bits / value / 1e3, 2)
    # Python's share per packet: the time above the bare AEAD calls on the same segments.
    for key in ("encrypt", "encrypt_batch", "decrypt", "decrypt_batch"):
        floor = us["aead_" + key.split("_")[0]]
        figures[f"{key}_overhead_ns_per_packet"] = round((us[key] - floor) / packets * 1e3)
    figures["packets_per_64k"] = float(packets)
    return figures


if __name__ == "__main__":
    for key, value in run().items():
        print(f"{key}: {value}")
