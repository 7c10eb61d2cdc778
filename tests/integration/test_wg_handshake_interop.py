"""Handshake-only interop: our sans-I/O WireGuard against Debian's wireguard-go in a netns.

Our initiation goes to wireguard-go over a plain UDP socket; its response must yield keys
that decrypt a packet it sends us and that it accepts our keepalive with (`wg show`).
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
THEIR_ADDR = "198.18.77.1"  # wireguard-go's tunnel address
OUR_ADDR = "198.18.77.2"  # ours, the peer wireguard-go knows
PROBE_PORT = 9


def _unavailable() -> str | None:
    if os.geteuid() != 0:
        return "needs root (ip netns)"
    if shutil.which("wireguard-go") is None or shutil.which("wg") is None:
        return "needs Debian's wireguard-go and wg (wireguard-tools)"
    if shutil.which("ip") is None or not os.path.exists("/dev/net/tun"):
        return "needs iproute2's ip and /dev/net/tun"
    return None


def _run(*args: str) -> str:
    return subprocess.run(args, check=True, capture_output=True, text=True).stdout


@dataclass
class WgGo:
    netns: str
    ifname: str
    port: int
    public_key: bytes


@pytest.fixture
def wireguard_go(tmp_path: Path) -> Iterator[tuple[WgGo, bytes]]:
    reason = _unavailable()
    if reason:
        if os.environ.get("CI"):
            pytest.fail(f"interop test cannot run in CI: {reason}")
        pytest.skip(f"INTEROP TEST NOT RUN: {reason}")
    from vpn.core.wireguard.crypto import PrivateKey

    suffix = secrets.token_hex(4)
    netns, ifname = f"vpnt-wg-{suffix}", f"wgi{suffix}"  # ifname: 11 chars, unique per run
    their_private, our_private = os.urandom(32), os.urandom(32)
    their_public = PrivateKey(their_private).public
    our_public = PrivateKey(our_private).public
    key_file = tmp_path / "their.key"
    key_file.write_text(base64.b64encode(their_private).decode())
    key_file.chmod(0o600)
    port = 51000 + secrets.randbelow(1000)

    proc: subprocess.Popen[bytes] | None = None
    _run("ip", "netns", "add", netns)
    try:
        _run("ip", "-n", netns, "link", "set", "lo", "up")
        proc = subprocess.Popen(
            ["ip", "netns", "exec", netns, "wireguard-go", "-f", ifname],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        sock = Path(f"/var/run/wireguard/{ifname}.sock")
        deadline = time.monotonic() + 10
        while not sock.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                err = proc.stderr.read() if proc.stderr else b""
                pytest.fail(f"wireguard-go did not start: {err!r}")
            time.sleep(0.05)
        _run(
            "ip", "netns", "exec", netns, "wg", "set", ifname,
            "private-key", str(key_file), "listen-port", str(port),
            "peer", base64.b64encode(our_public).decode(), "allowed-ips", f"{OUR_ADDR}/32",
        )  # fmt: skip
        _run("ip", "-n", netns, "addr", "add", f"{THEIR_ADDR}/24", "dev", ifname)
        _run("ip", "-n", netns, "link", "set", ifname, "up")
        yield WgGo(netns, ifname, port, their_public), our_private
    finally:
        if proc is not None and proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)  # the `ip netns exec` process execs wireguard-go
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
        subprocess.run(["ip", "netns", "del", netns], check=False, capture_output=True)
        Path(f"/var/run/wireguard/{ifname}.sock").unlink(missing_ok=True)


def client_main(args: dict[str, object]) -> dict[str, object]:
    """Runs inside the namespace: handshake with wireguard-go, then exchange transport."""
    from tests.unit.core.wireguard.helpers import receive_one
    from vpn.core.wireguard import Device

    our_private = bytes.fromhex(str(args["our_private"]))
    their_public = bytes.fromhex(str(args["their_public"]))
    port = int(args["port"])  # type: ignore[call-overload]
    device = Device(our_private)
    peer = device.add_peer(their_public, endpoint=("127.0.0.1", port))
    device.allowed_ips.insert(f"{THEIR_ADDR}/32", peer)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(5)
    result: dict[str, object] = {}

    now = time.monotonic()
    (initiation,) = peer.initiate_handshake(now)
    sock.sendto(initiation, ("127.0.0.1", port))
    data, src = sock.recvfrom(2048)
    result["response_len"] = len(data)
    hs = device.handle_handshake_message(data, src, time.monotonic())
    result["handshake_event"] = hs.event
    result["handshake_drop"] = hs.drop_reason
    for reply in hs.replies:  # our keepalive confirms the session to wireguard-go
        sock.sendto(reply, src)

    # Make wireguard-go send us a tunnelled packet: a UDP probe routed over its interface.
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    probe.sendto(b"interop-probe", (OUR_ADDR, PROBE_PORT))
    probe.close()
    for _ in range(10):
        data, src = sock.recvfrom(65536)
        if data[0] != 4:
            continue
        got = receive_one(device, data, src, time.monotonic())
        result["transport_drop"] = got.drop_reason
        if got.packet:
            result["inner_src"] = socket.inet_ntoa(got.packet[12:16])
            result["inner_dst"] = socket.inet_ntoa(got.packet[16:20])
            result["probe_seen"] = b"interop-probe" in got.packet
            break
    return result


def _client(wg: WgGo, our_private: bytes) -> dict[str, object]:
    args = {"our_private": our_private.hex(), "their_public": wg.public_key.hex(), "port": wg.port}
    code = (
        "import json, sys; sys.path.insert(0, sys.argv[1]);"
        "from tests.integration.test_wg_handshake_interop import client_main;"
        "print(json.dumps(client_main(json.loads(sys.argv[2]))))"
    )
    out = subprocess.run(
        ["ip", "netns", "exec", wg.netns, sys.executable, "-c", code, str(ROOT), json.dumps(args)],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.netns
def test_handshake_with_wireguard_go(wireguard_go: tuple[WgGo, bytes]) -> None:
    wg, our_private = wireguard_go
    result = _client(wg, our_private)
    assert result["response_len"] == 92
    assert result["handshake_drop"] is None and result["handshake_event"] == "response_consumed"
    assert result.get("transport_drop") is None, result
    assert result.get("probe_seen") is True, result
    assert (result["inner_src"], result["inner_dst"]) == (THEIR_ADDR, OUR_ADDR)

    # wireguard-go's own view: a handshake happened and our keepalive arrived.
    dump = _run("ip", "netns", "exec", wg.netns, "wg", "show", wg.ifname, "dump")
    peer_line = dump.strip().splitlines()[1].split("\t")
    latest_handshake, rx_bytes = int(peer_line[4]), int(peer_line[5])
    assert latest_handshake > 0
    assert rx_bytes >= 32 + 148  # at least the initiation and a keepalive
