"""Topologies around the offload relay: two hosts joined by it, or a gateway behind it.

    host-to-host:  a [relay0] <== relay ==> [relay0] b
    gateway:       client [relay0] <== relay ==> [relay0] gw --veth MTU 1500-- lan
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from lab.netns import Host, Lab, Process

ROOT = Path(__file__).resolve().parents[1]
A4, B4 = "198.18.0.1", "198.18.0.2"
A6, B6 = "fd00:18::1", "fd00:18::2"
LAN_GW4, LAN4 = "198.18.2.1", "198.18.2.2"
LAN_GW6, LAN6 = "fd00:19::1", "fd00:19::2"


@dataclass
class RelayRun:
    lab: Lab
    a: Host
    b: Host
    relay: Process

    def stop(self) -> dict:
        """Stop the relay (by pid) and return its counters."""
        status = self.relay.stop()
        lines = [ln for ln in self.relay.output().splitlines() if ln.startswith("{")]
        if status != 0 or not lines:
            raise RuntimeError(f"relay exited {status}: {self.relay.output()}")
        return json.loads(lines[-1])


def start_relay(
    lab: Lab, a: Host, b: Host, *, mode: str = "offload", mtu: int = 1420,
    mistake: str | None = None,
) -> Process:
    """The relay (or, with `mistake`, the mistake relay) between a and b, once ready."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    program = ["-m", "lab.mistake_relay", mistake] if mistake else ["-m", "lab.relay"]
    proc = lab.spawn(
        [sys.executable, *program, a.ns, b.ns, "--mode", mode, "--mtu", str(mtu)],
        label="relay", env=env,
    )
    deadline = time.monotonic() + 15
    while "ready" not in proc.output():
        if proc.popen.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"relay did not start: {proc.output()}")
        time.sleep(0.02)
    return proc


def host_to_host(lab: Lab, *, mode: str = "offload", mtu: int = 1420,
                 mistake: str | None = None) -> RelayRun:
    a, b = lab.host("a"), lab.host("b")
    relay = start_relay(lab, a, b, mode=mode, mtu=mtu, mistake=mistake)
    for host, v4, v6 in ((a, A4, A6), (b, B4, B6)):
        host.run("ip", "addr", "add", f"{v4}/24", "dev", "relay0")
        host.run("ip", "addr", "add", f"{v6}/64", "dev", "relay0", "nodad")
    return RelayRun(lab, a, b, relay)


def gateway(lab: Lab, *, mode: str = "offload", mtu: int = 1420, lan_mtu: int = 1500,
            mistake: str | None = None) -> tuple[RelayRun, Host]:
    """client -- relay -- gw -- lan, with segmentation offload off on gw's egress veth so
    the kernel must resegment jumbo frames in software, as for a NIC without TSO."""
    run = host_to_host(lab, mode=mode, mtu=mtu, mistake=mistake)
    client, gw = run.a, run.b
    lan = lab.host("lan")
    gw.sysctl("net.ipv4.ip_forward", 1)
    gw.sysctl("net.ipv6.conf.all.forwarding", 1)
    gw_if, _ = lab.link(gw, lan, a_addrs=[f"{LAN_GW4}/24", f"{LAN_GW6}/64"],
                        b_addrs=[f"{LAN4}/24", f"{LAN6}/64"], mtu=lan_mtu)
    gw.run("ethtool", "-K", gw_if, "tso", "off", "gso", "off", "tx", "off")
    client.run("ip", "route", "add", "198.18.2.0/24", "dev", "relay0")
    client.run("ip", "-6", "route", "add", "fd00:19::/64", "dev", "relay0")
    lan.run("ip", "route", "add", "198.18.0.0/24", "via", LAN_GW4)
    lan.run("ip", "-6", "route", "add", "fd00:18::/64", "via", LAN_GW6)
    return run, lan


def checked_transfer(
    sender: Host, receiver: Host, address: str, size: int, *, seconds: float | None = None
) -> tuple[str, str]:
    """Send `size` bytes over TCP; returns (sent, received) as "<bytes> <sha256>" lines.

    With `seconds`, the sender gives up after that long and `received` is "" when the
    receiver has not seen the end of the stream by then. A failed connect raises.
    """
    tool = str(ROOT / "lab" / "transfer.py")
    server = receiver.start(sys.executable, tool, "serve", address)
    deadline = time.monotonic() + 10
    while not (found := re.search(r"^listening (\d+)$", server.output(), re.M)):
        if server.popen.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"transfer server did not start: {server.output()}")
        time.sleep(0.02)
    port = found.group(1)
    limit = [str(seconds)] if seconds else []
    sent = sender.run(sys.executable, tool, "send", address, port, str(size), "7", *limit,
                      timeout=(seconds or 120) + 30).stdout.strip()
    try:
        server.popen.wait(timeout=2 if seconds else 60)
    except subprocess.TimeoutExpired:
        server.stop()
        return sent, ""
    return sent, server.output().splitlines()[-1].strip()
