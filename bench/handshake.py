"""Micro-benchmarks of the handshake's crypto (issue 20): X25519 exchanges per second on 1
and 2 threads, native (vpn/core/wireguard/_handshake.c, the GIL released) beside
`cryptography` (which holds it), and the time each side of a handshake costs, on the native
path and, in a child with VPN_FAST_PATH=python, the Python path.

Pure CPU work, no I/O; medians of a few rounds, as the machine is shared.
`python -m bench.handshake` prints the figures; `make bench` includes them.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from vpn.core.wireguard import crypto
from vpn.core.wireguard.device import Device

_ADDR = ("198.18.0.1", 51820)


def _rate(work: Callable[[int], object], threads: int, count: int) -> tuple[float, float]:
    """Calls per second of `work(count)` run on `threads` threads at once, and the CPU the
    process used meanwhile in percent of one core: about 100 x threads when the threads
    really run in parallel, about 100 when they take turns on the GIL, whatever else the
    shared machine runs."""
    workers = [threading.Thread(target=work, args=(count,)) for _ in range(threads)]
    start, cpu = time.perf_counter(), time.process_time()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    wall = time.perf_counter() - start
    return threads * count / wall, (time.process_time() - cpu) / wall * 100


def x25519_rates(count: int = 1_000, rounds: int = 11) -> dict[str, float]:
    """Exchanges per second, 1 and 2 threads, with what each path holds for a key: the
    native path a crypto.PrivateKey (its public half cached), `cryptography` an
    X25519PrivateKey object; the peer's key arrives as bytes in both, as from the wire."""
    ours, peer = crypto.PrivateKey.generate(), crypto.PrivateKey.generate().public
    theirs = X25519PrivateKey.from_private_bytes(ours.private_bytes())

    def native(n: int) -> None:
        for _ in range(n):
            crypto.dh(ours, peer)

    def reference(n: int) -> None:
        for _ in range(n):
            theirs.exchange(X25519PublicKey.from_public_bytes(peer))

    paths = {"cryptography": reference}
    if crypto.NATIVE.native:
        paths = {"native": native, **paths}
    # Round by round, every path and thread count in turn: a busy moment of the shared
    # machine then hits them alike instead of one of them.
    samples: dict[tuple[str, int], list[tuple[float, float]]] = {
        (name, threads): [] for name in paths for threads in (1, 2)}
    for _ in range(rounds):
        for (name, threads), got in samples.items():
            got.append(_rate(paths[name], threads, count))
    figures: dict[str, float] = {}
    for (name, threads), got in samples.items():
        rates, cpu = zip(*got, strict=True)
        figures[f"x25519_{name}_{threads}_threads_per_s"] = round(statistics.median(rates))
        figures[f"x25519_{name}_{threads}_threads_cpu_percent"] = round(statistics.median(cpu))
    for name in paths:
        two_over_one = (figures[f"x25519_{name}_2_threads_per_s"]
                        / figures[f"x25519_{name}_1_threads_per_s"])
        figures[f"x25519_{name}_2_over_1_threads"] = round(two_over_one, 2)
    return figures


def handshake_sides_us(count: int = 300) -> dict[str, float]:
    """Microseconds each side of a handshake costs on this process's path (median): the
    initiator makes the initiation and consumes the response, the responder consumes the
    initiation and makes the response."""
    clock = [1_700_000_000.0]
    a = Device(os.urandom(32), wall_clock=lambda: clock[0])
    b = Device(os.urandom(32), wall_clock=lambda: clock[0])
    assert a.public_key is not None and b.public_key is not None  # both have a key
    pa = a.add_peer(b.public_key, preshared_key=os.urandom(32))
    b.add_peer(a.public_key, preshared_key=pa.handshake.psk)
    initiator, responder = [], []
    for i in range(count):
        now = 10.0 * i  # past every per-peer rate limit
        clock[0] += 10.0
        t0 = time.perf_counter()
        (init,) = pa.initiate_handshake(now)
        t1 = time.perf_counter()
        response = b.handle_handshake_message(init, _ADDR, now).replies[0]
        t2 = time.perf_counter()
        if a.handle_handshake_message(response, _ADDR, now).drop_reason:
            raise RuntimeError("benchmark handshake failed")
        t3 = time.perf_counter()
        initiator.append(t1 - t0 + t3 - t2)
        responder.append(t2 - t1)
    path = crypto.NATIVE.path
    return {f"handshake_initiator_us_{path}": round(statistics.median(initiator) * 1e6, 1),
            f"handshake_responder_us_{path}": round(statistics.median(responder) * 1e6, 1)}


def run() -> dict[str, float]:
    """x25519_rates and handshake_sides_us here, and handshake_sides_us again in a child on
    the Python path."""
    figures = {**x25519_rates(), **handshake_sides_us()}
    if not crypto.NATIVE.native:
        print(f"bench: NATIVE HANDSHAKE NOT MEASURED: {crypto.NATIVE.reason}",
              file=sys.stderr)
        return figures
    child = subprocess.run([sys.executable, "-m", "bench.handshake", "--sides-json"],
                           env=dict(os.environ, VPN_FAST_PATH="python"), capture_output=True,
                           text=True, check=True)
    figures.update(json.loads(child.stdout))
    return figures


if __name__ == "__main__":
    if sys.argv[1:2] == ["--sides-json"]:  # the child of run()
        print(json.dumps(handshake_sides_us()))
    else:
        for key, value in run().items():
            print(f"{key:44} {value:10.1f}")
