"""Management under load, for `make bench` (bench/run.py calls `dump_bench`): b serves
PEERS peers, a pings b through the tunnel.

- `wg show IFACE dump` wall time on b (the `wg` process, measured inside b's namespace),
  ours against modern wireguard-go in the same run;
- ping p99 through the tunnel, a to b, idle and while b answers dumps back to back (the
  data path must keep forwarding while a big get is served).

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
from collections.abc import Sequence
from pathlib import Path

from bench import modes
from lab import wg_lab
from lab.netns import Host, Lab

PEERS = 10_000
DUMPS = 9  # timed dumps per round and kind
PINGS = 400
PING_INTERVAL = 0.01  # seconds; root may go below ping's 0.2 s floor
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
        loop = b.start("sh", "-c", f"while :; do wg show {pair.b.ifname} dump >/dev/null; "
                       "echo dumped; done")
        try:
            busy, busy_lost = _ping_rtts(a, pair.b.tunnel4)
        finally:
            loop.stop()
        return {"dump_s": dumps, "idle_p99_ms": p99(idle), "busy_p99_ms": p99(busy),
                "idle_median_ms": statistics.median(idle),
                "busy_median_ms": statistics.median(busy), "lost": idle_lost + busy_lost,
                "dumps_during_pings": loop.output().count("dumped")}


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
        out[kind] = {"dump_s_median": statistics.median(s for r in done for s in r["dump_s"]),
                     "idle_p99_ms_median": idle, "busy_p99_ms_median": busy,
                     "busy_over_idle_p99": busy / idle}
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
