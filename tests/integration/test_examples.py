"""The runnable examples under examples/, run as a reader would run them (as root)."""

from __future__ import annotations

import itertools
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lab.netns import Lab, lab_unavailable_reason

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
    # b's answers came back through the TUN and were read with the header stripped.
    assert re.search(r"read: flags=\d gso_type=0 .*\| IPv4 198\.18\.2\.2 > 198\.18\.3\.2 "
                     r"proto 6 length 40 rst=true", out), out
    assert "read 10 RSTs back through tun0" in out, out


def _decode(pcap: Path) -> str:
    return subprocess.run(["tcpdump", "-r", str(pcap), "-n", "-vv"], capture_output=True,
                          text=True).stdout
