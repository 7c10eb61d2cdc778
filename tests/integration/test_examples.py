"""The runnable examples under examples/, run as a reader would run them (as root)."""

from __future__ import annotations

import itertools
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lab.netns import Host, Lab, Process, lab_unavailable_reason
from lab.packets import ref_sum

pytestmark = pytest.mark.netns

ROOT = Path(__file__).resolve().parents[2]
JUMBO = ROOT / "examples" / "jumbo_frame.py"
GO_EXAMPLE = ROOT / "examples" / "go"


def _require_lab() -> None:
    reason = lab_unavailable_reason()
    for tool in ("tcpdump", "ethtool"):
        if reason is None and shutil.which(tool) is None:
            reason = f"needs {tool}"
    if reason:
        if os.environ.get("CI"):
            pytest.fail(f"integration test cannot run in CI: {reason}")
        pytest.skip(f"INTEGRATION TEST NOT RUN: {reason}")


def _namespaces(prefix: str) -> list[str]:
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return [line.split()[0] for line in listed.splitlines()
            if line.strip() and line.split()[0].startswith(prefix)]


def test_jumbo_frame_leaves_as_correct_segments() -> None:
    _require_lab()
    proc = subprocess.run([sys.executable, str(JUMBO)], capture_output=True, text=True,
                          timeout=60, cwd="/")
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr
    # The frame that went in: ten segments' worth, gso_size the MSS, not the MTU.
    assert "into one 13880-byte IPv4 frame" in out, out
    assert "gso_type=1 (TCPV4) hdr_len=40 gso_size=1460 csum_start=20 csum_offset=16" in out
    # What came out on the 1500-byte link, as tcpdump decoded it.
    ip_lengths = [int(n) for n in re.findall(r"proto TCP \(6\), length (\d+)\)", out)]
    tcp_lines = [line for line in out.splitlines() if "198.18.1.2.40000 > " in line]
    assert ip_lengths == [1500] * 9 + [740], out
    assert len(tcp_lines) == 10 and all("(correct)" in line for line in tcp_lines), out
    assert "incorrect" not in out
    # PSH only on the last segment, and the sequence numbers are contiguous.
    assert [("[P.]" in line) for line in tcp_lines] == [False] * 9 + [True], out
    seqs = [re.findall(r"seq (\d+):(\d+)", line)[0] for line in tcp_lines]
    assert all(a[1] == b[0] for a, b in itertools.pairwise(seqs)), seqs
    assert "10 of 10 TCP checksums correct: OK" in out
    # Nothing left behind.
    tag = re.search(r"namespaces: (jumbo\d+)-a", out)
    assert tag, out
    assert _namespaces(tag.group(1) + "-") == []
    assert "cleaned up" in out


def test_jumbo_frame_cleans_up_when_interrupted() -> None:
    """SIGTERM while the topology is being built still removes every namespace."""
    _require_lab()
    proc = subprocess.Popen([sys.executable, "-u", str(JUMBO)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, cwd="/")
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        tag = re.match(r"namespaces: (jumbo\d+)-a", first)
        assert tag, first
        proc.send_signal(signal.SIGTERM)
        rest, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 143, first + rest
    assert "cleaned up" in rest
    assert _namespaces(tag.group(1) + "-") == []


def _require_go() -> None:
    """Debian's golang-go (scripts/bootstrap.sh installs it) builds the Go example."""
    if shutil.which("go") is None:
        reason = "needs Go to build examples/go (apt-get install golang-go)"
        if os.environ.get("CI"):
            pytest.fail(f"integration test cannot run in CI: {reason}")
        pytest.skip(f"INTEGRATION TEST NOT RUN: {reason}")


@pytest.fixture
def go_binary() -> Iterator[Path]:
    """`go build` of examples/go into a temporary directory, offline: no module proxy,
    a private build cache, nothing written to the checkout or to $HOME."""
    _require_go()
    with tempfile.TemporaryDirectory(prefix="tunjumbo-") as tmp:
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": tmp,
               "GOCACHE": f"{tmp}/cache", "GOPATH": f"{tmp}/gopath", "GOPROXY": "off",
               "GOFLAGS": "-mod=mod", "CGO_ENABLED": "0"}
        out = Path(tmp) / "tunjumbo"
        build = subprocess.run(["go", "build", "-o", str(out), "."], cwd=GO_EXAMPLE, env=env,
                               capture_output=True, text=True, timeout=300)
        assert build.returncode == 0, build.stderr
        yield out


