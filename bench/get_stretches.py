"""How long a `get=1` holds the event loop: the longest stretches between two turns of the
loop, in the serving thread's CPU time, idle and while a client asks for gets back to back.

The ping p99 of bench/management.py is also what the other processes on a shared machine do
to ours; CPU time between the loop's turns is the wait a packet of the data path would have
from our own code alone. A UapiServer on the loop serves a Device of PEERS peers (one IPv4
/32 and one IPv6 /128 each, as bench/management.py's); a task stands in for the data path,
yielding once per turn and timing each; the client is another process (its own GIL).
`python -m bench.get_stretches [--peers N] [--gets G]` prints JSON.
"""

from __future__ import annotations

import argparse
import array
import asyncio
import gc
import ipaddress
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import uvloop

from vpn.control import uapi, uapi_server
from vpn.core.wireguard import Device
from vpn.core.wireguard.changes import ChangeSet
from vpn.core.wireguard.snapshot import SlicedSnapshot

PEERS = 10_000
GETS = 100
IDLE_SECONDS = 3.0
_ROOT = Path(__file__).resolve().parent.parent
NAME = "stretches"
# Another process, so that the client's work does not take our GIL.
_CLIENT = ("import sys\nfrom pathlib import Path\nfrom vpn.control import uapi_server\n"
           "for _ in range(int(sys.argv[3])):\n"
           "    uapi_server.request(sys.argv[1], 'get=1\\n\\n', directory=Path(sys.argv[2]),"
           " timeout=60)\n")


def device(peers: int) -> Device:
    dev = Device(os.urandom(32))
    dev.listen_port = 51820
    for i in range(peers):
        peer = dev.add_peer(os.urandom(32))
        dev.allowed_ips.insert(ipaddress.IPv4Network((0xC613_0000 + i, 32)), peer)
        dev.allowed_ips.insert(ipaddress.IPv6Network(((0xFD00_0099 << 96) + i, 128)), peer)
    return dev


class _Handler:
    def __init__(self, dev: Device) -> None:
        self.device = dev

    def uapi_get(self) -> SlicedSnapshot:
        return SlicedSnapshot(self.device)

    def uapi_set(self, changes: ChangeSet) -> None:
        raise uapi.UapiError(uapi.EINVAL, "read-only")

    def uapi_stats(self) -> dict[str, object]:
        return {}

    def uapi_down(self) -> None:
        pass

    async def uapi_reload(self) -> None:
        pass


async def _turns(until: Callable[[], bool]) -> array.array[float]:
    """The serving thread's CPU milliseconds between this task's turns, until `until()`.
    In an array: a list of a million floats would be walked by the garbage collector."""
    out = array.array("d")
    while not until():
        start = time.thread_time()
        await asyncio.sleep(0)
        out.append((time.thread_time() - start) * 1e3)
    return out


def _summary(stretches: array.array[float]) -> dict[str, float]:
    return {"p99_ms": statistics.quantiles(stretches, n=100)[98], "max_ms": max(stretches),
            "over_1ms": sum(s > 1 for s in stretches)}


async def measure(peers: int, gets: int) -> dict[str, object]:
    with tempfile.TemporaryDirectory() as directory:
        server = uapi_server.UapiServer(NAME, _Handler(device(peers)),
                                        directory=Path(directory))
        # The full collections that building the peers owes, done now as an endpoint does
        # them while it loads its configuration: the steady state is what is measured.
        gc.collect()
        server.bind()
        await server.start()
        try:
            end = time.monotonic() + IDLE_SECONDS
            idle = await _turns(lambda: time.monotonic() > end)
            client = subprocess.Popen([sys.executable, "-c", _CLIENT, NAME, directory,
                                       str(gets)], env=dict(os.environ, PYTHONPATH=str(_ROOT)))
            started = time.monotonic()
            try:
                busy = await _turns(lambda: client.poll() is not None)
            finally:
                if client.poll() is None:
                    client.kill()
                client.wait()
            if client.returncode:
                raise RuntimeError(f"the get client failed: exit status {client.returncode}")
            seconds = time.monotonic() - started
        finally:
            server.close()
    return {"peers": peers, "gets": gets, "gets_per_s": gets / seconds,
            "idle": _summary(idle), "during_gets": _summary(busy)}


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.get_stretches", description=__doc__)
    parser.add_argument("--peers", type=int, default=PEERS)
    parser.add_argument("--gets", type=int, default=GETS)
    args = parser.parse_args()
    print(json.dumps(uvloop.run(measure(args.peers, args.gets))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
