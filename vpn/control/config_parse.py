"""The wg-quick config file's syntax: text to a validated `Config` (pure).

The format is wg-quick's: an ``[Interface]`` section (PrivateKey, ListenPort, FwMark, Address,
MTU, DNS, Table, PreUp, PostUp, PreDown, PostDown, SaveConfig) and any number of ``[Peer]``
sections (PublicKey, PresharedKey, AllowedIPs, Endpoint, PersistentKeepalive). Section and key
names are case-insensitive, ``#`` starts a comment that runs to the end of the line, and the
whitespace around ``=`` and at both ends of a line is ignored. Address, DNS, AllowedIPs and the
four hooks may repeat and accumulate in order; every other key may appear once per section.

This project adds one key of its own to ``[Interface]``:

``Offload = on|off`` (default ``on``)
    Whether the endpoint asks the TUN device for GSO/GRO offloads (super-packets) or moves one
    packet at a time. wg-quick and ``wg setconf`` do not know it and stop with "Line
    unrecognized"; that is expected, the same file is simply not meant for both without it.

A bad file raises one `ConfigError` naming the file, the line and the key, never key material.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from vpn.control.config_model import (
    DIGITS,
    HOST_NAME,
    Config,
    ConfigError,
    Endpoint,
    InterfaceConfig,
    IPInterface,
    IPNetwork,
    PeerConfig,
    quote,
)
from vpn.core.keys import KeyFormatError, decode_key
from vpn.core.types import IPAddress

MIN_MTU_IPV4 = 576  # RFC 791: every IPv4 host must accept datagrams of this size
MIN_MTU_IPV6 = 1280  # RFC 8200; Linux drops IPv6 from a device whose MTU goes below this
MAX_MTU = 65535
MAX_U32 = 0xFFFFFFFF

_HEX_NUMBER = re.compile(r"0[xX][0-9a-fA-F]+")
# wg-quick's test for "this DNS entry is a server": digits and dots, or anything with a colon.
_LOOKS_LIKE_IP = re.compile(r"[0-9.]+|.*:.*")
_TABLE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,63}")
# Unknown key names are echoed only when they look like a misspelt key, never like a pasted key.
_ECHOABLE_KEY = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,23}")
_BAD_KEY = "not a base64-encoded 32-byte key"


class _Invalid(ValueError):
    """A value parser's complaint; the parse loop adds the path, line and key."""


# --- value parsers: each takes the stripped value and returns it parsed or raises _Invalid ---


def _number(text: str, low: int, high: int, what: str) -> int:
    # A regex rather than int(): int() also takes '+5', '1_000' and non-ASCII digits.
    if not DIGITS.fullmatch(text) or len(text) > 10 or not low <= int(text) <= high:
        raise _Invalid(f"{quote(text)} is not {what} ({low} to {high})")
    return int(text)


def _key(text: str) -> bytes:
    try:
        return decode_key(text)
    except KeyFormatError:
        raise _Invalid(_BAD_KEY) from None


def _port(text: str) -> int:
    return _number(text, 0, 65535, "a port number")


def _mtu(text: str) -> int:
    return _number(text, MIN_MTU_IPV4, MAX_MTU, "an MTU")


def _keepalive(text: str) -> int | None:
    if text.lower() == "off":
        return None
    return _number(text, 0, 65535, "an interval in seconds, or off") or None


def _fwmark(text: str) -> int | None:
    if text.lower() == "off":
        return None
    if _HEX_NUMBER.fullmatch(text) and len(text) <= 10:
        return int(text, 16) or None
    return _number(text, 0, MAX_U32, "a mark (decimal or 0x hex), or off") or None


def _table(text: str) -> str:
    if text.lower() in ("auto", "off"):
        return text.lower()
    if DIGITS.fullmatch(text):
        return str(_number(text, 0, MAX_U32, "a routing table number"))
    if _TABLE_NAME.fullmatch(text):
        return text
    raise _Invalid(f"{quote(text)} is not auto, off, a table number or a table name")


def _bool(true: str, false: str) -> Callable[[str], bool]:
    def parse(text: str) -> bool:
        if text.lower() not in (true, false):
            raise _Invalid(f"{quote(text)} is neither {true} nor {false}")
        return text.lower() == true

    return parse


def _command(text: str) -> str:
    if not text:
        raise _Invalid("empty command")
    return text


def _items(text: str, spaces_separate: bool) -> list[str]:
    """Split a list value; an empty value is an empty list, an empty item is a mistake."""
    if not text:
        return []
    items = [item.strip() for item in text.split(",")]
    if "" in items:
        raise _Invalid(f"{quote(text)} has an empty entry")
    if spaces_separate:  # wg-quick splits Address and DNS on whitespace as well
        return [word for item in items for word in item.split()]
    return items


def _split_prefix(item: str) -> None:
    # ipaddress also takes netmask forms ('/255.0.0.0'); wg and ip take a prefix length only.
    _, slash, prefix = item.partition("/")
    if slash and not (DIGITS.fullmatch(prefix) and len(prefix) <= 3):
        raise ValueError(prefix)


