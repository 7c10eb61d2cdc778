"""The values of docs/tun-offload.md's "Your code, line by line", each written to or read
from a real TUN device, asserting the symptom the guide names for it.

Every test builds its own hosts: `gw` (forwarding) holds tun0 (198.18.3.1/24, so the
stack "behind" the TUN is 198.18.3.2) and a veth to `b` (198.18.2.2) with MTU 1500 and
TSO, GSO and checksum offload off, so the kernel segments and checksums in software as it
would for a NIC without them. The TUN is opened and configured here with raw ioctls (no
project code), as the asker's Go program does with `syscall`.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import os
import platform
import re
import select
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest

from lab.netns import Capture, Host, Lab, Process
from lab.packets import ref_sum

pytestmark = pytest.mark.netns

# <linux/if_tun.h>
TUNSETIFF, TUNSETOFFLOAD, TUNSETVNETHDRSZ = 0x400454CA, 0x400454D0, 0x400454D8
IFF_TUN, IFF_NO_PI, IFF_VNET_HDR = 0x0001, 0x1000, 0x4000
TUN_F_CSUM, TUN_F_TSO4 = 0x01, 0x02
# <linux/virtio_net.h>
NEEDS_CSUM = 1
GSO_NONE, GSO_TCPV4 = 0, 1
CLONE_NEWNET = 0x40000000

TUN_ADDR, BEHIND, FAR = "198.18.3.1", "198.18.3.2", "198.18.2.2"
MSS = 1460
KERNEL = tuple(int(n) for n in re.findall(r"\d+", platform.release())[:2])

_libc = ctypes.CDLL(None, use_errno=True)


# --- the lab -------------------------------------------------------------------------


@dataclass
class Gateway:
    gw: Host
    b: Host
    lab: Lab

    def tun(self, *, hdr_size: int = 10, offload: int = TUN_F_CSUM | TUN_F_TSO4,
            mtu: int = 1500) -> int:
        """Open tun0 in gw with IFF_VNET_HDR, the header size and offloads given; up, with
        its address (so 198.18.3.0/24 is routed into it). Closed when the test ends."""
        with net_ns(self.gw):
            fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        self._fds.append(fd)
        fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", b"tun0", IFF_TUN | IFF_NO_PI
                                                | IFF_VNET_HDR))
        fcntl.ioctl(fd, TUNSETVNETHDRSZ, struct.pack("i", hdr_size))  # a pointer to an int
        fcntl.ioctl(fd, TUNSETOFFLOAD, offload)  # the value itself
        self.gw.run("ip", "link", "set", "tun0", "mtu", str(mtu), "up")
        self.gw.run("ip", "addr", "add", f"{TUN_ADDR}/24", "dev", "tun0")
        return fd

    def close(self) -> None:
        for fd in self._fds:
            os.close(fd)  # a non-persistent TUN goes away with its last descriptor
        self._fds.clear()

    def __post_init__(self) -> None:
        self._fds: list[int] = []


@pytest.fixture
def net(lab: Lab) -> Iterator[Gateway]:
    gw, b = lab.host("gw", forwarding=True), lab.host("b")
    lab.link(gw, b, a_addrs=["198.18.2.1/24"], b_addrs=[f"{FAR}/24"], mtu=1500)
    b.run("ip", "route", "add", "default", "via", "198.18.2.1")
    gw.run("ethtool", "-K", "to-b", "tso", "off", "gso", "off", "tx", "off")
    gateway = Gateway(gw, b, lab)
    try:
        yield gateway
    finally:
        gateway.close()


def wait_until(condition: Callable[[], object], what: str, timeout: float = 10.0) -> object:
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(f"still waiting after {timeout}s for {what}")
        time.sleep(0.02)


def decoded(capture: Capture) -> str:
    """What tcpdump wrote to the capture file so far (it runs with -U: packet-buffered)."""
    return subprocess.run(["tcpdump", "-r", str(capture.pcap), "-n", "-vv"],
                          capture_output=True, text=True).stdout


def captured(capture: Capture, needle: str, count: int = 1, timeout: float = 10.0) -> str:
    """Wait until `needle` occurs `count` times in the capture; return the decode."""
    return wait_until(lambda: (t := decoded(capture)).count(needle) >= count and t,
                      f"{count} x {needle!r} in the capture", timeout)  # type: ignore[return-value]


def read_packets(fd: int, hdr_size: int, want: Callable[[bytes], bool],
                 timeout: float = 10.0) -> tuple[bytes, bytes]:
    """Read from the TUN until a packet `want` accepts arrives; (header, packet)."""
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        if not select.select([fd], [], [], left)[0]:
            break
        buf = bytearray(b"\xaa" * (hdr_size + 65535))  # to see what the kernel leaves alone
        data = buf[:os.readv(fd, [buf])]
        if want(data[hdr_size:]):
            return data[:hdr_size], data[hdr_size:]
    raise TimeoutError("the packet never came out of the TUN")


# --- packets, built by hand ----------------------------------------------------------


def pseudo_sum(src: str, dst: str, length: int) -> int:
    """Folded, not complemented: what NEEDS_CSUM wants in the TCP checksum field."""
    return ref_sum(socket.inet_aton(src) + socket.inet_aton(dst)
                    + struct.pack("!xBH", socket.IPPROTO_TCP, length))


def tcp_ipv4(payload: bytes = b"", *, flags: int = 0x02, seq: int = 1000, df: bool = True,
             field: str = "pseudo", options: bytes = b"", src: str = BEHIND,
             dst: str = FAR, sport: int = 40000) -> bytes:
    """IPv4 + TCP from `src`:`sport` to `dst`:5001. `field` is what goes in the TCP
    checksum field: the pseudo-header sum (for NEEDS_CSUM), the full checksum, or zero."""
    doff = (20 + len(options)) // 4
    ack = 1 if flags & 0x10 else 0
    tcp = struct.pack("!HHIIBBHHH", sport, 5001, seq, ack, doff << 4, flags, 64240, 0, 0)
    tcp += options + payload
    pseudo = pseudo_sum(src, dst, len(tcp))
    value = {"pseudo": pseudo, "full": ~ref_sum(tcp, pseudo) & 0xFFFF, "zero": 0}[field]
    tcp = tcp[:16] + struct.pack("!H", value) + tcp[18:]
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), 7, 0x4000 if df else 0, 64,
                     socket.IPPROTO_TCP, 0, socket.inet_aton(src), socket.inet_aton(dst))
    ip = ip[:10] + struct.pack("!H", ~ref_sum(ip) & 0xFFFF) + ip[12:]
    return ip + tcp


def vnet(flags: int = NEEDS_CSUM, gso_type: int = GSO_NONE, hdr_len: int = 40,
         gso_size: int = 0, csum_start: int = 20, csum_offset: int = 16) -> bytes:
    """struct virtio_net_hdr, 10 bytes, host byte order (little-endian here)."""
    return struct.pack("<BBHHHH", flags, gso_type, hdr_len, gso_size, csum_start, csum_offset)


def jumbo(df: bool = True) -> bytes:
    """Nine full segments' worth and a short tenth: 13,840 bytes of payload, one frame."""
    return tcp_ipv4(bytes(range(256)) * 54 + bytes(16), flags=0x18, df=df)


