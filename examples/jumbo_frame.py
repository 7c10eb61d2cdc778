"""Write ONE jumbo TCP frame into a TUN device and watch it leave a 1500-byte link as
correctly checksummed segments. Run as root:  sudo .venv/bin/python examples/jumbo_frame.py

    a (198.18.1.2) --veth-- gw [tun0] --veth, MTU 1500, TSO/GSO/tx-csum off-- b (198.18.2.2)

The script plays the VPN endpoint on gateway `gw`: it has ten segments' worth of TCP data
of one flow from a to b, as if just decrypted (a is a real host so that the source is
plausible and b's RST goes there, not into the TUN). Instead of writing ten packets, it
writes ONE 13,880-byte IPv4 frame behind a virtio-net header (gso_type TCPV4, gso_size =
the MSS, NEEDS_CSUM with the pseudo-header sum in the TCP checksum field). The kernel routes
the frame like any packet; because the egress veth can do no TSO and no checksum offload,
it cuts the frame into MTU-sized segments and fills in every checksum itself (software
GSO). tcpdump on b shows what arrived.

Python standard library only: the TUN is opened with fcntl.ioctl, the namespace entered
with setns(2) through ctypes, the header packed with struct; it runs `ip`, `sysctl`,
`ethtool` and `tcpdump`. Everything it creates (three namespaces, the TUN, tcpdump) is
removed on the way out.
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import time

PREFIX = "jumbo"  # namespace names start with this, then the pid: jumbo1234-gw
SRC, DST = "198.18.1.2", "198.18.2.2"
SPORT, DPORT = 40000, 5001
SEQ = 1_000_000
MSS = 1460  # payload per segment: 1500 - 20 (IPv4) - 20 (TCP without options)
FULL_SEGMENTS, LAST_PAYLOAD = 9, 700  # the last segment may be shorter, never longer

# <linux/if_tun.h>: ioctl numbers and flags; <linux/virtio_net.h>: header values.
TUNSETIFF, TUNSETOFFLOAD, TUNSETVNETHDRSZ = 0x400454CA, 0x400454D0, 0x400454D8
IFF_TUN, IFF_NO_PI, IFF_VNET_HDR = 0x0001, 0x1000, 0x4000
TUN_F_CSUM, TUN_F_TSO4 = 0x01, 0x02
VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_TCPV4 = 1, 1
CLONE_NEWNET = 0x40000000


# SIGTERM unwinds like Ctrl-C, so that main's finally always cleans up, but never in the
# middle of an ip command: raised between subprocess.run's fork and its wait, it would leave
# an `ip netns add` running on, to create its namespace after the cleanup had deleted
# everything. Within a command it is only noted, and acted on once the command is done;
# during the cleanup itself, not at all (the cleanup is what it asks for).
_terminate = {"requested": False, "deferred": False, "cleaning": False}


def _on_sigterm(*_: object) -> None:
    _terminate["requested"] = True
    if not (_terminate["deferred"] or _terminate["cleaning"]):
        sys.exit(143)


def ip(*args: str, check: bool = True) -> None:
    _terminate["deferred"] = True
    try:
        proc = subprocess.run(["ip", *args], capture_output=True, text=True)
    finally:
        _terminate["deferred"] = False
    if _terminate["requested"] and not _terminate["cleaning"]:
        sys.exit(143)
    if check and proc.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {proc.stderr.strip()}")


def in_ns(ns: str, *args: str) -> None:
    ip("netns", "exec", ns, *args)


def build_topology(a: str, gw: str, b: str) -> None:
    for ns in (a, gw, b):
        ip("netns", "add", ns)
        ip("-n", ns, "link", "set", "lo", "up")
    # veth pairs created inside the namespaces, so no name can clash with the host's.
    ip("-n", a, "link", "add", "eth0", "type", "veth", "peer", "name", "to-a", "netns", gw)
    ip("-n", gw, "link", "add", "to-b", "type", "veth", "peer", "name", "eth0", "netns", b)
    for ns, dev, addr in ((a, "eth0", "198.18.1.2/24"), (gw, "to-a", "198.18.1.1/24"),
                          (gw, "to-b", "198.18.2.1/24"), (b, "eth0", "198.18.2.2/24")):
        ip("-n", ns, "link", "set", dev, "mtu", "1500", "up")
        ip("-n", ns, "addr", "add", addr, "dev", dev)
    ip("-n", a, "route", "add", "default", "via", "198.18.1.1")
    ip("-n", b, "route", "add", "default", "via", "198.18.2.1")
    in_ns(gw, "sysctl", "-q", "-w", "net.ipv4.ip_forward=1")
    # Like a NIC without TSO: the kernel must segment and checksum in software.
    in_ns(gw, "ethtool", "-K", "to-b", "tso", "off", "gso", "off", "tx", "off")


def open_tun(ns: str, name: str) -> int:
    """Create TUN `name` in namespace `ns` with IFF_VNET_HDR; the descriptor stays bound to
    that namespace after we switch back."""
    libc = ctypes.CDLL(None, use_errno=True)
    own = os.open("/proc/self/ns/net", os.O_RDONLY)
    target = os.open(f"/var/run/netns/{ns}", os.O_RDONLY)
    try:
        if libc.setns(target, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), "setns")
        fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
    finally:
        libc.setns(own, CLONE_NEWNET)
        os.close(target)
        os.close(own)
    ifreq = struct.pack("16sH", name.encode(), IFF_TUN | IFF_NO_PI | IFF_VNET_HDR)
    fcntl.ioctl(fd, TUNSETIFF, ifreq)
    fcntl.ioctl(fd, TUNSETVNETHDRSZ, struct.pack("i", 10))  # a pointer to the size
    fcntl.ioctl(fd, TUNSETOFFLOAD, TUN_F_CSUM | TUN_F_TSO4)  # the flags themselves
    return fd


def ones_complement_sum(data: bytes, start: int = 0) -> int:
    """The Internet checksum's sum of 16-bit big-endian words, folded to 16 bits."""
    if len(data) % 2:
        data += b"\0"
    total = start + sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total > 0xFFFF:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def jumbo_frame() -> tuple[bytes, bytes]:
    """(virtio-net header, one IPv4/TCP packet carrying ten segments' worth of payload)."""
    payload_len = MSS * FULL_SEGMENTS + LAST_PAYLOAD
    payload = bytes((SEQ + k) & 0xFF for k in range(payload_len))
    src, dst = socket.inet_aton(SRC), socket.inet_aton(DST)
    # TCP header, flags ACK|PSH (the kernel keeps PSH for the last segment only). The
    # checksum field gets the pseudo-header sum (source, destination, protocol, TCP length),
    # folded but NOT complemented: with NEEDS_CSUM the kernel adds header and payload to it.
    tcp_len = 20 + payload_len
    pseudo = ones_complement_sum(src + dst + struct.pack("!xBH", socket.IPPROTO_TCP, tcp_len))
    tcp = struct.pack("!HHIIBBHHH", SPORT, DPORT, SEQ, 1, 5 << 4, 0x18, 502, pseudo, 0)
    # IPv4 header with DF, the length of the whole frame, and a complete header checksum.
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + tcp_len, 100, 0x4000, 64,
                     socket.IPPROTO_TCP, 0, src, dst)
    ip = ip[:10] + struct.pack("!H", ~ones_complement_sum(ip) & 0xFFFF) + ip[12:]
    # struct virtio_net_hdr: flags, gso_type, hdr_len, gso_size, csum_start, csum_offset,
    # in host byte order ("=": little-endian on x86 and arm64).
    vnet = struct.pack("=BBHHHH", VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_TCPV4,
                       len(ip) + len(tcp),  # hdr_len: IP + TCP headers, options included
                       MSS,                 # gso_size: payload per segment, not the MTU
                       len(ip),             # csum_start: where the TCP header begins
                       16)                  # csum_offset: the checksum field within it
    return vnet, ip + tcp + payload


