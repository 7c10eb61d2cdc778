"""A TCP transfer with end-to-end sha256, to prove a path delivers bytes unchanged.

`serve ADDR`: listen on a port the kernel picks, print "listening PORT", accept one
connection, print "<bytes> <sha256>" of what arrived. (A port chosen by the caller could be
another server's in the same namespace: two transfers into one host at once.)
`send ADDR PORT BYTES SEED [SECONDS]`: send BYTES of seeded pseudo-random data, print the
same line; with SECONDS, give up connecting or sending after that long (printing what went).
"""

from __future__ import annotations

import hashlib
import random
import socket
import sys
import time


def serve(addr: str) -> None:
    family = socket.AF_INET6 if ":" in addr else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as srv:
        srv.bind((addr, 0))
        srv.listen(1)
        print("listening", srv.getsockname()[1], flush=True)
        conn, _ = srv.accept()
        digest, total = hashlib.sha256(), 0
        with conn:
            while chunk := conn.recv(1 << 20):
                digest.update(chunk)
                total += len(chunk)
    print(total, digest.hexdigest(), flush=True)


def send(addr: str, port: int, size: int, seed: int, seconds: float | None) -> None:
    rng = random.Random(seed)
    block = rng.randbytes(1 << 16)
    digest, sent = hashlib.sha256(), 0
    deadline = time.monotonic() + (seconds or 3600)
    with socket.create_connection((addr, port), timeout=seconds or 30) as conn:
        conn.settimeout(0.5)
        while sent < size and time.monotonic() < deadline:
            chunk = block[: min(len(block), size - sent)]
            try:
                n = conn.send(chunk)
            except TimeoutError:
                continue
            digest.update(chunk[:n])
            sent += n
            block = block[n:] + block[:n]  # vary the data so a misplaced segment shows
    print(sent, digest.hexdigest(), flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        serve(sys.argv[2])
    else:
        limit = float(sys.argv[6]) if len(sys.argv) > 6 else None
        send(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), limit)
