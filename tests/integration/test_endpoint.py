"""The endpoint end to end: `vpn up` against itself and against Debian's wireguard-go.

Real kernel, real TUN offloads, real UDP GSO/GRO, iperf3 and a sha256-checked transfer in
both directions, with each side taking the initiator's role.
"""

from __future__ import annotations

import base64
import re
import shutil
import textwrap

import pytest

from lab import compose_lab
from lab.netns import Lab, iperf3_gbps
from lab.relay_lab import checked_transfer
from lab.wg_lab import build, final_counters, start_vpn, wg
from vpn.control.config import parse
from vpn.core.keys import encode_key

pytestmark = pytest.mark.netns


def _need_wireguard_go(kind: str) -> None:
    if kind == "wireguard-go" and shutil.which("wireguard-go") is None:
        pytest.fail("wireguard-go is not installed (scripts/bootstrap.sh installs it)")


@pytest.mark.parametrize("peer_kind", ["ours", "wireguard-go"])
@pytest.mark.parametrize("initiator", ["a", "b"])
def test_traffic_both_ways(lab: Lab, peer_kind: str, initiator: str) -> None:
    _need_wireguard_go(peer_kind)
    pair = build(lab)
    pair.start_ours(pair.a)
    if peer_kind == "ours":
        pair.start_ours(pair.b)
    else:
        pair.start_wireguard_go(pair.b)
    first, second = (pair.a, pair.b) if initiator == "a" else (pair.b, pair.a)
    # The first packet starts the handshake from the initiator's side.
    first.host.run("ping", "-c", "3", "-i", "0.2", "-W", "5", second.tunnel4)
    first.host.run("ping", "-c", "2", "-i", "0.2", "-W", "2", second.tunnel6)
    forward = iperf3_gbps(pair.a.host.iperf3(pair.b.host, pair.b.tunnel4, seconds=2))
    backward = iperf3_gbps(pair.a.host.iperf3(pair.b.host, pair.b.tunnel4, seconds=2,
                                              reverse=True))
    sent, received = checked_transfer(pair.a.host, pair.b.host, pair.b.tunnel4, 32 << 20)
    assert sent == received
    sent, received = checked_transfer(pair.b.host, pair.a.host, pair.a.tunnel6, 32 << 20)
    assert sent == received
    output = pair.stop(pair.a)
    counters = final_counters(output)
    assert forward > 0.05 and backward > 0.05
    assert "handshake completed" in output
    # A whole run's debug log holds no private key, in base64 or in hex.
    private = pair.a.private
    assert private not in output and base64.b64decode(private).hex() not in output
    # The offload picture on our side: super-packets from the TUN, GSO sends, jumbo writes.
    assert counters["super_packets"] > 0, counters
    assert counters["jumbo_frames"] > 0, counters
    udp = counters["udp"]
    assert udp["gso_segments"] > 2 * udp["gso_sends"] > 0, udp


def test_offload_off_still_carries_traffic(lab: Lab) -> None:
    pair = build(lab)
    pair.start_ours(pair.a, offload=False)
    pair.start_ours(pair.b)
    sent, received = checked_transfer(pair.a.host, pair.b.host, pair.b.tunnel4, 8 << 20)
    assert sent == received
    counters = final_counters(pair.stop(pair.a))
    assert counters["super_packets"] == 0 and counters["jumbo_frames"] == 0


def test_shutdown_removes_the_interface(lab: Lab) -> None:
    pair = build(lab)
    pair.start_ours(pair.a)
    assert pair.a.ifname in pair.a.host.run("ip", "link").stdout
    proc = pair.a.process
    assert proc is not None
    pair.stop(pair.a)
    assert proc.popen.returncode == 0
    assert pair.a.ifname not in pair.a.host.run("ip", "link").stdout
    assert "198.18.10.0/24" not in pair.a.host.run("ip", "route").stdout


