"""The latency bench's lab helpers against the real kernel, sockperf and iperf3: ping-pong
round trips across a veth, the same while an iperf3 stream fills it (running throughout,
stopped by pid afterwards), an ours variant whose extra `vpn up` arguments reach both
ends of a tunnel that carries sockperf, and the busy-poll such a variant turns on."""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

import pytest

from bench import modes
from lab import load, sockperf, wg_lab
from lab.netns import Host, Lab
from lab.relay_lab import checked_transfer
from lab.wg_lab import final_counters
from tests.unit.io.test_schedslice import TAKES_SLICES

pytestmark = pytest.mark.netns


@pytest.fixture(autouse=True)
def _sockperf() -> None:
    reason = sockperf.unavailable_reason()
    if reason and os.environ.get("CI"):
        pytest.fail(f"integration test cannot run in CI: {reason}")
    if reason:
        pytest.skip(f"INTEGRATION TEST NOT RUN: {reason}")


def _veth(lab: Lab) -> tuple[Host, Host]:
    a, b = lab.host("a"), lab.host("b")
    lab.link(a, b, a_addrs=["198.18.9.1/24"], b_addrs=["198.18.9.2/24"])
    return a, b


def test_ping_pong_measures_round_trips_and_stops_its_server(lab: Lab) -> None:
    a, b = _veth(lab)
    figures = sockperf.ping_pong(a, b, "198.18.9.2", seconds=1)
    assert figures["observations"] > 100
    assert figures["dropped"] == 0
    assert 0 < figures["median_us"] <= figures["p99_us"] <= figures["p999_us"]
    servers = [p for p in lab.processes if "server" in p.args and "sockperf" in p.args]
    assert len(servers) == 1 and servers[0].popen.poll() is not None


def test_ping_pong_under_an_iperf3_stream_that_runs_throughout(lab: Lab) -> None:
    a, b = _veth(lab)
    before = int(b.run("cat", "/sys/class/net/to-a/statistics/rx_bytes").stdout)
    with load.iperf3_stream(a, b, "198.18.9.2") as stream:
        assert stream.sending()
        figures = sockperf.ping_pong(a, b, "198.18.9.2", seconds=1)
        assert stream.client.popen.poll() is None  # still filling the link
    after = int(b.run("cat", "/sys/class/net/to-a/statistics/rx_bytes").stdout)
    assert figures["observations"] > 0
    assert stream.client.popen.poll() is not None and stream.server.popen.poll() is not None
    assert stream.gbps and load.median_gbps(stream) > 0
    assert after - before > 10 * 1024 * 1024  # the stream crossed the link, not just sockperf


def test_an_ours_variant_starts_both_ends_with_its_arguments(lab: Lab) -> None:
    pair = wg_lab.build(lab)
    mode = modes.variant("--metrics 127.0.0.1:9586")
    modes.start(pair, mode, modern=None)
    for node in (pair.a, pair.b):
        assert node.process is not None and node.kind == "ours"
        assert "--metrics" in node.process.args  # and it serves them, in its namespace:
        node.host.wait_for("ss -ltn | grep -q '127.0.0.1:9586 '")
    pair.a.host.run("ping", "-c", "2", "-i", "0.2", "-W", "5", pair.b.tunnel4)
    figures = sockperf.ping_pong(pair.a.host, pair.b.host, pair.b.tunnel4, seconds=1)
    assert figures["observations"] > 0 and figures["dropped"] == 0


def _cpu_seconds(pid: int) -> float:
    """The CPU time of every live thread of `pid` (the kernel's schedstat, in ns)."""
    total = 0
    for stat in Path(f"/proc/{pid}/task").glob("*/schedstat"):
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            total += int(stat.read_text().split()[0])
    return total / 1e9


def _thread_slices(pid: int) -> dict[int, int]:
    """Each thread of `pid` -> its scheduler slice in ns, as /proc shows it (a thread that
    ends meanwhile is left out)."""
    slices = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            for line in (task / "sched").read_text().splitlines():
                if line.startswith("se.slice"):
                    slices[int(task.name)] = int(line.split(":")[1])
    return slices


@pytest.mark.parametrize("threads", ["0", "2"])
def test_busy_poll_carries_traffic_and_an_idle_endpoint_sleeps(lab: Lab, threads: str) -> None:
    """`vpn up --busy-poll 100 --sched-slice 200` on both ends (inline and with workers):
    ping-pong and a checked transfer cross it, management answers, and once the traffic
    stops the endpoint goes back to sleep: over an idle stretch its CPU time stays a small
    part of it (a spin that never ended would use all of it). The data path's threads (the
    loop's, the workers') run with the slice asked for, the others with the kernel's."""
    pair = wg_lab.build(lab)
    mode = modes.variant(f"--busy-poll 100 --sched-slice 200 --threads {threads}")
    modes.start(pair, mode, modern=None)
    a, b = pair.a.host, pair.b.host
    a.run("ping", "-c", "2", "-i", "0.2", "-W", "5", pair.b.tunnel4)
    figures = sockperf.ping_pong(a, b, pair.b.tunnel4, seconds=1)
    assert figures["observations"] > 0 and figures["dropped"] == 0
    sent, received = checked_transfer(a, b, pair.b.tunnel4, 8 << 20)
    assert sent == received and sent.startswith(str(8 << 20))
    assert "latest handshake" in a.run("wg", "show", pair.a.ifname).stdout
    assert pair.a.process is not None
    pid = pair.a.process.pid
    a.wait_for(f"grep -q '^State:.*sleeping' /proc/{pid}/status")
    idle_seconds = 2.0
    before, start = _cpu_seconds(pid), time.monotonic()
    time.sleep(idle_seconds)  # the idle stretch measured, not a wait for a condition
    used, elapsed = _cpu_seconds(pid) - before, time.monotonic() - start
    assert used < elapsed / 4, f"{used:.3f} s of CPU in {elapsed:.2f} s idle"
    slices = _thread_slices(pid)
    output = pair.stop(pair.a)
    assert "busy-poll up to 100 us" in output
    if TAKES_SLICES:
        assert "scheduler slice 200 us" in output
        assert slices[pid] == 200_000, slices
        assert sum(ns == 200_000 for ns in slices.values()) == 1 + int(threads), slices
    else:  # said, not skipped: this kernel keeps its default slice
        assert "scheduler slice the kernel's default" in output
    assert final_counters(output)["drops"].get("internal_error", 0) == 0
