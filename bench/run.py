"""`make bench`: micro-benchmarks of the offload core and the WireGuard crypto, the relay's
iperf3 throughput per mode, and iperf3 through a WireGuard tunnel between two hosts with
each kind of endpoint, side by side in one run; prints a table, writes JSON
(bench/results/latest.json) and draws docs/bench.png.

The tunnel modes (bench/modes.py): two of ours, ours with `Offload = off`, two of Debian's
wireguard-go (0.0.20220316, no offloads), two modern wireguard-go (0.0.20250522, TUN and UDP
offloads, from ../shared/peers/ beside the project), and ours on a facing either
wireguard-go on b; 1 and 4 TCP streams each way (the "streams" part). `--ours-variant ARGS`
adds two of ours started with `vpn up ARGS` (e.g. '--threads 1') to the streams and latency
parts. A flood row (bench/hostile.py) measures how much of its clean goodput
two of ours and two modern wireguard-go keep under about 100,000 garbage datagrams a second
from a third host. Peak RSS of every endpoint under load is recorded. A management row
(bench/management.py) times `wg show IFACE dump` of 10,000 peers, ours against modern
wireguard-go, and ping p99 through the tunnel while such dumps run back to back. The
latency part (bench/latency.py) runs sockperf ping-pong through the tunnel, idle and under
an iperf3 stream, ours against modern wireguard-go. `--only streams,latency` runs some parts.

Where the modern wireguard-go cannot run, its modes and its flood row are skipped loudly: a
"MODERN WIREGUARD-GO NOT MEASURED: <reason>" line on stderr and in the table, and
`modern_wireguard_go.measured` false with the reason in the JSON. `--modern-wireguard-go
PATH` (or BENCH_MODERN_WIREGUARD_GO=PATH, e.g. for `make bench`) picks another binary; a
path that does not exist shows that line.

The machines are shared and noisy: every figure is a median, modes are interleaved round by
round (each round runs every mode), and the goals are ratios measured within the same run.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from bench import faults, handshake_load, hostile, latency, management, modes, pipeline
from lab import wg_lab
from lab.netns import Lab, iperf3_gbps, lab_unavailable_reason
from lab.packets import tcp_super_packet
from lab.relay_lab import B4, host_to_host
from vpn.core.offload import coalesce, split

RESULTS = Path(__file__).resolve().parent / "results"
RELAY_MODES = ("plain", "passthrough", "offload")
# The goal: the relay through split+coalesce at least 6x the offloads-off relay.
OFFLOAD_GOAL = 6.0
# Upstream wireguard-go with TUN and UDP offloads, the peer to measure against (see its
# README there); BENCH_MODERN_WIREGUARD_GO or --modern-wireguard-go point elsewhere.
MODERN_WIREGUARD_GO = wg_lab.ROOT.parent / "shared" / "peers" / "wireguard-go-0.0.20250522"
MODERN_NOT_MEASURED = "MODERN WIREGUARD-GO NOT MEASURED"
# Issue 20: ours >= 1.3x two modern wireguard-go, 1 and 4 TCP streams each way.
MODERN_STREAMS_GOAL = 1.3


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
            out[f"split_us_{tag}"] = median_us(functools.partial(split, header, packet))
            out[f"coalesce_us_{tag}"] = median_us(functools.partial(coalesce, segments))
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


# (parallel streams, reverse): a->b with one and four streams, and b->a.
FLOWS = ((1, False), (4, False), (1, True), (4, True))


def flow_name(streams: int, reverse: bool) -> str:
    return f"{'b->a' if reverse else 'a->b'} x{streams}"


SINGLE = (flow_name(1, False), flow_name(1, True))


def wireguard_go_version(binary: str | Path) -> tuple[str | None, str | None]:
    """(the version line of a wireguard-go binary, None), or (None, why it cannot run)."""
    path = Path(binary) if os.sep in str(binary) else shutil.which(binary)
    if path is None or not Path(path).is_file():
        return None, f"{binary}: no such file"
    if not os.access(path, os.X_OK):
        return None, f"{binary}: not executable"
    try:
        out = subprocess.run([str(path), "--version"], capture_output=True, text=True,
                             timeout=10)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return None, f"{binary} --version: {exc}"
    first = out.stdout.strip().splitlines()[0] if out.stdout.strip() else ""
    if out.returncode != 0 or not first.startswith("wireguard-go"):
        return None, f"{binary} --version exited {out.returncode}: {out.stderr.strip()[:200]}"
    return first, None


def endpoint_throughput(rounds: int, seconds: float, modern: Path | None,
                        variants: Sequence[modes.Mode] = ()) -> dict[str, object]:
    """iperf3 through a WireGuard tunnel between two hosts in every mode (bench/modes.py:
    the modern wireguard-go's only when its binary is given, then the ours variants), 1 and
    4 streams each way, every mode in every round."""
    chosen = modes.tunnel_modes(modern is not None, variants)
    samples: dict[str, dict[str, list[float]]] = {
        mode.name: {flow_name(*flow): [] for flow in FLOWS} for mode in chosen
    }
    counters: dict[str, dict] = {}
    rss: dict[str, dict[str, list[float]]] = {mode.name: {"a": [], "b": []} for mode in chosen}
    for _ in range(rounds):
        for mode in chosen:
            with Lab() as lab:
                pair = wg_lab.build(lab)
                modes.start(pair, mode, modern)
                pair.a.host.run("ping", "-c", "2", "-i", "0.2", "-W", "5", pair.b.tunnel4)
                for streams, reverse in FLOWS:
                    result = pair.a.host.iperf3(pair.b.host, pair.b.tunnel4, seconds=seconds,
                                                reverse=reverse, extra=("-P", str(streams)))
                    samples[mode.name][flow_name(streams, reverse)].append(iperf3_gbps(result))
                for node in (pair.a, pair.b):
                    assert node.process is not None
                    rss[mode.name][node.side].append(wg_lab.peak_rss_mb(node.process.pid))
                if mode.all_ours:
                    counters[mode.name] = {
                        "sender": wg_lab.final_counters(pair.stop(pair.a)),
                        "receiver": wg_lab.final_counters(pair.stop(pair.b)),
                    }
    medians = {mode: {flow: statistics.median(v) for flow, v in flows.items()}
               for mode, flows in samples.items()}

    def over(mine: str, theirs: str) -> dict[str, float]:
        return {flow: medians[mine][flow] / medians[theirs][flow] for flow in medians[mine]}

    ours_rss = [mb for mode in chosen for side, kind in zip("ab", mode.ends, strict=True)
                if kind.startswith("ours") for mb in rss[mode.name][side]]
    return {
        "rounds": rounds,
        "gbps_samples": samples,
        "gbps_median": medians,
        "ours_over_wireguard_go": over("ours", "wireguard-go"),
        **({"ours_over_modern_wireguard_go": over("ours", "modern-wireguard-go")}
           if modern else {}),
        # Each variant against ours with no extra arguments, and against modern wireguard-go.
        "ours_over_variant": {v.name: over("ours", v.name) for v in variants},
        **({"variant_over_modern_wireguard_go": {
            v.name: over(v.name, "modern-wireguard-go") for v in variants}} if modern else {}),
        "ours_over_offload_off": medians["ours"][SINGLE[0]]
        / medians["ours-offload-off"][SINGLE[0]],
        # Peak resident set of each end's process (whichever endpoint it is), per mode.
        "peak_rss_mb": {mode: {side: max(v) for side, v in sides.items()}
                        for mode, sides in rss.items()},
        "ours_peak_rss_mb": max(ours_rss),
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
    """The protocol core's figures and the handshake crypto's (X25519 on 1 and 2 threads,
    native beside cryptography; each handshake side, native and Python path)."""
    from bench import handshake, protocol

    return {**protocol.run(), **handshake.run()}


def print_table(report: dict) -> None:
    rows: list[tuple[str, str]] = []
    micro = report.get("offload_micro", {})
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
    rows += pipeline.worker_rows(report.get("pipeline_workers"))
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
    modern = report.get("modern_wireguard_go", {})
    if modern.get("reason"):
        rows.append((MODERN_NOT_MEASURED, modern["reason"]))
    endpoint = report.get("endpoint")
    if endpoint:
        rss = endpoint["peak_rss_mb"]
        for mode, sides in rss.items():
            rows.append((f"tunnel {modes.label(mode)}: peak RSS under load, a / b",
                         f"{sides['a']:6.1f} / {sides['b']:6.1f} MB"))
        rows.append(("tunnel: peak RSS of our endpoints under load (max of all modes)",
                     f"{endpoint['ours_peak_rss_mb']:6.1f} MB (goal <= 80)"))
        for flow, value in endpoint["ours_over_wireguard_go"].items():
            rows.append((f"tunnel ours / Debian wg-go ({flow})", f"{value:6.2f}x (goal >= 2.5x)"))
        for flow, value in endpoint.get("ours_over_modern_wireguard_go", {}).items():
            rows.append((f"tunnel ours / modern wg-go ({flow})",
                         f"{value:6.2f}x (issue 20's goal >= {MODERN_STREAMS_GOAL}x: "
                         f"{'met' if value >= MODERN_STREAMS_GOAL else 'NOT met'})"))
        for name, by_flow in endpoint.get("variant_over_modern_wireguard_go", {}).items():
            for flow, value in by_flow.items():
                rows.append((f"tunnel {name} / modern wg-go ({flow})", f"{value:6.2f}x"))
        for name, by_flow in endpoint.get("ours_over_variant", {}).items():
            for flow, value in by_flow.items():
                rows.append((f"tunnel ours / {name} ({flow})", f"{value:6.2f}x"))
        rows.append(("tunnel ours / ours with Offload = off (a->b x1)",
                     f"{endpoint['ours_over_offload_off']:6.2f}x (goal 5x)"))
        ours = endpoint["counters"].get("ours", {})
        if ours:
            tx, rx = ours["sender"], ours["receiver"]
            udp = tx["udp"]
            rows.append(("tunnel ours: datagrams per UDP GSO send (sender)",
                         f"{udp['gso_segments'] / max(udp['gso_sends'], 1):6.1f}"))
            rows.append(("tunnel ours: segments per jumbo TUN write (receiver)",
                         f"{rx['jumbo_segments'] / max(rx['jumbo_frames'], 1):6.1f}"))
    rows += flood_rows(report.get("flood"))
    rows += handshake_load.handshake_rows(report.get("handshakes"))
    rows += management.rows(report.get("management"))
    rows += latency.rows(report.get("latency"))
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
    if endpoint:
        print_tunnel_matrix(report)


def flood_rows(flood: dict | None) -> list[tuple[str, str]]:
    if not flood:
        return []
    rows = []
    target = flood["rate_target"]
    for kind in ("ours", "modern-wireguard-go"):
        if kind not in flood:
            continue
        f = flood[kind]
        verdict = ""
        if kind == "ours":
            half = "met" if f["share_median"] >= 0.5 else "NOT met"
            if "modern-wireguard-go" in flood:
                vs = f["share_median"] >= flood["modern-wireguard-go"]["share_median"]
                than_modern = "met" if vs else "NOT met"
            else:
                than_modern = MODERN_NOT_MEASURED
            verdict = f"  (goal >= 0.5: {half}; >= modern's: {than_modern})"
        rows.append((f"flood ~{target:,}/s garbage at b: {modes.label(kind)} keeps",
                     f"{f['share_median']:6.3f} of clean ({f['clean_gbps_median']:.2f} -> "
                     f"{f['flooded_gbps_median']:.3f} Gb/s){verdict}"))
        rows.append((f"flood: rate achieved (flooder's count / its seconds), {modes.label(kind)}",
                     f"{f['flood_rate_median']:,.0f} datagrams/s  "
                     f"[{', '.join(f'{r:,}' for r in f['flood_rate_samples'])}]"))
        rows.append((f"flood: peak RSS of the flooded end (b), {modes.label(kind)}",
                     f"{f['victim_peak_rss_mb']:6.1f} MB"))
        uncovered = f["flood_covered_run"].count(False)
        if uncovered:
            rows.append((f"flood: WARNING {modes.label(kind)}",
                         f"the flood ended before iperf3 in {uncovered} run(s)"))
        for error in f["iperf3_errors"]:
            rows.append((f"flood: iperf3 FAILED under flood, {modes.label(kind)}", error[:120]))
    return rows


def print_tunnel_matrix(report: dict) -> None:
    """The tunnel modes side by side: one row per flow, one column per mode (medians)."""
    endpoint = report["endpoint"]
    medians = endpoint["gbps_median"]
    names = list(medians)
    width = max(len(modes.label(m)) for m in names)
    print(f"\ntunnel iperf3 Gb/s, medians of {endpoint['rounds']} round(s) (samples in the "
          "JSON)")
    print(f"{'flow':<9}" + "".join(f"  {modes.label(m):>{width}}" for m in names))
    for flow in medians[names[0]]:
        print(f"{flow:<9}" + "".join(f"  {medians[m][flow]:>{width}.2f}" for m in names))
    versions = report.get("versions", {})
    print("modern wg-go: " + (versions.get("modern") or MODERN_NOT_MEASURED)
          + "; Debian wg-go: " + (versions.get("debian") or "?"))


def draw_chart(report: dict) -> Path:
    """The medians side by side, for the README: the tunnel modes per flow, goodput under
    the flood, and the relay with the veth ceiling."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = {"ours": "tab:green", "modern-wireguard-go": "tab:red",
               "wireguard-go": "tab:gray", "ours-modern-wireguard-go": "tab:orange",
               "ours-wireguard-go": "tab:cyan", "ours-offload-off": "tab:olive"}
    variant_colours = ("tab:brown", "tab:pink", "tab:blue", "black")
    fig, (tunnel, flood, relay) = plt.subplots(
        1, 3, figsize=(15, 5), gridspec_kw={"width_ratios": [4, 1.3, 1.5]})
    medians = report["endpoint"]["gbps_median"]
    flows = list(next(iter(medians.values())))
    width = 0.8 / len(medians)
    for i, (mode, by_flow) in enumerate(medians.items()):
        xs = [f + (i - (len(medians) - 1) / 2) * width for f in range(len(flows))]
        values = [by_flow[flow] for flow in flows]
        tunnel.bar(xs, values, width, label=modes.label(mode),
                   color=colours.get(mode, variant_colours[i % len(variant_colours)]))
        for x, v in zip(xs, values, strict=True):
            tunnel.text(x, v, f"{v:.2f}", ha="center", va="bottom", fontsize=6, rotation=90)
    tunnel.set_xticks(range(len(flows)), flows)
    tunnel.set_ylim(0, 1.3 * max(v for by_flow in medians.values() for v in by_flow.values()))
    tunnel.set_ylabel("Gb/s (iperf3, median)")
    tunnel.set_title("tunnel between two hosts, by flow (streams)", fontsize=9)
    tunnel.legend(fontsize=7, ncols=3, loc="upper center")
    versions = report.get("versions", {})
    if not versions.get("modern"):
        tunnel.text(0.5, 0.5, f"{MODERN_NOT_MEASURED}:\n"
                    f"{report['modern_wireguard_go'].get('reason')}", transform=tunnel.transAxes,
                    ha="center", color="red", fontsize=8)
    flooded = report.get("flood") or {}
    kinds = [k for k in ("ours", "modern-wireguard-go") if k in flooded]
    for i, kind in enumerate(kinds):
        f = flooded[kind]
        flood.bar([i - 0.2], [f["clean_gbps_median"]], 0.4, color=colours[kind], alpha=0.4,
                  label="clean" if i == 0 else None)
        flood.bar([i + 0.2], [f["flooded_gbps_median"]], 0.4, color=colours[kind],
                  label="under flood" if i == 0 else None)
        flood.text(i + 0.2, f["flooded_gbps_median"], f"{f['share_median']:.2f}\nof clean",
                   ha="center", va="bottom", fontsize=7)
    flood.set_xticks(range(len(kinds)), [modes.label(k) for k in kinds], fontsize=7)
    if flooded:
        rate = statistics.median(flooded[k]["flood_rate_median"] for k in kinds)
        flood.set_title(f"a->b under {rate:,.0f} garbage\ndatagrams/s at b", fontsize=9)
        flood.legend(fontsize=7)
    labels, values, bar_colours = [], [], []
    for mode, gbps in (report.get("relay") or {}).get("gbps_median", {}).items():
        labels.append(f"relay\n{mode}")
        values.append(gbps)
        bar_colours.append("tab:blue")
    if report.get("veth_gbps"):
        labels.append("plain\nveth")
        values.append(statistics.median(report["veth_gbps"]))
        bar_colours.append("tab:purple")
    relay.bar(range(len(values)), values, color=bar_colours)
    relay.set_xticks(range(len(values)), labels, fontsize=7)
    relay.set_yscale("log")
    relay.set_title("relay (split + coalesce), veth", fontsize=9)
    for i, v in enumerate(values):
        relay.text(i, v, f"{v:.2f}", ha="center", va="bottom", fontsize=7)
    machine = report["machine"]
    fig.suptitle(f"make bench, {machine['when']}: kernel {machine['kernel']}, "
                 f"Python {machine['python']}, {machine['cpus']} CPUs; modern wg-go = "
                 f"{versions.get('modern') or 'not measured'}, Debian wg-go = "
                 f"{versions.get('debian') or '?'}", fontsize=9)
    fig.tight_layout()
    path = Path(__file__).resolve().parents[1] / "docs" / "bench.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# The parts of a run, in order; `--only` picks some. "streams" is the tunnel between two
