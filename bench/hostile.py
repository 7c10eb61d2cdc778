"""Goodput under a garbage flood, for `make bench` (bench/run.py calls flood_goodput).

Each round, for two of ours and (when its binary is given) two modern wireguard-go: iperf3
a->b clean, then again while a third host (test_hostile's flood host, on its own link to b)
sends about FLOOD_RATE datagrams a second at b's WireGuard port with
lab/flood.py's `garbage` mode: random bytes, wrong lengths, bad-mac1
handshakes, unknown receiver indices, oversized datagrams, and exact replays and forgeries
of a's transport messages to b (captured during the setup ping, so the forgeries carry b's
live receiver index and each costs b an AEAD). The flood is bounded (the iperf3 run plus
FLOOD_MARGIN seconds) and stays inside the lab's namespaces.

The flooder's veth has UDP segmentation off, so each datagram crosses on its own, as from a
real network; otherwise a GSO batch of 64 would reach a UDP GRO socket as one receive.
The share is goodput under flood / clean goodput of the same endpoints in the same lab.
"""

from __future__ import annotations

import statistics
from pathlib import Path

from lab import wg_lab
from lab.flood_lab import VICTIM, flood_host, flood_result, start_flood
from lab.netns import Host, Lab, iperf3_gbps

FLOOD_RATE = 100_000
# The flood outlasts iperf3's connect and its `seconds` of transfer by this much.
FLOOD_MARGIN = 4.0
# b's end of the flood link (flood_host links "f" to b).
FLOOD_LINK = "to-f"


def _rx_packets(host: Host, ifname: str) -> int:
    return int(host.run("cat", f"/sys/class/net/{ifname}/statistics/rx_packets").stdout)


def _one_run(kind: str, seconds: float, modern: Path | None) -> dict:
    """Clean, then flooded goodput through one pair of `kind` endpoints."""
    with Lab() as lab:
        pair = wg_lab.build(lab)
        flood = flood_host(lab, pair)
        flood.run("ethtool", "-K", "to-b", "tx-udp-segmentation", "off")
        for node in (pair.a, pair.b):
            if kind == "ours":
                pair.start_ours(node)
            else:
                assert modern is not None
                pair.start_wireguard_go(node, binary=modern)
        capture = pair.b.host.capture("to-a", f"udp dst port {wg_lab.PORT['b']}",
                                      snaplen=2048, inbound_only=True)
        pair.a.host.run("ping", "-c", "2", "-i", "0.2", "-W", "5", pair.b.tunnel4)
        capture.stop()

        def iperf() -> float:
            return iperf3_gbps(pair.a.host.iperf3(pair.b.host, pair.b.tunnel4, seconds=seconds))

        clean = iperf()
        before = _rx_packets(pair.b.host, FLOOD_LINK)
        flooder = start_flood(flood, "garbage", VICTIM, str(wg_lab.PORT["b"]),
                              str(seconds + FLOOD_MARGIN), str(FLOOD_RATE), str(capture.pcap))
        # Measure only once the flood is arriving (the flooder takes a moment to start).
        counter = f"/sys/class/net/{FLOOD_LINK}/statistics/rx_packets"
        pair.b.host.wait_for(f"test $(cat {counter}) -ge {before + 1000}", timeout=20)
        error = None
        try:
            flooded = iperf()
        except RuntimeError as exc:  # a drowned tunnel may not even carry iperf3's control
            flooded, error = 0.0, str(exc)
        covered = flooder.popen.poll() is None
        assert pair.b.process is not None
        victim_rss = wg_lab.peak_rss_mb(pair.b.process.pid)
        flood_report = flood_result(flooder)
    return {"clean": clean, "flooded": flooded, "error": error, "covered": covered,
            "flood": flood_report, "victim_peak_rss_mb": victim_rss}


def flood_goodput(rounds: int, seconds: float, modern: Path | None) -> dict:
    """`rounds` rounds, each running every kind (ours, then modern wireguard-go if given)."""
    kinds = ["ours", *(["modern-wireguard-go"] if modern else [])]
    runs: dict[str, list[dict]] = {kind: [] for kind in kinds}
    for _ in range(rounds):
        for kind in kinds:
            runs[kind].append(_one_run(kind, seconds, modern))
    out: dict[str, object] = {"rate_target": FLOOD_RATE}
    for kind, results in runs.items():
        shares = [r["flooded"] / r["clean"] for r in results]
        rates = [r["flood"]["rate"] for r in results]
        out[kind] = {
            "share_median": statistics.median(shares),
            "share_samples": shares,
            "clean_gbps_median": statistics.median(r["clean"] for r in results),
            "flooded_gbps_median": statistics.median(r["flooded"] for r in results),
            "clean_gbps_samples": [r["clean"] for r in results],
            "flooded_gbps_samples": [r["flooded"] for r in results],
            # The flooder's own count of datagrams sent over its own run time.
            "flood_rate_median": statistics.median(rates),
            "flood_rate_samples": rates,
            # False where the flood ended before iperf3 did (a slow connect under flood).
            "flood_covered_run": [r["covered"] for r in results],
            "iperf3_errors": [r["error"] for r in results if r["error"]],
            "victim_peak_rss_mb": max(r["victim_peak_rss_mb"] for r in results),
            "flood_reports": [r["flood"] for r in results],
        }
    return out
