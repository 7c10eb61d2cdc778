"""A program embedding the endpoint through its Python API, run inside a test namespace.

`python api_client.py CONFIG PEER_PUBLIC_KEY PEER_ENDPOINT`: brings CONFIG up (no peers in
it), adds the peer at run time, waits for its handshake, prints the counters as JSON,
removes the peer and shuts down. Each step prints one line the test waits for.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import sys

from vpn.config import Endpoint as EndpointAddress
from vpn.config import PeerConfig
from vpn.endpoint import Endpoint
from vpn.keys import decode_key


async def main(config: str, public_key: str, endpoint: str) -> None:
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
        for _ in range(200):
            if ep.counters()["peers"][0]["last_handshake"]:
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)  # let the test's pings through
        print(json.dumps(ep.counters()), flush=True)
        ep.remove_peer(peer.public_key)
        print("peer removed", flush=True)
        await asyncio.sleep(3)
    print("down", flush=True)


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:4]))