def start_tcpdump(ns: str) -> subprocess.Popen[str]:
    """tcpdump on b's side of the link, packets arriving from a only, checksums verified."""
    return subprocess.Popen(
        ["ip", "netns", "exec", ns, "tcpdump", "-i", "eth0", "-n", "-S", "-l", "-vv",
         "-Q", "in", f"tcp and src host {SRC}"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def wait_listening(proc: subprocess.Popen[str]) -> None:
    """Packets sent before tcpdump says "listening on" are not captured."""
    assert proc.stderr is not None
    line = proc.stderr.readline()
    if "listening on" not in line:
        raise RuntimeError(f"tcpdump did not start: {line.strip() or 'no output'}")


def read_output(proc: subprocess.Popen[str], count: int, timeout: float = 10.0) -> str:
    """tcpdump's output until it has printed `count` packets (two lines each), or until
    `timeout` seconds passed: forwarding is immediate, printing may lag on a busy host."""
    assert proc.stdout is not None
    fd, text = proc.stdout.fileno(), ""
    deadline = time.monotonic() + timeout
    while text.count("\n") < 2 * count:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            break
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        text += chunk.decode(errors="replace")
    return text


def packets(tcpdump_text: str) -> list[tuple[str, str]]:
    """tcpdump -vv prints each packet on two lines: IP header, then TCP header."""
    out: list[tuple[str, str]] = []
    for line in tcpdump_text.splitlines():
        if line.startswith((" ", "\t")) and out:
            out[-1] = (out[-1][0], line.strip())
        elif line.strip():
            out.append((line.strip(), ""))
    return out


def main() -> int:
    if os.geteuid() != 0:
        print("run as root: it creates network namespaces and a TUN device", file=sys.stderr)
        return 1
    signal.signal(signal.SIGTERM, _on_sigterm)
    tag = f"{PREFIX}{os.getpid()}"
    a, gw, b = f"{tag}-a", f"{tag}-gw", f"{tag}-b"
    tcpdump: subprocess.Popen[str] | None = None
    tun: int | None = None
    try:
        print(f"namespaces: {a}  {gw}  {b}")
        build_topology(a, gw, b)
        tun = open_tun(gw, "tun0")
        print(f"{gw}: tun0 open, IFF_VNET_HDR, TUN offloads csum tso4")
        ip("-n", gw, "link", "set", "tun0", "up")
        # The frame's source (a) is routed out to-a, not tun0: strict reverse-path
        # filtering would drop it. A VPN gateway routes the peer's networks into the TUN.
        for conf in ("all", "default", "tun0"):
            in_ns(gw, "sysctl", "-q", "-w", f"net.ipv4.conf.{conf}.rp_filter=0")

        vnet, frame = jumbo_frame()
        flags, gso_type, hdr_len, gso_size, csum_start, csum_offset = struct.unpack(
            "=BBHHHH", vnet)
        print(f"built {FULL_SEGMENTS + 1} segments' worth ({MSS} x {FULL_SEGMENTS} + "
              f"{LAST_PAYLOAD} bytes of payload) into one {len(frame)}-byte IPv4 frame")
        print(f"virtio-net header: flags={flags} (NEEDS_CSUM) gso_type={gso_type} "
              f"(TCPV4) hdr_len={hdr_len} gso_size={gso_size} "
              f"csum_start={csum_start} csum_offset={csum_offset}")

        tcpdump = start_tcpdump(b)
        wait_listening(tcpdump)
        os.writev(tun, [vnet, frame])  # one system call: header, then the packet
        print(f"wrote it to tun0 with one writev; tcpdump on {b} (inbound):")
        text = read_output(tcpdump, FULL_SEGMENTS + 1)
        tcpdump.send_signal(signal.SIGTERM)
        tcpdump.communicate(timeout=10)
        tcpdump = None

        seen = packets(text)
        lengths = []
        for ip_line, tcp_line in seen:
            print(f"  {ip_line}\n      {tcp_line}")
            # "IP (tos 0x0, ttl 63, ..., proto TCP (6), length 1500)": the IP total length
            lengths.append(int(ip_line.rsplit("length ", 1)[1].rstrip(")")))
        correct = sum("(correct)" in tcp_line for _, tcp_line in seen)
        ok = (len(seen) == FULL_SEGMENTS + 1 and correct == len(seen)
              and max(lengths, default=0) <= 1500 and "incorrect" not in text)
        print(f"result: {len(seen)} segments arrived, IP lengths "
              f"{' '.join(map(str, lengths))}, {correct} of {len(seen)} TCP checksums "
              f"correct: {'OK' if ok else 'FAILED'}")
        return 0 if ok else 1
    finally:
        _terminate["cleaning"] = True
        if tcpdump is not None:
            tcpdump.kill()
            tcpdump.wait()
        if tun is not None:
            os.close(tun)  # a non-persistent TUN disappears with its last file descriptor
        for ns in (a, gw, b):
            ip("netns", "del", ns, check=False)
        print("cleaned up: namespaces deleted, TUN closed")


if __name__ == "__main__":
    sys.exit(main())