def test_go_example_jumbo_frame_leaves_as_correct_segments(lab: Lab, go_binary: Path) -> None:
    """examples/go writes one GSO frame into tun0 on gw; behind a 1500-byte veth without
    TSO or checksum offload, b sees ten correct segments, and the program reads b's RSTs
    back through the TUN with the header stripped."""
    _require_lab()
    gw, b = lab.host("gw", forwarding=True), lab.host("b")
    lab.link(gw, b, a_addrs=["198.18.2.1/24"], b_addrs=["198.18.2.2/24"], mtu=1500)
    b.run("ip", "route", "add", "default", "via", "198.18.2.1")
    gw.run("ethtool", "-K", "to-b", "tso", "off", "gso", "off", "tx", "off")
    capture = b.capture("to-gw", "tcp and src host 198.18.3.2", snaplen=1600,
                        inbound_only=True)
    proc = gw.run(str(go_binary), timeout=60, check=False)
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr
    assert ("wrote one 13880-byte IPv4 frame (9 x 1460 + 700 bytes of payload): flags=1 "
            "gso_type=1 hdr_len=40 gso_size=1460 csum_start=20 csum_offset=16") in out, out
    deadline = time.monotonic() + 10
    while (text := _decode(capture.pcap)).count("length ") < 20:  # 10 x IP + TCP line
        assert time.monotonic() < deadline, text
        time.sleep(0.05)
    decoded = capture.stop()
    ip_lengths = [int(n) for n in re.findall(r"proto TCP \(6\), length (\d+)\)", decoded)]
    tcp_lines = [line for line in decoded.splitlines() if "198.18.3.2.40000 > " in line]
    assert ip_lengths == [1500] * 9 + [740], decoded
    assert len(tcp_lines) == 10 and all("(correct)" in line for line in tcp_lines), decoded
    assert [("[P.]" in line) for line in tcp_lines] == [False] * 9 + [True], decoded
    # b's answers came back through the TUN and were read with the header stripped; the
    # kernel makes its RSTs with a complete checksum (flags 0), unlike a socket's packets.
    assert re.search(r"read: flags=0 gso_type=0 .*\| IPv4 198\.18\.2\.2 > 198\.18\.3\.2 "
                     r"proto 6 length 40 rst=true", out), out
    assert "read 10 RSTs back through tun0" in out, out


def _decode(pcap: Path) -> str:
    return subprocess.run(["tcpdump", "-r", str(pcap), "-n", "-vv"], capture_output=True,
                          text=True).stdout


# --- examples/go -read: the read side, against the writer, through real TUNs ----------
#
#   [tun0] a (forwarding) --veth, TSO on as veths have it-- b (forwarding) [tun0]
#
# The writer opens tun0 on one host and writes its 13,880-byte frame from a host behind
# it to a host behind the other tun0; the kernel forwards it across the veth, whole (the
# veth does TSO), into the reader's tun0, which asked for TSO: one read, a super-packet.

TUNNELS = {  # host -> family -> (TUN address, the host "behind" that TUN)
    "a": {4: ("198.18.3.1/24", "198.18.3.2"), 6: ("fd00:3::1/64", "fd00:3::2")},
    "b": {4: ("198.18.4.1/24", "198.18.4.2"), 6: ("fd00:4::1/64", "fd00:4::2")},
}
MSS = {4: 1460, 6: 1440}  # the writer's gso_size: what fits a 1500-byte link


def _payload(family: int) -> int:
    """What the writer puts in its frame: bytes 0, 1, ... 255, 0, ..."""
    return 9 * MSS[family] + 700


def _two_tunnel_hosts(lab: Lab) -> dict[str, Host]:
    a, b = lab.host("a", forwarding=True), lab.host("b", forwarding=True)
    lab.link(a, b, a_addrs=["198.18.2.1/24", "fd00:2::1/64"],
             b_addrs=["198.18.2.2/24", "fd00:2::2/64"])
    a.run("ip", "route", "add", "198.18.4.0/24", "via", "198.18.2.2")
    a.run("ip", "-6", "route", "add", "fd00:4::/64", "via", "fd00:2::2")
    b.run("ip", "route", "add", "198.18.3.0/24", "via", "198.18.2.1")
    b.run("ip", "-6", "route", "add", "fd00:3::/64", "via", "fd00:2::1")
    # Neighbour discovery needs the link-local addresses, tentative for a while after
    # the link comes up; until then a forwarded IPv6 packet may find no neighbour.
    a.wait_for("ping -6 -c 1 -W 1 fd00:2::2 && ping -c 1 -W 1 198.18.2.2")
    b.wait_for("ping -6 -c 1 -W 1 fd00:2::1 && ping -c 1 -W 1 198.18.2.1")
    return {"a": a, "b": b}


