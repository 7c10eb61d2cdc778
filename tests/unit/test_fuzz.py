"""Property-based fuzzing of every parser that reads bytes or text from outside the process.

Each parser raises nothing but its documented error type and accepts nothing it must reject.
`make test` runs a few hundred examples each; `make fuzz` (HYPOTHESIS_PROFILE=fuzz) 20,000.
"""

from __future__ import annotations

import itertools
import os

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lab.packets import tcp_packet, tcp_super_packet, udp_packet, udp_super_packet
from tests.unit.core.wireguard.helpers import A_ADDR, B_ADDR, ipv4_packet, make_pair, receive_one
from vpn.control import config, uapi
from vpn.core.offload import coalesce, split
from vpn.core.packet.errors import OffloadError
from vpn.core.packet.headers import parse_ip, tcp_header_len
from vpn.core.packet.icmp import unreachable
from vpn.core.packet.virtio import (
    GSO_NONE,
    GSO_TCPV4,
    GSO_TCPV6,
    GSO_UDP_L4,
    NO_OFFLOAD,
    VirtioNetHeader,
    validate,
)
from vpn.core.wireguard import messages
from vpn.core.wireguard.messages import MessageError

# At least 300 examples each in `make test` (about 5 s in all); the fuzz profile's 20,000
# in `make fuzz`.
FUZZ = settings(max_examples=max(300, settings.default.max_examples), deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

# -- packets: the virtio-net header, IP/TCP/UDP, GSO split, GRO coalesce ----------------------

headers = st.builds(
    VirtioNetHeader,
    flags=st.sampled_from([0, 1, 2, 3, 4, 0x80]),
    gso_type=st.sampled_from([GSO_NONE, GSO_TCPV4, GSO_TCPV6, GSO_UDP_L4, 3, 0x81, 0x84, 7]),
    hdr_len=st.integers(0, 200),
    gso_size=st.one_of(st.integers(0, 2000), st.just(0xFFFF)),
    csum_start=st.integers(0, 80),
    csum_offset=st.sampled_from([0, 6, 16, 17, 1000]),
)


@st.composite
def mutated(draw: st.DrawFn, packet: bytes) -> bytes:
    """`packet` with a few bytes changed, and perhaps cut short or lengthened."""
    data = bytearray(packet)
    for _ in range(draw(st.integers(0, 4))):
        if data:
            data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    cut = draw(st.one_of(st.none(), st.integers(0, len(data))))
    if cut is not None:
        del data[cut:]
    return bytes(data) + draw(st.binary(max_size=8))


@st.composite
def ip_packets(draw: st.DrawFn) -> bytes:
    version = draw(st.sampled_from([4, 6]))
    payload = draw(st.binary(max_size=300))
    kind = draw(st.sampled_from(["tcp", "udp", "raw"]))
    if kind == "raw":
        return draw(st.binary(max_size=400))
    make = tcp_packet if kind == "tcp" else udp_packet
    return draw(mutated(make(payload, version=version)))


@st.composite
def super_packets(draw: st.DrawFn) -> tuple[VirtioNetHeader, bytes]:
    """Real TSO/USO super-packets, then their header or bytes (or both) tampered with."""
    version = draw(st.sampled_from([4, 6]))
    mss = draw(st.integers(1, 1500))
    payload = draw(st.binary(min_size=1, max_size=4000))
    make = draw(st.sampled_from([tcp_super_packet, udp_super_packet]))
    hdr, pkt = make(payload, mss, version=version)
    if draw(st.booleans()):
        hdr = draw(headers)
    if draw(st.booleans()):
        pkt = draw(mutated(pkt))
    return hdr, pkt


@FUZZ
@given(st.binary(max_size=16))
def test_virtio_unpack(data: bytes) -> None:
    try:
        hdr = VirtioNetHeader.unpack(data)
    except OffloadError:
        assert len(data) < 10
        return
    assert hdr.pack() == data[:10]


@FUZZ
@given(st.one_of(st.tuples(headers, ip_packets()), super_packets()))
def test_split_raises_only_offload_error(case: tuple[VirtioNetHeader, bytes]) -> None:
    hdr, packet = case
    try:
        segments = split(hdr, packet)
    except OffloadError:
        return
    validate(hdr, len(packet))  # split never accepts a header validate refuses
    if hdr.gso_type & 0x7F != GSO_NONE:
        # A super-packet comes out as well-formed IP packets of at most gso_size payload.
        for segment in segments:
            info = parse_ip(segment)
            assert info.total_len == len(segment)
            assert len(segment) <= info.header_len + 60 + hdr.gso_size


@FUZZ
@given(ip_packets())
def test_ip_and_tcp_headers(packet: bytes) -> None:
    try:
        info = parse_ip(packet)
        if info.proto == 6:
            tcp_header_len(packet, info)
    except OffloadError:
        return
    assert info.header_len <= info.total_len <= len(packet)


@FUZZ
@given(st.lists(ip_packets(), max_size=12), st.booleans())
def test_coalesce_never_raises_and_loses_nothing(packets: list[bytes], udp: bool) -> None:
    frames = coalesce(packets, udp=udp)
    assert sum(frame.segments for frame in frames) == len(packets)
    for frame in frames:
        if frame.header == NO_OFFLOAD:
            assert frame.segments == 1 and bytes(frame.parts[0]) in packets
        else:
            # A coalesced frame is one the kernel accepts and one split gives back.
            body = b"".join(frame.parts)
            hdr = VirtioNetHeader.unpack(frame.header)
            validate(hdr, len(body))
            assert len(split(hdr, body)) == frame.segments


@FUZZ
@given(ip_packets())
def test_icmp_unreachable(packet: bytes) -> None:
    reply = unreachable(packet)
    if reply is None:
        return
    info = parse_ip(reply)
    assert info.total_len == len(reply) <= (576 if info.version == 4 else 1280)
    # Never an answer to an ICMP error: the quoted packet is not one.
    quoted = reply[info.header_len + 8 :]
    assert packet.startswith(quoted)


# -- WireGuard messages and the device ---------------------------------------------------------

valid_messages = st.one_of(
    st.builds(messages.Initiation, st.integers(0, 2**32 - 1), st.binary(min_size=32, max_size=32),
              st.binary(min_size=48, max_size=48), st.binary(min_size=28, max_size=28)),
    st.builds(messages.Response, st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1),
              st.binary(min_size=32, max_size=32), st.binary(min_size=16, max_size=16)),
    st.builds(messages.CookieReply, st.integers(0, 2**32 - 1),
              st.binary(min_size=24, max_size=24), st.binary(min_size=32, max_size=32)),
)


