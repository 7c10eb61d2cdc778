"""`make bench`: micro-benchmarks of the offload core and the WireGuard crypto, and the
relay's iperf3 throughput per mode, side by side in one run; prints a table, writes JSON.

The machines are shared and noisy: every figure is a median, modes are interleaved round by
round, and the goals are ratios measured within the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

from tests.integration.relay_lab import B4, host_to_host
from tests.netns import Lab, lab_unavailable_reason
from tests.unit.packets import tcp_super_packet
from vpn.offload import coalesce, split

RESULTS = Path(__file__).resolve().parent / "results"
RELAY_MODES = ("plain", "passthrough", "offload")
# The goal: the relay through split+coalesce at least 6x the offloads-off relay.
OFFLOAD_GOAL = 6.0


def median_us(fn: Callable[[], object], *, repeat: int = 7, number: int = 200) -> float:
    """Median over `repeat` rounds of the mean time of `number` calls, in microseconds."""
    rounds = []
    for _ in range(repeat):
        start = time.perf_counter()
        for _ in range(number):
            fn()
        rounds.append((time.perf_counter() - start) / number * 1e6)
    return statistics.median(rounds)


def offload_micro() -> dict[str, float]:
    out: dict[str, float] = {}
    for version in (4, 6):
        for mss, options in ((1380, b""), (1448 - 12, b"\x01\x01\x08\x0a" + bytes(8))):
            payload = os.urandom(65535 - (20 if version == 4 else 40) - 20 - len(options))
            payload = payload[: (len(payload) // mss) * mss]  # only full segments
            header, packet = tcp_super_packet(payload, mss, version=version, options=options)
            segments = [bytes(s) for s in split(header, packet)]
            tag = f"ipv{version}_mss{mss}"
            out[f"split_us_{tag}"] = median_us(lambda h=header, p=packet: split(h, p))
            out[f"coalesce_us_{tag}"] = median_us(lambda s=segments: coalesce(s))
            out[f"segments_{tag}"] = len(segments)
    return out


def relay_throughput(rounds: int, seconds: float) -> dict[str, object]:
    """iperf3 a->b through the relay in each mode, `rounds` times, interleaved."""
    samples: dict[str, list[float]] = {mode: [] for mode in RELAY_MODES}
    counters: dict[str, dict] = {}
    for _ in range(rounds):
        for mode in RELAY_MODES:
            with Lab() as lab:
                run = host_to_host(lab, mode=mode)
                result = run.a.iperf3(run.b, B4, seconds=seconds)
                stats = run.stop()
            samples[mode].append(result["end"]["sum_received"]["bits_per_second"] / 1e9)
            counters[mode] = stats["a_to_b"]
    medians = {mode: statistics.median(v) for mode, v in samples.items()}
    return {
        "gbps_samples": samples,
        "gbps_median": medians,
        "offload_over_plain": medians["offload"] / medians["plain"],
        "passthrough_over_plain": medians["passthrough"] / medians["plain"],
        "offload_counters": counters.get("offload", {}),
    }


def veth_throughput(rounds: int, seconds: float) -> list[float]:
    """Plain veth between two namespaces: the ceiling of this machine."""
    samples = []
    for _ in range(rounds):
        with Lab() as lab:
            a, b = lab.host("a"), lab.host("b")
            lab.link(a, b, a_addrs=["198.18.9.1/24"], b_addrs=["198.18.9.2/24"])
            result = a.iperf3(b, "198.18.9.2", seconds=seconds)
        samples.append(result["end"]["sum_received"]["bits_per_second"] / 1e9)
    return samples


def wireguard_micro() -> dict[str, float]:
    from vpn.wireguard import bench as wg_bench

    return wg_bench.run()


def print_table(report: dict) -> None:
    rows: list[tuple[str, str]] = []
    micro = report["offload_micro"]
    for key, value in micro.items():
        if key.startswith(("split", "coalesce")):
            tag = key.split("_us_")[1]
            rows.append((f"{key.split('_us_')[0]} 64 KiB ({tag}, {micro['segments_' + tag]} "
                         "segments)", f"{value:8.1f} us"))
    for key, value in report.get("wireguard_micro", {}).items():
        rows.append((f"wireguard {key}", f"{value:10.1f}"))
    relay = report.get("relay")
    if relay:
        for mode, gbps in relay["gbps_median"].items():
            samples = ", ".join(f"{s:.2f}" for s in relay["gbps_samples"][mode])
            rows.append((f"relay {mode} iperf3 a->b", f"{gbps:6.2f} Gb/s  [{samples}]"))
        verdict = "met" if relay["offload_over_plain"] >= OFFLOAD_GOAL else "NOT met"
        rows.append(("relay offload / plain",
                     f"{relay['offload_over_plain']:6.2f}x (goal {OFFLOAD_GOAL}x: {verdict})"))
        rows.append(("relay passthrough / plain", f"{relay['passthrough_over_plain']:6.2f}x"))
        counters = relay["offload_counters"]
        rows.append(("relay offload segments per super-packet / per jumbo frame",
                     f"{counters.get('segments_per_super_packet')} / "
                     f"{counters.get('segments_per_jumbo_frame')}"))
    if report.get("veth_gbps"):
        rows.append(("plain veth iperf3 (ceiling)",
                     f"{statistics.median(report['veth_gbps']):6.2f} Gb/s"))
    width = max(len(r[0]) for r in rows)
    print(f"\n{'what':<{width}}  figure")
    print(f"{'-' * width}  {'-' * 30}")
    for name, value in rows:
        print(f"{name:<{width}}  {value}")


def main() -> int:
    parser = argparse.ArgumentParser(prog="make bench", description=__doc__)
    parser.add_argument("--rounds", type=int, default=3, help="iperf3 runs per relay mode")
    parser.add_argument("--seconds", type=float, default=4, help="length of each iperf3 run")
    parser.add_argument("--micro-only", action="store_true", help="skip the netns runs")
    args = parser.parse_args()
    report: dict[str, object] = {
        "machine": {"kernel": platform.release(), "python": platform.python_version(),
                    "cpus": os.cpu_count(), "when": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                  time.gmtime())},
        "offload_micro": offload_micro(),
        "wireguard_micro": wireguard_micro(),
    }
    reason = lab_unavailable_reason()
    if args.micro_only or reason:
        if reason:
            print(f"bench: RELAY THROUGHPUT NOT MEASURED: {reason}", file=sys.stderr)
    else:
        report["relay"] = relay_throughput(args.rounds, args.seconds)
        report["veth_gbps"] = veth_throughput(args.rounds, args.seconds)
    print_table(report)
    RESULTS.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for path in (RESULTS / f"bench-{stamp}.json", RESULTS / "latest.json"):
        path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwritten: {RESULTS / f'bench-{stamp}.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
