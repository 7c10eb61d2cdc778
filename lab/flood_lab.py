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

FLOOD_NET = "198.18.5"
VICTIM = f"{FLOOD_NET}.1"  # b, on the flood link


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


def flood_host(lab: Lab, pair: WgPair, extra: int = 0) -> Host:
    """A third namespace on its own link to b, with `extra` more source addresses."""
    flood = lab.host("f")
    lab.link(flood, pair.b.host, a_addrs=[f"{FLOOD_NET}.2/24"], b_addrs=[f"{FLOOD_NET}.1/24"])
    if extra:
        batch = "".join(f"addr add {FLOOD_NET}.{3 + i}/24 dev to-b\n" for i in range(extra))
        flood.run("ip", "-batch", "-", input=batch)
    return flood
