"""The asker's trace in docs/tun-offload.md ("Your code, line by line"), replayed against
the real kernel: each sentence the guide says about the capture is asserted here.

The asker's tunnel client (100.64.0.5 in their trace) is 198.18.3.2 here, behind tun0 on
`gw`; gw masquerades what leaves towards `b` (their eth0 and the Internet), and b listens
on port 5001. The TUN is set up as the asker's was: header size 12, TUN_F_CSUM|TUN_F_TSO4,
MTU 65535. The fixtures and packet builders are test_tun_mistakes.py's.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import struct
import sys
from collections.abc import Iterator

import pytest

from lab.netns import Process
from tests.integration.test_tun_mistakes import (
    BEHIND, FAR, NEEDS_CSUM, Gateway, captured, is_ipv4, net_ns, read_packets,
    tcp_ipv4, vnet,
)
from tests.integration.test_tun_mistakes import net  # noqa: F401  (the fixture)

pytestmark = pytest.mark.netns

GW_OUT = "198.18.2.1"  # gw's address towards b: what masquerading puts as the source
SYN_MSS_63900 = struct.pack("!BBH", 2, 4, 63900)
RST = 0x04


@pytest.fixture
def nat(net: Gateway) -> Iterator[Gateway]:
    """`net` with masquerading on gw's way out and a listener on b, as in the question."""
    net.gw.run("nft", "add table ip nat; add chain ip nat post { type nat hook postrouting "
               "priority 100; }; add rule ip nat post oifname to-b masquerade")
    listener: Process = net.b.start(sys.executable, "-c", "import socket, time; "
                                    "s = socket.create_server(('0.0.0.0', 5001)); "
                                    "time.sleep(600)")
    net.b.wait_for("ss -ltn | grep -q ':5001 '")
    yield net
    listener.stop()


def is_syn_ack(packet: bytes) -> bool:
    return is_ipv4(packet, socket.IPPROTO_TCP) and packet[33] & 0x12 == 0x12


ISN = 3_000_000_000  # the client's initial sequence number: random in a real stack


def syn(nat: Gateway, fd: int) -> None:
    """The asker's SYN: a 12-byte header (NEEDS_CSUM, the pseudo-header sum in the
    field) and mss 63900."""
    os.write(fd, vnet(hdr_len=44) + b"\0\0" + tcp_ipv4(seq=ISN, options=SYN_MSS_63900))


def handshake_half_done(nat: Gateway) -> int:
    """The asker's first steps: the SYN, then the SYN-ACK read back with its 12-byte
    prefix. Returns the TUN descriptor."""
    fd = nat.tun(hdr_size=12, mtu=65535)
    syn(nat, fd)
    header, syn_ack = read_packets(fd, 12, is_syn_ack)
    assert header[0] == NEEDS_CSUM  # it crossed a veth: the checksum is still partial
    assert (header + syn_ack)[0] >> 4 == 0  # the unstripped read: "IP version 0"
    return fd


def test_the_syn_is_correct_and_the_syn_ack_comes_back(nat: Gateway) -> None:
    """The SYN leaves NATed with a correct checksum and mss 63900; b answers with its own
    MSS; the SYN-ACK is de-NATed into the TUN, where a reader that does not strip the
    12-byte header sees version 0 and drops it. The SYN is then sent again, unanswered
    by the client: the handshake never completes, though nothing was corrupted."""
    eth0 = nat.gw.capture("to-b", "tcp", snaplen=200)
    fd = handshake_half_done(nat)
    syn(nat, fd)  # the client's retransmission
    text = captured(eth0, "Flags [S]", count=2)
    syns = [line for line in text.splitlines() if "Flags [S]," in line]
    assert len(syns) == 2 and all("(correct)" in s and "mss 63900" in s for s in syns), text
    assert all(s.strip().startswith(f"{GW_OUT}.40000 > {FAR}.5001") for s in syns), text
    assert re.search(rf"{FAR}\.5001 > {GW_OUT}\.40000: Flags \[S\.\].*mss 1460", text), text


