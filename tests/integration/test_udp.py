"""The UDP socket against the real kernel: GSO sends, GRO receives, fallbacks and errors.

Two hosts joined by a veth; tcpdump shows what crossed the link on each side.
"""

from __future__ import annotations

import logging
import os
import select
import socket
import time

import pytest

from lab import netns
from lab.netns import Capture, Host, Lab
from lab.packets import split_gro
from lab.unprivileged import run_python
from vpn.io.udp import UdpError, UdpSocket

pytestmark = pytest.mark.netns

SEGMENT, COUNT, LAST = 1452, 44, 1000
DATAGRAMS = [bytes([i]) * 4 + os.urandom(SEGMENT - 4) for i in range(COUNT - 1)]
DATAGRAMS.append(bytes([COUNT - 1]) * 4 + os.urandom(LAST - 4))
PAYLOAD = b"".join(DATAGRAMS)
SO_NO_CHECK = 11  # <asm-generic/socket.h>; Python's socket module lacks it

A4, B4, A6, B6 = "198.18.0.1", "198.18.0.2", "fd00::1", "fd00::2"


def two_hosts(lab: Lab, mtu: int = 1500) -> tuple[Host, Host, str, str]:
    a, b = lab.host("a"), lab.host("b")
    a_if, b_if = lab.link(
        a, b, a_addrs=[f"{A4}/24", f"{A6}/64"], b_addrs=[f"{B4}/24", f"{B6}/64"], mtu=mtu
    )
    # Static neighbours: right after the link comes up the first IPv6 neighbour
    # solicitation is often lost, and a datagram queued behind it arrives a second late.
    for here, here_if, there, there_if, addrs in (
        (a, a_if, b, b_if, (B4, B6)), (b, b_if, a, a_if, (A4, A6))
    ):
        mac = there.run("cat", f"/sys/class/net/{there_if}/address").stdout.strip()
        for addr in addrs:
            here.run("ip", "neigh", "replace", addr, "lladdr", mac, "dev", here_if,
                     "nud", "permanent")
    return a, b, a_if, b_if


def open_in(host: Host, **kw: object) -> UdpSocket:
    with netns.inside(host.ns):
        return UdpSocket.open(**kw)  # type: ignore[arg-type]


def capture(host: Host, iface: str, direction: str, port: int) -> Capture:
    """tcpdump in immediate mode: otherwise the last second of packets may still sit in the
    kernel's capture ring when the capture stops, and a short test sees nothing at all."""
    pcap = host.lab.path(f"{host.name}-{iface}-{direction}-{next(host.lab.serial)}.pcap")
    proc = host.start(
        "tcpdump", "--immediate-mode", "-i", iface, "-n", "-U", "-s", "128", "-Q", direction,
        "-w", str(pcap), f"udp port {port}",
    )
    deadline = time.monotonic() + 10
    while "listening on" not in proc.output():
        assert proc.popen.poll() is None and time.monotonic() < deadline, proc.output()
        time.sleep(0.02)
    return Capture(host, proc, pcap)


def udp_lengths(decode: str) -> list[int]:
    lines = decode.splitlines()
    return [int(line.rsplit("length ", 1)[1]) for line in lines if "UDP, length" in line]


def receive(sock: UdpSocket, nbytes: int, timeout: float = 5.0) -> list[tuple[bytes, int, tuple]]:
    """Everything until `nbytes` arrived, copied out (the views are reused)."""
    got: list[tuple[bytes, int, tuple]] = []
    total = 0
    deadline = time.monotonic() + timeout
    while total < nbytes and time.monotonic() < deadline:
        select.select([sock.fd], [], [], 0.1)
        for data, size, source in sock.receive_batch():
            got.append((bytes(data), size, source))
            total += len(data)
    return got


def datagrams_of(got: list[tuple[bytes, int, tuple]]) -> list[bytes]:
    return [bytes(d) for data, size, _ in got for d in split_gro(memoryview(data), size)]


@pytest.mark.parametrize(("src", "dst"), [(A4, B4), (A6, B6)], ids=["ipv4", "ipv6"])
def test_gso_send_gro_receive_over_veth(lab: Lab, src: str, dst: str) -> None:
    a, b, a_if, b_if = two_hosts(lab)
    with open_in(a) as sender, open_in(b) as receiver:
        assert sender.gso_enabled and receiver.gro_enabled
        assert receiver.receive_buffer >= 7 << 20  # SO_RCVBUFFORCE past rmem_max as root

        # veth advertises UDP segmentation: the 44 datagrams cross it as one super-packet
        # and reach the GRO socket as it was sent.
        out = capture(a, a_if, "out", receiver.port)
        into = capture(b, b_if, "in", receiver.port)
        sender.send_segments((dst, receiver.port), memoryview(PAYLOAD), SEGMENT, COUNT, LAST)
        got = receive(receiver, len(PAYLOAD))
        assert udp_lengths(out.stop()) == udp_lengths(into.stop()) == [len(PAYLOAD)]
        assert [(len(data), size, source) for data, size, source in got] == [
            (len(PAYLOAD), SEGMENT, (src, sender.port))
        ]
        assert datagrams_of(got) == DATAGRAMS
        assert (sender.stats.gso_sends, sender.stats.gso_segments) == (1, COUNT)
        assert (receiver.stats.gro_receives, receiver.stats.gro_segments) == (1, COUNT)

        # Without tx checksumming (hence without UDP segmentation) on the egress veth the
        # kernel segments in software: 44 datagrams on the wire. Older kernels failed such a
        # send with EIO (upstream dropped that check in 2024); 6.18 does not, GSO stays on.
        # GRO on the receiving veth puts them back together before the socket (and before
        # tcpdump there).
        a.run("ethtool", "-K", a_if, "tx", "off")
        b.run("ethtool", "-K", b_if, "gro", "on")
        out = capture(a, a_if, "out", receiver.port)
        into = capture(b, b_if, "in", receiver.port)
        sender.send_segments((dst, receiver.port), memoryview(PAYLOAD), SEGMENT, COUNT, LAST)
        got = receive(receiver, len(PAYLOAD))
        assert udp_lengths(out.stop()) == [SEGMENT] * (COUNT - 1) + [LAST]
        assert sum(udp_lengths(into.stop())) == len(PAYLOAD)
        assert datagrams_of(got) == DATAGRAMS
        assert {size for _, size, _ in got} == {SEGMENT}
        assert len(got) <= 4  # one, unless NAPI polled in the middle of the burst
        assert sender.gso_enabled and sender.stats.gso_fallbacks == 0
        assert sender.stats.gso_sends == 2

        # A reply to the normalised source reaches the sender.
        receiver.send(got[0][2], b"reply")
        assert [(data, source) for data, _, source in receive(sender, 5)] == [
            (b"reply", (dst, receiver.port))
        ]