# hosts in every mode (1 and 4 streams each way), "micro" what needs no lab, "workers" the
# data path without the kernel on 0, 1 and 2 worker threads (bench.pipeline.compare).
PARTS = ("micro", "workers", "relay", "streams", "flood", "handshakes", "loss", "management",
         "latency", "veth")


def parts_from(text: str) -> tuple[str, ...]:
    """The parts of a comma-separated `--only` list, in PARTS' order."""
    wanted = {part.strip() for part in text.split(",") if part.strip()}
    unknown = wanted - set(PARTS)
    if unknown or not wanted:
        raise argparse.ArgumentTypeError(
            f"unknown part(s) {', '.join(sorted(unknown)) or '(none given)'}; "
            f"the parts are {', '.join(PARTS)}")
    return tuple(part for part in PARTS if part in wanted)


def add_modern_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--modern-wireguard-go", type=Path,
                        default=Path(os.environ.get("BENCH_MODERN_WIREGUARD_GO",
                                                    MODERN_WIREGUARD_GO)),
                        help="the modern wireguard-go binary to measure against "
                             "(default: $BENCH_MODERN_WIREGUARD_GO or %(default)s)")


def measured_modern(binary: Path) -> Path | None:
    """The modern wireguard-go to measure against, or None, said loudly, where it cannot
    run (for a part run on its own)."""
    _, reason = wireguard_go_version(binary)
    if reason:
        print(f"bench: {MODERN_NOT_MEASURED}: {reason}", file=sys.stderr)
        return None
    return binary.resolve()


