"""`vpn show`'s pure part: the JSON view, the text's drops line and wg's dump lines."""

from __future__ import annotations

from vpn.control import show
from vpn.control.uapi import DeviceSnapshot, PeerSnapshot
from vpn.core.keys import encode_key, public_from_private
from vpn.core.wireguard.allowedips import prefix_of

PRIVATE = bytes(range(1, 33))
PEER_KEY = bytes([7] * 32)
PSK = bytes([3] * 32)


def _snapshot(**peer: object) -> DeviceSnapshot:
    return DeviceSnapshot(private_key=PRIVATE, listen_port=51820, fwmark=0,
                          rows=[PeerSnapshot(public_key=PEER_KEY, **peer)])  # type: ignore[arg-type]


def test_a_peer_that_never_handshook_has_a_null_latest_handshake() -> None:
    # get=1 carries last_handshake_time_sec=0 for "never"; parse_get reads it as 0.0.
    view = show.show_view("wg0", _snapshot(last_handshake=0.0), None)
    assert view["peers"][0]["latest_handshake"] is None
    view = show.show_view("wg0", _snapshot(last_handshake=1765000000.5), None)
    assert view["peers"][0]["latest_handshake"] == 1765000000.5


def test_dump_is_wg_show_dump() -> None:
    snap = _snapshot(preshared_key=PSK, endpoint=("198.18.0.2", 51821),
                     last_handshake=1765000000.7, rx_bytes=92, tx_bytes=148,
                     persistent_keepalive=25,
                     allowed_ips=(prefix_of("198.18.10.0/24"), prefix_of("fd00::/64")))
    snap.fwmark = 0x1234
    public = encode_key(public_from_private(PRIVATE))
    assert show.dump_lines("wg0", snap, with_interface=False) == [
        f"{encode_key(PRIVATE)}\t{public}\t51820\t0x1234",
        f"{encode_key(PEER_KEY)}\t{encode_key(PSK)}\t198.18.0.2:51821\t"
        "198.18.10.0/24,fd00::/64\t1765000000\t92\t148\t25",
    ]


def test_dump_all_prefixes_the_interface_and_says_none_and_off() -> None:
    snap = _snapshot(endpoint=("fd00::2", 51821))
    snap.private_key = None
    lines = show.dump_lines("wg1", snap, with_interface=True)
    assert lines == ["wg1\t(none)\t(none)\t51820\toff",
                     f"wg1\t{encode_key(PEER_KEY)}\t(none)\t[fd00::2]:51821\t(none)\t0\t0\t0\toff"]


def test_the_drops_line_names_a_protocol_drop_once() -> None:
    stats = {"datapath": {"drops": {"bad_mac1": 1, "no_peer_for_destination": 2}},
             "protocol_drops": {"bad_mac1": 1, "cookie_sent": 4}}
    view = show.show_view("wg0", _snapshot(), stats)
    (line,) = [ln for ln in show.show_text(view, 0).split("\n") if "drops:" in ln]
    assert line == "  drops: bad_mac1 1, no_peer_for_destination 2, protocol:cookie_sent 4"


def test_spans_and_sizes_are_written_as_wg_show_writes_them() -> None:
    assert show._ago(1000.9, 1000.1) == "Now"
    assert show._ago(1000.1, 999.9) == "1 second ago"  # whole seconds of each clock
    assert show._ago(100, 200).startswith("(System clock wound backward")
    assert show._ago(3 * 86400 + 3600 + 5, 0) == "3 days, 1 hour, 5 seconds ago"
    assert show._ago(366 * 86400, 0) == "1 year, 1 day ago"
    assert show._duration(90) == "1 minute, 30 seconds"
    assert [show._bytes(n) for n in (0, 1023, 1024, 5 << 20, 3 << 30, 2 << 40)] == \
        ["0 B", "1023 B", "1.00 KiB", "5.00 MiB", "3.00 GiB", "2.00 TiB"]


def test_peers_are_listed_latest_handshake_first_as_wg_show_lists_them() -> None:
    snap = DeviceSnapshot(private_key=PRIVATE, listen_port=1, rows=[
        PeerSnapshot(public_key=bytes([n] * 32), last_handshake=when)
        for n, when in ((1, 0.0), (2, 50.0), (3, 0.0), (4, 70.0))])
    text = show.show_text(show.show_view("wg0", snap, None), 100)
    order = [line.split(": ")[1] for line in text.split("\n") if line.startswith("peer: ")]
    assert order == [encode_key(bytes([n] * 32)) for n in (4, 2, 1, 3)]