def _addresses(text: str) -> tuple[IPInterface, ...]:
    out = []
    for item in _items(text, spaces_separate=True):
        try:
            _split_prefix(item)
            out.append(ipaddress.ip_interface(item))
        except ValueError:
            raise _Invalid(f"{quote(item)} is not a valid address with prefix") from None
    return tuple(out)


def _networks(text: str) -> tuple[IPNetwork, ...]:
    out = []
    for item in _items(text, spaces_separate=False):
        try:
            _split_prefix(item)
            # strict=False clears host bits, as wg does with 10.0.0.1/24 -> 10.0.0.0/24.
            out.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise _Invalid(f"{quote(item)} is not a valid network") from None
    return tuple(out)


def _nonzero_host_parts(text: str) -> list[str]:
    """wg's warning for each AllowedIPs entry whose host bits are set (already parsed)."""
    return [f"Warning: AllowedIP has nonzero host part: {item}"
            for item in _items(text, spaces_separate=False)
            if ipaddress.ip_interface(item).ip != ipaddress.ip_network(item, strict=False)[0]]


def _dns(text: str) -> tuple[IPAddress | str, ...]:
    out: list[IPAddress | str] = []
    for item in _items(text, spaces_separate=True):
        if _LOOKS_LIKE_IP.fullmatch(item):
            try:
                out.append(ipaddress.ip_address(item))
            except ValueError:
                raise _Invalid(f"{quote(item)} is not a valid IP address") from None
        elif len(item) <= 253 and HOST_NAME.fullmatch(item):
            out.append(item)
        else:
            raise _Invalid(f"{quote(item)} is neither an IP address nor a search domain")
    return tuple(out)


def _endpoint(text: str) -> Endpoint:
    try:
        return Endpoint.parse(text)
    except ValueError as error:
        raise _Invalid(str(error)) from None


@dataclass(frozen=True)
class _Key:
    name: str  # the canonical spelling, used in messages and by to_text
    section: str  # "Interface" or "Peer"
    parse: Callable[[str], Any]
    repeats: bool = False  # repeated lines accumulate instead of being an error
    warn: Callable[[str], list[str]] | None = None  # warnings about a value that parsed


_KEYS = {
    spec.name.lower(): spec
    for spec in (
        _Key("PrivateKey", "Interface", _key),
        _Key("ListenPort", "Interface", _port),
        _Key("FwMark", "Interface", _fwmark),
        _Key("Address", "Interface", _addresses, repeats=True),
        _Key("MTU", "Interface", _mtu),
        _Key("DNS", "Interface", _dns, repeats=True),
        _Key("Table", "Interface", _table),
        _Key("PreUp", "Interface", _command, repeats=True),
        _Key("PostUp", "Interface", _command, repeats=True),
        _Key("PreDown", "Interface", _command, repeats=True),
        _Key("PostDown", "Interface", _command, repeats=True),
        _Key("SaveConfig", "Interface", _bool("true", "false")),
        _Key("Offload", "Interface", _bool("on", "off")),
        _Key("PublicKey", "Peer", _key),
        _Key("PresharedKey", "Peer", _key),
        _Key("AllowedIPs", "Peer", _networks, repeats=True, warn=_nonzero_host_parts),
        _Key("Endpoint", "Peer", _endpoint),
        _Key("PersistentKeepalive", "Peer", _keepalive),
    )
}
_SECTIONS = {"[interface]": "Interface", "[peer]": "Peer"}


@dataclass
class _Section:
    kind: str
    line: int
    # Canonical key name -> parsed value (a list for repeating keys) and its (first) line.
    values: dict[str, Any] = field(default_factory=dict)
    lines: dict[str, int] = field(default_factory=dict)


def _read_sections(text: str, path: str, warnings: list[str]) -> list[_Section]:
    sections: list[_Section] = []
    for number, raw in enumerate(text.split("\n"), start=1):
        fail = functools.partial(ConfigError, path, number)
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if line.startswith("["):
            kind = _SECTIONS.get(line.lower()) if line.isascii() else None
            if kind is None:
                raise fail(None, f"unknown section {quote(line)}; expected [Interface] or [Peer]")
            sections.append(_Section(kind, number))
            continue
        # The value is everything after the first '=', so base64 padding stays in it.
        name, equals, value = line.partition("=")
        name, value = name.strip(), value.strip()
        if not equals or not name:
            # Never echo the line: it may be a key pasted on a line of its own.
            raise fail(None, "expected 'Key = Value' or a [Section] header")
        # isascii(): str.lower() would turn the Kelvin sign into 'k'; wg compares ASCII only.
        spec = _KEYS.get(name.lower()) if name.isascii() else None
        if spec is None:
            where = f" in [{sections[-1].kind}]" if sections else ""
            if _ECHOABLE_KEY.fullmatch(name):
                raise fail(name, f"unknown key{where}")
            raise fail(None, f"unknown key{where}")
        if not sections:
            raise fail(spec.name, f"outside any section; it belongs in [{spec.section}]")
        section = sections[-1]
        if spec.section != section.kind:
            raise fail(spec.name, f"not valid in [{section.kind}]; it belongs in [{spec.section}]")
        if spec.name in section.lines and not spec.repeats:
            raise fail(spec.name, f"given twice (first on line {section.lines[spec.name]})")
        try:
            parsed = spec.parse(value)
        except _Invalid as error:
            raise fail(spec.name, str(error)) from None
        if spec.warn is not None:
            warnings += [f"{path}:{number}: {warning}" for warning in spec.warn(value)]
        section.lines.setdefault(spec.name, number)
        if not spec.repeats:
            section.values[spec.name] = parsed
        elif isinstance(parsed, tuple):
            section.values.setdefault(spec.name, []).extend(parsed)
        else:
            section.values.setdefault(spec.name, []).append(parsed)
    return sections


