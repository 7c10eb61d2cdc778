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

from bench import faults, pipeline
from tests.integration import wg_lab
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


# "ours-wireguard-go": ours on a, Debian's wireguard-go on b, so a->b is ours sending to
# wireguard-go and b->a wireguard-go sending to ours (one datagram at a time, no GRO).
ENDPOINT_MODES = ("ours", "ours-offload-off", "wireguard-go", "ours-wireguard-go")
# (parallel streams, reverse): a->b with one and four streams, and b->a.
FLOWS = ((1, False), (4, False), (1, True), (4, True))


def flow_name(streams: int, reverse: bool) -> str:
    return f"{'b->a' if reverse else 'a->b'} x{streams}"


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def endpoint_throughput(rounds: int, seconds: float) -> dict[str, object]:
    """iperf3 through a WireGuard tunnel between two hosts, both ends of one kind: this
    project with offloads, this project with `Offload = off`, Debian's wireguard-go; and
    ours facing wireguard-go."""
    samples: dict[str, dict[str, list[float]]] = {
        mode: {flow_name(*flow): [] for flow in FLOWS} for mode in ENDPOINT_MODES
    }
    counters: dict[str, dict] = {}
    rss: dict[str, list[float]] = {mode: [] for mode in ("ours", "ours-offload-off")}
    for _ in range(rounds):
        for mode in ENDPOINT_MODES:
            with Lab() as lab:
                pair = wg_lab.build(lab)
                for node in (pair.a, pair.b):
                    if mode == "wireguard-go" or (mode == "ours-wireguard-go"
                                                  and node is pair.b):
                        pair.start_wireguard_go(node)
                    else:
                        pair.start_ours(node, offload=mode != "ours-offload-off")
                pair.a.host.run("ping", "-c", "2", "-i", "0.2", "-W", "5", pair.b.tunnel4)
                for streams, reverse in FLOWS:
                    result = pair.a.host.iperf3(pair.b.host, pair.b.tunnel4, seconds=seconds,
                                                reverse=reverse, extra=("-P", str(streams)))
                    gbps = result["end"]["sum_received"]["bits_per_second"] / 1e9
                    samples[mode][flow_name(streams, reverse)].append(gbps)
                if mode in ("ours", "ours-offload-off"):
                    assert pair.a.process is not None and pair.b.process is not None
                    rss[mode].append(max(peak_rss_mb(n.process.pid) for n in (pair.a, pair.b)
                                         if n.process is not None))
                    counters[mode] = {
                        "sender": wg_lab.final_counters(pair.stop(pair.a)),
                        "receiver": wg_lab.final_counters(pair.stop(pair.b)),
                    }
    medians = {mode: {flow: statistics.median(v) for flow, v in flows.items()}
               for mode, flows in samples.items()}
    single = flow_name(1, False)
    return {
        "gbps_samples": samples,
        "gbps_median": medians,
        "ours_over_wireguard_go": medians["ours"][single] / medians["wireguard-go"][single],
        "ours_over_offload_off": medians["ours"][single] / medians["ours-offload-off"][single],
        "peak_rss_mb": {mode: max(v) for mode, v in rss.items() if v},
        "counters": counters,
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
    for key, value in report.get("pipeline_micro", {}).items():
        unit = "x" if key.endswith("_over_native") else " us"
        rows.append((f"data path, no kernel: {key}", f"{value:8.1f}{unit}"))
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
    endpoint = report.get("endpoint")
    if endpoint:
        for mode, flows in endpoint["gbps_median"].items():
            for flow, gbps in flows.items():
                samples = ", ".join(f"{s:.2f}" for s in endpoint["gbps_samples"][mode][flow])
                rows.append((f"tunnel {mode} iperf3 {flow}", f"{gbps:6.2f} Gb/s  [{samples}]"))
        rows.append(("tunnel ours / wireguard-go (a->b x1)",
                     f"{endpoint['ours_over_wireguard_go']:6.2f}x (goal 3x)"))
        rows.append(("tunnel ours / ours with Offload = off (a->b x1)",
                     f"{endpoint['ours_over_offload_off']:6.2f}x (goal 5x)"))
        for mode, mb in endpoint["peak_rss_mb"].items():
            rows.append((f"tunnel {mode}: peak RSS of an endpoint", f"{mb:6.1f} MB (goal < 80)"))
        ours = endpoint["counters"].get("ours", {})
        if ours:
            tx, rx = ours["sender"], ours["receiver"]
            udp = tx["udp"]
            rows.append(("tunnel ours: datagrams per UDP GSO send (sender)",
                         f"{udp['gso_segments'] / max(udp['gso_sends'], 1):6.1f}"))
            rows.append(("tunnel ours: segments per jumbo TUN write (receiver)",
                         f"{rx['jumbo_segments'] / max(rx['jumbo_frames'], 1):6.1f}"))
    loss = report.get("loss")
    if loss:
        for rate, gbps in loss["gbps_median"].items():
            rows.append((f"tunnel ours with {rate} random loss each way (no UDP GRO)",
                         f"{gbps:6.2f} Gb/s"))
    if report.get("veth_gbps"):
        rows.append(("plain veth iperf3 (ceiling)",
                     f"{statistics.median(report['veth_gbps']):6.2f} Gb/s"))
    width = max(len(r[0]) for r in rows)
    print(f"\n{'what':<{width}}  figure")
    print(f"{'-' * width}  {'-' * 30}")
    for name, value in rows:
        print(f"{name:<{width}}  {value}")


def draw_chart(report: dict) -> Path:
    """A bar chart of the medians next to each other, for the README."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels, values, colours = [], [], []
    for mode, flows in report["endpoint"]["gbps_median"].items():
        for flow, gbps in flows.items():
            short = {"ours-offload-off": "ours\nOffload=off", "wireguard-go": "wg-go",
                     "ours-wireguard-go": "ours a,\nwg-go b"}
            labels.append(f"{short.get(mode, mode)}\n{flow}")
            values.append(gbps)
            colours.append({"ours": "tab:green", "ours-offload-off": "tab:olive",
                            "ours-wireguard-go": "tab:cyan"}.get(
                mode, "tab:gray"))
    for mode, gbps in (report.get("relay") or {}).get("gbps_median", {}).items():
        labels.append(f"relay\n{mode}")
        values.append(gbps)
        colours.append("tab:blue")
    if report.get("veth_gbps"):
        labels.append("plain\nveth")
        values.append(statistics.median(report["veth_gbps"]))
        colours.append("tab:purple")
    fig, ax = plt.subplots(figsize=(13, 4.5))
    ax.bar(range(len(values)), values, color=colours)
    ax.set_xticks(range(len(values)), labels, fontsize=7)
    ax.set_ylabel("Gb/s (iperf3, median)")
    ax.set_yscale("log")
    machine = report["machine"]
    ax.set_title(f"make bench, {machine['when']}: kernel {machine['kernel']}, "
                 f"Python {machine['python']}, {machine['cpus']} CPUs")
    for i, v in enumerate(values):
        ax.text(i, v, f"{v:.2f}", ha="center", va="bottom", fontsize=7)
    fig.tight_layout()
    path = Path(__file__).resolve().parents[1] / "docs" / "bench.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


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
        "pipeline_micro": pipeline.run_with_python_path(),
    }
    reason = lab_unavailable_reason()
    if args.micro_only or reason:
        if reason:
            print(f"bench: RELAY THROUGHPUT NOT MEASURED: {reason}", file=sys.stderr)
    else:
        report["relay"] = relay_throughput(args.rounds, args.seconds)
        report["endpoint"] = endpoint_throughput(args.rounds, args.seconds)
        report["loss"] = faults.loss_throughput(args.rounds, args.seconds)
        report["veth_gbps"] = veth_throughput(args.rounds, args.seconds)
    print_table(report)
    if "endpoint" in report:
        chart = draw_chart(report)
        print(f"chart: {chart}")
    RESULTS.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for path in (RESULTS / f"bench-{stamp}.json", RESULTS / "latest.json"):
        path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwritten: {RESULTS / f'bench-{stamp}.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
