"""The latency bench's lab helpers against the real kernel, sockperf and iperf3: ping-pong
round trips across a veth, the same while an iperf3 stream fills it (running throughout,
stopped by pid afterwards), and an ours variant whose extra `vpn up` arguments reach both
ends of a tunnel that carries sockperf."""

from __future__ import annotations

import os

import pytest

from bench import modes
from lab import load, sockperf, wg_lab
from lab.netns import Host, Lab

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
