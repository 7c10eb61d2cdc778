"""Throughput of two of our endpoints over a lossy underlay: iperf3 a->b at 0/1/5/20% random
loss each way, for `make bench` (bench/run.py calls loss_throughput); tests share the setup.
"""

from __future__ import annotations

import statistics

from lab import wg_lab
from lab.netns import Lab, iperf3_gbps

LOSS_RATES = {"0%": 0.0, "1%": 0.01, "5%": 0.05, "20%": 0.20}
# Each host's veth towards the other (wg_lab.build names them after the far host).
VETH = {"a": "to-b", "b": "to-a"}


def lossy_underlay(pair: wg_lab.WgPair, probability: float) -> None:
    """Drop each tunnel datagram arriving at either host with `probability`, so both ways.

    The sending veth must cut UDP GSO sends into single datagrams before they cross: a GSO
    send crosses veth whole, and one iptables verdict would drop or pass all its ~44
    datagrams at once, which is burst loss, not the random loss of a real path. (So the
    receiver sees no UDP GRO either: 0% here is the baseline to compare with, not the
    offloaded figure of `endpoint_throughput`.) A second rule counts what got through.
    """
    for node in (pair.a, pair.b):
        host, port = node.host, str(wg_lab.PORT[node.side])
        host.run("ethtool", "-K", VETH[node.side], "tx-udp-segmentation", "off")
        host.run("iptables", "-F", "INPUT")
        if probability:
            host.run("iptables", "-A", "INPUT", "-p", "udp", "--dport", port,
                     "-m", "statistic", "--mode", "random", "--probability", str(probability),
                     "-j", "DROP")
        host.run("iptables", "-A", "INPUT", "-p", "udp", "--dport", port)


def underlay_counts(pair: wg_lab.WgPair) -> tuple[int, int]:
    """(dropped, passed) tunnel datagrams at both hosts since lossy_underlay."""
    dropped = passed = 0
    for node in (pair.a, pair.b):
        listing = node.host.run("iptables", "-L", "INPUT", "-v", "-n", "-x").stdout
        for line in listing.splitlines()[2:]:  # after the chain's two header lines
            fields = line.split()
            if fields[2] == "DROP":
                dropped += int(fields[0])
            else:
                passed += int(fields[0])
    return dropped, passed


def loss_throughput(rounds: int, seconds: float) -> dict:
    """iperf3 a->b through two of our endpoints at each loss rate, `rounds` times; the loss
    rates take turns within each round, so machine noise spreads over all of them."""
    samples: dict[str, list[float]] = {label: [] for label in LOSS_RATES}
    measured: dict[str, list[float]] = {label: [] for label in LOSS_RATES}
    for _ in range(rounds):
        with Lab() as lab:
            pair = wg_lab.build(lab)
            pair.start_ours(pair.a)
            pair.start_ours(pair.b)
            pair.a.host.run("ping", "-c", "2", "-i", "0.2", "-W", "5", pair.b.tunnel4)
            for label, probability in LOSS_RATES.items():
                lossy_underlay(pair, probability)
                result = pair.a.host.iperf3(pair.b.host, pair.b.tunnel4, seconds=seconds)
                samples[label].append(iperf3_gbps(result))
                dropped, passed = underlay_counts(pair)
                measured[label].append(dropped / max(1, dropped + passed))
    return {
        "gbps_median": {label: statistics.median(v) for label, v in samples.items()},
        "gbps_samples": samples,
        "loss_measured": {label: statistics.median(v) for label, v in measured.items()},
    }


if __name__ == "__main__":
    import json

    print(json.dumps(loss_throughput(1, 3), indent=2))
