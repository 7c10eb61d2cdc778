"""The config file: every wg-quick key, each bad input's file:line:key message, secrecy of keys.

Property tests check that arbitrary text only ever raises ConfigError and that to_text round trips.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import pickle
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vpn.control.config import Config, ConfigError, load, parse, to_text
from vpn.control.config_model import Endpoint, InterfaceConfig, PeerConfig
from vpn.core.keys import clamp, encode_key, public_from_private

PRIV_RAW = clamp(bytes(range(1, 33)))
PRIV = encode_key(PRIV_RAW)
OWN_PUB = encode_key(public_from_private(PRIV_RAW))
PUB_A = encode_key(public_from_private(clamp(bytes([7] * 32))))
PUB_B = encode_key(public_from_private(clamp(bytes([9] * 32))))
PSK_RAW = bytes(range(100, 132))
PSK = encode_key(PSK_RAW)

MINIMAL = f"[Interface]\nPrivateKey = {PRIV}\n"


def conf(*lines: str) -> str:
    """An [Interface] with its key on line 2, then ``lines`` from line 3 on."""
    return MINIMAL + "".join(line + "\n" for line in lines)


def peer(*lines: str, key: str = PUB_A) -> tuple[str, ...]:
    return ("[Peer]", f"PublicKey = {key}", *lines)


FULL = f"""\
# a site-to-site gateway
[Interface]
PrivateKey = {PRIV}
ListenPort = 51820
Address = 10.0.0.1/24, fd00::1/64
Address = 192.168.7.1
MTU = 1420
DNS = 10.0.0.53, fd00::53 corp.example, lan
Table = 1234
FwMark = 0xca6c
PreUp = echo pre %i
PostUp = iptables -A FORWARD -i %i -j ACCEPT; ip rule add fwmark 1 table 2
PostUp = echo second   # comments are stripped, as wg-quick does
PreDown = echo down
PostDown = echo gone
SaveConfig = true
Offload = off

[Peer]
PublicKey = {PUB_A}
PresharedKey = {PSK}
AllowedIPs = 10.0.0.2/32, 10.1.0.0/16
AllowedIPs = fd00::2/128
Endpoint = gw-a.example.net:51820
PersistentKeepalive = 25