def test_gso_refused_falls_back_to_one_datagram_per_send(
    lab: Lab, caplog: pytest.LogCaptureFixture
) -> None:
    """No EIO is reachable on this kernel (tx checksumming off no longer fails a GSO send,
    and no ESP/AH/IPcomp is built in for an xfrm policy), but the same branch sees a real
    refusal: with UDP checksums off (SO_NO_CHECK) udp_send_skb answers GSO with EINVAL."""
    a, b, _, _ = two_hosts(lab)
    with open_in(a) as sender, open_in(b) as receiver:
        alias = socket.socket(fileno=os.dup(sender.fd))
        alias.setsockopt(socket.SOL_SOCKET, SO_NO_CHECK, 1)
        alias.close()
        with caplog.at_level(logging.WARNING, logger="vpn.io.udp"):
            sender.send_segments((B4, receiver.port), memoryview(PAYLOAD), SEGMENT, COUNT, LAST)
            got = receive(receiver, len(PAYLOAD))
            sender.send_segments((B4, receiver.port), memoryview(PAYLOAD), SEGMENT, COUNT, LAST)
            again = receive(receiver, len(PAYLOAD))
        assert not sender.gso_enabled
        assert sender.stats.gso_fallbacks == 1
        assert sender.stats.gso_sends == 0 and sender.stats.plain_sends == 2 * COUNT
        assert sender.stats.send_errors == {}
        assert datagrams_of(got) == datagrams_of(again) == DATAGRAMS
        assert [r.message for r in caplog.records].count(
            "UDP GSO send failed with EINVAL: sending one datagram per call from now on"
        ) == 1


@pytest.mark.parametrize("dst", [B4, B6], ids=["ipv4", "ipv6"])
def test_segment_above_the_mtu_is_resent_plain_and_fragmented(lab: Lab, dst: str) -> None:
    """GSO cannot fragment (EMSGSIZE); plain sends can, so nothing is lost and GSO stays."""
    a, b, _, _ = two_hosts(lab, mtu=1400)
    with open_in(a) as sender, open_in(b) as receiver:
        sender.send_segments((dst, receiver.port), memoryview(PAYLOAD), SEGMENT, COUNT, LAST)
        assert datagrams_of(receive(receiver, len(PAYLOAD))) == DATAGRAMS
        assert sender.stats.send_errors == {"EMSGSIZE": 1}
        assert sender.gso_enabled and sender.stats.plain_sends == COUNT


@pytest.mark.parametrize(("gso", "gro"), [(False, True), (True, False), (False, False)])
def test_without_gso_or_gro_the_same_data_arrives(lab: Lab, gso: bool, gro: bool) -> None:
    a, b, _, _ = two_hosts(lab)
    with open_in(a, gso=gso) as sender, open_in(b, gro=gro) as receiver:
        assert (sender.gso_enabled, receiver.gro_enabled) == (gso, gro)
        sender.send_segments((B6, receiver.port), memoryview(PAYLOAD), SEGMENT, COUNT, LAST)
        got = receive(receiver, len(PAYLOAD))
        assert datagrams_of(got) == DATAGRAMS
        # Only GSO and GRO together keep the burst whole: a GSO packet reaching a socket
        # without UDP_GRO is segmented by the kernel just before the socket.
        assert len(got) == COUNT and receiver.stats.gro_receives == 0
        assert sender.stats.plain_sends == (0 if gso else COUNT)


def test_port_in_use_is_a_clear_error(lab: Lab) -> None:
    host = lab.host("a")
    with open_in(host) as first:
        assert first.port > 0
        with netns.inside(host.ns), pytest.raises(UdpError, match=f"UDP port {first.port} is "
                                                  "already in use"):
            UdpSocket.open(first.port)
        # Another namespace has its own ports.
        other = lab.host("b")
        open_in(other, port=first.port).close()


def test_not_permitted_is_a_clear_error() -> None:
    proc = run_python(
        "from vpn.io.udp import UdpSocket, UdpError\n"
        "for kw in ({'port': 80}, {'fwmark': 0x51820}):\n"
        "    try:\n"
        "        UdpSocket.open(**kw)\n"
        "    except UdpError as err:\n"
        "        print(err.strerror)\n"
    )
    assert proc.stdout.splitlines() == [
        "binding UDP port 80 needs CAP_NET_BIND_SERVICE (run as root)",
        "setting fwmark 0x51820 needs CAP_NET_ADMIN (run as root)",
    ], proc.stderr