def is_ipv4(packet: bytes, proto: int) -> bool:
    """Reads also bring what the kernel sends on its own (IPv6 router solicitations)."""
    return len(packet) > 20 and packet[0] >> 4 == 4 and packet[9] == proto


def is_frag_needed(packet: bytes) -> bool:
    return is_ipv4(packet, socket.IPPROTO_ICMP) and packet[20:22] == b"\x03\x04"


# --- the tests -----------------------------------------------------------------------


def test_gso_size_65535_is_gso_by_frags_and_rejected_on_write(net: Gateway) -> None:
    """gso_size = MTU = 65535 is 0xFFFF, GSO_BY_FRAGS inside the kernel:
    virtio_net_hdr_to_skb() refuses it with EINVAL since "net: do not allow gso_size to
    be set to GSO_BY_FRAGS" (b616be6b9768, Linux 6.5, August 2023, also in the stable
    series then maintained). The same frame with gso_size = the MSS goes through."""
    if KERNEL < (6, 5):
        pytest.skip(f"kernel {platform.release()} predates 6.5: EINVAL only if its stable "
                    "series took b616be6b9768; before it 0xFFFF was accepted")
    fd = net.tun()
    frame = jumbo()
    with pytest.raises(OSError) as refused:
        os.write(fd, vnet(gso_type=GSO_TCPV4, gso_size=0xFFFF) + frame)
    assert refused.value.errno == errno.EINVAL
    assert os.write(fd, vnet(gso_type=GSO_TCPV4, gso_size=MSS) + frame) == 10 + len(frame)


