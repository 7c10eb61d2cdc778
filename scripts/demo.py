"""`make demo`: two hosts in network namespaces joined by the offload relay, a ping, a
throughput run with a live progress line, and the offload counters; then a full teardown.

Ctrl-C at any point still removes every namespace and process it made.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.integration.relay_lab import A4, B4, host_to_host
from tests.netns import Lab, LabUnavailable


def step(text: str) -> None:
    print(f"\n== {text}", flush=True)


def live_iperf3(run, seconds: int) -> None:
    server = run.b.start("iperf3", "-s", "-1", "-p", "5299")
    run.b.wait_for("ss -ltn | grep -q ':5299 '")
    args = run.a.command(["iperf3", "-c", B4, "-p", "5299", "-t", str(seconds), "-i", "1",
                          "--forceflush"])
    with subprocess.Popen(args, stdout=subprocess.PIPE, text=True) as client:
        assert client.stdout is not None
        for line in client.stdout:
            rate = re.search(r"([\d.]+ [GM]bits/sec)", line)
            if rate and "sender" not in line and "receiver" not in line:
                print(f"\r   {line.split(']')[1].split('sec')[0].strip()} s: "
                      f"{rate.group(1):>16}", end="", flush=True)
            elif "receiver" in line and rate:
                print(f"\r   average over {seconds} s: {rate.group(1):>16}        ", flush=True)
    server.stop()


def main() -> int:
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        with Lab() as lab:
            step("building hosts a and b (network namespaces) and the offload relay between "
                 "their TUN devices")
            run = host_to_host(lab)
            print("   " + run.relay.output().strip().splitlines()[-1])
            print(f"   a: {A4} on relay0   b: {B4} on relay0   (TUN MTU 1420)")
            step(f"ping {B4} from a")
            print(run.a.run("ping", "-c", "3", "-i", "0.2", B4).stdout.strip()
                  .splitlines()[-2].join(["   ", ""]))
            step("iperf3 a -> b for 5 s through split + coalesce")
            live_iperf3(run, 5)
            stats = run.stop()["a_to_b"]
            step("offload counters a -> b")
            print(f"   super-packets read:        {stats['super_packets']}")
            print(f"   segments per super-packet: {stats['segments_per_super_packet']}")
            print(f"   jumbo frames written:      {stats['jumbo_frames']}")
            print(f"   segments per jumbo frame:  {stats['segments_per_jumbo_frame']}")
            print(f"   drops:                     {stats['drops'] or 'none'}")
            step("tearing down")
    except LabUnavailable as err:
        print(f"demo: cannot build the hosts: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted: everything was torn down", file=sys.stderr)
        return 130
    print("   done: no namespace, interface or process left behind")
    return 0


if __name__ == "__main__":
    sys.exit(main())