def _expected_segments(family: int, src: str, dst: str, hops: int) -> list[bytes]:
    """The ten segments the frame stands for, built here independently of the reader: as
    tcp_gso_segment() cuts (seq + gso_size x i, IPv4 ID 100 + i, PSH on the last only), after
    `hops` forwarding hosts have each taken one off the TTL (hop limit)."""
    payload, mss = bytes(i & 0xFF for i in range(_payload(family))), MSS[family]
    af = socket.AF_INET if family == 4 else socket.AF_INET6
    s, d = socket.inet_pton(af, src), socket.inet_pton(af, dst)
    segments = []
    for i in range(10):
        chunk = payload[mss * i:mss * (i + 1)]
        tcp = struct.pack("!HHIIBBHHH", 40000, 5001, 1000000 + mss * i, 1, 5 << 4,
                          0x18 if i == 9 else 0x10, 502, 0, 0) + chunk
        pseudo = ref_sum(s + d + struct.pack("!HH", socket.IPPROTO_TCP, len(tcp)))
        tcp = tcp[:16] + struct.pack("!H", ~ref_sum(tcp, pseudo) & 0xFFFF) + tcp[18:]
        if family == 4:
            ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), 100 + i, 0x4000,
                             64 - hops, socket.IPPROTO_TCP, 0, s, d)
            ip = ip[:10] + struct.pack("!H", ~ref_sum(ip) & 0xFFFF) + ip[12:]
        else:
            ip = struct.pack("!IHBB16s16s", 6 << 28, len(tcp), socket.IPPROTO_TCP,
                             64 - hops, s, d)
        segments.append(ip + tcp)
    return segments


def _pcap_tcp_packets(pcap: Path) -> list[bytes]:
    """The TCP packets of a pcap file with link type RAW, as the reader writes it."""
    data = pcap.read_bytes()
    assert struct.unpack_from("<IHHiIII", data) == (0xA1B2C3D4, 2, 4, 0, 0, 65535, 101)
    packets, at = [], 24
    while at < len(data):
        length = struct.unpack_from("<I", data, at + 8)[0]
        packet = data[at + 16:at + 16 + length]
        at += 16 + length
        proto = packet[9] if packet[0] >> 4 == 4 else packet[6]
        if proto == socket.IPPROTO_TCP:
            packets.append(packet)
    return packets


def _start_reader(host: Host, go_binary: Path, *args: str) -> Process:
    """`tunjumbo -read` in `host`, returned once its TUN is up and it is reading."""
    reader = host.start(str(go_binary), "-read", *args)
    deadline = time.monotonic() + 10
    while "reading" not in reader.output():
        assert reader.popen.poll() is None and time.monotonic() < deadline, reader.output()
        time.sleep(0.02)
    return reader


def _run_writer_and_reader(lab: Lab, go_binary: Path, family: int, writer: str,
                           reader: str, offload: str | None = None) -> tuple[str, Path]:
    """The reader on `reader`'s tun0 until it has made ten TCP packets, the writer on
    `writer`'s; returns the reader's output and its pcap file."""
    hosts = lab.hosts
    pcap = lab.path(f"read-{family}-{writer}-{reader}-{offload}.pcap")
    proc = _start_reader(hosts[reader], go_binary, "-addr", TUNNELS[reader][family][0],
                         "-pcap", str(pcap), "-count", "10", "-idle", "20s",
                         *(["-offload", offload] if offload else []))
    wrote = hosts[writer].run(str(go_binary), "-addr", TUNNELS[writer][family][0], "-src",
                              TUNNELS[writer][family][1], "-dst", TUNNELS[reader][family][1],
                              "-wait", "1s", timeout=60, check=False)
    assert wrote.returncode == 0, wrote.stdout + wrote.stderr
    frame = _payload(family) + (40 if family == 4 else 60)
    assert f"wrote one {frame}-byte IPv{family} frame" in wrote.stdout, wrote.stdout
    assert proc.popen.wait(timeout=30) == 0, proc.output()
    return proc.output(), pcap


@pytest.mark.parametrize("family", [4, 6])
@pytest.mark.parametrize(("writer", "reader"), [("a", "b"), ("b", "a")])
def test_go_reader_splits_the_writers_frame(lab: Lab, go_binary: Path, family: int,
                                            writer: str, reader: str) -> None:
    """Writer and reader against each other, each way, IPv4 and IPv6. The frame crosses
    the veth whole, arrives in ONE read as a super-packet with NEEDS_CSUM set (it came
    from a veth), and the reader's ten segments are byte for byte the ones the frame
    stands for, every checksum correct by tcpdump's count."""
    _require_lab()
    hosts = _two_tunnel_hosts(lab)
    src, dst = TUNNELS[writer][family][1], TUNNELS[reader][family][1]
    wire = hosts[reader].capture(f"to-{writer}", f"tcp and src host {src}", snaplen=65535,
                                 inbound_only=True)
    out, pcap = _run_writer_and_reader(lab, go_binary, family, writer, reader)
    ip_len = 20 if family == 4 else 40
    gso_type = 1 if family == 4 else 4
    frame = ip_len + 20 + _payload(family)
    assert re.search(rf"read: flags=1 gso_type={gso_type} hdr_len={ip_len + 20} "
                     rf"gso_size={MSS[family]} csum_start={ip_len} csum_offset=16 \| {frame} bytes "
                     rf"-> 10 packet\(s\), IPv{family} {src} > {dst} proto 6", out), out
    assert _pcap_tcp_packets(pcap) == _expected_segments(family, src, dst, hops=2)
    decoded = _decode(pcap)
    assert decoded.count("(correct)") == 10 and "incorrect" not in decoded, decoded
    # On the veth between the two the frame is one packet, its checksum still partial.
    on_wire = wire.stop()
    length = f"length {frame})" if family == 4 else f"payload length: {frame - 40})"
    assert on_wire.count(length) == 1 and "incorrect" in on_wire, on_wire