def test_ipv6_underlay(lab: Lab) -> None:
    pair = build(lab, underlay=6)
    pair.start_ours(pair.a)
    pair.start_ours(pair.b)
    pair.a.host.run("ping", "-c", "2", "-i", "0.2", "-W", "5", pair.b.tunnel4)
    pair.a.host.run("ping", "-c", "2", "-i", "0.2", "-W", "5", pair.b.tunnel6)
    sent, received = checked_transfer(pair.a.host, pair.b.host, pair.b.tunnel6, 16 << 20)
    assert sent == received
    output = pair.stop(pair.a)
    assert "handshake completed (endpoint [fd00:1::2]:51821)" in output


def test_large_transfer_is_byte_exact(lab: Lab) -> None:
    pair = build(lab)
    pair.start_ours(pair.a)
    pair.start_ours(pair.b)
    sent, received = checked_transfer(pair.a.host, pair.b.host, pair.b.tunnel4, 200 << 20)
    assert sent == received and sent.startswith(str(200 << 20))


@pytest.mark.parametrize("threads", ["0", "2"])
def test_transfer_with_worker_threads_is_byte_exact(lab: Lab, threads: str) -> None:
    """`vpn up --threads N` on both sides: the send walk seals on worker threads, and
    what arrives is what was sent, each way, as with the inline path (0)."""
    pair = build(lab)
    pair.start_ours(pair.a, up_args=["--threads", threads])
    pair.start_ours(pair.b, up_args=["--threads", threads])
    sent, received = checked_transfer(pair.a.host, pair.b.host, pair.b.tunnel4, 64 << 20)
    assert sent == received and sent.startswith(str(64 << 20))
    sent, received = checked_transfer(pair.b.host, pair.a.host, pair.a.tunnel6, 64 << 20)
    assert sent == received
    # A new port (the socket swapped under the workers): b follows a's first packet there.
    pair.a.host.run("wg", "set", pair.a.ifname, "listen-port", "51900")
    sent, received = checked_transfer(pair.a.host, pair.b.host, pair.b.tunnel4, 16 << 20)
    assert sent == received
    output = pair.stop(pair.a)
    counters = final_counters(output)
    assert counters["drops"].get("internal_error", 0) == 0, counters
    assert counters["udp"]["gso_sends"] > 0, counters
    expected = "2 worker threads" if threads == "2" else "the event loop's thread"
    assert f"sealing on {expected}" in output


def test_site_to_site_gateways_resegment_for_the_lan(lab: Lab) -> None:
    """The docker/ topology, built in namespaces from docker/docker-compose.yml and the
    config/ files it mounts: client -- gw-a == gw-b -- lan (MTU 1500)."""
    site = compose_lab.build(lab)
    gw_b, client, lan = site.hosts["gw-b"], site.hosts["client"], site.hosts["lan"]
    lan_address = site.addresses["lan"]["lan"]
    # As a NIC without TSO: gw-b must resegment the jumbo frames itself, in software.
    gw_b.run("ethtool", "-K", site.interfaces["gw-b/lan"], "tso", "off", "gso", "off",
             "tx", "off")
    site.start_gateway("gw-a")
    site.start_gateway("gw-b")
    client.run("ping", "-c", "2", "-i", "0.2", "-W", "5", lan_address)
    capture = lan.capture(site.interfaces["lan/lan"], "tcp", snaplen=1600, inbound_only=True)
    sent, received = checked_transfer(client, lan, lan_address, 16 << 20)
    decoded = capture.stop()
    gbps = iperf3_gbps(client.iperf3(lan, lan_address, seconds=2))
    counters = final_counters(site.stop_gateway("gw-b"))
    assert sent == received
    assert gbps > 0.05
    lengths = [int(n) for n in re.findall(r"proto TCP \(6\), length (\d+)\)", decoded)]
    assert len(lengths) > 1000, decoded[:1000]
    assert max(lengths) <= 1500
    assert "incorrect" not in decoded and decoded.count("(correct)") >= len(lengths)
    # gw-b wrote coalesced jumbo frames into its TUN; the kernel cut them up for the LAN.
    assert counters["jumbo_frames"] > 0 and counters["jumbo_segments"] > counters["jumbo_frames"]