@st.composite
def datagrams(draw: st.DrawFn) -> bytes:
    """Random bytes, or a message of each type with bytes and length tampered with."""
    if draw(st.booleans()):
        kind = draw(st.sampled_from([1, 2, 3, 4]))
        size = draw(st.sampled_from([148, 92, 64, 32, 33, 200, draw(st.integers(0, 300))]))
        return bytes([kind, 0, 0, 0]) + draw(st.binary(min_size=size, max_size=size))[4:]
    if draw(st.booleans()):
        return draw(mutated(draw(valid_messages).pack()))
    return draw(st.binary(max_size=300))


@FUZZ
@given(datagrams())
def test_message_parsers(data: bytes) -> None:
    try:
        parsed = messages.parse(data)
    except MessageError as error:
        assert error.reason
        return
    if isinstance(parsed, messages.TransportHeader):
        assert len(data) >= 32 and data[:4] == b"\x04\x00\x00\x00"
    else:
        assert parsed.pack() == data  # accepted only if exactly a well-formed message


@FUZZ
@given(valid_messages)
def test_message_round_trip(message: messages.Message) -> None:
    assert messages.parse(message.pack()) == message  # type: ignore[union-attr]


@FUZZ
@given(st.lists(st.tuples(datagrams(), st.booleans()), max_size=20))
def test_device_survives_anything(batch: list[tuple[bytes, bool]]) -> None:
    """handle_handshake_message and the receive walk (receive_one) never raise; nothing is
    accepted."""
    pair = make_pair()
    for now, (data, under_load) in enumerate(batch):
        result = pair.b.handle_handshake_message(data, A_ADDR, float(now), under_load=under_load)
        assert result.event in (None, "cookie_sent"), result
        assert (result.drop_reason is None) == (result.event == "cookie_sent")
        transport = receive_one(pair.b, data, A_ADDR, float(now))
        assert transport.drop_reason and not transport.packet
    assert pair.pb.keypairs.current is None and pair.pb.endpoint == A_ADDR


