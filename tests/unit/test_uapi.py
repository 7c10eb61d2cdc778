"""The userspace API text protocol: set requests parsed and validated, get answers formatted.

Plain function calls; the socket server and `wg` itself are tested in test_wg_tool.py.
"""

from __future__ import annotations

import ipaddress

import pytest

from vpn import uapi
from vpn.show import offload_view, show_text, show_view
from vpn.uapi import (
    ChangeSet,
    DeviceSnapshot,
    PeerSnapshot,
    UapiError,
    format_get,
    format_stats,
    parse_get,
    parse_set,
    parse_stats,
)

K1 = bytes(range(32))
K2 = bytes(range(1, 33))
PSK = bytes([7] * 32)


def test_every_set_key_parses() -> None:
    changes = parse_set([
        f"private_key={K1.hex()}",
        "listen_port=51820",
        "fwmark=4660",
        "replace_peers=true",
        f"public_key={K2.hex()}",
        "update_only=true",
        f"preshared_key={PSK.hex()}",
        "endpoint=[fd00::1]:51821",
        "persistent_keepalive_interval=25",
        "replace_allowed_ips=true",
        "allowed_ip=10.0.0.0/24",
        "allowed_ip=fd00::5/128",
        "protocol_version=1",
        f"public_key={K1.hex()}",
        "remove=true",
    ])
    assert changes.private_key == K1
    assert (changes.listen_port, changes.fwmark, changes.replace_peers) == (51820, 4660, True)
    first, second = changes.peers
    assert first.public_key == K2 and first.update_only and first.preshared_key == PSK
    assert first.endpoint == ("fd00::1", 51821)
    assert first.persistent_keepalive == 25 and first.replace_allowed_ips
    assert first.allowed_ips == [ipaddress.ip_network("10.0.0.0/24"),
                                 ipaddress.ip_network("fd00::5/128")]
    assert second.public_key == K1 and second.remove


def test_empty_set_is_a_no_op() -> None:
    assert parse_set([]) == ChangeSet()


@pytest.mark.parametrize("line", [
    "bogus=1",                                   # unknown device key
    "private_key=" + "A" * 64,                   # uppercase hex
    "private_key=" + "0" * 63,                   # short
    "private_key=" + "g" * 64,                   # not hex
    "listen_port=65536",
    "listen_port=-1",
    "listen_port=+5",
    "listen_port=",
    "fwmark=4294967296",
    "replace_peers=false",                       # wireguard-go accepts only "true"
    "no equals sign",
    "public_key=" + K1.hex() + "\npreshared_key=zz",
    "public_key=" + K1.hex() + "\nendpoint=1.2.3.4",
    "public_key=" + K1.hex() + "\nendpoint=fd00::1:5",   # IPv6 needs brackets
    "public_key=" + K1.hex() + "\nendpoint=host.example:51820",  # names are wg's to resolve
    "public_key=" + K1.hex() + "\nendpoint=1.2.3.4:70000",
    "public_key=" + K1.hex() + "\nallowed_ip=10.0.0.1",
    "public_key=" + K1.hex() + "\nallowed_ip=10.0.0.1/33",
    "public_key=" + K1.hex() + "\nallowed_ip=300.0.0.1/32",
    "public_key=" + K1.hex() + "\npersistent_keepalive_interval=65536",
    "public_key=" + K1.hex() + "\nprotocol_version=2",
    "public_key=" + K1.hex() + "\nlisten_port=1",  # a device key inside a peer section
    "public_key=" + K1.hex() + "\nwhat=1",
])
def test_bad_lines_are_einval(line: str) -> None:
    with pytest.raises(UapiError) as caught:
        parse_set(line.split("\n"))
    assert caught.value.code == -22


def test_a_bad_line_after_good_ones_rejects_the_whole_request() -> None:
    with pytest.raises(UapiError):
        parse_set([f"public_key={K1.hex()}", "allowed_ip=10.0.0.0/8", "allowed_ip=nope/8"])


def test_replace_allowed_ips_drops_lines_before_it() -> None:
    changes = parse_set([f"public_key={K1.hex()}", "allowed_ip=10.0.0.0/8",
                         "replace_allowed_ips=true", "allowed_ip=10.1.0.0/16"])
    assert changes.peers[0].allowed_ips == [ipaddress.ip_network("10.1.0.0/16")]


def test_host_bits_are_cleared_and_mapped_v4_is_plain() -> None:
    changes = parse_set([f"public_key={K1.hex()}", "allowed_ip=10.1.2.3/16",
                         "endpoint=[::ffff:198.18.1.2]:5"])
    assert changes.peers[0].allowed_ips == [ipaddress.ip_network("10.1.0.0/16")]
    assert changes.peers[0].endpoint == ("198.18.1.2", 5)