def test_gso_none_jumbo_under_df_is_dropped_with_frag_needed(net: Gateway) -> None:
    """The asker's `if tcpLen > mtu` is never true with mtu 65535, so every big write goes
    out as GSO_NONE: one 13,880-byte IPv4 packet with DF. The gateway cannot send it on a
    1500-byte link and may not fragment it: ip_forward() drops it and answers ICMP
    "fragmentation needed" (type 3 code 4, next-hop MTU 1500), which comes back into the
    TUN. Nothing reaches b. A small packet sent afterwards does, so the absence is real."""
    fd = net.tun()
    capture = net.b.capture("to-gw", f"tcp and src host {BEHIND}", inbound_only=True)
    os.write(fd, vnet() + jumbo(df=True))
    _, icmp = read_packets(fd, 10, is_frag_needed)
    assert struct.unpack("!H", icmp[26:28])[0] == 1500  # the next-hop MTU
    assert socket.inet_ntoa(icmp[16:20]) == BEHIND  # sent back to the frame's source
    os.write(fd, vnet() + tcp_ipv4(seq=5))  # a marker that fits
    text = captured(capture, "Flags [S]")
    assert "length 13880" not in text and text.count("proto TCP") == 1, text


def test_gso_none_jumbo_without_df_is_fragmented(net: Gateway) -> None:
    """Without DF the same GSO_NONE frame is not dropped but cut into IP fragments
    (ip_do_fragment(), after completing the NEEDS_CSUM checksum in software): it arrives,
    in pieces a TCP stack never asked for, instead of as MSS-sized segments."""
    fd = net.tun()
    capture = net.b.capture("to-gw", f"src host {BEHIND}", inbound_only=True)
    os.write(fd, vnet() + jumbo(df=False))
    text = captured(capture, "proto TCP (6)", count=10)
    assert "flags [+]" in text, text  # more fragments follow
    offsets = [int(n) for n in re.findall(r"offset (\d+)", text)]
    assert offsets[0] == 0 and offsets == sorted(offsets) and len(set(offsets)) >= 10


def test_gso_size_set_to_the_mtu_drops_the_whole_frame(net: Gateway) -> None:
    """gso_size 1500 (the link MTU) makes every segment 1540 bytes: the gateway does not
    send 40-byte-too-big segments, it drops the whole frame (ip_forward() checks the GSO
    segment length with skb_gso_validate_network_len()) and answers "fragmentation
    needed". With gso_size = the MSS the same frame arrives as ten segments."""
    fd = net.tun()
    capture = net.b.capture("to-gw", f"tcp and src host {BEHIND}", inbound_only=True)
    os.write(fd, vnet(gso_type=GSO_TCPV4, gso_size=1500) + jumbo())
    read_packets(fd, 10, is_frag_needed)
    os.write(fd, vnet(gso_type=GSO_TCPV4, gso_size=MSS) + jumbo())
    text = captured(capture, "proto TCP (6)", count=10)
    lengths = [int(n) for n in re.findall(r"proto TCP \(6\), length (\d+)", text)]
    assert lengths == [1500] * 9 + [740], text


def test_ten_byte_header_with_size_12_is_einval(net: Gateway) -> None:
    """With TUNSETVNETHDRSZ 12 the kernel takes 12 bytes as the header on every write
    (tun_vnet_hdr_get() skips the 2 after struct virtio_net_hdr): a 10-byte header loses
    the first two bytes of the IP header, the "IP version" it then checks is the high
    nibble of the total length, and tun_get_user() answers EINVAL. 12 written for 12 works."""
    fd = net.tun(hdr_size=12)
    syn = tcp_ipv4()
    with pytest.raises(OSError) as refused:
        os.write(fd, vnet() + syn)
    assert refused.value.errno == errno.EINVAL
    assert os.write(fd, vnet() + b"\0\0" + syn) == 12 + len(syn)


