"""A flood host beside a WgPair: a third namespace on its own link to b, the flooder
(lab/flood.py) started there and its report read back, and b's counters over its socket."""

from __future__ import annotations

import json
import os
import sys

from lab.netns import Host, Lab, Process
from lab.wg_lab import ROOT, WgPair
from vpn.control import uapi
from vpn.control.uapi_server import request
from vpn.core.keys import decode_key

_FLOOD_NET = "198.18.5"
VICTIM = f"{_FLOOD_NET}.1"  # b, on the flood link
# The flood link is 198.18.4.0/23: the flood host's addresses from 198.18.5.2 up, then
# 198.18.4.2 up (a source stands for a peer; the rate limit is per address).
_FLOOD_PREFIX = 23
_SOURCE_NETS = (_FLOOD_NET, "198.18.4")
_PER_NET = 250  # .2 to .251 of each
MAX_SOURCES = _PER_NET * len(_SOURCE_NETS)


def flood_sources(count: int) -> list[str]:
    """The first `count` source addresses of the flood host (at most MAX_SOURCES)."""
    if not 0 < count <= MAX_SOURCES:
        raise ValueError(f"the flood host has 1 to {MAX_SOURCES} source addresses, not {count}")
    return [f"{_SOURCE_NETS[i // _PER_NET]}.{2 + i % _PER_NET}" for i in range(count)]


def stats_of(ifname: str) -> dict:
    """get=vpn-stats over the management socket (protocol_drops holds cookie_sent)."""
    return uapi.parse_stats(request(ifname, "get=vpn-stats\n\n")[0])


def public_hex(key: str) -> str:
    return decode_key(key).hex()


def start_flood(host: Host, *args: str) -> Process:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return host.start(sys.executable, "-m", "lab.flood", *args, env=env)


def flood_result(proc: Process, timeout: float = 120, *, stop: bool = False) -> dict:
    """The flooder's report once it ends: at its SECONDS, or at once with `stop`."""
    if stop:
        proc.stop(timeout)
    proc.popen.wait(timeout)
    lines = [ln for ln in proc.output().splitlines() if ln.startswith("{")]
    assert lines, proc.output()
    return json.loads(lines[-1])


def flood_host(lab: Lab, pair: WgPair, sources: int = 1) -> Host:
    """A third namespace on its own link to b, with flood_sources(sources) as addresses."""
    first, *more = flood_sources(sources)
    flood = lab.host("f")
    lab.link(flood, pair.b.host, a_addrs=[f"{first}/{_FLOOD_PREFIX}"],
             b_addrs=[f"{VICTIM}/{_FLOOD_PREFIX}"])
    if more:
        batch = "".join(f"addr add {address}/{_FLOOD_PREFIX} dev to-b\n" for address in more)
        flood.run("ip", "-batch", "-", input=batch)
    return flood
