"""The runnable examples under examples/, run as a reader would run them (as root)."""

from __future__ import annotations

import itertools
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from lab.netns import lab_unavailable_reason

pytestmark = pytest.mark.netns

ROOT = Path(__file__).resolve().parents[2]
JUMBO = ROOT / "examples" / "jumbo_frame.py"


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
