"""`vpn up NAME` as `wg-quick up NAME`: /etc/wireguard/NAME.conf, back at the shell once the
interface serves, then `vpn show`, `save`, `reload` and `down` by name; and `--foreground`
telling systemd READY=1 and STOPPING=1 through $NOTIFY_SOCKET."""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lab.netns import Host, Lab
from lab.wg_lab import ROOT, wg

pytestmark = pytest.mark.netns

CONFIG_DIR = Path("/etc/wireguard")  # wg-quick's, hard-coded there as here
SOCKET_DIR = Path("/var/run/wireguard")
LOG_DIR = Path("/var/log/vpn")  # a detached endpoint's log where there is no syslog


def _config(port: int) -> str:
    return (f"[Interface]\nPrivateKey = {wg('genkey')}\nListenPort = {port}\n"
            f"Address = 198.18.99.1/24\nMTU = 1420\n\n"
            f"[Peer]\nPublicKey = {wg('pubkey', input=wg('genkey'))}\n"
            f"AllowedIPs = 198.18.99.2/32\n")


@contextlib.contextmanager
def _etc_config(text: str) -> Iterator[tuple[str, Path]]:
    """A config under a unique name in /etc/wireguard, removed afterwards (the directory
    too when this made it)."""
    name = f"vu{os.getpid() % 100000}{secrets.token_hex(2)}"
    made = not CONFIG_DIR.exists()
    CONFIG_DIR.mkdir(mode=0o700, exist_ok=True)
    path = CONFIG_DIR / f"{name}.conf"
    path.write_text(text)
    path.chmod(0o600)
    try:
        yield name, path
    finally:
        path.unlink(missing_ok=True)
        if made:
            with contextlib.suppress(OSError):
                CONFIG_DIR.rmdir()


def _vpn(host: Host, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run(host.command([sys.executable, "-m", "vpn.cli", *args]),
                          capture_output=True, text=True, env=env, timeout=60)


def _kill_left(host: Host, name: str) -> None:
    """The daemon outlives `ip netns del`: stop whatever still runs in our namespace, and
    once it is gone (it logs to the end), remove the log file a host without syslog got."""
    def pids() -> list[str]:
        listed = subprocess.run(["ip", "netns", "pids", host.ns], capture_output=True,
                                text=True)
        return listed.stdout.split()

    for pid in pids():
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(pid), signal.SIGTERM)
    deadline = time.monotonic() + 30
    while pids() and time.monotonic() < deadline:
        time.sleep(0.05)
    (LOG_DIR / f"{name}.log").unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        LOG_DIR.rmdir()  # only when empty


def test_up_by_name_returns_once_serving(lab: Lab) -> None:
    host = lab.host("a")
    with _etc_config(_config(51999)) as (name, path):
        try:
            started = time.monotonic()
            up = _vpn(host, "up", name)  # returns: stdout and stderr were let go of
            assert up.returncode == 0, up.stderr
            assert f"interface {name} up" in up.stderr and "1 peer" in up.stderr
            assert time.monotonic() - started < 60
            # Up and serving at the moment `vpn up` returned: no waiting here.
            assert host.run("wg", "show", name, "listen-port").stdout.strip() == "51999"
            assert "198.18.99.1/24" in host.run("ip", "-o", "addr", "show", name).stdout
            assert name in _vpn(host, "show", name).stdout

            # vpn save: a peer added with wg goes into the file; the wg-quick keys stay
            added = wg("pubkey", input=wg("genkey"))
            host.run("wg", "set", name, "peer", added, "allowed-ips", "198.18.97.0/24")
            saved = _vpn(host, "save", name)
            assert saved.returncode == 0, saved.stderr
            text = path.read_text()
            assert f"PublicKey = {added}" in text and "Address = 198.18.99.1/24" in text
            assert path.stat().st_mode & 0o777 == 0o600

            # vpn reload of a broken file: the file, line and key, nothing changed
            path.write_text(text + "\n[Peer]\nPublicKey = nonsense\n")
            failed = _vpn(host, "reload", name)
            assert failed.returncode == 1
            assert f"{path}:" in failed.stderr and "PublicKey: not a base64" in failed.stderr
            assert added in host.run("wg", "show", name, "peers").stdout

            down = _vpn(host, "down", str(path))  # a config path names the interface too
            assert down.returncode == 0, down.stderr
            assert name not in host.run("ip", "link").stdout
            assert not (SOCKET_DIR / f"{name}.sock").exists()
        finally:
            _kill_left(host, name)


def test_foreground_tells_systemd(lab: Lab, tmp_path: Path) -> None:
    host = lab.host("a")
    config = lab.path(f"vn{secrets.token_hex(3)}.conf")
    config.write_text(_config(51998))
    config.chmod(0o600)
    # A path, not an abstract address: those are per network namespace.
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    with listener:
        listener.bind(str(tmp_path / "notify"))
        listener.settimeout(60)
        # WatchdogSec=1s: a keep-alive every half second from READY=1 on.
        env = dict(os.environ, PYTHONPATH=str(ROOT), NOTIFY_SOCKET=str(tmp_path / "notify"),
                   WATCHDOG_USEC="1000000")
        proc = host.start(sys.executable, "-m", "vpn.cli", "up", "--foreground", str(config),
                          env=env)
        assert listener.recv(64) == b"READY=1"
        # READY=1 means serving: the interface answers `wg` already.
        assert host.run("wg", "show", config.stem, "listen-port").stdout.strip() == "51998"
        assert [listener.recv(64) for _ in range(3)] == [b"WATCHDOG=1"] * 3
        proc.popen.send_signal(signal.SIGTERM)
        while (message := listener.recv(64)) == b"WATCHDOG=1":
            pass
        assert message == b"STOPPING=1"
        assert proc.popen.wait(timeout=30) == 0
    assert config.stem not in host.run("ip", "link").stdout
