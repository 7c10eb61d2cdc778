"""Two hosts joined by a veth underlay, each running a WireGuard endpoint: ours (`vpn up`)
or Debian's wireguard-go configured with `wg`, so the two can be tested against each other.

    a [wga0 198.18.10.1] --veth 198.18.1.1 / 198.18.1.2 (MTU 1500)-- b [wgb0 198.18.10.2]

(`build(lab, mtu=9000)` gives a jumbo underlay and a tunnel MTU of 8920.)
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from lab.netns import Host, Lab, Process
from vpn.control.uapi_server import SOCKET_DIR

ROOT = Path(__file__).resolve().parents[1]
UNDERLAY = {"a": ("198.18.1.1", "fd00:1::1"), "b": ("198.18.1.2", "fd00:1::2")}
TUNNEL = {"a": ("198.18.10.1", "fd00:10::1"), "b": ("198.18.10.2", "fd00:10::2")}
PORT = {"a": 51820, "b": 51821}


def wg(*args: str, input: str | None = None) -> str:
    return subprocess.run(["wg", *args], input=input, capture_output=True, text=True,
                          check=True).stdout.strip()


@dataclass
class Node:
    """One side: its host, keys, and the process serving its interface."""

    host: Host
    side: str
    private: str
    public: str
    ifname: str
    kind: str = ""
    process: Process | None = None
    config: Path | None = None
    extra_interface_lines: list[str] = field(default_factory=list)

    @property
    def tunnel4(self) -> str:
        return TUNNEL[self.side][0]

    @property
    def tunnel6(self) -> str:
        return TUNNEL[self.side][1]


@dataclass
class WgPair:
    lab: Lab
    a: Node
    b: Node
    underlay: int = 4  # the IP version peers' Endpoints use
    mtu: int = 1420  # the tunnel's: the underlay's less 80 (IPv6 40, UDP 8, WireGuard 32)

    def peer_of(self, node: Node) -> Node:
        return self.b if node is self.a else self.a

    def endpoint_of(self, node: Node) -> str:
        v4, v6 = UNDERLAY[node.side]
        return f"{v4}:{PORT[node.side]}" if self.underlay == 4 else f"[{v6}]:{PORT[node.side]}"

    def write_config(self, node: Node, *, keepalive: int = 0, offload: bool = True) -> Path:
        other = self.peer_of(node)
        v4, v6 = TUNNEL[node.side]
        lines = [
            "[Interface]",
            f"PrivateKey = {node.private}",
            f"ListenPort = {PORT[node.side]}",
            f"Address = {v4}/24, {v6}/64",
            f"MTU = {self.mtu}",
            *([] if offload else ["Offload = off"]),
            *node.extra_interface_lines,
            "",
            "[Peer]",
            f"PublicKey = {other.public}",
            f"AllowedIPs = {other.tunnel4}/32, {other.tunnel6}/128",
            f"Endpoint = {self.endpoint_of(other)}",
            *([f"PersistentKeepalive = {keepalive}"] if keepalive else []),
        ]
        path = self.lab.path(f"{node.ifname}.conf")
        path.write_text("\n".join(lines) + "\n")
        path.chmod(0o600)
        node.config = path
        return path

    def start_ours(self, node: Node, *, keepalive: int = 0, offload: bool = True,
                   up_args: Sequence[str] = ()) -> Process:
        config = self.write_config(node, keepalive=keepalive, offload=offload)
        node.kind, node.process = "ours", start_vpn(node.host, config, *up_args)
        return node.process

    def start_wireguard_go(self, node: Node, *, keepalive: int = 0,
                           binary: str | Path = "wireguard-go") -> Process:
        """A wireguard-go serving the node's interface, configured with `wg set`; `binary`
        picks which build (Debian's on the PATH unless given, e.g. a newer one to measure)."""
        other = self.peer_of(node)
        host = node.host
        proc = host.start(str(binary), "-f", node.ifname,
                          env=dict(os.environ, LOG_LEVEL="error"))
        # The UAPI socket comes after the interface: `wg set` needs both.
        host.wait_for(f"ip link show {node.ifname} && "
                      f"test -S /var/run/wireguard/{node.ifname}.sock")
        key = self.lab.path(f"{node.ifname}.key")
        key.write_text(node.private + "\n")
        key.chmod(0o600)
        args = ["wg", "set", node.ifname, "private-key", str(key),
                "listen-port", str(PORT[node.side]),
                "peer", other.public,
                "allowed-ips", f"{other.tunnel4}/32,{other.tunnel6}/128",
                "endpoint", self.endpoint_of(other)]
        if keepalive:
            args += ["persistent-keepalive", str(keepalive)]
        host.run(*args)
        v4, v6 = TUNNEL[node.side]
        host.run("ip", "addr", "add", f"{v4}/24", "dev", node.ifname)
        host.run("ip", "addr", "add", f"{v6}/64", "dev", node.ifname, "nodad")
        host.run("ip", "link", "set", node.ifname, "mtu", str(self.mtu), "up")
        node.kind, node.process = Path(binary).name, proc
        return proc

    def stop(self, node: Node) -> str:
        """Stop the node's endpoint by pid; returns its output."""
        assert node.process is not None
        node.process.stop()
        output = node.process.output()
        node.process = None
        return output


def start_vpn(host: Host, config: Path, *up_args: str) -> Process:
    """`vpn -v up --foreground [UP_ARGS] CONFIG` in `host`, once it has logged that the
    interface is up."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = host.start(sys.executable, "-m", "vpn.cli", "-v", "up", "--foreground", *up_args,
                      str(config), env=env)
    # Generous: a loaded 2-core machine can take many seconds (1,000 peers' routes), and the
    # bound only matters when the endpoint never comes up.
    deadline = time.monotonic() + 90
    while f"interface {config.stem} up" not in proc.output():
        if proc.popen.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"vpn up did not come up:\n{proc.output()}")
        time.sleep(0.05)
    return proc


def build(lab: Lab, *, underlay: int = 4, mtu: int = 1500) -> WgPair:
    """The two hosts and their keys; `mtu` is the underlay's (the tunnel's is 80 less)."""
    a, b = lab.host("a"), lab.host("b")
    lab.link(a, b, a_addrs=[f"{UNDERLAY['a'][0]}/24", f"{UNDERLAY['a'][1]}/64"],
             b_addrs=[f"{UNDERLAY['b'][0]}/24", f"{UNDERLAY['b'][1]}/64"], mtu=mtu)
    # /var/run/wireguard is shared by every namespace: names must differ per run and side.
    suffix = lab.tag[-4:]
    nodes = []
    for side, host in (("a", a), ("b", b)):
        lab.leftovers.append(SOCKET_DIR / f"wg{side}{suffix}.sock")
        private = wg("genkey")
        nodes.append(Node(host, side, private, wg("pubkey", input=private),
                          f"wg{side}{suffix}"))
    node_a, node_b = nodes
    return WgPair(lab, node_a, node_b, underlay=underlay, mtu=mtu - 80)


def peak_rss_mb(pid: int) -> float:
    """A running process's peak resident set (VmHWM), in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


_COUNTERS = re.compile(r"offload: (\{.*\})")


def final_counters(output: str) -> dict:
    """The counters our endpoint logs as it shuts down."""
    import json

    found = _COUNTERS.findall(output)
    if not found:
        raise AssertionError(f"no counters line in the endpoint's output:\n{output}")
    return json.loads(found[-1])
