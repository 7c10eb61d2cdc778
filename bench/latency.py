"""Latency through the tunnel, for `make bench` (bench/run.py calls `latency_bench`): sockperf
ping-pong, UDP 64 B, from a to b's tunnel address (lab/sockperf.py), idle and while one
iperf3 stream a->b fills the tunnel (lab/load.py: started, waited for until it sends,
stopped by pid).

Each round runs every mode in its own lab: two of ours, two modern wireguard-go (when its
binary is given) and the ours variants (bench/modes.py). Figures are round-trip times in
microseconds, medians over the rounds of each run's median and p99; the goal (issue 20) is
ours' median <= modern wireguard-go's, idle and loaded. Where sockperf is missing the part
is skipped loudly ("LATENCY NOT MEASURED"). `python -m bench.latency` runs it alone and
prints the JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path

from bench import modes
from lab import load, sockperf, wg_lab
from lab.netns import Lab

NOT_MEASURED = "LATENCY NOT MEASURED"
SECONDS = 5
SIZE = 64
CONDITIONS = ("idle", "loaded")


def _one_run(mode: modes.Mode, modern: Path | None, seconds: int) -> dict[str, object]:
    with Lab() as lab:
        pair = wg_lab.build(lab)
        modes.start(pair, mode, modern)
        a, b = pair.a.host, pair.b.host
        a.run("ping", "-c", "2", "-i", "0.2", "-W", "5", pair.b.tunnel4)
        idle = sockperf.ping_pong(a, b, pair.b.tunnel4, seconds=seconds, size=SIZE)
        with load.iperf3_stream(a, b, pair.b.tunnel4) as stream:
            loaded = sockperf.ping_pong(a, b, pair.b.tunnel4, seconds=seconds, size=SIZE)
    return {"idle": idle, "loaded": loaded, "load_gbps": load.median_gbps(stream)}


def latency_bench(rounds: int, modern: Path | None, variants: Sequence[modes.Mode] = (),
                  seconds: int = SECONDS) -> dict[str, object]:
    """`rounds` rounds, each running every mode; {"measured": False, "reason": ...} where
    sockperf cannot run."""
    reason = sockperf.unavailable_reason()
    if reason:
        print(f"bench: {NOT_MEASURED}: {reason}", file=sys.stderr)
        return {"measured": False, "reason": reason}
    chosen = [modes.BY_NAME["ours"], *([modes.BY_NAME["modern-wireguard-go"]] if modern else []),
              *variants]
    runs: dict[str, list[dict]] = {mode.name: [] for mode in chosen}
    for _ in range(rounds):
        for mode in chosen:
            runs[mode.name].append(_one_run(mode, modern, seconds))
    out: dict[str, object] = {"measured": True, "seconds": seconds, "message_bytes": SIZE,
                              "rounds": rounds, "runs": runs}
    summary: dict[str, dict[str, float]] = {
        name: {
            **{f"{cond}_{stat}_median": statistics.median(r[cond][stat] for r in done)
               for cond in CONDITIONS for stat in ("median_us", "p99_us")},
            "load_gbps_median": statistics.median(r["load_gbps"] for r in done),
            "dropped": sum(r[cond]["dropped"] for r in done for cond in CONDITIONS),
        }
        for name, done in runs.items()
    }
    out.update(summary)
    if modern:
        theirs = summary["modern-wireguard-go"]
        out["over_modern_wireguard_go"] = {
            name: {key: ours[key] / theirs[key] for key in ours if key.endswith("_us_median")}
            for name, ours in summary.items() if name != "modern-wireguard-go"
        }
    return out


def rows(report: dict | None) -> list[tuple[str, str]]:
    """bench/run.py's table lines."""
    if not report:
        return []
    if not report["measured"]:
        return [(NOT_MEASURED, report["reason"])]
    head = f"latency (sockperf ping-pong UDP {report['message_bytes']} B, RTT)"
    out = []
    for name in report["runs"]:
        r = report[name]
        out.append((f"{head}: {modes.label(name)}, idle / loaded median",
                    f"{r['idle_median_us_median']:7.1f} / {r['loaded_median_us_median']:7.1f} us"))
        out.append((f"{head}: {modes.label(name)}, idle / loaded p99",
                    f"{r['idle_p99_us_median']:7.1f} / {r['loaded_p99_us_median']:7.1f} us "
                    f"(load {r['load_gbps_median']:.2f} Gb/s, {r['dropped']} dropped)"))
    for name, ratios in report.get("over_modern_wireguard_go", {}).items():
        for cond in CONDITIONS:
            median = ratios[f"{cond}_median_us_median"]
            verdict = "met" if median <= 1 else "NOT met"
            out.append((f"latency {modes.label(name)} / modern wg-go, {cond}: median, p99",
                        f"{median:6.2f}x, {ratios[f'{cond}_p99_us_median']:6.2f}x "
                        f"(goal median <= 1x: {verdict})"))
    return out


def main() -> int:
    from bench.run import add_modern_option, measured_modern

    parser = argparse.ArgumentParser(prog="python -m bench.latency", description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=SECONDS)
    parser.add_argument("--ours-variant", action="append", default=[], metavar="ARGS",
                        help="also two of ours started with `vpn up ARGS` (repeatable)")
    add_modern_option(parser)
    args = parser.parse_args()
    modern = measured_modern(args.modern_wireguard_go)
    report = latency_bench(args.rounds, modern,
                           [modes.variant(v) for v in args.ours_variant], args.seconds)
    for name, value in rows(report):
        print(f"{name:<70}  {value}", file=sys.stderr)
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
