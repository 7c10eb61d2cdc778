"""wg-quick drives our endpoint as its userspace implementation
(`WG_QUICK_USERSPACE_IMPLEMENTATION=vpn-userspace wg-quick up FILE`), against Debian's
wireguard-go: traffic flows with the offloads on, and `wg-quick down` leaves nothing behind.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from lab.netns import Host, Lab
from lab.relay_lab import checked_transfer
from lab.wg_lab import PORT, ROOT, SOCKET_DIR, build

pytestmark = pytest.mark.netns

USERSPACE = Path(sys.executable).parent / "vpn-userspace"
FWMARK = 0x4D2  # also the table Table = auto uses for the full tunnel's routes


def _require(*tools: str) -> None:
    missing = [tool for tool in tools if shutil.which(tool) is None]
    if not USERSPACE.exists():
        missing.append(f"{USERSPACE} (pip install -e . creates it)")
    if missing:
        reason = f"INTEGRATION TEST NOT RUN: missing {', '.join(missing)}"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)


def _host_state(host: Host, ifname: str) -> dict[str, object]:
    """What wg-quick adds to a host besides the link: routes (only the tunnel's: the
    underlay's IPv6 link-local ones come and go by themselves), rules and firewall tables.
    Not net.ipv4.conf.all.src_valid_mark: wg-quick sets it and never resets it."""
    routes = [line for version in ("-4", "-6")
              for line in host.run("ip", version, "route", "show", "table", "all").stdout
              .splitlines() if ifname in line or f"table {FWMARK}" in line]
    state: dict[str, object] = {
        "routes": routes,
        "rules4": host.run("ip", "-4", "rule", "show").stdout,
        "rules6": host.run("ip", "-6", "rule", "show").stdout,
    }
    if shutil.which("nft"):
        state["nft"] = host.run("nft", "list", "ruleset").stdout
    return state


def _daemon_pids(ifname: str) -> list[int]:
    """The vpn-userspace serving `ifname` (it went to the background: wg-quick returned)."""
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(arg.endswith(b"vpn-userspace") for arg in argv) and argv[-2:] == [
            ifname.encode(), b""
        ]:
            pids.append(int(entry.name))
    return pids


def _wg_quick(host: Host, verb: str, config: Path, log: Path) -> None:
    env = f"WG_QUICK_USERSPACE_IMPLEMENTATION={USERSPACE} LOG_LEVEL=verbose"
    # The output goes to a file: with LOG_LEVEL set the daemon keeps writing to it, and a
    # pipe would keep this call waiting for the daemon's end.
    proc = host.sh(f"env {env} wg-quick {verb} {config} >>{log} 2>&1", check=False,
                   timeout=60)
    assert proc.returncode == 0, f"wg-quick {verb} exited {proc.returncode}:\n{log.read_text()}"


def test_wg_quick_up_and_down_with_vpn_userspace(lab: Lab) -> None:
    _require("wg-quick", "wireguard-go", "wg", "ethtool")
    pair = build(lab)
    a, b = pair.a, pair.b
    pair.start_wireguard_go(b)
    marker = lab.path(f"postup-{a.ifname}")
    config = lab.path(f"{a.ifname}.conf")  # wg-quick names the interface after the file
    config.write_text("\n".join([
        "[Interface]",
        f"PrivateKey = {a.private}",
        f"ListenPort = {PORT['a']}",
        f"Address = {a.tunnel4}/24, {a.tunnel6}/64",
        f"MTU = {pair.mtu - 20}",
        f"FwMark = {FWMARK:#x}",
        "Table = auto",
        f"PostUp = touch {lab.path('postup-%i')}",
        f"PostDown = rm {lab.path('postup-%i')}",
        "",
        "[Peer]",
        f"PublicKey = {b.public}",
        "AllowedIPs = 0.0.0.0/0, ::/0",  # a full tunnel: wg-quick's policy rules and firewall
        f"Endpoint = {pair.endpoint_of(b)}",
    ]) + "\n")
    config.chmod(0o600)
    log = lab.path("wg-quick.log")
    before = _host_state(a.host, a.ifname)

    _wg_quick(a.host, "up", config, log)
    pids = _daemon_pids(a.ifname)
    try:
        assert len(pids) == 1, log.read_text()
        assert (SOCKET_DIR / f"{a.ifname}.sock").is_socket()
        assert marker.exists(), "PostUp did not run"
        assert a.host.run("wg", "show", a.ifname, "fwmark").stdout.strip() == f"{FWMARK:#x}"
        link = a.host.run("ip", "-d", "link", "show", a.ifname).stdout
        assert f"mtu {pair.mtu - 20}" in link and "vnet_hdr on" in link
        assert f"lookup {FWMARK}" in a.host.run("ip", "-4", "rule", "show").stdout
        assert _host_state(a.host, a.ifname) != before

        a.host.run("ping", "-c", "3", "-i", "0.2", "-W", "3", b.tunnel4)
        a.host.run("ping", "-c", "2", "-i", "0.2", "-W", "3", b.tunnel6)
        sent, received = checked_transfer(a.host, b.host, b.tunnel4, 8 << 20)
        assert sent == received
        features = a.host.run("ethtool", "-k", a.ifname).stdout
        assert "tcp-segmentation-offload: on" in features
        show = subprocess.run([sys.executable, "-m", "vpn.cli", "show", "--json", a.ifname],
                              capture_output=True, text=True, timeout=30, check=True,
                              env=dict(os.environ, PYTHONPATH=str(ROOT)))
        offload = json.loads(show.stdout)["offload"]
        assert "tso4" in offload["tun_offloads"]
        assert offload["super_packets"] > 0, offload  # the kernel handed us TSO super-packets
        assert offload["mtu"] == pair.mtu - 20  # followed `ip link set mtu` from wg-quick

        _wg_quick(a.host, "down", config, log)
        a.host.wait_for(f"! test -e {SOCKET_DIR / (a.ifname + '.sock')}")
        a.host.wait_for(" && ".join(f"! test -e /proc/{pid}" for pid in pids))
    finally:
        for pid in _daemon_pids(a.ifname):  # only on failure: stop what we started
            os.kill(pid, 15)
    assert a.host.run("ip", "link", "show", a.ifname, check=False).returncode != 0
    assert not marker.exists(), "PostDown did not run"
    assert _host_state(a.host, a.ifname) == before
    output = log.read_text()
    assert f"interface {a.ifname} was deleted: stopping" in output
    assert "Traceback" not in output and "internal error" not in output
