"""A full-tunnel config leaves the host exactly as `wg-quick up` leaves it.

Debian's wg-quick (over wireguard-go: no kernel module here) brings the config up in one
namespace, `vpn up` in another; their firewall (nftables, or iptables where nft is not on
the PATH) and policy rules must read back the same, be gone after down, and a killed run's
leftovers must be replaced, not piled up, by the next start.
"""

from __future__ import annotations

import ipaddress
import os
import re
import shutil
from pathlib import Path

import pytest

from lab import netns
from lab.netns import Host, Lab
from lab.wg_lab import start_vpn, wg
from vpn.control.uapi_server import SOCKET_DIR
from vpn.host import netsetup
from vpn.io.tun import TunDevice

pytestmark = pytest.mark.netns

TOOLS = ("wg-quick", "wireguard-go", "nft", "iptables-save", "ip6tables-save")
LEFTOVER_WARNING = "left by a run that did not stop cleanly"
NFT = shutil.which("nft") or "nft"  # by its path: the iptables tests take it off the PATH


@pytest.fixture(autouse=True)
def _tools() -> None:
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        reason = f"needs {', '.join(missing)} (scripts/bootstrap.sh installs them)"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(f"INTEGRATION TEST NOT RUN: {reason}")


def _config(lab: Lab) -> Path:
    """A full tunnel: an address of each family, AllowedIPs of both /0, an Endpoint."""
    ifname = f"wf{lab.tag[-4:]}"  # /var/run/wireguard is shared by every namespace
    lab.leftovers.append(SOCKET_DIR / f"{ifname}.sock")
    path = lab.path(f"{ifname}.conf")
    path.write_text(
        f"[Interface]\nPrivateKey = {wg('genkey')}\n"
        "Address = 198.18.40.1/24, fd00:40::1/64\n\n"
        f"[Peer]\nPublicKey = {wg('pubkey', input=wg('genkey'))}\n"
        "AllowedIPs = 0.0.0.0/0, ::/0\nEndpoint = 198.18.41.3:51820\n"
    )
    path.chmod(0o600)
    return path


def _hosts(lab: Lab) -> tuple[Host, Host]:
    quick, ours = lab.host("quick"), lab.host("ours")
    lab.link(quick, ours, a_addrs=["198.18.41.1/24"], b_addrs=["198.18.41.2/24"])
    return quick, ours


def _path_without_nft(lab: Lab) -> str:
    """A PATH holding every program of ours but nft, so both sides take iptables' way."""
    farm = lab.path("no-nft-bin")
    farm.mkdir()
    for folder in os.environ["PATH"].split(os.pathsep):
        if not os.path.isdir(folder):
            continue
        for entry in os.scandir(folder):
            target = farm / entry.name
            if entry.name != "nft" and not target.exists():
                target.symlink_to(entry.path)
    return str(farm)


def _state(host: Host, *, iptables: bool) -> str:
    """The firewall and the policy rules, as their tools print them."""
    if iptables:
        saved = host.run("iptables-save").stdout + host.run("ip6tables-save").stdout
        # The save tools' "# Generated ... on DATE" lines and packet counters vary.
        firewall = re.sub(r"\[\d+:\d+\]", "[0:0]",
                          "".join(line + "\n" for line in saved.splitlines()
                                  if not line.startswith("#")))
    else:
        firewall = host.run(NFT, "list", "ruleset").stdout
    rules = host.run("ip", "-4", "rule").stdout + host.run("ip", "-6", "rule").stdout
    # Each interface has a link-local address of its own (stable-privacy, random).
    return re.sub(r"fe80::[0-9a-f:]+", "fe80::LINK-LOCAL", firewall + rules)


def _wg_quick(host: Host, command: str, config: Path, path: str) -> None:
    host.run("env", f"PATH={path}", "WG_QUICK_USERSPACE_IMPLEMENTATION=wireguard-go",
             "wg-quick", command, str(config))


