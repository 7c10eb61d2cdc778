"""End to end with worker threads: iperf3 (one TCP stream, each way) through a lab pair of
our endpoints, both sides `vpn up --threads N`, for N in 0 (inline), 1 and 2, interleaved
over `rounds`; the medians in Gbit/s. `python -m bench.threads_e2e [ROUNDS] [SECONDS]`."""

from __future__ import annotations

import json
import statistics
import sys

from lab import wg_lab
from lab.netns import Lab, iperf3_gbps

THREADS = ("0", "1", "2")


def run(rounds: int = 3, seconds: float = 4.0) -> dict[str, dict[str, float]]:
    samples: dict[str, dict[str, list[float]]] = {
        n: {"forward": [], "reverse": []} for n in THREADS}
    for _ in range(rounds):
        for n in THREADS:
            with Lab() as lab:
                pair = wg_lab.build(lab)
                for node in (pair.a, pair.b):
                    pair.start_ours(node, up_args=["--threads", n])
                pair.a.host.run("ping", "-c", "2", "-i", "0.2", "-W", "5", pair.b.tunnel4)
                for flow, reverse in (("forward", False), ("reverse", True)):
                    result = pair.a.host.iperf3(pair.b.host, pair.b.tunnel4, seconds=seconds,
                                                reverse=reverse)
                    samples[n][flow].append(iperf3_gbps(result))
    return {n: {flow: statistics.median(v) for flow, v in flows.items()}
            for n, flows in samples.items()}


if __name__ == "__main__":
    args = sys.argv[1:]
    print(json.dumps(run(int(args[0]) if args else 3, float(args[1]) if len(args) > 1 else 4.0)))
