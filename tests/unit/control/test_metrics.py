"""The metrics renderer and the counters snapshot: parsed back with prometheus_client's own
parsers (0.0.4 text and OpenMetrics), so what a Prometheus server reads is what is checked."""

from __future__ import annotations

import ipaddress
import os

import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_om
from prometheus_client.parser import text_string_to_metric_families as parse_text

from tests.unit.core.wireguard.helpers import receive_one
from vpn.control.counters import Counters, PeerCounters, gather
from vpn.control.metrics import render, wants_openmetrics
from vpn.core.keys import encode_key
from vpn.core.wireguard import Device

KEY_A, KEY_B = bytes(range(32)), bytes(range(32, 64))
NASTY = 'wg"0\\x\nnew'  # quote, backslash, newline: each must be escaped in a label


def counters(**overrides: object) -> Counters:
    peers = (
        PeerCounters(KEY_A, ("198.18.0.2", 51820),
                     ((6, 128, int(ipaddress.ip_address("fd00::2"))),
                      (4, 32, int(ipaddress.ip_address("10.0.0.2")))),
                     rx_bytes=1000, tx_bytes=2000, latest_handshake=1_765_000_000.5,
                     handshakes=3, endpoint_changes=2, drops={"replay": 4}),
        PeerCounters(KEY_B, None, (), rx_bytes=0, tx_bytes=0, latest_handshake=None,
                     handshakes=0, endpoint_changes=0, drops={}),
    )
    fields: dict[str, object] = dict(
        interface="wg0", public_key=KEY_B, listen_port=51820, mtu=1420,
        tun_offloads="TSO4 TSO6 USO", fast_path="native", udp_gso=True, udp_gro=False,
        datapath={"tun_reads": 7, "super_packets": 2, "segments_split": 90,
                  "jumbo_frames": 4, "jumbo_segments": 60, "handshakes_received": 5},
        udp={"gso_sends": 3, "gso_segments": 80, "gso_fallbacks": 1},
        drops={"replay": 4, "no_peer_for_destination": 9},
        protocol_drops={"bad_mac1": 2}, udp_send_errors={"ENOBUFS": 6},
        handshakes_completed=3, peers=peers,
    )
    fields.update(overrides)
    return Counters(**fields)  # type: ignore[arg-type]


def samples(text: str, openmetrics: bool = False) -> dict[str, list[tuple[dict[str, str], float]]]:
    families = parse_om(text) if openmetrics else parse_text(text)
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in families:
        for sample in family.samples:
            out.setdefault(sample.name, []).append((sample.labels, sample.value))
    return out


@pytest.mark.parametrize("openmetrics", [False, True])
def test_exporter_names_and_labels_parse_back(openmetrics: bool) -> None:
    text = render(counters(), openmetrics=openmetrics).decode()
    got = samples(text, openmetrics)
    sent = {lb["public_key"]: (lb, value) for lb, value in got["wireguard_sent_bytes_total"]}
    labels, value = sent[encode_key(KEY_A)]
    assert value == 2000
    assert labels == {"interface": "wg0", "public_key": encode_key(KEY_A),
                      "allowed_ips": "10.0.0.2/32,fd00::2/128",
                      "remote_ip": "198.18.0.2", "remote_port": "51820"}
    # No endpoint: no remote labels; never a handshake: 0, as the exporter says it.
    assert sent[encode_key(KEY_B)][0] == {"interface": "wg0", "public_key": encode_key(KEY_B),
                                          "allowed_ips": ""}
    handshake = {lb["public_key"]: v for lb, v in got["wireguard_latest_handshake_seconds"]}
    assert handshake == {encode_key(KEY_A): 1_765_000_000, encode_key(KEY_B): 0}
    received = {lb["public_key"]: v for lb, v in got["wireguard_received_bytes_total"]}
    assert received[encode_key(KEY_A)] == 1000
    assert {lb["public_key"]: v for lb, v in got["vpn_peer_handshakes_total"]} == \
        {encode_key(KEY_A): 3, encode_key(KEY_B): 0}
    assert {lb["reason"]: v for lb, v in got["vpn_drops_total"]} == \
        {"replay": 4, "no_peer_for_destination": 9}
    assert got["vpn_peer_drops_total"] == [
        ({"interface": "wg0", "public_key": encode_key(KEY_A), "reason": "replay"}, 4)]
    assert got["vpn_udp_gso_fallbacks_total"] == [({"interface": "wg0"}, 1)]
    assert got["vpn_jumbo_segments_total"] == [({"interface": "wg0"}, 60)]
    assert got["vpn_fast_path_info"] == [({"interface": "wg0", "path": "native"}, 1)]
    assert got["vpn_udp_send_errors_total"] == [({"interface": "wg0", "errno": "ENOBUFS"}, 6)]


