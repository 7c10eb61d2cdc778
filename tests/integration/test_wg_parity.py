"""Debian's `wg` sees what it sees with the kernel or wireguard-go: transfer counts every
WireGuard message, and a peer with 130,560 allowed IPs goes in with `wg setconf` and comes
back whole with `wg showconf`."""

from __future__ import annotations

import ipaddress
import os
import shutil

import pytest

from lab.netns import Lab
from lab.wg_lab import WgPair, build

pytestmark = pytest.mark.netns

INITIATION, RESPONSE, KEEPALIVE = 148, 92, 32
PING_MESSAGE = 16 + 96 + 16  # an 84-byte ping padded to 96, with header and tag


@pytest.fixture(autouse=True)
def _tools() -> None:
    missing = [tool for tool in ("wg", "wireguard-go") if shutil.which(tool) is None]
    if missing:
        reason = f"needs Debian's {' and '.join(missing)}"
        if os.environ.get("CI"):
            pytest.fail(f"cannot run in CI: {reason}")
        pytest.skip(f"WG PARITY TEST NOT RUN: {reason}")


def _transfer(pair: WgPair, side: str) -> tuple[int, int]:
    """(rx, tx) of the node's one peer, as `wg show IFACE transfer` prints them."""
    node = pair.a if side == "a" else pair.b
    out = node.host.run("wg", "show", node.ifname, "transfer").stdout
    (line,) = out.strip().split("\n")
    _, rx, tx = line.split("\t")
    return int(rx), int(tx)


@pytest.mark.parametrize("other", ["ours", "wireguard-go"])
def test_transfer_counts_every_message(lab: Lab, other: str) -> None:
    """The issue's example: a initiates and sends 10 pings of 84 bytes. On either side the
    counts are the handshake message received or sent plus 10 x 128 each way, and a
    keepalive of 32 if a's passive keepalive went (10 s after the last reply)."""
    pair = build(lab)
    pair.start_ours(pair.a)
    if other == "ours":
        pair.start_ours(pair.b)
    else:
        pair.start_wireguard_go(pair.b)
    pair.a.host.run("ping", "-c", "10", "-i", "0.2", "-W", "5", pair.b.tunnel4)
    data = 10 * PING_MESSAGE
    a_rx, a_tx = _transfer(pair, "a")
    b_rx, b_tx = _transfer(pair, "b")
    assert a_rx == RESPONSE + data == 1372
    assert a_tx in (INITIATION + data, INITIATION + data + KEEPALIVE)  # 1428 or 1460
    assert (b_rx, b_tx) == (a_tx, a_rx)


def test_setconf_of_130560_allowed_ips_reads_back_whole(lab: Lab) -> None:
    """255 x 256 IPv4 /24s and as many IPv6 /128s on one peer: about 4 MB of request,
    over the old 1 MiB / 100,000-line caps."""
    pair = build(lab)
    pair.start_ours(pair.a)
    a, b = pair.a, pair.b
    networks = [ipaddress.IPv4Network((0x0A000000 | i << 8, 24)) for i in range(255 * 256)]
    networks += [ipaddress.IPv6Network((0xFD00 << 112 | i, 128)) for i in range(255 * 256)]
    config = lab.path("big.conf")
    config.write_text("\n".join([
        "[Interface]", f"PrivateKey = {a.private}", "ListenPort = 51820", "",
        "[Peer]", f"PublicKey = {b.public}", "Endpoint = 198.18.1.2:51821",
        *(f"AllowedIPs = {network}" for network in networks),
    ]) + "\n")
    a.host.run("wg", "setconf", a.ifname, str(config))
    shown = a.host.run("wg", "showconf", a.ifname).stdout
    allowed = [line.partition(" = ")[2] for line in shown.split("\n")
               if line.startswith("AllowedIPs = ")]
    got = {ipaddress.ip_network(n) for line in allowed for n in line.split(", ")}
    assert len(got) == len(networks) == 130_560
    assert got == set(networks)
    assert f"PublicKey = {b.public}" in shown and f"PrivateKey = {a.private}" in shown