def test_read_with_size_12_has_a_12_byte_prefix(net: Gateway) -> None:
    """With TUNSETVNETHDRSZ 12 every read starts with 12 bytes: the 10 of the header and 2
    more, which tun_vnet_hdr_put() zeroes since "tun: Pad virtio headers" (4adf74971018,
    Linux 6.15) and before that stepped over, leaving what the buffer held. An IP parser
    handed the read sees the flags byte as the version: 0 for a plain packet, and with
    TUN_F_CSUM a local TCP packet has flags NEEDS_CSUM (1): version 0 either way, and it
    drops the packet. Also:
    hdr_len is 0 on a non-GSO read, and a TUN MTU of 65535 makes the stack behind it
    advertise MSS 65495 (MTU - 40), not corruption."""
    fd = net.tun(hdr_size=12, offload=TUN_F_CSUM | TUN_F_TSO4, mtu=65535)
    header, packet = read_syn(net, fd, 12)
    assert len(header) == 12 and packet[0] == 0x45  # the IP header starts at byte 12
    raw = header + packet
    assert raw[0] >> 4 == 0  # what `version := raw[0] >> 4` sees
    flags, gso_type, hdr_len = struct.unpack_from("<BBH", header)
    assert (flags, gso_type, hdr_len) == (NEEDS_CSUM, GSO_NONE, 0)
    padding = bytes(header[10:12])
    assert padding == (b"\0\0" if KERNEL >= (6, 15) else b"\xaa\xaa"), padding
    mss = struct.unpack_from("!H", packet, 20 + 22)[0]  # the MSS option leads the SYN's
    assert packet[40:42] == b"\x02\x04" and mss == 65535 - 40


def test_reads_carry_needs_csum_only_with_tun_f_csum(net: Gateway) -> None:
    """With TUN_F_CSUM on, the kernel leaves the checksum of locally sent TCP and UDP to
    the reader: NEEDS_CSUM with the pseudo-header sum in the field, hdr_len 0. With
    TUNSETOFFLOAD 0 the same packets arrive complete (flags 0)."""
    def first_reads(offload: int) -> dict[int, tuple[int, int]]:
        fd = net.tun(offload=offload)
        seen: dict[int, tuple[int, int]] = {}
        with net_ns(net.gw):
            udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            tcp = socket.socket()
        with udp, tcp:
            tcp.setblocking(False)
            udp.sendto(b"x" * 100, (BEHIND, 5002))
            with contextlib.suppress(BlockingIOError):
                tcp.connect((BEHIND, 5001))
            for proto in (socket.IPPROTO_UDP, socket.IPPROTO_TCP):
                header, _ = read_packets(fd, 10, lambda p, x=proto: is_ipv4(p, x))
                flags, _, hdr_len = struct.unpack_from("<BBH", header)
                seen[proto] = (flags, hdr_len)
        net.close()
        return seen

    assert first_reads(TUN_F_CSUM) == {17: (NEEDS_CSUM, 0), 6: (NEEDS_CSUM, 0)}
    assert first_reads(0) == {17: (0, 0), 6: (0, 0)}


@pytest.mark.parametrize(("header", "field", "arrives"), [
    ("needs_csum", "pseudo", "correct"),   # NEEDS_CSUM + pseudo-header sum: right
    ("needs_csum", "full", "incorrect"),   # NEEDS_CSUM + full checksum: summed twice
    ("needs_csum", "zero", "incorrect"),   # NEEDS_CSUM + 0: the pseudo-header is missing
    ("zero", "full", "correct"),           # all-zero header + complete checksum: right
    ("zero", "pseudo", "incorrect"),       # all-zero header: nobody completes the sum
])
def test_every_tcp_write_needs_a_matching_checksum_field(
        net: Gateway, header: str, field: str, arrives: str) -> None:
    """Not only jumbo frames: a single SYN written with NEEDS_CSUM gets its checksum
    completed by the kernel (skb_checksum_help() on the way out of the veth without
    checksum offload) from whatever is in the field. A full checksum there comes out as
    exactly the pseudo-header sum; zero comes out as the checksum without the
    pseudo-header. Both arrive "incorrect" and b ignores the SYN."""
    fd = net.tun()
    capture = net.b.capture("to-gw", f"tcp and src host {BEHIND}", inbound_only=True)
    syn = tcp_ipv4(field=field, options=struct.pack("!BBH", 2, 4, MSS))
    hdr = vnet(hdr_len=44) if header == "needs_csum" else bytes(10)
    os.write(fd, hdr + syn)
    text = captured(capture, "Flags [S]")
    assert f"({arrives})" in text if arrives == "correct" else "incorrect" in text, text
    if header == "needs_csum" and field != "pseudo":
        got = int(re.search(r"cksum 0x([0-9a-f]+)", text).group(1), 16)  # type: ignore[union-attr]
        tcp = syn[20:16 + 20] + b"\0\0" + syn[20 + 18:]
        expected = (pseudo_sum(BEHIND, FAR, len(tcp)) if field == "full"
                    else ~ref_sum(tcp) & 0xFFFF)
        assert got == expected, (hex(got), hex(expected))


