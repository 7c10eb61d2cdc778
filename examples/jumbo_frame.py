"""Write ONE jumbo TCP frame into a TUN device and watch it leave a 1500-byte link as
correctly checksummed segments. Run as root:  sudo .venv/bin/python examples/jumbo_frame.py

    a (198.18.1.2) --veth-- gw [tun0] --veth, MTU 1500, TSO/GSO/tx-csum off-- b (198.18.2.2)

The script plays the VPN endpoint on gateway `gw`: it holds ten TCP segments of one flow
from a to b, as if just decrypted (a is a real host so that the source is plausible and b's
RST goes there, not into the TUN). Instead of writing them one by one, it coalesces them
(vpn.core.offload.coalesce) into one 13,880-byte frame with a virtio-net header (gso_type TCPV4,
gso_size = the MSS, NEEDS_CSUM with the pseudo-header sum in the checksum field) and writes
that with a single writev. The kernel routes the frame like any packet; because the egress
veth can do no TSO and no checksum offload, it cuts the frame into MTU-sized segments and
fills in every checksum itself (software GSO). tcpdump on b shows what arrived.

Everything it creates (three namespaces, the TUN, tcpdump) is removed on the way out.
"""

from __future__ import annotations

import os
import signal
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from lab import netns  # entering a namespace to open the TUN there
from vpn.core.offload import coalesce
from vpn.core.packet.checksum import checksum, pseudo_header_sum
from vpn.core.packet.virtio import VirtioNetHeader
from vpn.io.tun import TunDevice

PREFIX = "jumbo"  # namespace names start with this, then the pid: jumbo1234-gw
SRC, DST = "198.18.1.2", "198.18.2.2"
SPORT, DPORT = 40000, 5001
MSS = 1460  # payload per segment: 1500 - 20 (IPv4) - 20 (TCP without options)
FULL_SEGMENTS, LAST_PAYLOAD = 9, 700  # the last segment may be shorter, never longer


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


def tcp_segment(seq: int, payload: bytes, flags: int, ip_id: int) -> bytes:
    """One complete IPv4/TCP packet (no options), every checksum filled in."""
    src, dst = socket.inet_aton(SRC), socket.inet_aton(DST)
    tcp = struct.pack("!HHIIBBHHH", SPORT, DPORT, seq, 1, 5 << 4, flags, 502, 0, 0) + payload
    csum = checksum(tcp, pseudo_header_sum(src, dst, socket.IPPROTO_TCP, len(tcp)))
    tcp = tcp[:16] + struct.pack("!H", csum) + tcp[18:]
    hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), ip_id, 0x4000, 64,
                      socket.IPPROTO_TCP, 0, src, dst)
    hdr = hdr[:10] + struct.pack("!H", checksum(hdr)) + hdr[12:]
    return hdr + tcp


def build_segments() -> list[bytes]:
    """Ten in-order segments of one flow: flags ACK, the last one ACK|PSH and shorter."""
    sizes = [MSS] * FULL_SEGMENTS + [LAST_PAYLOAD]
    seq, segments = 1_000_000, []
    for i, size in enumerate(sizes):
        payload = bytes((seq + k) & 0xFF for k in range(size))
        flags = 0x18 if i == len(sizes) - 1 else 0x10
        segments.append(tcp_segment(seq, payload, flags, ip_id=100 + i))
        seq += size
    return segments


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
    tun: TunDevice | None = None
    try:
        print(f"namespaces: {a}  {gw}  {b}")
        build_topology(a, gw, b)
        with netns.inside(gw):
            tun = TunDevice.open("tun0")  # IFF_VNET_HDR, offloads negotiated
        print(f"{gw}: tun0 open, TUN offloads {tun.offload.describe()}")
        ip("-n", gw, "link", "set", "tun0", "up")
        # The frame's source (a) is routed out to-a, not tun0: strict reverse-path
        # filtering would drop it. A VPN gateway routes the peer's networks into the TUN.
        for conf in ("all", "default", "tun0"):
            in_ns(gw, "sysctl", "-q", "-w", f"net.ipv4.conf.{conf}.rp_filter=0")

        segments = build_segments()
        frames = coalesce(segments)
        assert len(frames) == 1 and frames[0].segments == len(segments), frames
        frame = frames[0]
        vnet = VirtioNetHeader.unpack(frame.header)
        ip_len = sum(len(p) for p in frame.parts)
        print(f"coalesced {len(segments)} segments ({MSS} x {FULL_SEGMENTS} + {LAST_PAYLOAD} "
              f"bytes of payload) into one {ip_len}-byte IPv4 frame")
        print(f"virtio-net header: flags={vnet.flags} (NEEDS_CSUM) gso_type={vnet.gso_type} "
              f"(TCPV4) hdr_len={vnet.hdr_len} gso_size={vnet.gso_size} "
              f"csum_start={vnet.csum_start} csum_offset={vnet.csum_offset}")

        tcpdump = start_tcpdump(b)
        wait_listening(tcpdump)
        tun.write(frame.header, frame.parts)  # one writev: header, headers, payload views
        print(f"wrote it to tun0 with one writev; tcpdump on {b} (inbound):")
        time.sleep(0.5)  # forwarding is immediate; this is tcpdump's time to print
        tcpdump.send_signal(signal.SIGTERM)
        text, _ = tcpdump.communicate(timeout=10)
        tcpdump = None

        seen = packets(text)
        lengths = []
        for ip_line, tcp_line in seen:
            print(f"  {ip_line}\n      {tcp_line}")
            # "IP (tos 0x0, ttl 63, ..., proto TCP (6), length 1500)": the IP total length
            lengths.append(int(ip_line.rsplit("length ", 1)[1].rstrip(")")))
        correct = sum("(correct)" in tcp_line for _, tcp_line in seen)
        ok = (len(seen) == len(segments) and correct == len(seen)
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
            tun.close()  # a non-persistent TUN disappears with its last file descriptor
        for ns in (a, gw, b):
            ip("netns", "del", ns, check=False)
        print("cleaned up: namespaces deleted, TUN closed")


if __name__ == "__main__":
    sys.exit(main())
