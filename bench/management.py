"""Management under load, for `make bench` (bench/run.py calls `dump_bench`): b serves
PEERS peers, a pings b through the tunnel.

- `wg show IFACE dump` wall time on b (the `wg` process, measured inside b's namespace),
  ours against modern wireguard-go in the same run;
- ping p99 through the tunnel, a to b, idle and while b answers dumps back to back (the
  data path must keep forwarding while a big get is served);
- one iperf3 TCP stream a to b, idle and while b answers dumps (its median interval rate):
  serving gets must not take the data path's throughput;
- b's event loop thread (ours) while the pings run, from its /proc schedstat: its CPU
  time per dump and its mean wait for a CPU each time it was woken or preempted, the
  scheduler's side of the ping p99 and less at the mercy of other processes on the machine.

Both ends are the same kind; ours variants (`--ours-variant ARGS`, bench/modes.py) run
beside. b's extra peers have one IPv4 /32 and one IPv6 /128 each and no endpoint; `Table =
off` (ours) and no routes (wireguard-go, set up by `wg`) keep 20,000 routes out of the
setup. `python -m bench.management [--peers N] [--rounds R] [--ours-variant ARGS]` prints
the JSON that make bench stores.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from bench import modes
from lab import load, wg_lab
from lab.netns import Host, Lab

PEERS = 10_000
DUMPS = 9  # timed dumps per round and kind
PINGS = 400
PING_INTERVAL = 0.01  # seconds; root may go below ping's 0.2 s floor
STREAM_SECONDS = 4.0
_RTT = re.compile(r"time=([0-9.]+) ms")


def _extra_peers(count: int) -> str:
    """`count` [Peer] sections in wg's format, keys random (any 32 bytes is a public key)."""
    lines = []
    for i in range(count):
        key = base64.b64encode(os.urandom(32)).decode()
        lines += ["[Peer]", f"PublicKey = {key}",
                  f"AllowedIPs = 198.19.{i >> 8 & 255}.{i & 255}/32, fd00:99::{i:x}/128", ""]
    return "\n".join(lines)


def _start(pair: wg_lab.WgPair, mode: modes.Mode, modern: Path | None, extra: str) -> None:
    """Both ends of `mode` (ours, an ours variant or modern wireguard-go); b with the extra
    peers."""
    if mode.all_ours:
        pair.b.extra_interface_lines = ["Table = off"]
        config = pair.write_config(pair.b)
        config.write_text(config.read_text() + "\n" + extra)
        pair.b.kind = "ours"
        pair.b.process = wg_lab.start_vpn(pair.b.host, config, *mode.up_args)
        pair.start_ours(pair.a, up_args=mode.up_args)
    else:
        assert modern is not None
        for node in (pair.b, pair.a):
            pair.start_wireguard_go(node, binary=modern)
        peers = pair.lab.path("extra-peers.conf")
        peers.write_text(extra)
        pair.b.host.run("wg", "addconf", pair.b.ifname, str(peers), timeout=300)


def _dump_seconds(host: Host, ifname: str, times: int) -> list[float]:
    """Wall seconds of `wg show IFACE dump` run `times` times inside `host` (the clock is
    read around each run in the same shell, so `ip netns exec` is not counted)."""
    script = (f"for i in $(seq {times}); do s=$(date +%s%N); wg show {ifname} dump "
              f">/dev/null; e=$(date +%s%N); echo $((e - s)); done")
    out = host.sh(script, timeout=600).stdout.split()
    return [int(ns) / 1e9 for ns in out]


def _ping_rtts(src: Host, target: str) -> tuple[list[float], int]:
    """Round-trip times in ms of PINGS pings PING_INTERVAL apart, and how many were lost."""
    proc = src.run("ping", "-n", "-c", str(PINGS), "-i", str(PING_INTERVAL), "-W", "2",
                   target, check=False, timeout=PINGS * PING_INTERVAL + 60)
    rtts = [float(m) for m in _RTT.findall(proc.stdout)]
    return rtts, PINGS - len(rtts)


def _schedstat(pid: int) -> tuple[int, int, int]:
    """A process's main thread's (CPU ns, ns waited on a runqueue, times it was run)."""
    cpu, wait, runs = Path(f"/proc/{pid}/task/{pid}/schedstat").read_text().split()
    return int(cpu), int(wait), int(runs)


def _loop_share(before: tuple[int, int, int], after: tuple[int, int, int],
                dumps: int) -> dict[str, float]:
    cpu, wait, runs = (b - a for a, b in zip(before, after, strict=True))
    return {"loop_cpu_ms_per_dump": cpu / 1e6 / max(dumps, 1),
            "loop_wait_us_per_run": wait / 1e3 / max(runs, 1)}


def _stream_gbps(src: Host, dst: Host, target: str) -> float:
    """The median rate of one iperf3 TCP stream src -> dst over STREAM_SECONDS."""
    with load.iperf3_stream(src, dst, target) as stream:
        time.sleep(STREAM_SECONDS)
    return load.median_gbps(stream)


def p99(values: list[float]) -> float:
    return statistics.quantiles(values, n=100)[98]