@pytest.mark.parametrize(("syn_ack", "seq", "sport", "leaves_as"), [
    (False, 0, 40000, GW_OUT),       # SYN_SENT: a seq-0 RST "answers the SYN": NATed
    (True, 0, 40000, BEHIND),        # SYN_RECV: seq 0 is outside the client's window
    (True, ISN + 1, 40000, GW_OUT),  # SYN_RECV, seq = the SYN-ACK's ack: NATed
    (True, ISN + 1, 40001, BEHIND),  # no conntrack entry: a lone RST creates none
], ids=["syn-sent-seq0", "syn-recv-seq0", "syn-recv-in-window", "untracked"])
def test_which_rst_leaves_un_nated(nat: Gateway, syn_ack: bool, seq: int, sport: int,
                                   leaves_as: str) -> None:
    """A RST from the client leaves with its own address exactly when conntrack calls it
    INVALID, because NAT skips packets without a conntrack entry. Seq 0 is not invalid by
    itself: before the SYN-ACK, tcp_in_window() takes a seq-0 RST as the answer to the
    SYN; after it, conntrack knows the client's sequence space, and seq 0 lies outside
    it for any ISN not close to 0."""
    if not syn_ack:  # b ignores the SYN: conntrack on gw stays in SYN_SENT
        nat.b.run("nft", "add table ip f; add chain ip f in { type filter hook input "
                  "priority 0; }; add rule ip f in tcp flags syn drop")
        fd = nat.tun(hdr_size=12, mtu=65535)
        syn(nat, fd)
    else:
        fd = handshake_half_done(nat)
    seen = nat.b.capture("to-gw", "tcp[tcpflags] & tcp-rst != 0", inbound_only=True)
    os.write(fd, vnet() + b"\0\0" + tcp_ipv4(seq=seq, flags=RST, sport=sport))
    text = captured(seen, "Flags [R")
    assert re.search(rf"\n\s+{re.escape(leaves_as)}\.{sport} > {FAR}\.5001: Flags \[R",
                     "\n" + text), text


def test_dropping_invalid_keeps_the_client_address_off_the_wire(nat: Gateway) -> None:
    """The rule that keeps private addresses from leaking: drop what conntrack calls
    INVALID in forward. The untracked RST then goes nowhere; a tracked one still does."""
    nat.gw.run("nft", "add table ip filter; add chain ip filter guard { type filter hook "
               "forward priority 0; }; add rule ip filter guard ct state invalid drop")
    fd = handshake_half_done(nat)
    seen = nat.b.capture("to-gw", "tcp[tcpflags] & tcp-rst != 0", inbound_only=True)
    os.write(fd, vnet() + b"\0\0" + tcp_ipv4(seq=0, flags=RST))  # invalid: out of window
    os.write(fd, vnet() + b"\0\0" + tcp_ipv4(seq=ISN + 1, flags=RST))  # valid: a marker
    text = captured(seen, "Flags [R")
    assert BEHIND not in text and f"{GW_OUT}.40000 > " in text, text


@pytest.mark.parametrize(("mtu", "mss"), [(65535, 65495), (63940, 63900), (1420, 1380)])
def test_the_mss_a_linux_stack_announces_is_its_mtu_minus_40(net: Gateway, mtu: int,
                                                             mss: int) -> None:
    """Linux announces the MTU of the route minus 20 (IPv4) and 20 (TCP without options),
    at most 65495: a SYN with mss 63900 comes from a stack whose MTU is 63940."""
    fd = net.tun(mtu=mtu)
    with net_ns(net.gw):
        s = socket.socket()
    with s:
        s.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            s.connect((BEHIND, 5001))
        _, syn = read_packets(fd, 10, lambda p: is_ipv4(p, socket.IPPROTO_TCP))
    assert syn[40:42] == b"\x02\x04" and struct.unpack_from("!H", syn, 42)[0] == mss


