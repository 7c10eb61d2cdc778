"""The userspace API text protocol: set requests parsed and validated, get answers formatted.

Plain function calls, and the socket server on a socket in a temporary directory; `wg`
itself is tested in test_wg_tool.py.
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import logging
from pathlib import Path

import pytest

from vpn.control import uapi, uapi_server
from vpn.control.show import offload_view, show_text, show_view
from vpn.control.uapi import (
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
from vpn.core.keys import clamp, encode_key
from vpn.core.wireguard.allowedips import prefix_of

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


# Secrets as a careless client sends them: a `wg genkey`-style key and the hex form UAPI uses.
B64_SECRET = encode_key(clamp(hashlib.sha256(b"test_uapi base64").digest()))
HEX_SECRET = hashlib.sha256(b"test_uapi hex").hexdigest()
SECRETS = [B64_SECRET, HEX_SECRET]
P = f"public_key={K1.hex()}\n"  # opens a peer section
# Every way a set request can fail, with the key its error must name; {s} is the secret, with
# a '!' after it where the bare secret would be a valid value.
BAD_SET_LINES = [
    ("{s}", None),  # a key alone: base64 parses as an unknown key, hex as a line without '='
    ("{s}=1", None),
    (P + "{s}=1", None),
    ("private_key={s}!", "private_key"),
    ("public_key={s}!", "public_key"),
    ("listen_port={s}", "listen_port"),
    ("fwmark={s}", "fwmark"),
    ("replace_peers={s}", "replace_peers"),
    (P + "preshared_key={s}!", "preshared_key"),
    (P + "remove={s}", "remove"),
    (P + "update_only={s}", "update_only"),
    (P + "replace_allowed_ips={s}", "replace_allowed_ips"),
    (P + "persistent_keepalive_interval={s}", "persistent_keepalive_interval"),
    (P + "protocol_version={s}", "protocol_version"),
    (P + "endpoint={s}", "endpoint"),
    (P + "endpoint={s}:51820", "endpoint"),
    (P + "endpoint=[{s}]:51820", "endpoint"),
    (P + "endpoint=198.18.0.1:{s}", "endpoint port"),
    (P + "endpoint=[fd00::1]:{s}", "endpoint port"),
    (P + "allowed_ip={s}", "allowed_ip"),
    (P + "allowed_ip={s}/32", "allowed_ip"),
    (P + "allowed_ip=198.18.0.0/{s}", "allowed_ip prefix length"),
]
# The same for our client reading a get answer (a foreign or broken endpoint's).
BAD_GET_ANSWERS = [
    "private_key={s}!", "listen_port={s}", "fwmark={s}", "public_key={s}!",
    P + "preshared_key={s}!", P + "endpoint={s}", P + "last_handshake_time_sec={s}",
    P + "last_handshake_time_nsec={s}", P + "tx_bytes={s}", P + "rx_bytes={s}",
    P + "persistent_keepalive_interval={s}", P + "allowed_ip={s}", "errno={s}",
]


def _ids(templates: list[str]) -> list[str]:
    return [t.replace(P, "peer:").replace("{s}", "SECRET") for t in templates]


def _assert_hidden(text: str, secret: str) -> None:
    """No 8 consecutive characters of `secret` appear in `text`."""
    leaked = [secret[i:i + 8] for i in range(len(secret) - 7) if secret[i:i + 8] in text]
    assert not leaked, f"part of the secret in {text!r}"


@pytest.mark.parametrize("secret", SECRETS, ids=["base64", "hex"])
@pytest.mark.parametrize(("template", "key"), BAD_SET_LINES,
                         ids=_ids([t for t, _ in BAD_SET_LINES]))
def test_set_errors_name_the_key_never_the_value(template: str, key: str | None,
                                                  secret: str) -> None:
    lines = template.format(s=secret).split("\n")
    with pytest.raises(UapiError) as caught:
        parse_set(lines)
    message = str(caught.value)
    _assert_hidden(message, secret)
    assert message.startswith(f"line {len(lines) + 1}: ")  # set=1 is line 1
    if key is not None:
        assert f"line {len(lines) + 1}: {key}: " in message


def test_a_line_without_equals_is_named_by_its_number() -> None:
    with pytest.raises(UapiError) as caught:
        parse_set(["listen_port=1", HEX_SECRET])
    assert str(caught.value) == "line 3: expected key=value"


def test_unknown_keys_are_named_only_when_they_look_like_names() -> None:
    with pytest.raises(UapiError, match="unknown device key 'bogus'"):
        parse_set(["bogus=1"])
    with pytest.raises(UapiError, match=r"unknown peer key \(not shown"):
        parse_set([f"public_key={K1.hex()}", "Bogus1=1"])


@pytest.mark.parametrize("secret", SECRETS, ids=["base64", "hex"])
@pytest.mark.parametrize("template", BAD_GET_ANSWERS, ids=_ids(BAD_GET_ANSWERS))
def test_get_answer_errors_never_quote_the_value(template: str, secret: str) -> None:
    lines = [*template.format(s=secret).split("\n"), "errno=0"]
    with pytest.raises(UapiError) as caught:
        parse_get(lines)
    assert caught.value.code == uapi.EPROTO
    _assert_hidden(str(caught.value), secret)


@pytest.mark.parametrize("secret", SECRETS, ids=["base64", "hex"])
def test_stats_answer_errno_error_never_quotes_the_value(secret: str) -> None:
    with pytest.raises(UapiError) as caught:
        parse_stats(["a.b=1", f"errno={secret}"])
    _assert_hidden(str(caught.value), secret)


class _NoChanges:
    """A UapiHandler for requests that must all be refused before they reach it."""

    def uapi_get(self) -> uapi_server.SnapshotInSlices:
        raise AssertionError("not asked")

    def uapi_set(self, changes: ChangeSet) -> None:
        raise AssertionError(f"a bad request was accepted: {changes!r}")

    def uapi_stats(self) -> dict[str, object]:
        raise AssertionError("not asked")

    def uapi_down(self) -> None:
        raise AssertionError("not asked")

    async def uapi_reload(self) -> None:
        raise AssertionError("not asked")


@pytest.mark.parametrize("secret", SECRETS, ids=["base64", "hex"])
def test_the_server_logs_no_secret(secret: str, tmp_path: Path,
                                   caplog: pytest.LogCaptureFixture) -> None:
    bad_sets = "".join(f"set=1\n{template.format(s=secret)}\n\n"
                       for template, _ in BAD_SET_LINES)

    async def serve() -> tuple[list[list[str]], list[list[str]]]:
        server = uapi_server.UapiServer("t", _NoChanges(), directory=tmp_path)
        server.bind()
        await server.start()
        try:
            refused = await asyncio.to_thread(uapi_server.request, "t", bad_sets,
                                              directory=tmp_path)
            # A key sent as the operation line: the server answers and hangs up.
            unknown_op = await asyncio.to_thread(uapi_server.request, "t", f"{secret}\n\n",
                                                 directory=tmp_path)
        finally:
            server.close()
        return refused, unknown_op

    with caplog.at_level(logging.DEBUG, logger="vpn.control.uapi"):
        refused, unknown_op = asyncio.run(serve())
    assert refused == [["errno=-22"]] * len(BAD_SET_LINES)
    assert unknown_op == [["errno=-22"]]
    logged = [record.getMessage() for record in caplog.records]
    assert len([m for m in logged if "set=1 refused: line " in m]) == len(BAD_SET_LINES)
    assert any("unknown operation" in m for m in logged)
    _assert_hidden("\n".join(logged), secret)


class _BadFile(_NoChanges):
    async def uapi_reload(self) -> None:
        raise uapi.UapiError(uapi.EINVAL, "/etc/wireguard/t.conf:7: PublicKey: not a\nkey")


def test_a_refused_reload_says_why_on_one_line(tmp_path: Path) -> None:
    """`vpn reload` prints the file:line:key reason, so the answer carries it (our own
    operation only: `wg` never sends it and still sees errno= last)."""

    async def serve() -> list[list[str]]:
        server = uapi_server.UapiServer("t", _BadFile(), directory=tmp_path)
        server.bind()
        await server.start()
        try:
            return await asyncio.to_thread(uapi_server.request, "t", f"{uapi.OP_RELOAD}\n\n",
                                           directory=tmp_path)
        finally:
            server.close()

    assert asyncio.run(serve()) == [["error=/etc/wireguard/t.conf:7: PublicKey: not a key",
                                     "errno=-22"]]


def _snapshot() -> DeviceSnapshot:
    return DeviceSnapshot(
        private_key=K1,
        listen_port=51820,
        fwmark=0,
        rows=[
            PeerSnapshot(K2, preshared_key=None, endpoint=("fd00::2", 51821),
                         last_handshake=1700000000.25, tx_bytes=10, rx_bytes=20,
                         persistent_keepalive=25,
                         allowed_ips=(prefix_of("10.0.0.0/24"),)),
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
    # wg subtracts whole seconds: 1700000065 - 1700000000
    assert "latest handshake: 1 minute, 5 seconds ago" in text
    assert "no_peer_for_destination 1" in text
    assert "fast path: native" in text
    assert offload_view({})["segments_per_gso_send"] == 0.0  # no division by zero
    assert "not served by a vpn endpoint" in show_text(show_view("x", _snapshot(), None), 0)


class _Recording(_NoChanges):
    """A UapiHandler that keeps what it was asked to set."""

    def __init__(self) -> None:
        self.applied: list[ChangeSet] = []

    def uapi_set(self, changes: ChangeSet) -> None:
        self.applied.append(changes)


def _serve(tmp_path: Path, handler: _NoChanges, payload: str) -> list[list[str]]:
    async def run() -> list[list[str]]:
        server = uapi_server.UapiServer("t", handler, directory=tmp_path)
        server.bind()
        await server.start()
        try:
            return await asyncio.to_thread(uapi_server.request, "t", payload,
                                           directory=tmp_path, timeout=60)
        finally:
            server.close()

    return asyncio.run(run())


def test_a_set_is_bounded_by_bytes_not_lines(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """110,000 lines (over the old 100,000-line cap) are applied whole; past the byte
    limit the request is refused with EPROTO and nothing reaches the handler."""
    handler = _Recording()
    prefixes = [str(ipaddress.IPv6Network((0xFD00 << 112 | i, 128))) for i in range(110_000)]

    def request(count: int) -> str:
        body = "".join(f"allowed_ip={p}\n" for p in prefixes[:count])
        return f"set=1\npublic_key={K1.hex()}\n{body}\n"

    assert _serve(tmp_path, handler, request(len(prefixes))) == [["errno=0"]]
    (changes,) = handler.applied
    assert [str(n) for n in changes.peers[0].allowed_ips] == prefixes
    small = request(1000)
    monkeypatch.setattr(uapi_server, "MAX_REQUEST_BYTES", len(small) - 100)
    assert _serve(tmp_path, handler, small) == [[f"errno={uapi.EPROTO}"]]
    assert len(handler.applied) == 1


def test_a_bad_line_is_answered_after_the_whole_request(tmp_path: Path) -> None:
    """The error names the first bad line; the lines after it are read (not parsed), so
    the connection stays in step and the next request is answered."""
    handler = _Recording()
    lines = [f"public_key={K1.hex()}", "allowed_ip=10.0.0.0/8", "allowed_ip=nope/8",
             *["allowed_ip=10.1.0.0/16"] * 1000]
    request = "set=1\n" + "\n".join(lines) + "\n\n" + "set=1\nlisten_port=7\n\n"
    assert _serve(tmp_path, handler, request) == [["errno=-22"], ["errno=0"]]
    assert handler.applied == [ChangeSet(listen_port=7)]
    with pytest.raises(UapiError, match="line 4: allowed_ip"):
        parse_set(lines)