def test_secrets_stay_out_of_reprs() -> None:
    changes = parse_set([f"private_key={PSK.hex()}", f"public_key={K1.hex()}",
                         f"preshared_key={PSK.hex()}"])
    assert PSK.hex()[:16] not in repr(changes)


def _snapshot() -> DeviceSnapshot:
    return DeviceSnapshot(
        private_key=K1,
        listen_port=51820,
        fwmark=0,
        peers=[
            PeerSnapshot(K2, preshared_key=None, endpoint=("fd00::2", 51821),
                         last_handshake=1700000000.25, tx_bytes=10, rx_bytes=20,
                         persistent_keepalive=25,
                         allowed_ips=[ipaddress.ip_network("10.0.0.0/24")]),
            PeerSnapshot(PSK, preshared_key=K1),
        ],
    )


def test_get_answer_matches_wireguard_go_layout() -> None:
    text = format_get(_snapshot())
    assert text.endswith("errno=0\n\n")
    lines = text.rstrip("\n").split("\n")
    assert lines[:2] == [f"private_key={K1.hex()}", "listen_port=51820"]
    assert not any(line.startswith("fwmark=") for line in lines)  # only when nonzero
    peer = lines[2:13]
    assert peer == [
        f"public_key={K2.hex()}",
        f"preshared_key={'0' * 64}",
        "protocol_version=1",
        "endpoint=[fd00::2]:51821",
        "last_handshake_time_sec=1700000000",
        "last_handshake_time_nsec=250000000",
        "tx_bytes=10",
        "rx_bytes=20",
        "persistent_keepalive_interval=25",
        "allowed_ip=10.0.0.0/24",
        f"public_key={PSK.hex()}",
    ]
    assert "endpoint=" not in text.split(f"public_key={PSK.hex()}")[1]  # unknown: left out


def test_get_round_trips() -> None:
    snapshot = _snapshot()
    snapshot.fwmark = 0x1234
    lines = format_get(snapshot).rstrip("\n").split("\n")
    assert "fwmark=4660" in lines
    back = parse_get(lines)
    assert back.private_key == K1 and back.listen_port == 51820 and back.fwmark == 0x1234
    assert back.peers[0].endpoint == ("fd00::2", 51821)
    assert back.peers[0].last_handshake == pytest.approx(1700000000.25)
    assert back.peers[1].preshared_key == K1
    assert back.peers[0].allowed_ips == snapshot.peers[0].allowed_ips


def test_get_error_raises_with_code() -> None:
    with pytest.raises(UapiError) as caught:
        parse_get(["errno=-22"])
    assert caught.value.code == -22
    with pytest.raises(UapiError):
        parse_get(["listen_port=1"])  # no errno: a cut-off answer


def test_stats_round_trip_nested_counters() -> None:
    stats = {"interface": "wg0", "datapath": {"super_packets": 3, "drops": {"a_b": 2}},
             "tun_offloads": "csum+tso4", "skipped": None, "bad key\n": 1}
    text = format_stats(stats)
    assert "bad key" not in text and "skipped" not in text
    back = parse_stats(text.rstrip("\n").split("\n"))
    assert back == {"interface": "wg0", "datapath": {"super_packets": 3, "drops": {"a_b": 2}},
                    "tun_offloads": "csum+tso4"}


def test_errno_codes_are_negative_like_wireguard_go() -> None:
    assert uapi.format_errno(uapi.EINVAL) == "errno=-22\n\n"
    assert uapi.EADDRINUSE == -98 and uapi.EPROTO == -71


def test_show_view_and_text() -> None:
    stats = {"tun_offloads": "csum+tso4", "mtu": 1420, "udp_offloads": {"gso": 1, "gro": 1},
             "fast_path": "native",
             "datapath": {"tun_reads": 10, "super_packets": 4, "segments_split": 100,
                          "jumbo_frames": 2, "jumbo_segments": 30, "tun_writes": 5,
                          "drops": {"no_peer_for_destination": 1}},
             "udp": {"gso_sends": 5, "gso_segments": 100, "gro_receives": 2,
                     "gro_segments": 30},
             "handshakes": {"received": 2, "completed": 1}}
    view = show_view("wg0", _snapshot(), stats)
    assert view["offload"]["segments_per_super_packet"] == 25.0
    assert view["offload"]["segments_per_jumbo_frame"] == 15.0
    assert view["offload"]["fast_path"] == "native"
    assert view["peers"][0]["endpoint"] == "[fd00::2]:51821"
    assert view["peers"][1]["preshared_key"] is True
    text = show_text(view, now=1700000065.0)
    assert "latest handshake: 1 minute, 4 seconds ago" in text
    assert "no_peer_for_destination 1" in text
    assert "fast path: native" in text
    assert offload_view({})["segments_per_gso_send"] == 0.0  # no division by zero
    assert "not served by a vpn endpoint" in show_text(show_view("x", _snapshot(), None), 0)