def test_one_endpoint_serves_several_peers(lab: Lab) -> None:
    """a has two peers, b and c, on separate underlay links; traffic to each goes to the
    right one (cryptokey routing by destination) and comes back."""
    pair = build(lab)
    c_host = lab.host("c")
    lab.link(pair.a.host, c_host, a_addrs=["198.18.3.1/24"], b_addrs=["198.18.3.3/24"])
    c_private = wg("genkey")
    c_public = wg("pubkey", input=c_private)
    c_if = f"wgc{lab.tag[-4:]}"
    a_conf = pair.write_config(pair.a)
    a_conf.write_text(a_conf.read_text() + textwrap.dedent(f"""
        [Peer]
        PublicKey = {c_public}
        AllowedIPs = 198.18.10.3/32
        Endpoint = 198.18.3.3:51822
        """))
    c_conf = lab.path(f"{c_if}.conf")
    c_conf.write_text(textwrap.dedent(f"""
        [Interface]
        PrivateKey = {c_private}
        ListenPort = 51822
        Address = 198.18.10.3/24, 198.18.10.33/24

        [Peer]
        PublicKey = {pair.a.public}
        AllowedIPs = 198.18.10.0/24
        Endpoint = 198.18.3.1:51820
        """))
    c_conf.chmod(0o600)
    pair.a.process = start_vpn(pair.a.host, a_conf)
    pair.start_ours(pair.b)
    start_vpn(c_host, c_conf)
    pair.a.host.run("ping", "-c", "2", "-i", "0.2", "-W", "5", "198.18.10.2")
    pair.a.host.run("ping", "-c", "2", "-i", "0.2", "-W", "5", "198.18.10.3")
    c_host.run("ping", "-c", "2", "-i", "0.2", "-W", "5", "198.18.10.1")
    sent, received = checked_transfer(pair.a.host, c_host, "198.18.10.3", 8 << 20)
    assert sent == received
    sent, received = checked_transfer(pair.a.host, pair.b.host, "198.18.10.2", 8 << 20)
    assert sent == received
    # Cryptokey routing: on a, c may only send from 198.18.10.3; another source is dropped.
    spoofed = c_host.run("ping", "-c", "2", "-W", "1", "-I", "198.18.10.33", "198.18.10.1",
                         check=False)
    assert spoofed.returncode != 0
    counters = final_counters(pair.stop(pair.a))
    assert counters["drops"].get("source_not_allowed", 0) >= 2, counters


def test_hooks_run_in_wg_quick_order(lab: Lab) -> None:
    """PreUp before the interface exists, PostUp once it is up, PreDown while it still
    exists, PostDown after it is gone; %i is the interface name."""
    pair = build(lab)
    log = lab.path("hooks.log")
    pair.a.extra_interface_lines = [
        f"{stage} = echo {stage} %i $(ip link show %i >/dev/null 2>&1 && echo present "
        f"|| echo absent) >> {log}"
        for stage in ("PreUp", "PostUp", "PreDown", "PostDown")
    ]
    pair.start_ours(pair.a)
    pair.stop(pair.a)
    name = pair.a.ifname
    assert log.read_text().splitlines() == [
        f"PreUp {name} absent", f"PostUp {name} present",
        f"PreDown {name} present", f"PostDown {name} absent",
    ]


def test_save_config_writes_back_runtime_changes(lab: Lab) -> None:
    """SaveConfig = true: a peer added with `wg set` while running is in the file after
    shutdown, and the file still parses and keeps its private mode."""
    pair = build(lab)
    pair.a.extra_interface_lines = ["SaveConfig = true"]
    pair.start_ours(pair.a)
    pair.start_ours(pair.b)
    pair.a.host.run("ping", "-c", "2", "-i", "0.2", "-W", "5", pair.b.tunnel4)
    added = wg("pubkey", input=wg("genkey"))
    pair.a.host.run("wg", "set", pair.a.ifname, "peer", added, "allowed-ips", "198.18.10.77/32")
    pair.stop(pair.a)
    assert pair.a.config is not None
    saved = parse(pair.a.config.read_text(), str(pair.a.config))
    peers = {encode_key(p.public_key): p for p in saved.peers}
    assert set(peers) == {pair.b.public, added}
    assert [str(n) for n in peers[added].allowed_ips] == ["198.18.10.77/32"]
    assert str(peers[pair.b.public].endpoint) == "198.18.1.2:51821"
    assert pair.a.config.stat().st_mode & 0o077 == 0