def test_gso_writes_need_no_tunsetoffload(net: Gateway) -> None:
    """TUNSETOFFLOAD (the asker's TUN_F_CSUM|TUN_F_TSO4 = 0x01|0x02) only says what the
    kernel may hand to reads. A GSO write with TUNSETOFFLOAD 0 is resegmented just the same."""
    fd = net.tun(offload=0)
    capture = net.b.capture("to-gw", f"tcp and src host {BEHIND}", snaplen=1600,
                            inbound_only=True)
    os.write(fd, vnet(gso_type=GSO_TCPV4, gso_size=MSS) + jumbo())
    text = captured(capture, "proto TCP (6)", count=10)
    assert text.count("(correct)") == 10 and "incorrect" not in text, text


def test_tunsetvnethdrsz_takes_a_pointer_and_tunsetoffload_a_value(net: Gateway) -> None:
    """TUNSETVNETHDRSZ reads an int through its argument (get_user), TUNSETOFFLOAD uses the
    argument itself. The value 12 passed to TUNSETVNETHDRSZ is read as an address: EFAULT;
    a pointer passed to TUNSETOFFLOAD is a number full of unknown TUN_F_ bits: EINVAL.
    Sizes below 10 are EINVAL."""
    fd = net.tun()
    with pytest.raises(OSError) as by_value:
        fcntl.ioctl(fd, TUNSETVNETHDRSZ, 12)
    assert by_value.value.errno == errno.EFAULT
    with pytest.raises(OSError) as by_pointer:
        fcntl.ioctl(fd, TUNSETOFFLOAD, struct.pack("I", TUN_F_CSUM | TUN_F_TSO4))
    assert by_pointer.value.errno == errno.EINVAL
    with pytest.raises(OSError) as too_small:
        fcntl.ioctl(fd, TUNSETVNETHDRSZ, struct.pack("i", 8))
    assert too_small.value.errno == errno.EINVAL


# --- the asker's trace, replayed through a masquerading gateway ----------------------
#
# Their tunnel client (100.64.0.5 in their trace) is 198.18.3.2 here, behind tun0 on gw;
# gw masquerades what leaves towards b (their eth0 and the Internet), and b listens on
# port 5001. The TUN is set up as theirs was: header size 12, TUN_F_CSUM|TUN_F_TSO4, MTU
# 65535.

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
    # NEEDS_CSUM (b is one veth away: the checksum is still partial), csum_start 20,
    # csum_offset 16, two zero bytes of padding, then the IP header: "01 00 ... 00 00 45".
    assert header == vnet(hdr_len=0) + b"\0\0" and syn_ack[0] == 0x45, header.hex(" ")
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
    _, syn = read_syn(net, fd=net.tun(mtu=mtu), hdr_size=10)
    assert syn[40:42] == b"\x02\x04" and struct.unpack_from("!H", syn, 42)[0] == mss


def read_syn(net: Gateway, fd: int, hdr_size: int) -> tuple[bytes, bytes]:
    """The (virtio header, SYN) read from the TUN when the gateway connects through it."""
    with net_ns(net.gw):
        s = socket.socket()
    with s:
        s.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            s.connect((BEHIND, 5001))
        return read_packets(fd, hdr_size, lambda p: is_ipv4(p, socket.IPPROTO_TCP))


@contextlib.contextmanager
def net_ns(host: Host) -> Iterator[None]:
    """Create sockets in `host`'s namespace (they stay there after we leave it)."""
    own = os.open("/proc/self/ns/net", os.O_RDONLY)
    target = os.open(f"/var/run/netns/{host.ns}", os.O_RDONLY)
    try:
        assert _libc.setns(target, CLONE_NEWNET) == 0
        yield
    finally:
        assert _libc.setns(own, CLONE_NEWNET) == 0
        os.close(target)
        os.close(own)
