"""`make demo`: the docker/ topology built in network namespaces from
docker/docker-compose.yml, the gateways running `vpn up` on config/gw-a.conf and gw-b.conf:
their handshake, a ping, a throughput run with a live progress line and the offload
counters; then a full teardown, also on Ctrl-C.

    client -- gw-a [vpn] ==WireGuard over veth== gw-b [vpn] -- lan
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lab import compose_lab
from lab.netns import Host, Lab, LabUnavailable
from lab.wg_lab import final_counters


def step(text: str) -> None:
    print(f"\n== {text}", flush=True)


def live_iperf3(client: Host, server: Host, address: str, seconds: int) -> None:
    srv = server.start("iperf3", "-s", "-1", "-p", "5299")
    server.wait_for("ss -ltn | grep -q ':5299 '")
    args = client.command(["iperf3", "-c", address, "-p", "5299", "-t", str(seconds), "-i", "1",
                           "--forceflush"])
    with subprocess.Popen(args, stdout=subprocess.PIPE, text=True) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            rate = re.search(r"([\d.]+ [GM]bits/sec)", line)
            if not rate:
                continue
            if "receiver" in line:
                print(f"\r   average over {seconds} s: {rate.group(1):>16}        ", flush=True)
            elif "sender" not in line:
                interval = line.split("]")[1].split("sec")[0].strip()
                print(f"\r   {interval} s: {rate.group(1):>16}", end="", flush=True)
    srv.stop()


def main() -> int:
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        with Lab() as lab:
            step("building client, gw-a, gw-b and lan from docker/docker-compose.yml "
                 "(network namespaces joined by veth)")
            site = compose_lab.build(lab)
            client, lan = site.hosts["client"], site.hosts["lan"]
            lan_address = site.addresses["lan"]["lan"]
            for gateway in ("gw-a", "gw-b"):
                output = site.start_gateway(gateway).output()
                up = [ln for ln in output.splitlines() if " up: " in ln][-1]
                print(f"   {gateway}: {up.split('vpn.endpoint: ')[1]}")
            step(f"ping {lan_address} (lan) from client: the first packet starts the handshake")
            ping = client.run("ping", "-c", "3", "-i", "0.3", "-W", "5", lan_address).stdout
            print("   " + ping.strip().splitlines()[-2])
            for line in site.processes["gw-a"].output().splitlines():
                if "handshake completed" in line:
                    print("   gw-a: " + line.split("vpn.endpoint: ")[1])
            step("iperf3 client -> lan for 5 s, through the tunnel")
            live_iperf3(client, lan, lan_address, 5)
            step("offload counters of the run")
            sender = final_counters(site.stop_gateway("gw-a"))
            receiver = final_counters(site.stop_gateway("gw-b"))
            udp = sender["udp"]
            print(f"   gw-a read {sender['super_packets']} super-packets from its TUN "
                  f"({sender['segments_split'] / max(sender['super_packets'], 1):.1f} "
                  "segments each)")
            print(f"   gw-a sent {udp['gso_segments']} datagrams in {udp['gso_sends']} UDP GSO "
                  f"sends ({udp['gso_segments'] / max(udp['gso_sends'], 1):.1f} per send)")
            print(f"   gw-b wrote {receiver['jumbo_frames']} jumbo frames to its TUN "
                  f"({receiver['jumbo_segments'] / max(receiver['jumbo_frames'], 1):.1f} "
                  "segments each) for the 1500-byte lan link")
            drops = {**sender["drops"], **receiver["drops"]}
            print(f"   drops: {drops or 'none'}")
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