def _build_interface(section: _Section, path: str) -> InterfaceConfig:
    values = section.values
    addresses = tuple(values.get("Address", ()))
    mtu = values.get("MTU")
    if mtu is not None and mtu < MIN_MTU_IPV6 and any(a.version == 6 for a in addresses):
        raise ConfigError(
            path,
            section.lines["MTU"],
            "MTU",
            f"{mtu} is below {MIN_MTU_IPV6}, the minimum for an interface with an IPv6 Address",
        )
    dns = values.get("DNS", ())
    return InterfaceConfig(
        # Optional, as for wg-quick: `PostUp = wg set %i private-key FILE` may set it.
        private_key=values.get("PrivateKey"),
        listen_port=values.get("ListenPort"),
        addresses=addresses,
        mtu=mtu,
        dns_servers=tuple(d for d in dns if not isinstance(d, str)),
        dns_search=tuple(d for d in dns if isinstance(d, str)),
        table=values.get("Table", "auto"),
        fwmark=values.get("FwMark"),
        pre_up=tuple(values.get("PreUp", ())),
        post_up=tuple(values.get("PostUp", ())),
        pre_down=tuple(values.get("PreDown", ())),
        post_down=tuple(values.get("PostDown", ())),
        save_config=values.get("SaveConfig", False),
        offload=values.get("Offload", True),
    )


def _build_peer(section: _Section, path: str) -> PeerConfig:
    values = section.values
    if "PublicKey" not in values:
        raise ConfigError(path, section.line, "PublicKey", "required in [Peer]")
    return PeerConfig(
        public_key=values["PublicKey"],
        preshared_key=values.get("PresharedKey"),
        allowed_ips=tuple(values.get("AllowedIPs", ())),
        endpoint=values.get("Endpoint"),
        persistent_keepalive=values.get("PersistentKeepalive"),
        line=section.line,
    )


def _merge_peer(first: _Section, later: _Section) -> _Section:
    """Two [Peer] sections of one key as wg applies them, one after the other, to the same
    peer: the later's keys override, and since `wg setconf` sends replace_allowed_ips for
    every section, the later's AllowedIPs (none, if it has none) replace the earlier's."""
    values = {**first.values, **later.values}
    values["AllowedIPs"] = later.values.get("AllowedIPs", [])
    return _Section(first.kind, first.line, values, {**first.lines, **later.lines})


def parse(text: str, path: str = "<string>", name: str | None = None,
          warnings: list[str] | None = None) -> Config:
    """Parse and validate config text; ``path`` is for messages and the interface name.

    ``name`` overrides the interface name taken from the path, and is checked at once.
    Raises ConfigError on the first problem, top to bottom; what is accepted but worth a
    word (wg's warnings) is appended to ``warnings``.
    """
    sections = _read_sections(text, path, [] if warnings is None else warnings)
    interfaces = [s for s in sections if s.kind == "Interface"]
    if not interfaces:
        raise ConfigError(path, None, None, "no [Interface] section")
    if len(interfaces) > 1:
        raise ConfigError(
            path,
            interfaces[1].line,
            None,
            f"a second [Interface] section (the first is on line {interfaces[0].line})",
        )
    interface = _build_interface(interfaces[0], path)
    own_public = interface.public_key
    merged: dict[bytes, _Section] = {}  # by public key, in the order of first appearance
    for section in sections:
        if section.kind != "Peer":
            continue
        peer = _build_peer(section, path)
        key_line = section.lines["PublicKey"]
        if own_public is not None and peer.public_key == own_public:
            # The kernel silently ignores such a peer; a config that has one is a mistake.
            raise ConfigError(path, key_line, "PublicKey", "is this interface's own public key")
        first = merged.get(peer.public_key)
        if first is None:
            merged[peer.public_key] = section
            continue
        merged[peer.public_key] = _merge_peer(first, section)
        if warnings is not None:
            warnings.append(
                f"{path}:{key_line}: Warning: the same PublicKey as the [Peer] on line "
                f"{first.line}: merged as `wg setconf` merges them (this section's keys win, "
                "its AllowedIPs replace the earlier ones)")
    peers = tuple(_build_peer(section, path) for section in merged.values())
    config = Config(path, interface, peers, name)
    if name is not None:
        _ = config.interface_name  # raises if the override is not a valid name
    return config
