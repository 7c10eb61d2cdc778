"""Least privilege, on a running endpoint: after setup it holds CAP_NET_ADMIN only (read
from /proc/PID/status), is refused what needs another capability, still passes traffic,
its hooks and resolvconf still run as root with every capability (through the privileged
helper), Landlock refuses it a file outside what it needs, and `vpn down` tears everything
down, helper included."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lab.netns import Host, Lab
from lab.wg_lab import ROOT, build
from vpn.control.uapi_server import SOCKET_DIR
from vpn.host.capabilities import CAP_NET_ADMIN, status

pytestmark = pytest.mark.netns

ONLY_NET_ADMIN = 1 << CAP_NET_ADMIN


def _no_new_privs(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("NoNewPrivs:"):
            return int(line.split()[1])
    raise AssertionError("no NoNewPrivs")


def _vpn(host: Host, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(host.command([sys.executable, "-m", "vpn.cli", *args]),
                          capture_output=True, text=True, timeout=60,
                          env=dict(os.environ, PYTHONPATH=str(ROOT)))


def _children(pid: int) -> list[int]:
    found = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True)
    return [int(p) for p in found.stdout.split()]


def _ping(host: Host, address: str) -> None:
    host.run("ping", "-c", "2", "-i", "0.2", "-W", "3", address)


def test_the_endpoint_keeps_net_admin_only(lab: Lab, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    # Our test double of resolvconf records its arguments and its capabilities.
    calls = tmp_path / "resolvconf-calls"
    fake = tmp_path / "bin" / "resolvconf"
    fake.parent.mkdir()
    fake.write_text(f'#!/bin/sh\ncat >/dev/null\n'
                    f"echo $* $(id -u) $(grep CapEff /proc/self/status) >> {calls}\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake.parent}{os.pathsep}{os.environ['PATH']}")
    hooks = tmp_path / "hooks"
    pair = build(lab)
    a, b = pair.a, pair.b
    a.extra_interface_lines = [
        "DNS = 198.18.0.53",
        f"PreDown = echo PreDown %i $(id -u) $(grep CapEff /proc/self/status) >> {hooks}",
        f"PostDown = echo PostDown %i $(id -u) $(grep CapEff /proc/self/status) >> {hooks}",
    ]
    proc = pair.start_ours(a)
    pair.start_ours(b)
    _ping(a.host, b.tunnel4)

    # The drop follows "interface up" (after PostUp): wait for it.
    deadline = time.monotonic() + 30
    while status(proc.pid)["CapBnd"] != ONLY_NET_ADMIN and time.monotonic() < deadline:
        time.sleep(0.05)
    caps = status(proc.pid)
    assert (caps["CapEff"], caps["CapPrm"], caps["CapBnd"]) == (ONLY_NET_ADMIN,) * 3
    assert caps["CapInh"] == caps["CapAmb"] == 0
    assert _no_new_privs(proc.pid) == 1
    (helper_pid,) = _children(proc.pid)
    full = status()["CapEff"]  # ours: root's, as the hooks must have them
    assert status(helper_pid)["CapEff"] == full != ONLY_NET_ADMIN

    # Denied: binding a port under 1024 needs a capability the endpoint no longer has; it
    # says so, and goes on serving.
    moved = a.host.run("wg", "set", a.ifname, "listen-port", "80", check=False)
    assert moved.returncode != 0 and "Permission denied" in moved.stderr
    assert "needs CAP_NET_BIND_SERVICE" in proc.output()
    # Allowed: what needs CAP_NET_ADMIN only (a fwmark on the socket), and traffic.
    a.host.run("wg", "set", a.ifname, "fwmark", "0x1234")
    assert a.host.run("wg", "show", a.ifname, "fwmark").stdout.strip() == "0x1234"
    _ping(a.host, b.tunnel4)

    # Denied by Landlock: a file it has no business with (outside its config's directory),
    # even named by its own config's path; the same file in its place reloads.
    assert a.config is not None
    saved = a.config.read_text()
    elsewhere = tmp_path / "elsewhere.conf"
    elsewhere.write_text(saved)
    elsewhere.chmod(0o600)
    a.config.unlink()
    a.config.symlink_to(elsewhere)
    refused = _vpn(a.host, "reload", a.ifname)
    assert refused.returncode != 0 and "cannot read: Permission denied" in refused.stderr
    a.config.unlink()
    a.config.write_text(saved)
    a.config.chmod(0o600)
    assert _vpn(a.host, "reload", a.ifname).returncode == 0
    _ping(a.host, b.tunnel4)

    down = _vpn(a.host, "down", a.ifname)
    assert down.returncode == 0, down.stderr
    assert proc.popen.wait(timeout=30) == 0
    assert not Path(f"/proc/{helper_pid}").exists()  # the endpoint waited for it
    full_text = f"CapEff: {full:016x}"
    assert hooks.read_text().splitlines() == [f"PreDown {a.ifname} 0 {full_text}",
                                              f"PostDown {a.ifname} 0 {full_text}"]
    assert calls.read_text().splitlines()[-1] == f"-d {a.ifname} -f 0 {full_text}"
    assert a.ifname not in a.host.run("ip", "link").stdout
    assert not (SOCKET_DIR / f"{a.ifname}.sock").exists()


def test_keep_privileges(lab: Lab, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VPN_KEEP_PRIVILEGES", "1")
    pair = build(lab)
    proc = pair.start_ours(pair.a)
    assert status(proc.pid)["CapEff"] == status()["CapEff"]
    assert _children(proc.pid) == []