def _one_round(mode: modes.Mode, peers: int, modern: Path | None) -> dict:
    kind = mode.name
    with Lab() as lab:
        pair = wg_lab.build(lab)
        _start(pair, mode, modern, _extra_peers(peers - 1))
        a, b = pair.a.host, pair.b.host
        a.run("ping", "-c", "2", "-i", "0.2", "-W", "5", pair.b.tunnel4)
        listed = b.run("wg", "show", pair.b.ifname, "dump").stdout.count("\n")
        if listed != peers + 1:  # the interface's line and one per peer
            raise RuntimeError(f"{kind}: the dump listed {listed} lines, not {peers + 1}")
        dumps = _dump_seconds(b, pair.b.ifname, DUMPS)
        idle, idle_lost = _ping_rtts(a, pair.b.tunnel4)
        idle_gbps = _stream_gbps(a, b, pair.b.tunnel4)
        loop = b.start("sh", "-c", f"while :; do wg show {pair.b.ifname} dump >/dev/null; "
                       "echo dumped; done")
        ours = pair.b.process.pid if mode.all_ours and pair.b.process else None
        try:
            before = _schedstat(ours) if ours else None
            busy, busy_lost = _ping_rtts(a, pair.b.tunnel4)
            dumps_during_pings = loop.output().count("dumped")
            loop_share = (_loop_share(before, _schedstat(ours), dumps_during_pings)
                          if ours and before else {})
            busy_gbps = _stream_gbps(a, b, pair.b.tunnel4)
        finally:
            loop.stop()
        return {"dump_s": dumps, "idle_p99_ms": p99(idle), "busy_p99_ms": p99(busy),
                "idle_median_ms": statistics.median(idle),
                "busy_median_ms": statistics.median(busy), "lost": idle_lost + busy_lost,
                "dumps_during_pings": dumps_during_pings, "idle_gbps": idle_gbps,
                "busy_gbps": busy_gbps, **loop_share}


def dump_bench(rounds: int, modern: Path | None, peers: int = PEERS,
               variants: Sequence[modes.Mode] = ()) -> dict[str, object]:
    """Each round, ours, then (given its binary) modern wireguard-go, then the ours variants;
    medians of all."""
    chosen = [modes.BY_NAME["ours"], *([modes.BY_NAME["modern-wireguard-go"]] if modern else []),
              *variants]
    runs: dict[str, list[dict]] = {mode.name: [] for mode in chosen}
    for _ in range(rounds):
        for mode in chosen:
            runs[mode.name].append(_one_round(mode, peers, modern))
    out: dict[str, object] = {"peers": peers, "rounds": rounds, "runs": runs,
                              "variants": [v.name for v in variants]}
    for kind, done in runs.items():
        idle = statistics.median(r["idle_p99_ms"] for r in done)
        busy = statistics.median(r["busy_p99_ms"] for r in done)
        summary: dict[str, float] = {
            "dump_s_median": statistics.median(s for r in done for s in r["dump_s"]),
            "idle_p99_ms_median": idle, "busy_p99_ms_median": busy,
            "busy_over_idle_p99": busy / idle,
            "idle_gbps_median": statistics.median(r["idle_gbps"] for r in done),
            "busy_gbps_median": statistics.median(r["busy_gbps"] for r in done)}
        for key in ("loop_cpu_ms_per_dump", "loop_wait_us_per_run"):  # ours only
            if all(key in r for r in done):
                summary[f"{key}_median"] = statistics.median(r[key] for r in done)
        out[kind] = summary
    if modern:
        ours, theirs = out["ours"], out["modern-wireguard-go"]
        assert isinstance(ours, dict) and isinstance(theirs, dict)
        out["ours_over_modern_dump"] = ours["dump_s_median"] / theirs["dump_s_median"]
    return out


def rows(report: dict | None) -> list[tuple[str, str]]:
    """bench/run.py's table lines."""
    if not report:
        return []
    peers = f"{report['peers']:,}"
    out = []
    for kind in ("ours", "modern-wireguard-go", *report.get("variants", ())):
        if kind not in report:
            continue
        r, label = report[kind], modes.label(kind)
        verdict = ("met" if r["busy_over_idle_p99"] <= 2 else "NOT met") if kind == "ours" else ""
        out.append((f"wg show dump, {peers} peers: {label}", f"{r['dump_s_median'] * 1e3:8.1f} ms"))
        out.append((f"ping p99 idle / during dumps: {label}",
                    f"{r['idle_p99_ms_median']:.3f} / {r['busy_p99_ms_median']:.3f} ms = "
                    f"{r['busy_over_idle_p99']:.2f}x" + (f" (goal <= 2x: {verdict})"
                                                          if verdict else "")))
        if "busy_gbps_median" in r:  # reports stored before it was measured have none
            out.append((f"iperf3 a->b idle / during dumps: {label}",
                        f"{r['idle_gbps_median']:.2f} / {r['busy_gbps_median']:.2f} Gbit/s"))
        if "loop_wait_us_per_run_median" in r:
            out.append((f"b's loop during dumps, CPU a dump / wait a run: {label}",
                        f"{r['loop_cpu_ms_per_dump_median']:.1f} ms / "
                        f"{r['loop_wait_us_per_run_median']:.0f} us"))
    if "ours_over_modern_dump" in report:
        ratio = report["ours_over_modern_dump"]
        out.append((f"wg show dump, {peers} peers: ours / modern wg-go",
                    f"{ratio:6.2f}x (goal <= 2x: {'met' if ratio <= 2 else 'NOT met'})"))
    return out


def main() -> int:
    from bench.run import add_modern_option, measured_modern

    parser = argparse.ArgumentParser(prog="python -m bench.management", description=__doc__)
    parser.add_argument("--peers", type=int, default=PEERS)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--ours-variant", action="append", default=[], metavar="ARGS",
                        help="also two of ours started with `vpn up ARGS` (repeatable)")
    add_modern_option(parser)
    args = parser.parse_args()
    modern = measured_modern(args.modern_wireguard_go)
    report = dump_bench(args.rounds, modern, args.peers,
                        [modes.variant(v) for v in args.ours_variant])
    for name, value in rows(report):
        print(f"{name:<48}  {value}", file=sys.stderr)
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
