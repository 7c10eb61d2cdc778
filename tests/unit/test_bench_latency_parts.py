"""The latency and streams bench's pure parts: sockperf's and iperf3's output read back
(outputs of sockperf 3.7 and iperf3 in this project's lab; two of iperf3's rates changed to
cover each unit), ours' variants, the `--only` parts, and the latency part skipped loudly
where sockperf is missing."""

from __future__ import annotations

import argparse

import pytest

from bench import latency, modes
from bench.run import PARTS, parts_from
from lab import load, sockperf

SOCKPERF_OUTPUT = """\
sockperf: \x1b[2;35m== version #3.7-no.git == \x1b[0m
sockperf[CLIENT] send on:sockperf: using recvfrom() to block on socket(s)

[ 0] IP = 198.18.9.2      PORT = 11111 # UDP
sockperf: Warmup stage (sending a few dummy messages)...
sockperf: Starting test...
sockperf: Test end (interrupted by timer)
sockperf: Test ended
sockperf: [Total Run] RunTime=2.000 sec; Warm up time=400 msec; SentMessages=92363; \
ReceivedMessages=92362
sockperf: ========= Printing statistics for Server No: 0
sockperf: [Valid Duration] RunTime=1.552 sec; SentMessages=68694; ReceivedMessages=68694
sockperf: \x1b[2;35m====> avg-rtt=22.564 (std-dev=135.465)\x1b[0m
sockperf: # dropped messages = 0; # duplicated messages = 0; # out-of-order messages = 0
sockperf: Summary: Round trip is 22.564 usec
sockperf: \x1b[2;35mTotal 68694 observations\x1b[0m; each percentile contains 686.94 observations
sockperf: ---> <MAX> observation = 9636.540
sockperf: ---> percentile 99.999 = 9435.832
sockperf: ---> percentile 99.990 = 4977.571
sockperf: ---> percentile 99.900 = 1618.283
sockperf: ---> percentile 99.000 =  214.198
sockperf: ---> percentile 90.000 =   13.870
sockperf: ---> percentile 75.000 =   13.520
sockperf: ---> percentile 50.000 =   12.999
sockperf: ---> percentile 25.000 =   12.909
sockperf: ---> <MIN> observation =   12.668
"""

IPERF3_OUTPUT = """\
Connecting to host 198.18.9.2, port 5300
[  5] local 198.18.9.1 port 48978 connected to 198.18.9.2 port 5300
[ ID] Interval           Transfer     Bitrate         Retr  Cwnd
[  5]   0.00-0.50   sec   322 MBytes  5.40 Gbits/sec    0    362 KBytes
[  5]   0.50-1.10   sec   381 MBytes  5.31 Gbits/sec  226    359 KBytes
[  5]   1.10-1.50   sec  45.0 KBytes   720 Kbits/sec    0   1.33 MBytes
[  5]   1.50-1.99   sec  6.25 MBytes   107 Mbits/sec    0   2.67 MBytes
iperf3: interrupt - the client has terminated
- - - - - - - - - - - - - - - - - - - - - - - - -
[ ID] Interval           Transfer     Bitrate         Retr
[  5]   0.00-1.99   sec  1.52 GBytes  6.57 Gbits/sec  226             sender
[  5]   0.00-1.99   sec  0.00 Bytes  0.00 bits/sec                  receiver
"""


def test_sockperf_round_trips_are_read_from_its_coloured_output() -> None:
    figures = sockperf.parse(SOCKPERF_OUTPUT)
    assert figures == {"median_us": 12.999, "p99_us": 214.198, "p999_us": 1618.283,
                       "mean_us": 22.564, "observations": 68694, "dropped": 0}


def test_sockperf_output_without_percentiles_is_a_clear_error() -> None:
    cut = SOCKPERF_OUTPUT.split("sockperf: Test ended")[0]
    with pytest.raises(ValueError, match="no round-trip percentiles"):
        sockperf.parse(cut)


def test_iperf3_interval_rates_leave_out_the_summary() -> None:
    assert load.interval_gbps(IPERF3_OUTPUT) == pytest.approx([5.40, 5.31, 0.00072, 0.107])
    assert load.interval_gbps(IPERF3_OUTPUT.split("[  5]   0.00-0.50")[0]) == []


def test_an_ours_variant_is_two_of_ours_with_its_up_arguments() -> None:
    mode = modes.variant("--threads  2")
    assert (mode.name, mode.ends, mode.up_args) == ("ours --threads 2", ("ours", "ours"),
                                                   ("--threads", "2"))
    assert mode.all_ours and not mode.modern
    assert modes.label(mode.name) == "ours --threads 2"
    assert modes.label("modern-wireguard-go") == "modern wg-go"
    names = [m.name for m in modes.tunnel_modes(False, [mode])]
    assert names[-1] == "ours --threads 2" and "modern-wireguard-go" not in names
    assert "ours-modern-wireguard-go" in [m.name for m in modes.tunnel_modes(True)]
    with pytest.raises(ValueError, match="at least one"):
        modes.variant("  ")


def test_only_picks_parts_in_their_order_and_names_the_unknown() -> None:
    assert parts_from("latency, streams") == ("streams", "latency")
    assert parts_from(",".join(PARTS)) == PARTS
    with pytest.raises(argparse.ArgumentTypeError, match=r"unknown part.*latncy"):
        parts_from("streams,latncy")
    with pytest.raises(argparse.ArgumentTypeError, match="none given"):
        parts_from(",")


def test_latency_without_sockperf_is_skipped_loudly(monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    report = latency.latency_bench(rounds=1, modern=None)
    assert report["measured"] is False
    assert "sockperf is not installed" in str(report["reason"])
    assert f"{latency.NOT_MEASURED}: sockperf is not installed" in capsys.readouterr().err
    assert latency.rows(report) == [(latency.NOT_MEASURED, report["reason"])]