def main() -> int:
    parser = argparse.ArgumentParser(prog="make bench", description=__doc__)
    parser.add_argument("--rounds", type=int, default=3, help="iperf3 runs per relay mode")
    parser.add_argument("--seconds", type=float, default=4, help="length of each iperf3 run")
    parser.add_argument("--only", type=parts_from, default=PARTS, metavar="PART,...",
                        help=f"run only these parts ({', '.join(PARTS)}); such a run writes "
                             "its own JSON, not latest.json, and no chart")
    parser.add_argument("--micro-only", action="store_true", help="the same as --only micro")
    parser.add_argument("--ours-variant", action="append", metavar="ARGS",
                        default=[v for v in os.environ.get("BENCH_OURS_VARIANTS", "").split(",")
                                 if v.strip()],
                        help="also two of ours started with `vpn up ARGS` in the streams and "
                             "latency parts, e.g. '--threads 1' (repeatable; default: "
                             "$BENCH_OURS_VARIANTS, comma-separated)")
    add_modern_option(parser)
    args = parser.parse_args()
    parts = ("micro",) if args.micro_only else args.only
    variants = [modes.variant(v) for v in args.ours_variant]
    report: dict[str, object] = {
        "machine": {"kernel": platform.release(), "python": platform.python_version(),
                    "cpus": os.cpu_count(), "when": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                  time.gmtime())},
        "parts": list(parts),
    }
    if "micro" in parts:
        report["offload_micro"] = offload_micro()
        report["wireguard_micro"] = wireguard_micro()
        report["pipeline_micro"] = pipeline.run_with_python_path()
    if "workers" in parts:  # no namespaces needed: in memory, each count its own process
        report["pipeline_workers"] = {str(n): figures
                                      for n, figures in pipeline.compare().items()}
    reason = lab_unavailable_reason()
    modern_reason: str | None = None  # why the modern wireguard-go was not measured
    if set(parts) <= {"micro", "workers"} or reason:  # the parts without namespaces
        if reason:
            print(f"bench: RELAY THROUGHPUT NOT MEASURED: {reason}", file=sys.stderr)
    else:
        modern_version, modern_reason = wireguard_go_version(args.modern_wireguard_go)
        modern = None if modern_reason else args.modern_wireguard_go.resolve()
        report["versions"] = {"modern": modern_version,
                              "debian": wireguard_go_version("wireguard-go")[0]}
        report["modern_wireguard_go"] = {"binary": str(args.modern_wireguard_go),
                                         "measured": modern is not None,
                                         "reason": modern_reason}
        if modern_reason:
            print(f"bench: {MODERN_NOT_MEASURED}: {modern_reason}", file=sys.stderr)
        rounds, seconds = args.rounds, args.seconds
        runs: dict[str, tuple[str, Callable[[], object]]] = {
            "relay": ("relay", lambda: relay_throughput(rounds, seconds)),
            "streams": ("endpoint",
                        lambda: endpoint_throughput(rounds, seconds, modern, variants)),
            "flood": ("flood", lambda: hostile.flood_goodput(rounds, seconds, modern)),
            "handshakes": ("handshakes",
                           lambda: handshake_load.handshake_figures(rounds, modern)),
            "loss": ("loss", lambda: faults.loss_throughput(rounds, seconds)),
            "management": ("management",
                           lambda: management.dump_bench(rounds, modern, variants=variants)),
            "latency": ("latency", lambda: latency.latency_bench(rounds, modern, variants)),
            "veth": ("veth_gbps", lambda: veth_throughput(rounds, seconds)),
        }
        for part in parts:
            if part in runs:
                key, run = runs[part]
                report[key] = run()
    print_table(report)
    if modern_reason:  # again after the table: the first one scrolled away long ago
        print(f"bench: {MODERN_NOT_MEASURED}: {modern_reason}", file=sys.stderr)
    lat = report.get("latency")
    if isinstance(lat, dict) and not lat["measured"]:  # as loud as the modern one's
        print(f"bench: {latency.NOT_MEASURED}: {lat['reason']}", file=sys.stderr)
    whole = parts == PARTS
    if whole and "endpoint" in report:
        chart = draw_chart(report)
        print(f"chart: {chart}")
    RESULTS.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S") + ("" if whole else "-" + "-".join(parts))
    paths = [RESULTS / f"bench-{stamp}.json", *([RESULTS / "latest.json"] if whole else [])]
    for path in paths:
        path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwritten: {paths[0]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