[peer]
publickey = {PUB_B}
allowedips = 0.0.0.0/0,::/0
endpoint = [2001:db8::1]:4500
"""


def test_full_file() -> None:
    config = parse(FULL, "config/gw0.conf")
    i = config.interface
    assert config.interface_name == "gw0"
    assert i.private_key == PRIV_RAW
    assert i.public_key == public_from_private(PRIV_RAW)
    assert i.listen_port == 51820
    assert [str(a) for a in i.addresses] == ["10.0.0.1/24", "fd00::1/64", "192.168.7.1/32"]
    assert i.mtu == 1420
    assert i.dns_servers == (ipaddress.ip_address("10.0.0.53"), ipaddress.ip_address("fd00::53"))
    assert i.dns_search == ("corp.example", "lan")
    assert i.table == "1234"
    assert i.fwmark == 0xCA6C
    assert i.pre_up == ("echo pre %i",)
    assert i.post_up == (
        "iptables -A FORWARD -i %i -j ACCEPT; ip rule add fwmark 1 table 2",
        "echo second",
    )
    assert i.pre_down == ("echo down",)
    assert i.post_down == ("echo gone",)
    assert i.save_config is True
    assert i.offload is False
    a, b = config.peers
    assert encode_key(a.public_key) == PUB_A
    assert a.preshared_key == PSK_RAW
    assert [str(n) for n in a.allowed_ips] == ["10.0.0.2/32", "10.1.0.0/16", "fd00::2/128"]
    assert a.endpoint == Endpoint("gw-a.example.net", 51820)
    assert a.persistent_keepalive == 25
    assert a.line == 19
    assert b.preshared_key is None
    assert [str(n) for n in b.allowed_ips] == ["0.0.0.0/0", "::/0"]
    assert b.endpoint == Endpoint("2001:db8::1", 4500)
    assert str(b.endpoint) == "[2001:db8::1]:4500"
    assert b.persistent_keepalive is None
    assert b.line == 27


def test_defaults() -> None:
    config = parse(MINIMAL)
    assert config.interface == InterfaceConfig(private_key=PRIV_RAW)
    i = config.interface
    assert (i.listen_port, i.mtu, i.fwmark, i.table, i.save_config, i.offload) == (
        None,
        None,
        None,
        "auto",
        False,
        True,
    )
    assert config.peers == ()


def test_private_key_is_optional() -> None:
    # wg-quick's pattern: `PostUp = wg set %i private-key FILE` sets it once the link is up.
    config = parse(f"[Interface]\nListenPort = 1\nPostUp = wg set %i private-key /k\n"
                   f"\n[Peer]\nPublicKey = {PUB_A}\n")
    assert config.interface.private_key is None
    assert config.interface.public_key is None
    assert len(config.peers) == 1
    assert parse(to_text(config)) == config
    assert "PrivateKey" not in to_text(config)


def test_syntax_like_wg_quick() -> None:
    text = (
        "  # leading comment\r\n"
        "\r\n"
        "  [INTERFACE]  # trailing comment\r\n"
        f"\tprivatekey={PRIV}\t\r\n"
        "LISTENPORT   =    1\r\n"
        "[pEeR]\r\n"
        f"PublicKey={PUB_A}#no space before the comment\r\n"
    )
    config = parse(text)
    assert config.interface.listen_port == 1
    assert encode_key(config.peers[0].public_key) == PUB_A


def test_host_bits_cleared_in_allowed_ips_kept_in_addresses() -> None:
    config = parse(conf("Address = 10.0.0.5/24", *peer("AllowedIPs = 10.9.8.7/8, fd00::1:2/64")))
    assert str(config.interface.addresses[0]) == "10.0.0.5/24"
    assert [str(n) for n in config.peers[0].allowed_ips] == ["10.0.0.0/8", "fd00::/64"]


def test_bare_addresses_get_full_prefix() -> None:
    config = parse(conf("Address = 10.0.0.5 fd00::5", *peer("AllowedIPs = 10.0.0.6, fd00::6")))
    assert [str(a) for a in config.interface.addresses] == ["10.0.0.5/32", "fd00::5/128"]
    assert [str(n) for n in config.peers[0].allowed_ips] == ["10.0.0.6/32", "fd00::6/128"]


def test_empty_list_values() -> None:
    config = parse(conf("Address =", "DNS =", *peer("AllowedIPs =")))
    assert config.interface.addresses == () and config.interface.dns_servers == ()
    assert config.peers[0].allowed_ips == ()


@pytest.mark.parametrize(
    ("value", "expected"),
    [("0x10", 16), ("0XFF", 255), ("42", 42), ("0", None), ("off", None), ("OFF", None)],
)
def test_fwmark(value: str, expected: int | None) -> None:
    assert parse(conf(f"FwMark = {value}")).interface.fwmark == expected


@pytest.mark.parametrize(("value", "expected"), [("0", None), ("off", None), ("65535", 65535)])
def test_keepalive(value: str, expected: int | None) -> None:
    config = parse(conf(*peer(f"PersistentKeepalive = {value}")))
    assert config.peers[0].persistent_keepalive == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [("auto", "auto"), ("Off", "off"), ("0", "0"), ("007", "7"), ("main", "main"), ("v_1", "v_1")],
)
def test_table(value: str, expected: str) -> None:
    assert parse(conf(f"Table = {value}")).interface.table == expected


@pytest.mark.parametrize(("value", "expected"), [("true", True), ("False", False)])
def test_save_config(value: str, expected: bool) -> None:
    assert parse(conf(f"SaveConfig = {value}")).interface.save_config is expected


def test_mtu_limits_depend_on_ipv6() -> None:
    assert parse(conf("MTU = 576", "Address = 10.0.0.1/24")).interface.mtu == 576
    assert parse(conf("MTU = 1280", "Address = fd00::1/64")).interface.mtu == 1280
    with pytest.raises(ConfigError) as info:
        parse(conf("MTU = 1279", "Address = 10.0.0.1/24, fd00::1/64"), "wg0.conf")
    assert str(info.value).startswith("wg0.conf:3: MTU: 1279 is below 1280")


@pytest.mark.parametrize(
    ("text", "host", "port"),
    [
        ("1.2.3.4:51820", "1.2.3.4", 51820),
        ("[fd00::1]:1", "fd00::1", 1),
        ("[FD00:0::1]:65535", "fd00::1", 65535),
        ("[fe80::1%eth0]:51820", "fe80::1%eth0", 51820),
        ("[192.0.2.1]:7", "192.0.2.1", 7),
        ("vpn.example.com:51820", "vpn.example.com", 51820),
        ("localhost:9", "localhost", 9),
        ("host.example.:9", "host.example.", 9),
    ],
)
def test_endpoint_parse(text: str, host: str, port: int) -> None:
    endpoint = Endpoint.parse(text)
    assert endpoint == Endpoint(host, port)
    assert Endpoint.parse(str(endpoint)) == endpoint


def test_endpoint_address() -> None:
    assert Endpoint.parse("[fd00::1]:1").address == ipaddress.ip_address("fd00::1")
    assert Endpoint.parse("example.com:1").address is None


# (lines after the minimal [Interface], line number, key, fragment of the message).
BAD = [
    ("no_interface", f"[Peer]\nPublicKey = {PUB_A}\n", None, None, "no [Interface] section"),
    ("empty_file", "", None, None, "no [Interface] section"),
    ("two_interfaces", conf("[Interface]"), 3, None, "second [Interface] section"),
    ("missing_public", conf("[Peer]", "AllowedIPs = 10.0.0.0/8"), 3, "PublicKey", "required"),
    ("outside_section", "ListenPort = 1\n" + MINIMAL, 1, "ListenPort", "outside any section"),
    ("unknown_key", conf("ListenPot = 1"), 3, "ListenPot", "unknown key in [Interface]"),
    ("unknown_section", conf("[Peers]"), 3, None, "unknown section '[Peers]'"),
    ("spaced_section", conf("[ Peer ]"), 3, None, "unknown section"),
    ("no_equals", conf("ListenPort 1"), 3, None, "expected 'Key = Value'"),
    ("no_key_name", conf("= 1"), 3, None, "expected 'Key = Value'"),
    ("peer_key_in_interface", conf("Endpoint = a:1"), 3, "Endpoint", "belongs in [Peer]"),
    ("interface_key_in_peer", conf(*peer("MTU = 1420")), 5, "MTU", "belongs in [Interface]"),
    ("dup_private", conf(f"PrivateKey = {PRIV}"), 3, "PrivateKey", "twice (first on line 2)"),
    ("dup_listen", conf("ListenPort = 1", "listenport = 2"), 4, "ListenPort", "twice"),
    ("dup_mtu", conf("MTU = 1420", "MTU = 1420"), 4, "MTU", "twice"),
    ("dup_table", conf("Table = off", "Table = off"), 4, "Table", "twice"),
    ("dup_fwmark", conf("FwMark = 1", "FwMark = 1"), 4, "FwMark", "twice"),
    ("dup_save", conf("SaveConfig = true", "SaveConfig = true"), 4, "SaveConfig", "twice"),
    ("dup_offload", conf("Offload = on", "Offload = on"), 4, "Offload", "twice"),
    ("dup_public", conf(*peer(f"PublicKey = {PUB_A}")), 5, "PublicKey", "twice"),
    ("dup_psk", conf(*peer(f"PresharedKey = {PSK}", f"PresharedKey = {PSK}")), 6,
     "PresharedKey", "twice"),
    ("dup_endpoint", conf(*peer("Endpoint = a:1", "Endpoint = a:1")), 6, "Endpoint", "twice"),
    ("dup_keepalive", conf(*peer("PersistentKeepalive = 1", "PersistentKeepalive = 1")), 6,
     "PersistentKeepalive", "twice"),
    ("own_key_as_peer", conf(*peer(key=OWN_PUB)), 4, "PublicKey", "own public key"),
    ("bad_private", conf().replace(PRIV, PRIV[:-2] + "9="), 2, "PrivateKey",
     "not a base64-encoded 32-byte key"),
    ("short_public", conf(*peer(key=PUB_A[:-2] + "=")), 4, "PublicKey", "not a base64"),
    ("spaced_psk", conf(*peer(f"PresharedKey = {PSK[:10]} {PSK[10:]}")), 5, "PresharedKey",
     "not a base64"),
    ("port_range", conf("ListenPort = 65536"), 3, "ListenPort", "'65536' is not a port number"),
    ("port_sign", conf("ListenPort = +1"), 3, "ListenPort", "'+1' is not a port number"),
    ("port_unicode", conf("ListenPort = \u0661"), 3, "ListenPort", "is not a port number"),
    ("port_word", conf("ListenPort = http"), 3, "ListenPort", "'http' is not a port number"),
    ("mtu_low", conf("MTU = 575"), 3, "MTU", "'575' is not an MTU (576 to 65535)"),
    ("mtu_high", conf("MTU = 65536"), 3, "MTU", "is not an MTU"),
    ("address_prefix", conf("Address = 10.0.0.1/33"), 3, "Address",
     "'10.0.0.1/33' is not a valid address"),
    ("address_netmask", conf("Address = 10.0.0.1/255.0.0.0"), 3, "Address", "not a valid"),
    ("address_junk", conf("Address = 10.0.0.1/24, nope"), 3, "Address", "'nope' is not a valid"),
    ("address_empty_item", conf("Address = 10.0.0.1/24,,10.0.0.2/24"), 3, "Address",
     "empty entry"),
    ("allowed_prefix", conf(*peer("AllowedIPs = 10.0.0.0/33")), 5, "AllowedIPs",
     "'10.0.0.0/33' is not a valid network"),
    ("allowed_v6_prefix", conf(*peer("AllowedIPs = ::/129")), 5, "AllowedIPs", "'::/129'"),
    ("allowed_space", conf(*peer("AllowedIPs = 10.0.0.0/8 10.1.0.0/16")), 5, "AllowedIPs",
     "'10.0.0.0/8 10.1.0.0/16' is not a valid network"),
    ("allowed_trailing_comma", conf(*peer("AllowedIPs = 10.0.0.0/8,")), 5, "AllowedIPs",
     "empty entry"),
    ("dns_bad_ip", conf("DNS = 1.2.3.999"), 3, "DNS", "'1.2.3.999' is not a valid IP address"),
    ("dns_bad_v6", conf("DNS = fd00:::1"), 3, "DNS", "'fd00:::1' is not a valid IP address"),
    ("dns_bad_domain", conf("DNS = bad!domain"), 3, "DNS", "neither an IP address nor a search"),
    ("table_bad", conf("Table = 4294967296"), 3, "Table", "is not a routing table number"),
    ("table_junk", conf("Table = a/b"), 3, "Table", "'a/b' is not auto, off, a table number"),
    ("fwmark_bad", conf("FwMark = 0x100000000"), 3, "FwMark", "is not a mark"),
    ("fwmark_word", conf("FwMark = on"), 3, "FwMark", "'on' is not a mark"),
    ("save_bad", conf("SaveConfig = yes"), 3, "SaveConfig", "'yes' is neither true nor false"),
    ("offload_bad", conf("Offload = true"), 3, "Offload", "'true' is neither on nor off"),
    ("hook_empty", conf("PostUp ="), 3, "PostUp", "empty command"),
    ("hook_only_comment", conf("PreDown = # nothing"), 3, "PreDown", "empty command"),
    ("keepalive_range", conf(*peer("PersistentKeepalive = 65536")), 5, "PersistentKeepalive",
     "is not an interval"),
    ("keepalive_word", conf(*peer("PersistentKeepalive = on")), 5, "PersistentKeepalive",
     "'on' is not an interval"),
    ("endpoint_no_port", conf(*peer("Endpoint = 1.2.3.4")), 5, "Endpoint", "is not host:port"),
    ("endpoint_port_0", conf(*peer("Endpoint = 1.2.3.4:0")), 5, "Endpoint",
     "'0' is not a port number (1 to 65535)"),
    ("endpoint_port_big", conf(*peer("Endpoint = a:65536")), 5, "Endpoint", "not a port number"),
    ("endpoint_v6_no_brackets", conf(*peer("Endpoint = fd00::1:51820")), 5, "Endpoint",
     "needs brackets"),
    ("endpoint_unclosed", conf(*peer("Endpoint = [fd00::1:51820")), 5, "Endpoint",
     "is not [address]:port"),
    ("endpoint_bracket_name", conf(*peer("Endpoint = [host]:1")), 5, "Endpoint",
     "'host' is not an IP address"),
    ("endpoint_bad_v4", conf(*peer("Endpoint = 1.2.3.256:1")), 5, "Endpoint",
     "'1.2.3.256' is not a valid IPv4 address"),
    ("endpoint_bad_name", conf(*peer("Endpoint = bad_host!:1")), 5, "Endpoint",
     "'bad_host!' is not a valid host name"),
    ("endpoint_no_host", conf(*peer("Endpoint = :51820")), 5, "Endpoint", "is not host:port"),
]


@pytest.mark.parametrize(
    ("text", "line", "key", "fragment"),
    [pytest.param(*case[1:], id=case[0]) for case in BAD],
)
def test_bad_input(text: str, line: int | None, key: str | None, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse(text, "config/wg0.conf")
    error = info.value
    assert (error.path, error.line, error.key) == ("config/wg0.conf", line, key)
    prefix = "config/wg0.conf" + (f":{line}" if line else "") + (f": {key}" if key else "") + ": "
    assert str(error).startswith(prefix)
    assert fragment in error.reason
    assert str(error) == prefix + error.reason
    assert PRIV not in str(error) and PSK not in str(error)


def test_message_format_from_the_brief() -> None:
    with pytest.raises(ConfigError) as info:
        parse(conf("", "", "", "", "", "", "", "", "[Peer]", f"PublicKey = {PUB_A}",
                   "AllowedIPs = 10.0.0.0/33"), "config/wg0.conf")
    assert str(info.value) == "config/wg0.conf:13: AllowedIPs: '10.0.0.0/33' is not a valid network"


def test_error_pickles() -> None:
    error = ConfigError("a.conf", 3, "MTU", "too small")
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.path, copy.line, copy.key, copy.reason, str(copy)) == (
        "a.conf", 3, "MTU", "too small", "a.conf:3: MTU: too small"
    )


# --- secrecy ---

SECRET_FORMS = [PRIV, PSK, PRIV_RAW.hex(), PSK_RAW.hex(), repr(PRIV_RAW)[2:-1], repr(PSK_RAW)[2:-1]]


def assert_no_secret(text: str) -> None:
    for secret in SECRET_FORMS:
        assert secret not in text
    # Nor a recognisable part of one (a key with a typo is still mostly the key).
    assert PRIV[5:25] not in text and PSK[5:25] not in text


def test_repr_hides_private_and_preshared_keys() -> None:
    config = parse(conf(*peer(f"PresharedKey = {PSK}")))
    for text in (repr(config), str(config), repr(config.interface), repr(config.peers[0])):
        assert_no_secret(text)
    assert "<hidden>" in repr(config.interface)
    assert PUB_A in repr(config.peers[0])  # public keys may show, in base64


@pytest.mark.parametrize(
    "text",
    [
        conf().replace(PRIV, PRIV[:-2] + "9="),  # a typo in the key
        conf().replace(PRIV, PRIV[:30] + " " + PRIV[30:]),
        conf(f"PrivateKey = {PRIV}"),  # given twice
        conf(*peer(f"PrivateKey = {PRIV}")),  # in the wrong section
        f"PrivateKey = {PRIV}\n[Interface]\n",  # outside any section
        conf(PRIV),  # pasted on a line of its own
        conf(PRIV[:-1]),
        conf(f"PrivateKey: {PRIV}"),  # ':' for '='
        conf(f"Private Key = {PRIV}"),
        conf(f"{PRIV} = {PRIV}"),
        conf(f"[{PRIV}]"),
        conf(*peer(f"PresharedKey = {PSK}x")),
        conf(*peer(f"PresharedKey = {PSK}", f"PresharedKey = {PSK}")),
        conf(f"PresharedKey = {PSK}"),
        conf(*peer(f"PublicKey = {PRIV}")),  # a private key where the public key goes
    ],
)
def test_errors_never_show_keys(text: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse(text, "wg0.conf")
    for shown in (str(info.value), repr(info.value), info.value.reason, *map(str, info.value.args)):
        assert_no_secret(shown)


# --- interface names, load and the permission warning ---


@pytest.mark.parametrize("path", ["wg0.conf", "/etc/wireguard/a_b=c+d.e-f.conf", "x/" + "n" * 15])
def test_interface_name_from_path(path: str) -> None:
    assert parse(MINIMAL, path).interface_name == Path(path).stem


@pytest.mark.parametrize("path", ["sixteen-chars-xx.conf", "<string>", "bad name.conf", ".conf"])
def test_bad_interface_name(path: str) -> None:
    config = parse(MINIMAL, path)  # the text is fine; the name is checked when asked for
    with pytest.raises(ConfigError) as info:
        _ = config.interface_name
    assert info.value.path == path and "is not a valid interface name" in str(info.value)


def test_name_override() -> None:
    config = parse(MINIMAL, "a-much-too-long-stem.conf", name="wg1")
    assert config.interface_name == "wg1"
    with pytest.raises(ConfigError, match="is not a valid interface name"):
        parse(MINIMAL, "wg0.conf", name="no/slash")


def write(path: Path, text: str, mode: int) -> Path:
    path.write_text(text)
    path.chmod(mode)
    return path


def test_load(tmp_path: Path) -> None:
    path = write(tmp_path / "wg0.conf", FULL, 0o600)
    config, warnings = load(path)
    assert config == parse(FULL, str(path))
    assert config.interface_name == "wg0"
    assert warnings == []
    assert load(str(path), name="other")[0].interface_name == "other"


def test_world_accessible_warning(tmp_path: Path) -> None:
    # pytest's tmp_path is 0700, which hides the file from others; wg-quick takes that into
    # account (file mode & directory mode & 0007), so open the directory up first.
    tmp_path.chmod(0o755)
    path = write(tmp_path / "wg0.conf", MINIMAL, 0o644)
    assert load(path)[1] == [f"Warning: `{os.path.realpath(path)}' is world accessible"]
    path.chmod(0o640)
    assert load(path)[1] == []  # group access is not warned about, as in wg-quick
    path.chmod(0o600)
    assert load(path)[1] == []


def test_world_readable_file_in_private_directory(tmp_path: Path) -> None:
    tmp_path.chmod(0o700)
    assert load(write(tmp_path / "wg0.conf", MINIMAL, 0o644))[1] == []


def test_warning_names_the_real_path(tmp_path: Path) -> None:
    tmp_path.chmod(0o755)
    real = write(tmp_path / "real.conf", MINIMAL, 0o604)
    link = tmp_path / "wg0.conf"
    link.symlink_to(real)
    config, warnings = load(link)
    assert config.interface_name == "wg0"  # the name comes from the path given, as in wg-quick
    assert warnings == [f"Warning: `{os.path.realpath(real)}' is world accessible"]


@pytest.mark.parametrize(
    ("name", "content", "line", "fragment"),
    [
        ("missing.conf", None, None, "cannot read: No such file or directory"),
        ("latin1.conf", MINIMAL.encode() + b"# caf\xe9\n", 3, "not UTF-8 text"),
        ("much-too-long-name.conf", MINIMAL.encode(), None, "not a valid interface name"),
        ("wg0.conf", b"[Interface]\nListenPot = 1\n", 2, "unknown key in [Interface]"),
    ],
)
def test_load_errors(
    tmp_path: Path, name: str, content: bytes | None, line: int | None, fragment: str
) -> None:
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
        path.chmod(0o600)
    with pytest.raises(ConfigError) as info:
        load(path)
    assert info.value.path == str(path) and info.value.line == line
    assert fragment in str(info.value)


def test_load_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load(tmp_path)


# --- properties ---

KEY_LINE_NAMES = [
    "PrivateKey", "ListenPort", "FwMark", "Address", "MTU", "DNS", "Table", "PreUp", "PostUp",
    "PreDown", "PostDown", "SaveConfig", "Offload", "PublicKey", "PresharedKey", "AllowedIPs",
    "Endpoint", "PersistentKeepalive", "privatekey", "MTu", "Bogus",
]
VALUE_SAMPLES = [
    PRIV, PUB_A, PUB_B, PSK, OWN_PUB, "", "0", "1", "65535", "65536", "-1", "0x10", "0xffffffffff",
    "off", "on", "auto", "true", "false", "10.0.0.1/24", "fd00::1/64", "10.0.0.0/33", "1.2.3.4",
    "[fd00::1]:51820", "a.b:1", "fd00::1:1", "1.1.1.1, example.com", "::/0,0.0.0.0/0", "x,,y",
    "echo %i", "[x]:1", "1" * 5000, "\u0661", "\u212a",
]
line_strategy = st.one_of(
    st.sampled_from(["[Interface]", "[Peer]", "[interface]", "[Other]", "", "# c", "="]),
    st.builds(
        lambda k, v, sep: f"{k}{sep}{v}",
        st.sampled_from(KEY_LINE_NAMES),
        st.one_of(st.sampled_from(VALUE_SAMPLES), st.text(max_size=20)),
        st.sampled_from(["=", " = ", "\t=  "]),
    ),
    st.text(max_size=30),
)


@settings(max_examples=300)
@given(st.text())
def test_arbitrary_text_raises_only_config_error(text: str) -> None:
    with contextlib.suppress(ConfigError):
        parse(text)


@settings(max_examples=500)
@given(st.lists(line_strategy, max_size=14))
def test_config_like_text_raises_only_config_error(lines: list[str]) -> None:
    text = "\n".join(lines)  # a generated line may hold a newline of its own
    try:
        config = parse(text, "wg0.conf")
    except ConfigError as error:
        assert error.path == "wg0.conf"
        assert error.line is None or 1 <= error.line <= text.count("\n") + 1
        assert_no_secret(str(error))
        return
    assert parse(to_text(config), "wg0.conf") == config


keys32 = st.binary(min_size=32, max_size=32)
ipv4 = st.ip_addresses(v=4)
ipv6 = st.ip_addresses(v=6)
v4_interfaces = st.builds(
    lambda a, p: ipaddress.IPv4Interface((a, p)), ipv4, st.integers(0, 32)
)
v6_interfaces = st.builds(
    lambda a, p: ipaddress.IPv6Interface((a, p)), ipv6, st.integers(0, 128)
)
networks = st.one_of(
    st.builds(lambda a, p: ipaddress.IPv4Network((a, p), strict=False), ipv4, st.integers(0, 32)),
    st.builds(lambda a, p: ipaddress.IPv6Network((a, p), strict=False), ipv6, st.integers(0, 128)),
)
label = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?", fullmatch=True).filter(
    lambda s: not s.isdigit()
)
host_names = st.lists(label, min_size=1, max_size=3).map(".".join)
endpoints = st.builds(
    Endpoint,
    st.one_of(ipv4.map(str), ipv6.map(str), host_names),
    st.integers(1, 65535),
)
commands = st.text(
    st.characters(blacklist_categories=("Cc", "Cs", "Zl", "Zp"), blacklist_characters="#"),
    min_size=1,
).map(str.strip).filter(bool)
table_numbers = st.integers(0, 2**32 - 1).map(str)
optional_off = st.one_of(st.none(), st.integers(1, 65535))


@st.composite
def configs(draw: st.DrawFn) -> Config:
    private = draw(keys32)
    addresses = tuple(draw(st.lists(st.one_of(v4_interfaces, v6_interfaces), max_size=3)))
    low = 1280 if any(a.version == 6 for a in addresses) else 576
    interface = InterfaceConfig(
        private_key=private,
        listen_port=draw(st.one_of(st.none(), st.integers(0, 65535))),
        addresses=addresses,
        mtu=draw(st.one_of(st.none(), st.integers(low, 65535))),
        dns_servers=tuple(draw(st.lists(st.one_of(ipv4, ipv6), max_size=2))),
        dns_search=tuple(draw(st.lists(host_names, max_size=2))),
        table=draw(st.one_of(st.sampled_from(["auto", "off", "main"]), table_numbers)),
        fwmark=draw(st.one_of(st.none(), st.integers(1, 2**32 - 1))),
        pre_up=tuple(draw(st.lists(commands, max_size=2))),
        post_up=tuple(draw(st.lists(commands, max_size=2))),
        pre_down=tuple(draw(st.lists(commands, max_size=2))),
        post_down=tuple(draw(st.lists(commands, max_size=2))),
        save_config=draw(st.booleans()),
        offload=draw(st.booleans()),
    )
    own_public = public_from_private(private)
    public_keys = draw(
        st.lists(keys32.filter(lambda k: k != own_public), max_size=3, unique=True)
    )
    peers = tuple(
        PeerConfig(
            public_key=key,
            preshared_key=draw(st.one_of(st.none(), keys32)),
            allowed_ips=tuple(draw(st.lists(networks, max_size=3))),
            endpoint=draw(st.one_of(st.none(), endpoints)),
            persistent_keepalive=draw(optional_off),
        )
        for key in public_keys
    )
    name = draw(st.one_of(st.none(), st.from_regex(r"[a-zA-Z0-9_=+.-]{1,15}", fullmatch=True)))
    return Config(draw(st.sampled_from(["wg0.conf", "config/x.conf"])), interface, peers, name)


@settings(max_examples=200)
@given(configs())
def test_to_text_round_trip(config: Config) -> None:
    text = to_text(config)
    assert parse(text, config.path, config.name) == config
    assert to_text(parse(text, config.path, config.name)) == text


def test_to_text_refuses_unwritable_commands() -> None:
    config = Config("wg0.conf", InterfaceConfig(PRIV_RAW, post_up=("echo a # b",)))
    with pytest.raises(ValueError, match="PostUp"):
        to_text(config)


def test_to_text_of_full_file_is_stable() -> None:
    config = parse(FULL, "gw0.conf")
    assert parse(to_text(config), "gw0.conf") == config
    assert "Offload = off" in to_text(config)
    assert "FwMark = 0xca6c" in to_text(config)


PUB_B = encode_key(public_from_private(clamp(bytes([9] * 32))))


def test_a_duplicate_peer_is_merged_as_wg_setconf_merges_it() -> None:
    # What `wg setconf` did with these sections on a wireguard-go device (wg showconf
    # afterwards): the later section's keys override, keys it lacks stay, and its
    # AllowedIPs replace the earlier ones; the peer keeps its place.
    psk = encode_key(bytes([3] * 32))
    text = conf(*peer("AllowedIPs = 10.5.0.0/24", "Endpoint = 192.0.2.9:1000",
                      "PersistentKeepalive = 25"),
                *peer("AllowedIPs = 10.7.0.0/24", key=PUB_B),
                *peer("AllowedIPs = 10.6.0.0/24", f"PresharedKey = {psk}"))
    warnings: list[str] = []
    config = parse(text, "/etc/wireguard/wg0.conf", warnings=warnings)
    assert [encode_key(p.public_key) for p in config.peers] == [PUB_A, PUB_B]
    merged = config.peers[0]
    assert merged.allowed_ips == (ipaddress.ip_network("10.6.0.0/24"),)
    assert merged.endpoint == Endpoint("192.0.2.9", 1000)
    assert merged.persistent_keepalive == 25 and merged.preshared_key == bytes([3] * 32)
    assert merged.line == 3
    assert warnings == ["/etc/wireguard/wg0.conf:12: Warning: the same PublicKey as the "
                        "[Peer] on line 3: merged as `wg setconf` merges them (this section's "
                        "keys win, its AllowedIPs replace the earlier ones)"]


def test_a_later_duplicate_without_allowed_ips_clears_them_and_overrides_keepalive() -> None:
    text = conf(*peer("AllowedIPs = 10.5.0.0/24", "Endpoint = 192.0.2.9:1000",
                      "PersistentKeepalive = 25"),
                *peer("Endpoint = 192.0.2.10:1000", "PersistentKeepalive = 0"))
    (merged,) = parse(text).peers
    assert merged.allowed_ips == () and merged.persistent_keepalive is None
    assert merged.endpoint == Endpoint("192.0.2.10", 1000)