_clock = itertools.count(0, 10)  # seconds; each example starts a fresh handshake era


@FUZZ
@given(st.data())
def test_tampered_initiation_never_accepted(data: st.DataObject) -> None:
    """Any change to an initiation before mac2 (mac1 covers it all) is refused, under load
    or not; changes to mac2 alone matter only under load."""
    pair = make_pair()
    now = float(next(_clock))
    pair.wall.t = 1_700_000_000.0 + now
    initiation = pair.pa.initiate_handshake(now)[0]
    position = data.draw(st.integers(0, len(initiation) - 1))
    # An XOR mask, not a value: the initiation is random each run, the draws must not be.
    value = initiation[position] ^ data.draw(st.integers(1, 255))
    tampered = initiation[:position] + bytes([value]) + initiation[position + 1 :]
    under_load = data.draw(st.booleans())
    result = pair.b.handle_handshake_message(tampered, A_ADDR, now, under_load=under_load)
    if position < messages.INITIATION_MAC2_OFFSET or under_load:
        assert result.event != "initiation_consumed", (position, result)
        assert pair.pb.keypairs.next is None
    if position < messages.INITIATION_MAC1_OFFSET + 16:
        # A changed type byte makes it another (malformed) message: refused all the same.
        assert result.drop_reason in ("bad_mac1", "reserved_nonzero", "unknown_type",
                                      "bad_length", "not_handshake"), result
    if result.event is None:
        # The genuine one still goes through afterwards (nothing was half-consumed).
        good = pair.b.handle_handshake_message(initiation, A_ADDR, now)
        assert good.event == "initiation_consumed", good


@FUZZ
@given(st.data())
def test_tampered_transport_never_accepted(data: st.DataObject) -> None:
    pair = make_pair()
    pair.handshake(1.0)
    message = pair.pa.send(ipv4_packet("198.18.0.1", "198.18.0.2"), 2.0)[0]
    tampered = data.draw(mutated(message))
    if tampered == message:  # (not assume(): the message differs run to run, draws must not)
        tampered += b"\x00"
    result = receive_one(pair.b, tampered, A_ADDR, 2.0)
    if tampered[:len(message)] == message and len(tampered) > len(message):
        assert result.drop_reason, result  # appended bytes break the tag too
    assert result.drop_reason and not result.packet, result
    # The genuine message is still accepted once, and a replay of it never.
    assert receive_one(pair.b, message, A_ADDR, 2.0).packet
    assert receive_one(pair.b, message, B_ADDR, 2.0).drop_reason == "replay"
    assert pair.pb.endpoint == A_ADDR  # a replay from elsewhere does not move the endpoint


# -- text: the config file and the management protocol ----------------------------------------

KEY = "yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk="
CONFIG_KEYS = ["PrivateKey", "ListenPort", "Address", "MTU", "FwMark", "Table", "DNS",
               "PreUp", "PostUp", "PreDown", "PostDown", "SaveConfig", "Offload", "PublicKey",
               "PresharedKey", "AllowedIPs", "Endpoint", "PersistentKeepalive", "Unknown"]
