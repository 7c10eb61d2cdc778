"""A config with no PrivateKey (wg-quick's `PostUp = wg set %i private-key FILE`) comes up,
and `wg set IFACE private-key /dev/null` removes the key as with the kernel: driven with
Debian's `wg` against `vpn up`, the peer ours too."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from lab.netns import Host, Lab
from lab.wg_lab import ROOT, build, start_vpn

pytestmark = pytest.mark.netns


def _ping(host: Host, address: str) -> None:
    host.run("ping", "-c", "2", "-i", "0.2", "-W", "3", address)


def test_no_private_key_then_postup_sets_it_then_dev_null_removes_it(lab: Lab) -> None:
    pair = build(lab)
    a, b = pair.a, pair.b
    pair.start_ours(b)
    config = pair.write_config(a)
    key = lab.path(f"{a.ifname}.key")
    key.write_text(a.private + "\n")
    key.chmod(0o600)
    lines = [line for line in config.read_text().splitlines()
             if not line.startswith("PrivateKey")]
    lines.insert(1, f"PostUp = wg set %i private-key {key}")
    config.write_text("\n".join(lines) + "\n")

    check = subprocess.run([sys.executable, "-m", "vpn.cli", "check", str(config)],
                           capture_output=True, text=True, timeout=30,
                           env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert check.returncode == 0, check.stderr
    proc = start_vpn(a.host, config)
    a.host.wait_for(f"test \"$(wg show {a.ifname} private-key)\" = '{a.private}'")
    _ping(a.host, b.tunnel4)
    assert f"public key now {a.public}" in proc.output()

    a.host.run("wg", "set", a.ifname, "private-key", "/dev/null")
    assert a.host.run("wg", "show", a.ifname, "private-key").stdout.strip() == "(none)"
    assert a.host.run("wg", "show", a.ifname, "public-key").stdout.strip() == "(none)"
    deadline = time.monotonic() + 10
    while "private key removed" not in proc.output():
        assert time.monotonic() < deadline, proc.output()
        time.sleep(0.05)
    output = proc.output()
    assert output.count("public key now") == 1  # the removal announces no new key
    # Every session ended: nothing gets through, and b's handshakes are dropped unanswered.
    assert a.host.run("ping", "-c", "2", "-i", "0.2", "-W", "1", b.tunnel4,
                      check=False).returncode != 0
    a.host.run("wg", "set", a.ifname, "private-key", str(key))
    _ping(a.host, b.tunnel4)
    assert proc.stop() == 0
    assert "Traceback" not in proc.output()
