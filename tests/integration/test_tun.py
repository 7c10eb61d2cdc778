"""The TUN device against the real kernel: offload negotiation, errors, reads and writes."""

from __future__ import annotations

import errno
import select
import struct
import time

import pytest

from lab import netns
from lab.netns import Lab
from lab.unprivileged import run_python
from vpn.core.packet.checksum import checksum
from vpn.core.packet.virtio import NO_OFFLOAD
from vpn.host import netlink
from vpn.io.tun import TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6, TunDevice, TunError

pytestmark = pytest.mark.netns


def test_negotiates_tso_and_reports_it(lab: Lab) -> None:
    host = lab.host("t")
    with netns.inside(host.ns), TunDevice.open("tso0") as tun:
        assert tun.vnet_hdr
        needed = TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6
        assert tun.offload.flags & needed == needed, tun.offload.describe()
        assert "tso4" in tun.offload.describe()
        # The device is really there, in the namespace it was opened in.
        assert "tso0" in host.run("ip", "link", "show").stdout


def test_offload_off_and_plain_devices(lab: Lab) -> None:
    host = lab.host("t")
    with netns.inside(host.ns):
        with TunDevice.open("nooff0", offload=False) as tun:
            assert tun.vnet_hdr and tun.offload.flags == 0
            assert tun.offload.describe() == "none"
        with TunDevice.open("plain0", vnet_hdr=False) as tun:
            assert not tun.vnet_hdr and tun.offload.flags == 0


def test_name_taken_is_a_clear_error(lab: Lab) -> None:
    host = lab.host("t")
    host.run("ip", "link", "add", "taken0", "type", "veth", "peer", "name", "taken1")
    with netns.inside(host.ns), pytest.raises(TunError, match="is taken"):
        TunDevice.open("taken0")


def test_too_long_name_is_rejected() -> None:
    with pytest.raises(TunError) as info:
        TunDevice.open("a-name-longer-than-15")
    assert info.value.errno == errno.EINVAL


def test_not_permitted_is_a_clear_error() -> None:
    proc = run_python("from vpn.io.tun import TunDevice\nTunDevice.open('noperm0')")
    assert proc.returncode != 0
    assert "creating TUN 'noperm0' needs CAP_NET_ADMIN (run as root)" in proc.stderr, proc.stderr


def _icmp_echo(src: bytes, dst: bytes, ident: int) -> bytes:
    icmp = struct.pack("!BBHHH", 8, 0, 0, ident, 1) + b"tun-test" * 4
    icmp = icmp[:2] + struct.pack("!H", checksum(icmp)) + icmp[4:]
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(icmp), 1, 0, 64, 1, 0, src, dst)
    ip = ip[:10] + struct.pack("!H", checksum(ip)) + ip[12:]
    return ip + icmp


def test_write_then_read_a_plain_packet(lab: Lab) -> None:
    """An echo request written with a no-offload header is answered back through the TUN."""
    host = lab.host("t")
    with netns.inside(host.ns), TunDevice.open("rw0") as tun:
        netlink.set_link("rw0", mtu=1420)
        netlink.add_address("rw0", "198.18.5.1/24")
        local, remote = bytes([198, 18, 5, 1]), bytes([198, 18, 5, 2])
        tun.write(NO_OFFLOAD, [_icmp_echo(remote, local, 0x4242)])
        replies = []
        deadline = time.monotonic() + 5
        while not replies and time.monotonic() < deadline:
            select.select([tun.fd], [], [], 0.5)
            replies = [
                bytes(p) for h, p in tun.read_batch()
                if p[9] == 1 and p[20] == 0 and p[24:26] == b"\x42\x42"
            ]
        assert replies, "no echo reply read from the TUN"
        reply = replies[0]
        assert reply[12:16] == local and reply[16:20] == remote
        assert checksum(reply[:20]) == 0 and checksum(reply[20:]) == 0