def test_help_and_type_lines_precede_each_family() -> None:
    text = render(counters()).decode()
    families = {f.name: f for f in parse_text(text)}
    assert families["wireguard_sent_bytes"].type == "counter"
    assert families["wireguard_latest_handshake_seconds"].type == "gauge"
    assert families["vpn_fast_path_info"].type == "gauge"  # 0.0.4 has no info type
    assert families["vpn_drops"].documentation.startswith("Packets and datagrams")
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("# TYPE "):
            assert lines[i - 1].startswith(f"# HELP {line.split()[2]} ")
    assert "# EOF" not in text and text.endswith("\n")


def test_openmetrics_types_and_eof() -> None:
    text = render(counters(), openmetrics=True).decode()
    assert text.endswith("# EOF\n")
    families = {f.name: f.type for f in parse_om(text)}
    assert families["vpn_fast_path"] == "info"
    assert families["wireguard_sent_bytes"] == "counter"
    assert "# TYPE wireguard_sent_bytes counter" in text


@pytest.mark.parametrize("openmetrics", [False, True])
def test_label_values_are_escaped(openmetrics: bool) -> None:
    text = render(counters(interface=NASTY, drops={NASTY: 1}), openmetrics=openmetrics).decode()
    got = samples(text, openmetrics)
    assert got["vpn_drops_total"] == [({"interface": NASTY, "reason": NASTY}, 1)]
    assert all(lb["interface"] == NASTY for lb, _ in got["wireguard_sent_bytes_total"])


def test_an_interface_without_peers_or_drops_renders() -> None:
    got = samples(render(counters(peers=(), drops={}, protocol_drops={},
                                  udp_send_errors={})).decode())
    assert got["vpn_peers"] == [({"interface": "wg0"}, 0)]
    assert "wireguard_sent_bytes_total" not in got


@pytest.mark.parametrize(("accept", "wanted"), [
    ("", False), ("text/plain", False), ("*/*", False),
    ("application/openmetrics-text; version=1.0.0; charset=utf-8", True),
    ("application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1",
     True),
    ("application/openmetrics-text;q=0, text/plain", False),
])
def test_openmetrics_is_given_when_asked_for(accept: str, wanted: bool) -> None:
    assert wants_openmetrics(accept) is wanted


def test_gather_counts_each_peers_handshakes_and_endpoint_changes() -> None:
    """A handshake between two devices in memory: the responder learns the initiator's
    endpoint (a change from none), both count one completed handshake."""
    a, b = Device(os.urandom(32)), Device(os.urandom(32))
    assert a.public_key is not None and b.public_key is not None
    a_peer = a.add_peer(b.public_key, endpoint=("198.18.0.2", 2))
    b.add_peer(a.public_key)
    a.allowed_ips.insert("10.0.0.2/32", a_peer)
    initiation = a_peer.initiate_handshake(0.0)[0]
    response = b.handle_handshake_message(initiation, ("198.18.0.1", 1), 0.0).replies[0]
    confirmation = a.handle_handshake_message(response, ("198.18.0.2", 2), 0.0).replies[0]
    assert receive_one(b, confirmation, ("198.18.0.1", 1), 0.0).drop_reason is None
    ours = gather("wg0", a, mtu=1420, tun_offloads="", fast_path="python", udp_gso=False,
                  udp_gro=False, datapath={"tun_reads": 1, "drops": {"x": 2}, "udp": {}},
                  udp={"gso_sends": 0, "send_errors": {}}, handshakes_completed=1)
    theirs = gather("wg0", b, mtu=1420, tun_offloads="", fast_path="python", udp_gso=False,
                    udp_gro=False, datapath={}, udp={}, handshakes_completed=1)
    (mine,), (other,) = ours.peers, theirs.peers
    assert (mine.handshakes, mine.endpoint_changes) == (1, 0)  # configured, never moved
    assert (other.handshakes, other.endpoint_changes) == (1, 1)  # learned from the initiation
    assert mine.allowed_ips() == [ipaddress.ip_network("10.0.0.2/32")]
    assert mine.latest_handshake is not None
    assert (mine.tx_bytes, mine.rx_bytes) == (other.rx_bytes, other.tx_bytes) != (0, 0)
    assert ours.datapath == {"tun_reads": 1} and ours.drops == {"x": 2}
    stats = ours.to_stats()
    assert stats["peers"] == {b.public_key.hex(): {"handshakes": 1, "endpoint_changes": 0,
                                                   "drops": {}}}
    # The confirmation again: a replay, the interface's and the peer's.
    assert receive_one(b, confirmation, ("198.18.0.1", 1), 0.0).drop_reason == "replay"
    assert b.receive_counts.drops["replay"] == 1
    assert gather("wg0", b, mtu=1420, tun_offloads="", fast_path="python", udp_gso=False,
                  udp_gro=False, datapath={}, udp={}, handshakes_completed=1
                  ).peers[0].drops == {"replay": 1}
