"""The endpoint embedded through its asyncio API: peers added and removed at run time."""

from __future__ import annotations

import json
import os
import sys
import time

import pytest

from lab.netns import Lab, Process
from lab.wg_lab import ROOT, build

pytestmark = pytest.mark.netns


def _wait_line(proc: Process, text: str, timeout: float = 20) -> str:
    deadline = time.monotonic() + timeout
    while True:
        for line in proc.output().splitlines():
            if line.startswith(text):
                return line
        if proc.popen.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"no {text!r} line:\n{proc.output()}")
        time.sleep(0.05)


def test_add_and_remove_a_peer_at_run_time(lab: Lab) -> None:
    pair = build(lab)
    config = pair.write_config(pair.a)
    # The file has no [Peer]: the program adds it through the API.
    config.write_text(config.read_text().split("[Peer]")[0])
    pair.start_ours(pair.b)
    go = lab.path("go")  # the client's signal: the test's traffic has been sent
    client = pair.a.host.start(
        sys.executable, str(ROOT / "lab" / "api_client.py"), str(config),
        pair.b.public, "198.18.1.2:51821", str(go), env=dict(os.environ, PYTHONPATH=str(ROOT)),
    )
    _wait_line(client, "peer added")
    pair.b.host.run("ping", "-c", "3", "-i", "0.2", "-W", "5", pair.a.tunnel4)
    go.touch()
    counters = json.loads(_wait_line(client, "{"))
    (peer,) = counters["peers"]
    assert peer["public_key"] == pair.b.public
    assert peer["rx_bytes"] > 0 and peer["tx_bytes"] > 0
    assert peer["last_handshake"] is not None
    assert counters["datapath"]["packets_written"] >= 3
    _wait_line(client, "peer removed")
    gone = pair.b.host.run("ping", "-c", "1", "-W", "1", pair.a.tunnel4, check=False)
    assert gone.returncode != 0
    assert pair.a.ifname in pair.a.host.run("ip", "link").stdout  # still up: the peer went
    go.unlink()
    _wait_line(client, "down")
    assert client.popen.wait(timeout=10) == 0
    assert pair.a.ifname not in pair.a.host.run("ip", "link").stdout
