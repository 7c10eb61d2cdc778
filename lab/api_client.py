"""A program embedding the endpoint through its Python API, run inside a test namespace.

`python api_client.py CONFIG PEER_PUBLIC_KEY PEER_ENDPOINT GO`: brings CONFIG up (no peers
in it), adds the peer at run time, waits for its handshake, then for the file GO (the test
has sent its traffic), prints the counters as JSON, removes the peer, waits for GO to be
removed (the test has checked the peer is gone) and shuts down. Each step prints one line
the test waits for; each wait is bounded.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import sys
from collections.abc import Callable
from pathlib import Path

from vpn.control.config_model import Endpoint as EndpointAddress
from vpn.control.config_model import PeerConfig
from vpn.core.keys import decode_key
from vpn.endpoint import Endpoint


async def _until(condition: Callable[[], object], seconds: float = 60) -> None:
    for _ in range(int(seconds / 0.05)):
        if condition():
            return
        await asyncio.sleep(0.05)
    raise TimeoutError("the test did not give the signal")


async def main(config: str, public_key: str, endpoint: str, go: str) -> None:
    host, port = endpoint.rsplit(":", 1)
    peer = PeerConfig(
        public_key=decode_key(public_key),
        allowed_ips=(ipaddress.ip_network("198.18.10.2/32"),),
        endpoint=EndpointAddress(host, int(port)),
    )
    async with Endpoint.from_config(config) as ep:
        print("up", flush=True)
        await ep.set_peer(peer)
        print("peer added", flush=True)
        await _until(lambda: ep.counters()["peers"][0]["last_handshake"])
        await _until(Path(go).exists)
        print(json.dumps(ep.counters()), flush=True)
        ep.remove_peer(peer.public_key)
        print("peer removed", flush=True)
        await _until(lambda: not Path(go).exists())
    print("down", flush=True)


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:5]))