@pytest.mark.parametrize("family", [4, 6])
def test_go_reader_splits_as_the_kernel_does(lab: Lab, go_binary: Path, family: int) -> None:
    """The kernel as the oracle: with TUNSETOFFLOAD 0 on the reader's TUN the kernel
    segments and checksums the same frame itself before the TUN, and its ten packets are
    byte for byte the reader's own split."""
    _require_lab()
    _two_tunnel_hosts(lab)
    out, pcap = _run_writer_and_reader(lab, go_binary, family, "a", "b", offload="0")
    kernel = _pcap_tcp_packets(pcap)
    assert len(re.findall(r"read: flags=\d gso_type=0 .*-> 1 packet", out)) >= 10, out
    src, dst = TUNNELS["a"][family][1], TUNNELS["b"][family][1]
    assert kernel == _expected_segments(family, src, dst, hops=2)


def test_go_reader_a_syn_from_a_veth_arrives_with_needs_csum(lab: Lab, go_binary: Path) -> None:
    """A container's traffic, in miniature: a SYN from a socket on a, across the veth
    (checksum offload on, as veths have it), forwarded by b into the reader's TUN, is
    read with NEEDS_CSUM and only the pseudo-header sum in its checksum field. tcpdump on
    the sending host calls that SYN "incorrect"; completed by the reader, tcpdump calls
    it correct."""
    _require_lab()
    hosts = _two_tunnel_hosts(lab)
    sender = hosts["a"].capture("to-b", "tcp", snaplen=200)
    pcap = lab.path("syn.pcap")
    reader = _start_reader(hosts["b"], go_binary, "-addr", TUNNELS["b"][4][0], "-pcap",
                           str(pcap), "-count", "1", "-idle", "20s")
    hosts["a"].start(sys.executable, "-c", "import socket; socket.create_connection("
                     f"('{TUNNELS['b'][4][1]}', 5001), timeout=20)")
    assert reader.popen.wait(timeout=30) == 0, reader.output()
    assert re.search(r"read: flags=1 gso_type=0 hdr_len=0 gso_size=0 csum_start=20 "
                     r"csum_offset=16 \| 60 bytes -> 1 packet\(s\), IPv4 198\.18\.2\.1 > "
                     r"198\.18\.4\.2 proto 6", reader.output()), reader.output()
    completed = re.search(r"Flags \[S\], cksum (0x[0-9a-f]+) \(correct\)", _decode(pcap))
    assert completed, _decode(pcap)
    # tcpdump on the sender: "incorrect -> " and the value the reader then put there.
    on_sender = sender.stop()
    assert f"(incorrect -> {completed.group(1)})" in on_sender, on_sender


def test_go_writer_ipv6_gso_size_1460_never_crosses_a_1500_byte_link(
        lab: Lab, go_binary: Path) -> None:
    """The IPv6 header is 20 bytes longer: segments of 1460 bytes of payload make
    1520-byte IPv6 packets, and the forwarding host drops the whole frame. Nothing
    reaches the reader, while the default (1440) does (test above)."""
    _require_lab()
    hosts = _two_tunnel_hosts(lab)
    reader = _start_reader(hosts["b"], go_binary, "-addr", TUNNELS["b"][6][0], "-count", "1",
                           "-idle", "3s")
    wrote = hosts["a"].run(str(go_binary), "-addr", TUNNELS["a"][6][0], "-src",
                           TUNNELS["a"][6][1], "-dst", TUNNELS["b"][6][1], "-mss", "1460",
                           "-wait", "1s", timeout=60, check=False)
    assert "gso_size=1460" in wrote.stdout, wrote.stdout + wrote.stderr
    assert reader.popen.wait(timeout=30) == 1, reader.output()
    assert "made 0 TCP packets" in reader.output(), reader.output()
