"""What busy-poll costs: the CPU both ends of a tunnel spend, in ms of CPU a second, idle and
under a paced ping (ICMP echo a->b through the tunnel at fixed rates, 1 a second and 1,000 a
second by default), with the pings' round trips. A spin that runs out of budget is pure
cost, and a flow whose packets come a little further apart than the budget pays it each
time (docs/architecture.md, "Busy-poll").

Each round runs every mode in its own lab (bench/modes.py: ours and the `--ours-variant`s);
the CPU is utime + stime of each end's process (/proc/PID/stat, every thread, in clock
ticks) over the stretch, summed over both ends. Figures are medians over the rounds.
`python -m bench.pollcost --rounds 3 --ours-variant '--busy-poll 50'` prints the JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import time
from pathlib import Path
from typing import cast

from bench import modes
from lab import wg_lab
from lab.netns import Host, Lab

SECONDS = 5
RATES = (1, 1000)  # pings a second
_TIME = re.compile(r"time=([0-9.]+) ms")


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, every thread, live or ended (/proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def paced_ping(host: Host, address: str, rate: int, seconds: int) -> list[float]:
    """`rate` pings a second for `seconds` from `host`; each one's round trip in us."""
    out = host.run("ping", "-n", "-i", f"{1 / rate:.6f}", "-c", str(rate * seconds),
                   "-W", "1", address).stdout
    return [float(ms) * 1000 for ms in _TIME.findall(out)]


def _one_run(mode: modes.Mode, seconds: int, rates: tuple[int, ...]) -> dict[str, dict]:
    with Lab() as lab:
        pair = wg_lab.build(lab)
        modes.start(pair, mode, None)
        a = pair.a.host
        a.run("ping", "-c", "2", "-i", "0.2", "-W", "5", pair.b.tunnel4)
        pids = [node.process.pid for node in (pair.a, pair.b) if node.process is not None]
        out: dict[str, dict] = {}
        for rate in (0, *rates):
            before, start = sum(map(cpu_seconds, pids)), time.monotonic()
            if rate:
                rtts = paced_ping(a, pair.b.tunnel4, rate, seconds)
            else:
                time.sleep(seconds)  # the idle stretch measured
                rtts = []
            used, elapsed = sum(map(cpu_seconds, pids)) - before, time.monotonic() - start
            out[f"{rate}/s" if rate else "idle"] = {
                "cpu_ms_per_s": used * 1000 / elapsed,
                "rtt_median_us": statistics.median(rtts) if rtts else None,
                "answered": len(rtts),
            }
    return out


def pollcost_bench(rounds: int, variants: list[modes.Mode], seconds: int = SECONDS,
                   rates: tuple[int, ...] = RATES) -> dict[str, object]:
    chosen = [modes.BY_NAME["ours"], *variants]
    runs: dict[str, list[dict]] = {mode.name: [] for mode in chosen}
    for _ in range(rounds):
        for mode in chosen:
            runs[mode.name].append(_one_run(mode, seconds, rates))
    summary = {
        name: {
            load: {key: statistics.median(r[load][key] for r in done)
                   for key in ("cpu_ms_per_s", "rtt_median_us") if done[0][load][key] is not None}
            for load in done[0]
        }
        for name, done in runs.items()
    }
    return {"seconds": seconds, "rounds": rounds, "load_average": os.getloadavg(),
            "runs": runs, "medians": summary}


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.pollcost", description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=SECONDS)
    parser.add_argument("--rate", type=int, action="append", metavar="PER_SECOND",
                        help=f"a ping rate to measure (repeatable; default {RATES})")
    parser.add_argument("--ours-variant", action="append", default=[], metavar="ARGS",
                        help="also two of ours started with `vpn up ARGS` (repeatable)")
    args = parser.parse_args()
    report = pollcost_bench(args.rounds, [modes.variant(v) for v in args.ours_variant],
                            args.seconds, tuple(args.rate or RATES))
    medians = cast("dict[str, dict[str, dict[str, float]]]", report["medians"])
    for name, loads in medians.items():
        for load, figures in loads.items():
            rtt = figures.get("rtt_median_us")
            print(f"{modes.label(name):<30} {load:>8}: {figures['cpu_ms_per_s']:7.1f} ms/s of CPU"
                  + (f", ping median {rtt:6.1f} us" if rtt is not None else ""), file=sys.stderr)
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