@pytest.mark.parametrize("way", ["nft", "iptables"])
def test_full_tunnel_host_state_equals_wg_quick(
    lab: Lab, way: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    quick, ours = _hosts(lab)
    config = _config(lab)
    iptables = way == "iptables"
    path = _path_without_nft(lab) if iptables else os.environ["PATH"]
    monkeypatch.setenv("PATH", path)  # the endpoint's, as start_vpn passes the environment
    before = _state(quick, iptables=iptables)
    assert _state(ours, iptables=iptables) == before

    _wg_quick(quick, "up", config, path)
    theirs = _state(quick, iptables=iptables)
    tables = quick.run(NFT, "list", "tables").stdout
    assert (f"table ip wg-quick-{config.stem}" in tables) != iptables  # the way under test
    assert (f'"wg-quick(8) rule for {config.stem}"' in theirs) == iptables
    _wg_quick(quick, "down", config, path)
    theirs_after = _state(quick, iptables=iptables)
    assert config.stem not in theirs_after
    # wireguard-go leaves once its interface is gone; its socket is the name ours takes.
    quick.wait_for(f"! test -e {SOCKET_DIR / config.stem}.sock")

    proc = start_vpn(ours, config)
    assert _state(ours, iptables=iptables) == theirs
    assert proc.stop() == 0
    # iptables-nft keeps the emptied raw and mangle tables, after wg-quick as after us.
    assert _state(ours, iptables=iptables) == theirs_after


@pytest.mark.parametrize("way", ["nft", "iptables"])
def test_next_start_removes_a_killed_runs_rules(
    lab: Lab, way: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, ours = _hosts(lab)
    config = _config(lab)
    iptables = way == "iptables"
    if iptables:
        monkeypatch.setenv("PATH", _path_without_nft(lab))
    proc = start_vpn(ours, config)
    up = _state(ours, iptables=iptables)

    proc.popen.kill()  # SIGKILL: no teardown; the TUN goes with the process, the rules stay
    proc.popen.wait()
    ours.wait_for(f"! ip link show {config.stem}")
    left = _state(ours, iptables=iptables)
    assert config.stem in left and "not from all fwmark 0xca6c lookup 51820" in left

    again = start_vpn(ours, config)
    assert _state(ours, iptables=iptables) == up  # replaced, not piled up
    assert LEFTOVER_WARNING in again.output()
    assert again.stop() == 0
    assert config.stem not in _state(ours, iptables=iptables)


def test_a_failing_nft_fails_the_setup_and_undoes_it_all(
    lab: Lab, monkeypatch: pytest.MonkeyPatch
) -> None:
    host = lab.host("n")
    fake = lab.path("fake-bin")
    fake.mkdir()
    (fake / "nft").write_text("#!/bin/sh\necho 'Error: Could not process rule: "
                              "Operation not supported' >&2\nexit 1\n")
    (fake / "nft").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake}{os.pathsep}{os.environ['PATH']}")
    setup = netsetup.InterfaceSetup(
        ifname="wf0", addresses=(ipaddress.ip_interface("198.18.40.1/24"),), mtu=1420,
        allowed_ips=(ipaddress.ip_network("0.0.0.0/0"),))
    rules = host.run("ip", "-4", "rule").stdout
    with netns.inside(host.ns), TunDevice.open("wf0"):
        with pytest.raises(netsetup.SetupError) as failed:
            netsetup.apply(setup)
        assert str(failed.value) == (
            "adding nftables table ip wg-quick-wf0: nft exited 1: "
            "Error: Could not process rule: Operation not supported")
        assert host.run("ip", "-4", "rule").stdout == rules
        assert host.run("ip", "-4", "route", "show", "table", "all", "dev", "wf0").stdout == ""
        assert "198.18.40.1" not in host.run("ip", "addr", "show", "dev", "wf0").stdout
