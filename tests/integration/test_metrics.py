"""The metrics endpoint on a real tunnel: two of our endpoints in namespaces, `--metrics` on
one, scraped from inside its namespace and parsed with prometheus_client; the values are
checked against the traffic sent and against `vpn show --json`, and a bad request gets 400
while the tunnel keeps carrying traffic."""

from __future__ import annotations

import json
import os
import sys
import time

from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_om
from prometheus_client.parser import text_string_to_metric_families as parse_text

from lab.netns import Host, Lab
from lab.relay_lab import checked_transfer
from lab.wg_lab import ROOT, UNDERLAY, build, wg

METRICS = f"{UNDERLAY['a'][0]}:9586"
TRANSFER = 8 << 20

# Run inside the namespace: one HTTP exchange, the raw response on stdout.
EXCHANGE = """
import socket, sys
host, port = sys.argv[1].rsplit(":", 1)
with socket.create_connection((host, int(port)), timeout=10) as s:
    s.sendall(sys.argv[2].encode("latin-1").decode("unicode_escape").encode("latin-1"))
    s.shutdown(socket.SHUT_WR)
    out = b""
    while chunk := s.recv(65536):
        out += chunk
sys.stdout.write(out.decode())
"""


def http(host: Host, request: str) -> tuple[str, str]:
    """(status line, body) of one raw request (escapes such as \\r\\n spelled out)."""
    raw = host.run(sys.executable, "-c", EXCHANGE, METRICS, request).stdout
    head, _, body = raw.partition("\n\n")  # text mode: CRLF arrives as LF
    return head.split("\n", 1)[0], body


def scrape(host: Host, openmetrics: bool = False) -> dict[str, list[tuple[dict, float]]]:
    accept = "Accept: application/openmetrics-text; version=1.0.0\\r\\n" if openmetrics else ""
    status, body = http(host, f"GET /metrics HTTP/1.1\\r\\nHost: x\\r\\n{accept}\\r\\n")
    assert status == "HTTP/1.1 200 OK", (status, body[:200])
    out: dict[str, list[tuple[dict, float]]] = {}
    for family in (parse_om(body) if openmetrics else parse_text(body)):
        for sample in family.samples:
            out.setdefault(sample.name, []).append((sample.labels, sample.value))
    return out


def show_json(host: Host, ifname: str) -> dict:
    env_path = f"PYTHONPATH={ROOT}"
    return json.loads(host.run("env", env_path, sys.executable, "-m", "vpn.cli", "show", ifname,
                               "--json").stdout)


def one(samples: list[tuple[dict, float]], **labels: str) -> float:
    found = [v for lb, v in samples if all(lb.get(k) == v for k, v in labels.items())]
    assert len(found) == 1, (labels, samples)
    return found[0]


def test_metrics_follow_real_traffic_and_vpn_show(lab: Lab) -> None:
    pair = build(lab)
    pair.start_ours(pair.b)
    started = time.time()
    proc = pair.start_ours(pair.a, up_args=["--metrics", METRICS])
    assert f"metrics at http://{METRICS}/metrics" in proc.output()
    a, b = pair.a, pair.b
    a.host.run("ping", "-c", "3", "-i", "0.2", "-W", "5", b.tunnel4)
    sent, received = checked_transfer(a.host, b.host, b.tunnel4, TRANSFER)
    assert sent == received

    before = show_json(a.host, a.ifname)
    got = scrape(a.host)
    after = show_json(a.host, a.ifname)
    peer = {"interface": a.ifname, "public_key": b.public}
    tx = one(got["wireguard_sent_bytes_total"], **peer)
    rx = one(got["wireguard_received_bytes_total"], **peer)
    shown = [next(p for p in view["peers"] if p["public_key"] == b.public)
             for view in (before, after)]
    # Every byte of the transfer went out encrypted; the same counters as `vpn show`.
    assert tx > TRANSFER and shown[0]["tx_bytes"] <= tx <= shown[1]["tx_bytes"]
    assert rx > 0 and shown[0]["rx_bytes"] <= rx <= shown[1]["rx_bytes"]
    labels = next(lb for lb, _ in got["wireguard_sent_bytes_total"])
    assert labels["allowed_ips"] == f"{b.tunnel4}/32,{b.tunnel6}/128"
    assert (labels["remote_ip"], labels["remote_port"]) == (UNDERLAY["b"][0], "51821")
    handshake = one(got["wireguard_latest_handshake_seconds"], **peer)
    assert int(started) <= handshake <= time.time()
    assert handshake == int(shown[1]["latest_handshake"])
    assert one(got["vpn_peer_handshakes_total"], **peer) == shown[1]["handshakes"] >= 1
    assert one(got["vpn_peer_endpoint_changes_total"], **peer) == \
        shown[1]["endpoint_changes"] == 0  # configured, and b never moved
    # The interface's figures: the transfer went through the offloads, as `vpn show` says.
    off = after["offload"]
    iface = {"interface": a.ifname}
    assert 0 < one(got["vpn_super_packets_total"], **iface) <= off["super_packets"]
    assert 0 < one(got["vpn_udp_gso_sends_total"], **iface) <= off["udp_gso_sends"]
    assert one(got["vpn_udp_gso_segments_total"], **iface) > \
        one(got["vpn_udp_gso_sends_total"], **iface)
    assert one(got["vpn_udp_gso_fallbacks_total"], **iface) == off["udp_gso_fallbacks"]
    assert one(got["vpn_fast_path_info"], **iface, path=off["fast_path"]) == 1
    assert one(got["vpn_handshakes_completed_total"], **iface) == off["handshakes_completed"]
    # `vpn show --json` carries every counter the metrics do.
    for name in ("segments_split", "packets_written", "jumbo_segments", "icmp_unreachable_sent",
                 "lost_session_handshakes", "udp_send_dropped", "udp_truncated"):
        assert isinstance(off[name], int), name
    om = scrape(a.host, openmetrics=True)
    assert one(om["wireguard_sent_bytes_total"], **peer) >= tx

    # b sends from an address outside its AllowedIPs on a: a drops those, as b's.
    b.host.run("ip", "addr", "add", "198.18.10.99/32", "dev", b.ifname)
    b.host.run("ping", "-c", "2", "-i", "0.2", "-W", "1", "-I", "198.18.10.99", a.tunnel4,
               check=False)
    wanted = {**peer, "reason": "source_not_allowed"}
    deadline = time.monotonic() + 10
    while not any(all(lb.get(k) == v for k, v in wanted.items())
                  for lb, _ in scrape(a.host).get("vpn_peer_drops_total", [])):
        assert time.monotonic() < deadline, "no per-peer drop counted"
        time.sleep(0.1)
    assert one(scrape(a.host)["vpn_peer_drops_total"], **wanted) == 2
    shown_peer = next(p for p in show_json(a.host, a.ifname)["peers"]
                      if p["public_key"] == b.public)
    assert shown_peer["drops"] == {"source_not_allowed": 2}


