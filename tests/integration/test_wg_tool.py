"""Debian's `wg` against our endpoint over /var/run/wireguard/IFACE.sock, in a netns pair.

Also the socket's own contract: malformed requests, limits, permissions, a stale socket
replaced, a live one refused, and `vpn show` / `vpn down`.
"""

from __future__ import annotations

import json
import os
import select
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lab.netns import Lab, Process
from lab.relay_lab import checked_transfer
from lab.wg_lab import ROOT, WgPair, build, wg
from vpn.io import native

pytestmark = pytest.mark.netns

SOCKET_DIR = Path("/var/run/wireguard")


def _vpn(pair: WgPair, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-m", "vpn.cli", *args], capture_output=True,
                          text=True, env=env, timeout=30)
    if check and proc.returncode != 0:
        raise AssertionError(f"vpn {' '.join(args)}: {proc.returncode} {proc.stderr}")
    return proc


def _dump(pair: WgPair) -> list[list[str]]:
    out = pair.a.host.run("wg", "show", pair.a.ifname, "dump").stdout
    return [line.split("\t") for line in out.strip().split("\n")]


def _peers(pair: WgPair) -> dict[str, list[str]]:
    return {row[0]: row for row in _dump(pair)[1:]}


def _raw(ifname: str, payload: bytes, *, shut: bool = False, timeout: float = 5) -> bytes:
    """Send raw bytes to the socket; return everything read until the server closes or idles."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(str(SOCKET_DIR / f"{ifname}.sock"))
        try:
            sock.sendall(payload)
            if shut:
                sock.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server closed first: that is one of the allowed outcomes
        data = b""
        try:
            while chunk := sock.recv(65536):
                data += chunk
                if data.endswith(b"\n\n") and not shut:
                    break
        except (TimeoutError, ConnectionResetError):
            pass
        return data


def _rss_kb(proc: Process) -> int:
    # `ip netns exec` execs the program, so the Popen pid is the endpoint itself.
    for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def _ping(pair: WgPair, address: str | None = None) -> None:
    pair.a.host.run("ping", "-c", "2", "-i", "0.2", "-W", "3", address or pair.b.tunnel4)


def test_wg_tool_drives_the_endpoint(lab: Lab) -> None:
    pair = build(lab)
    proc = pair.start_ours(pair.a)
    pair.start_ours(pair.b)
    a, b, name = pair.a, pair.b, pair.a.ifname
    _ping(pair)

    # wg show / dump / showconf
    shown = a.host.run("wg", "show", name).stdout
    assert f"interface: {name}" in shown and f"peer: {b.public}" in shown
    assert "latest handshake" in shown and "transfer:" in shown
    iface_row, *peer_rows = _dump(pair)
    assert iface_row == [a.private, a.public, "51820", "off"]
    (row,) = peer_rows
    assert row[:5] == [b.public, "(none)", "198.18.1.2:51821",
                       "198.18.10.2/32,fd00:10::2/128", row[4]]
    assert int(row[4]) > time.time() - 60 and int(row[5]) > 0 and int(row[6]) > 0
    assert row[7] == "off"
    conf = a.host.run("wg", "showconf", name).stdout
    assert f"PrivateKey = {a.private}" in conf and "ListenPort = 51820" in conf
    assert f"PublicKey = {b.public}" in conf and "Endpoint = 198.18.1.2:51821" in conf

    # wg set: add a peer with every option, then remove it
    c_public = wg("pubkey", input=wg("genkey"))
    psk = lab.path("psk")
    psk.write_text(wg("genpsk") + "\n")
    a.host.run("wg", "set", name, "peer", c_public, "preshared-key", str(psk),
               "endpoint", "[fd00:1::9]:1234", "persistent-keepalive", "25",
               "allowed-ips", "198.18.99.0/24,fd00:99::/64")
    c_row = _peers(pair)[c_public]
    assert c_row[1] == psk.read_text().strip() and c_row[2] == "[fd00:1::9]:1234"
    assert c_row[3] == "198.18.99.0/24,fd00:99::/64" and c_row[7] == "25"
    a.host.run("wg", "set", name, "peer", c_public, "remove")
    assert c_public not in _peers(pair)

    # wg set on the live peer: keepalive, allowed-ips, endpoint (to the IPv6 underlay)
    a.host.run("wg", "set", name, "peer", b.public, "persistent-keepalive", "7",
               "allowed-ips", "198.18.10.2/32,fd00:10::2/128,198.18.77.0/24",
               "endpoint", "[fd00:1::2]:51821")
    b_row = _peers(pair)[b.public]
    assert b_row[7] == "7" and b_row[2] == "[fd00:1::2]:51821"
    assert set(b_row[3].split(",")) == {"198.18.10.2/32", "fd00:10::2/128", "198.18.77.0/24"}
    _ping(pair)

    # listen port (a rebind: b learns the new port from the next packet) and fwmark
    a.host.run("wg", "set", name, "listen-port", "51830", "fwmark", "0x1234")
    assert _dump(pair)[0][2:] == ["51830", "0x1234"]
    _ping(pair)
    a.host.run("wg", "set", name, "fwmark", "0")
    assert _dump(pair)[0][3] == "off"

    # wg set with a value only the endpoint can refuse: a port in use. Nothing changes.
    holder = a.host.start(sys.executable, "-c", "import socket, time; s = socket.socket("
                          "socket.AF_INET6, socket.SOCK_DGRAM); s.bind(('::', 51999)); "
                          "print('bound', flush=True); time.sleep(60)")
    a.host.wait_for("ss -uln | grep -q ':51999 '")
    before = _dump(pair)
    refused = a.host.run("wg", "set", name, "listen-port", "51999", "peer", b.public,
                         "persistent-keepalive", "9", check=False)
    assert refused.returncode != 0 and "Address already in use" in refused.stderr
    assert _dump(pair)[0] == before[0] and _peers(pair)[b.public][7] == "7"
    holder.stop()
    _ping(pair)

    # wg syncconf: b's allowed-ips change, c appears; b keeps its session and counters
    rx_before = int(_peers(pair)[b.public][5])
    sync = lab.path("sync.conf")
    sync.write_text(
        f"[Interface]\nPrivateKey = {a.private}\nListenPort = 51830\n\n"
        f"[Peer]\nPublicKey = {b.public}\nAllowedIPs = 198.18.10.2/32, fd00:10::2/128\n"
        f"Endpoint = [fd00:1::2]:51821\n\n"
        f"[Peer]\nPublicKey = {c_public}\nAllowedIPs = 198.18.98.0/24\n")
    a.host.run("wg", "syncconf", name, str(sync))
    peers = _peers(pair)
    assert set(peers) == {b.public, c_public}
    assert set(peers[b.public][3].split(",")) == {"198.18.10.2/32", "fd00:10::2/128"}
    assert int(peers[b.public][5]) >= rx_before > 0  # not a new peer: counters kept
    _ping(pair)
    _ping(pair, b.tunnel6)

    # raw requests: bad values, half-valid requests, limits, garbage
    bad_hex = f"set=1\nlisten_port=5555\npublic_key={'Z' * 64}\n\n".encode()
    assert _raw(name, bad_hex) == b"errno=-22\n\n"
    half = f"set=1\nlisten_port=5555\npublic_key={c_public and '11' * 32}\nallowed_ip=1/99\n\n"
    assert _raw(name, half.encode()) == b"errno=-22\n\n"
    unknown = b"set=1\nwhat=1\n\nget=1\n\n"  # the connection stays usable after an error
    answer = _raw(name, unknown, shut=True)
    assert answer.startswith(b"errno=-22\n\nprivate_key=") and answer.endswith(b"errno=0\n\n")
    assert _dump(pair)[0][2] == "51830" and len(_dump(pair)) == 3  # nothing half-applied
    truncated = _raw(name, b"set=1\nlisten_port=5556\n", shut=True)
    assert truncated in (b"", b"errno=-71\n\n")
    # 1.3 MB, under the byte limit: read to its end and refused for its first line (an
    # allowed_ip before any public_key)
    big = b"set=1\n" + b"allowed_ip=10.0.0.0/8\n" * 60_000 + b"\n"
    assert _raw(name, big) == b"errno=-22\n\n"
    assert _raw(name, b"set=1\n" + b"x" * 100_000 + b"\n\n") in (b"", b"errno=-71\n\n")
    for seed in range(5):
        garbage = bytes((i * 131 + seed * 7) % 256 for i in range(8192))
        assert _raw(name, garbage, shut=True) in (b"", b"errno=-71\n\n", b"errno=-22\n\n")
    junk_lines = b"set=1\n" + b"foo=bar\n" * 10_000 + b"\n"
    assert _raw(name, junk_lines) == b"errno=-22\n\n"
    lines = [f"public_key={'22' * 32}"] + [
        f"allowed_ip=10.{i >> 8}.{i & 255}.0/24" for i in range(9_999)]
    many = ("set=1\n" + "\n".join(lines) + "\n\n").encode()
    assert _raw(name, many) == b"errno=0\n\n"
    assert _raw(name, f"set=1\npublic_key={'22' * 32}\nremove=true\n\n".encode()) \
        == b"errno=0\n\n"
    assert len(_dump(pair)) == 3
    # The first rounds set the allocator's high-water mark (a 1 MiB request is several MB of
    # str objects while it is read, and the C heap keeps some headroom free, vpn.host.memory);
    # ten more rounds of the worst requests must not add to it. After one warm-up round the
    # growth was noise of up to 3.5 MB; a round's requests kept each time would be 13 MB.
    def worst_requests() -> None:
        _raw(name, big)
        _raw(name, junk_lines)
        _raw(name, many)
        _raw(name, f"set=1\npublic_key={'22' * 32}\nremove=true\n\n".encode())

    for _ in range(5):
        worst_requests()
    rss_before = _rss_kb(proc)
    for _ in range(10):
        worst_requests()
    growth = _rss_kb(proc) - rss_before
    assert growth < 4 * 1024, f"RSS grew by {growth} kB"
    _ping(pair)

    # a non-root client cannot even connect (another uid, not just dropped capabilities: the
    # socket's owner-only mode is what is tested; wg is the system's, wherever the checkout is)
    nobody = a.host.run("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                        "wg", "show", name, check=False)
    assert nobody.returncode != 0 and "Permission denied" in nobody.stderr
    mode = (SOCKET_DIR / f"{name}.sock").stat().st_mode & 0o777
    assert mode == 0o600 and SOCKET_DIR.stat().st_mode & 0o777 == 0o755

    # vpn show, text and JSON, with some offload to report
    sent, received = checked_transfer(a.host, b.host, b.tunnel4, 4 << 20)
    assert sent == received
    text = _vpn(pair, "show", name).stdout
    assert f"interface: {name}" in text and "super-packets read:" in text
    assert "jumbo frames written:" in text and f"peer: {b.public}" in text
    view = json.loads(_vpn(pair, "show", name, "--json").stdout)
    assert view["interface"] == name and view["public_key"] == a.public
    assert view["listen_port"] == 51830
    assert {p["public_key"] for p in view["peers"]} == {b.public, c_public}
    off = view["offload"]
    assert off["super_packets"] > 0 and off["segments_per_super_packet"] > 1
    assert off["udp_gso_sends"] > 0 and off["handshakes_completed"] >= 1
    # the endpoint runs with this process's environment, so it made the same decision
    assert off["fast_path"] == native.fast_path()[0]
    assert f"fast path {native.fast_path()[1]}, " in proc.output()
    # Listing all: a socket left by a killed endpoint is skipped with a note, not an error.
    stale = SOCKET_DIR / f"wgz{pair.lab.tag[-4:]}.sock"
    pair.lab.leftovers.append(stale)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as dead:
        dead.bind(str(stale))
    listed = _vpn(pair, "show", "--json")
    everything = json.loads(listed.stdout)
    assert name in {v["interface"] for v in everything}
    assert stale.stem not in {v["interface"] for v in everything}
    assert f"{stale.stem}: stale management socket" in listed.stderr
    named = _vpn(pair, "show", stale.stem, check=False)
    assert named.returncode != 0 and "Connection refused" in named.stderr

    # vpn down: clean exit, interface and socket gone
    _vpn(pair, "down", name)
    assert proc.popen.wait(10) == 0
    assert name not in a.host.run("ip", "link").stdout
    assert not (SOCKET_DIR / f"{name}.sock").exists()
    assert "stop requested over the management socket" in proc.output()


def test_stale_socket_replaced_live_one_refused(lab: Lab) -> None:
    pair = build(lab)
    name = pair.a.ifname
    SOCKET_DIR.mkdir(mode=0o755, exist_ok=True)
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(SOCKET_DIR / f"{name}.sock"))
    stale.close()  # the file stays, nobody listens: a crashed run's leftover
    proc = pair.start_ours(pair.a)
    assert "replacing stale socket" in proc.output()
    assert pair.a.host.run("wg", "show", name, "listen-port").stdout.strip() == "51820"

    # The same name in the other namespace: the TUN would not clash there, the socket does.
    pair.b.ifname = name
    config = pair.write_config(pair.b)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    # In the background (no --foreground): the start error and status reach the shell.
    second = subprocess.run(pair.b.host.command([sys.executable, "-m", "vpn.cli", "up",
                                                 str(config)]),
                            capture_output=True, text=True, env=env, timeout=30)
    assert second.returncode == 1 and "another endpoint serves" in second.stderr
    assert name not in pair.b.host.run("ip", "link").stdout
    assert pair.a.host.run("wg", "show", name, "listen-port").stdout.strip() == "51820"
    pair.stop(pair.a)
    assert not (SOCKET_DIR / f"{name}.sock").exists()


def test_reload_connection_bound_and_errors(lab: Lab) -> None:
    pair = build(lab)
    proc = pair.start_ours(pair.a)
    pair.start_ours(pair.b)
    a, b, name = pair.a, pair.b, pair.a.ifname
    _ping(pair)
    rx_before = int(_peers(pair)[b.public][5])

    # vpn reload: a new peer, a changed keepalive; b keeps its session and counters
    assert a.config is not None
    c_public = wg("pubkey", input=wg("genkey"))
    original = a.config.read_text()
    a.config.write_text(original.replace("Endpoint =", "PersistentKeepalive = 11\nEndpoint =")
                        + f"\n[Peer]\nPublicKey = {c_public}\nAllowedIPs = 198.18.98.0/24\n")
    _vpn(pair, "reload", name)
    peers = _peers(pair)
    assert set(peers) == {b.public, c_public} and peers[b.public][7] == "11"
    assert int(peers[b.public][5]) >= rx_before > 0
    assert int(peers[b.public][4]) > 0  # the handshake time survived: same session
    _ping(pair)

    # SIGHUP: c goes away again
    a.config.write_text(original)
    os.kill(proc.pid, signal.SIGHUP)
    a.host.wait_for(f"[ $(wg show {name} peers | wc -l) = 1 ]")
    assert "configuration reloaded" in proc.output()

    # a broken file: refused, nothing changed, still forwarding
    a.config.write_text(original + "[Peer]\nPublicKey = nonsense\n")
    failed = _vpn(pair, "reload", name, check=False)
    assert failed.returncode == 1 and f"{a.config}:" in failed.stderr
    assert "PublicKey: not a base64-encoded 32-byte key" in failed.stderr
    assert list(_peers(pair)) == [b.public]
    _ping(pair)

    # connections are bounded: past the limit they are closed at once; wg still gets in after
    idle = []
    for _ in range(24):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(str(SOCKET_DIR / f"{name}.sock"))
        idle.append(sock)
    # Wait (bounded) until the server has closed those past the limit; a loaded machine may
    # take a while to get to them.
    closed: set[socket.socket] = set()
    deadline = time.monotonic() + 15
    while len(closed) < 24 - 16 and time.monotonic() < deadline:
        readable, _, _ = select.select([s for s in idle if s not in closed], [], [], 0.5)
        closed.update(s for s in readable if s.recv(1) == b"")
    assert len(closed) >= 24 - 16, len(closed)
    for sock in idle:
        sock.close()
    # Once the server has seen the closes, wg gets in again.
    a.host.wait_for(f"wg show {name} | grep -qF -- {shlex.quote(a.public)}", timeout=15)
    _ping(pair)


def test_vpn_show_reads_a_wireguard_go_socket(lab: Lab) -> None:
    """`vpn show` speaks plain UAPI too: against wireguard-go it shows the peers and says
    there are no offload counters (null), instead of failing."""
    pair = build(lab)
    pair.start_wireguard_go(pair.a)
    pair.start_wireguard_go(pair.b)
    pair.a.host.run("ping", "-c", "2", "-i", "0.2", "-W", "5", pair.b.tunnel4)
    shown = json.loads(_vpn(pair, "show", pair.a.ifname, "--json").stdout)
    assert shown["interface"] == pair.a.ifname
    assert shown["offload"] is None
    (peer,) = shown["peers"]
    assert peer["public_key"] == pair.b.public
    assert peer["latest_handshake"] and peer["rx_bytes"] > 0
    text = _vpn(pair, "show", pair.a.ifname).stdout
    assert pair.b.public in text