CONFIG_VALUES = [KEY, "51820", "198.18.0.1/24", "fd00::1/64", "1420", "0", "off", "auto",
                 "198.18.0.0/15, fd00::/8", "198.18.1.2:51820", "[fd00::2]:1", "25", "true",
                 "host.invalid:51820", "1.2.3.4/33", "99999", "-1", "", "a" * 300, "#", "x=y"]


@st.composite
def config_texts(draw: st.DrawFn) -> str:
    if draw(st.integers(0, 4)) == 0:
        return draw(st.text(max_size=400))
    lines = [draw(st.sampled_from(["[Interface]", "[Peer]", "[peer]", "[Other]", ""]))]
    for _ in range(draw(st.integers(0, 14))):
        choice = draw(st.integers(0, 9))
        if choice == 0:
            lines.append(draw(st.sampled_from(["[Interface]", "[Peer]", "[", "# c", " "])))
        elif choice == 1:
            lines.append(draw(st.text(max_size=40)))
        else:
            key = draw(st.sampled_from(CONFIG_KEYS))
            value = draw(st.one_of(st.sampled_from(CONFIG_VALUES), st.text(max_size=30)))
            lines.append(f"{key} = {value}")
    return "\n".join(lines)


@FUZZ
@given(config_texts())
def test_config_parse_raises_only_config_error(text: str) -> None:
    try:
        parsed = config.parse(text, "fuzz.conf")
    except config.ConfigError:
        return
    interface = parsed.interface
    assert interface.private_key is None or len(interface.private_key) == 32
    assert interface.listen_port is None or 0 <= interface.listen_port <= 65535
    for peer in parsed.peers:
        assert len(peer.public_key) == 32


UAPI_KEYS = ["private_key", "listen_port", "fwmark", "replace_peers", "public_key", "remove",
             "update_only", "preshared_key", "endpoint", "persistent_keepalive_interval",
             "replace_allowed_ips", "allowed_ip", "protocol_version", "bogus"]
UAPI_VALUES = ["true", "false", "1", "0", "65535", "65536", "4294967296", "+5", "\uff11",
               "e" * 64, "E" * 64, "0" * 63, "198.18.1.2:51820", "[fd00::1]:51820",
               "fd00::1:51820", "198.18.0.0/15", "fd00::/8", "1.2.3.4/33", "::ffff:1.2.3.4:1"]


@st.composite
def uapi_lines(draw: st.DrawFn) -> list[str]:
    out = []
    for _ in range(draw(st.integers(0, 12))):
        if draw(st.integers(0, 5)) == 0:
            out.append(draw(st.text(max_size=60)))
        else:
            key = draw(st.sampled_from(UAPI_KEYS))
            value = draw(st.one_of(st.sampled_from(UAPI_VALUES), st.text(max_size=70)))
            out.append(f"{key}={value}")
    return out


@FUZZ
@given(uapi_lines())
def test_uapi_set_raises_only_uapi_error(lines: list[str]) -> None:
    try:
        changes = uapi.parse_set(lines)
    except uapi.UapiError as error:
        assert error.code < 0
        return
    assert changes.listen_port is None or 0 <= changes.listen_port <= 0xFFFF
    assert changes.fwmark is None or 0 <= changes.fwmark <= 0xFFFFFFFF
    for peer in changes.peers:
        assert len(peer.public_key) == 32
        assert peer.preshared_key is None or len(peer.preshared_key) == 32
        if peer.endpoint is not None:
            assert 0 <= peer.endpoint[1] <= 0xFFFF
    for line in lines:
        assert "=" in line  # a line without '=' is never accepted


def test_fuzz_profile_is_selectable() -> None:
    """`make fuzz` sets HYPOTHESIS_PROFILE=fuzz; make sure it took effect there."""
    if os.environ.get("HYPOTHESIS_PROFILE") == "fuzz":
        assert settings.default.max_examples >= 10_000