def test_a_bad_request_gets_400_and_the_tunnel_keeps_working(lab: Lab) -> None:
    pair = build(lab)
    pair.start_ours(pair.b)
    proc = pair.start_ours(pair.a, up_args=["--metrics", METRICS])
    a, b = pair.a, pair.b
    a.host.run("ping", "-c", "2", "-i", "0.2", "-W", "5", b.tunnel4)
    for request in ("BREW /coffee HTCPCP/1.0\\r\\n\\r\\n", "\\x00\\xff garbage\\r\\n\\r\\n",
                    "GET /metrics HTTP/1.1\\r\\nX: " + "a" * 20000 + "\\r\\n\\r\\n"):
        status, body = http(a.host, request)
        assert status.startswith("HTTP/1.1 400 "), status
        assert body.startswith("bad request")
    assert http(a.host, "GET / HTTP/1.1\\r\\n\\r\\n")[0].startswith("HTTP/1.1 404 ")
    assert http(a.host, "DELETE /metrics HTTP/1.1\\r\\n\\r\\n")[0].startswith("HTTP/1.1 405 ")
    assert proc.popen.poll() is None
    a.host.run("ping", "-c", "2", "-i", "0.2", "-W", "5", b.tunnel4)
    sent, received = checked_transfer(a.host, b.host, b.tunnel4, 1 << 20)
    assert sent == received
    assert one(scrape(a.host)["wireguard_sent_bytes_total"], public_key=b.public) > 1 << 20
    assert "Traceback" not in proc.output()


def test_a_bad_metrics_address_is_refused_before_anything_starts(lab: Lab) -> None:
    pair = build(lab)
    config = pair.write_config(pair.a)
    result = pair.a.host.run(sys.executable, "-m", "vpn.cli", "up", "--foreground",
                             "--metrics", "9586", str(config), check=False)
    assert result.returncode == 2
    assert "metrics address '9586': expected HOST:PORT" in result.stderr
    assert os.path.exists(config)
    assert pair.a.host.run("ip", "link", "show", pair.a.ifname, check=False).returncode != 0


def test_vpn_userspace_serves_metrics_from_the_environment(lab: Lab) -> None:
    """wg-quick's way: no config file, so the address comes from VPN_METRICS."""
    pair = build(lab)
    a = pair.a
    proc = a.host.start(sys.executable, "-m", "vpn.userspace", "-f", a.ifname,
                        env=dict(os.environ, PYTHONPATH=str(ROOT), VPN_METRICS=METRICS,
                                 LOG_LEVEL="debug"))
    a.host.wait_for(f"test -S /var/run/wireguard/{a.ifname}.sock")
    deadline = time.monotonic() + 30
    while "metrics at" not in proc.output():
        assert proc.popen.poll() is None and time.monotonic() < deadline, proc.output()
        time.sleep(0.05)
    assert one(scrape(a.host)["vpn_peers"], interface=a.ifname) == 0
    a.host.run("wg", "set", a.ifname, "peer", pair.b.public, "allowed-ips", "198.18.10.2/32")
    got = scrape(a.host)
    assert one(got["vpn_peers"], interface=a.ifname) == 1
    assert one(got["wireguard_latest_handshake_seconds"], public_key=pair.b.public) == 0
    assert wg("show", a.ifname, "peers") == pair.b.public
