"""A background iperf3 stream that fills a path while something else is measured across it
(latency under load): started, waited for until it is really sending, stopped by its pid.
"""

from __future__ import annotations

import re
import secrets
import statistics
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from lab.netns import Host, Process

# iperf3's interval lines (`-i`), e.g. "[  5]   0.50-1.10   sec   381 MBytes  5.31 Gbits/sec";
# the summary lines end in "sender" / "receiver" and are left out.
_INTERVAL = re.compile(r"^\[\s*\d+\]\s+[\d.]+-[\d.]+\s+sec\s+[\d.]+ \w*Bytes\s+([\d.]+) ([KMG]?)"
                       r"bits/sec(?!.*(?:sender|receiver))", re.MULTILINE)
_SCALE = {"": 1e-9, "K": 1e-6, "M": 1e-3, "G": 1.0}
INTERVAL = 0.5  # seconds between iperf3's reports


def interval_gbps(output: str) -> list[float]:
    """The rate of each interval line of iperf3's (text) client output, in Gb/s."""
    return [float(rate) * _SCALE[unit] for rate, unit in _INTERVAL.findall(output)]


@dataclass
class Stream:
    """A running iperf3 client and its one-shot server; `gbps` is filled once it stops."""

    client: Process
    server: Process
    gbps: list[float] = field(default_factory=list)

    def sending(self) -> bool:
        return any(rate > 0 for rate in interval_gbps(self.client.output()))


@contextmanager
def iperf3_stream(client: Host, server: Host, address: str, *, bound: float = 120,
                  timeout: float = 30) -> Iterator[Stream]:
    """One TCP stream client -> server at `address` for the block: yields once iperf3 has
    reported an interval with data sent (at most `timeout` seconds after the start), and
    stops both processes by pid when the block ends. `bound` caps iperf3's own run time in
    case the block never ends."""
    port = str(5201 + secrets.randbelow(1000))
    srv = server.start("iperf3", "-s", "-1", "-p", port)
    stream: Stream | None = None
    try:
        server.wait_for(f"ss -ltn | grep -q ':{port} '")
        proc = client.start("iperf3", "-c", address, "-p", port, "-t", str(bound),
                            "-i", str(INTERVAL), "--forceflush")
        stream = Stream(proc, srv)
        deadline = time.monotonic() + timeout
        while not stream.sending():
            if proc.popen.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"iperf3 did not start sending:\n{proc.output()}")
            time.sleep(INTERVAL / 5)
        yield stream
        if proc.popen.poll() is not None:
            raise RuntimeError(f"iperf3 stopped before the block ended:\n{proc.output()}")
    finally:
        if stream is not None:
            stream.client.stop()
            stream.gbps = interval_gbps(stream.client.output())
        srv.stop()


def median_gbps(stream: Stream) -> float:
    """The median of the stream's interval rates (0 when it reported none)."""
    return statistics.median(stream.gbps) if stream.gbps else 0.0
