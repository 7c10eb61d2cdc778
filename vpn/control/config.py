"""The wg-quick configuration file: parsed into frozen dataclasses, validated, written back.

Pure: nothing here touches the system except `load`, which reads the file and its permissions.

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

A bad file raises one `ConfigError` naming the file, the line and the key. Key material never
appears in an error or in a repr.
"""

from __future__ import annotations

import base64
import functools
import ipaddress
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import PurePath
from typing import Any

from vpn.core.keys import KeyFormatError, decode_key, encode_key, public_from_private
from vpn.core.types import IPAddress

IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# wg-quick's own rule for interface names (and so for config file stems): Linux allows 15 bytes.
INTERFACE_NAME = re.compile(r"[a-zA-Z0-9_=+.-]{1,15}")

MIN_MTU_IPV4 = 576  # RFC 791: every IPv4 host must accept datagrams of this size
MIN_MTU_IPV6 = 1280  # RFC 8200; Linux drops IPv6 from a device whose MTU goes below this
MAX_MTU = 65535
MAX_U32 = 0xFFFFFFFF

_DIGITS = re.compile(r"[0-9]+")
_HEX_NUMBER = re.compile(r"0[xX][0-9a-fA-F]+")
# wg-quick's test for "this DNS entry is a server": digits and dots, or anything with a colon.
_LOOKS_LIKE_IP = re.compile(r"[0-9.]+|.*:.*")
_LABEL = r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
_HOST_NAME = re.compile(rf"{_LABEL}(?:\.{_LABEL})*\.?")
_TABLE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,63}")
# Unknown key names are echoed only when they look like a misspelt key, never like a pasted key.
_ECHOABLE_KEY = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,23}")
_KEY_LIKE = re.compile(r"[A-Za-z0-9+/=]{20,}")
_BAD_KEY = "not a base64-encoded 32-byte key"


class ConfigError(ValueError):
    """A config file that cannot be used, with the place and the reason.

    ``str()`` reads ``path:line: Key: reason``; ``line`` and ``key`` are None when the problem
    is not on one line (a missing section) or not about one key.
    """

    def __init__(self, path: str, line: int | None, key: str | None, reason: str) -> None:
        self.path = path
        self.line = line
        self.key = key
        self.reason = reason
        where = path if line is None else f"{path}:{line}"
        super().__init__(f"{where}: {key}: {reason}" if key else f"{where}: {reason}")

    def __reduce__(self) -> tuple[Any, ...]:
        # The default pickling would call __init__ with the message only.
        return (type(self), (self.path, self.line, self.key, self.reason))


class _Invalid(ValueError):
    """A value parser's complaint; the parse loop adds the path, line and key."""


def _show(value: str) -> str:
    """Quote a value for a message, cut short so a junk line stays readable.

    A key pasted on the wrong line must not reach a log either, so long base64 or hex runs
    are hidden: no config value has a reason to contain one.
    """
    value = _KEY_LIKE.sub("<hidden>", value)
    return repr(value if len(value) <= 64 else value[:61] + "...")


def _safe_repr(obj: Any, replaced: dict[str, str]) -> str:
    parts = []
    for f in fields(obj):
        text = replaced[f.name] if f.name in replaced else repr(getattr(obj, f.name))
        parts.append(f"{f.name}={text}")
    return f"{type(obj).__name__}({', '.join(parts)})"


@dataclass(frozen=True)
class Endpoint:
    """A peer's UDP address as written: an IP literal or a host name, resolved at run time."""

    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> Endpoint:
        """Parse ``host:port``, ``[IPv6]:port`` or ``name:port``; raises ValueError."""
        if text.startswith("["):
            close = text.find("]")
            if close < 0 or text[close + 1 : close + 2] != ":":
                raise ValueError(f"{_show(text)} is not [address]:port")
            host, port_text = text[1:close], text[close + 2 :]
            try:
                host = str(ipaddress.ip_address(host))
            except ValueError:
                raise ValueError(f"{_show(host)} is not an IP address") from None
        else:
            host, colon, port_text = text.rpartition(":")
            if not colon or not host:
                raise ValueError(f"{_show(text)} is not host:port")
            if ":" in host:
                raise ValueError(
                    f"{_show(text)}: an IPv6 address needs brackets, like [fd00::1]:51820"
                )
            host = _host(host)
        if not _DIGITS.fullmatch(port_text) or not 1 <= int(port_text) <= 65535:
            raise ValueError(f"{_show(port_text)} is not a port number (1 to 65535)")
        return cls(host, int(port_text))

    @property
    def address(self) -> IPAddress | None:
        """The host as an IP address, or None when it is a name still to resolve."""
        try:
            return ipaddress.ip_address(self.host)
        except ValueError:
            return None

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True, repr=False)
class PeerConfig:
    """One ``[Peer]`` section; ``line`` is where it starts and takes no part in equality."""

    public_key: bytes
    preshared_key: bytes | None = None
    allowed_ips: tuple[IPNetwork, ...] = ()
    endpoint: Endpoint | None = None
    persistent_keepalive: int | None = None  # seconds; None when off (0 or "off")
    line: int = field(default=0, compare=False)

    def __repr__(self) -> str:
        return _safe_repr(
            self,
            {
                "public_key": repr(base64.b64encode(self.public_key).decode()),
                "preshared_key": "None" if self.preshared_key is None else "<hidden>",
            },
        )


@dataclass(frozen=True, repr=False)
class InterfaceConfig:
    """The ``[Interface]`` section, with wg-quick's defaults for what the file leaves out."""

    private_key: bytes
    listen_port: int | None = None
    addresses: tuple[IPInterface, ...] = ()
    mtu: int | None = None  # None: computed at run time from the route to the peers
    dns_servers: tuple[IPAddress, ...] = ()
    dns_search: tuple[str, ...] = ()
    table: str = "auto"  # "auto", "off", a table number or a name from rt_tables
    fwmark: int | None = None  # None when off (0 or "off")
    pre_up: tuple[str, ...] = ()
    post_up: tuple[str, ...] = ()
    pre_down: tuple[str, ...] = ()
    post_down: tuple[str, ...] = ()
    save_config: bool = False
    offload: bool = True

    @property
    def public_key(self) -> bytes:
        return public_from_private(self.private_key)

    def __repr__(self) -> str:
        return _safe_repr(self, {"private_key": "<hidden>"})


@dataclass(frozen=True)
class Config:
    """A whole config file; the interface is named after the file unless ``name`` is given."""

    path: str
    interface: InterfaceConfig
    peers: tuple[PeerConfig, ...] = ()
    name: str | None = None

    @property
    def interface_name(self) -> str:
        """The interface name, checked as wg-quick checks it; raises ConfigError."""
        name = self.name if self.name is not None else _stem(self.path)
        if not INTERFACE_NAME.fullmatch(name):
            raise ConfigError(
                self.path,
                None,
                None,
                f"{_show(name)} is not a valid interface name "
                "(1 to 15 characters from a-z A-Z 0-9 _ = + . -)",
            )
        return name


def _stem(path: str) -> str:
    # wg-quick takes the name before ".conf"; PurePath.stem would keep ".conf" whole.
    name = PurePath(path).name
    return name.removesuffix(".conf") if name.endswith(".conf") else PurePath(path).stem


# --- value parsers: each takes the stripped value and returns it parsed or raises _Invalid ---


def _number(text: str, low: int, high: int, what: str) -> int:
    # A regex rather than int(): int() also takes '+5', '1_000' and non-ASCII digits.
    if not _DIGITS.fullmatch(text) or len(text) > 10 or not low <= int(text) <= high:
        raise _Invalid(f"{_show(text)} is not {what} ({low} to {high})")
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
    if _DIGITS.fullmatch(text):
        return str(_number(text, 0, MAX_U32, "a routing table number"))
    if _TABLE_NAME.fullmatch(text):
        return text
    raise _Invalid(f"{_show(text)} is not auto, off, a table number or a table name")


def _bool(true: str, false: str) -> Callable[[str], bool]:
    def parse(text: str) -> bool:
        if text.lower() not in (true, false):
            raise _Invalid(f"{_show(text)} is neither {true} nor {false}")
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
        raise _Invalid(f"{_show(text)} has an empty entry")
    if spaces_separate:  # wg-quick splits Address and DNS on whitespace as well
        return [word for item in items for word in item.split()]
    return items


def _split_prefix(item: str) -> None:
    # ipaddress also takes netmask forms ('/255.0.0.0'); wg and ip take a prefix length only.
    _, slash, prefix = item.partition("/")
    if slash and not (_DIGITS.fullmatch(prefix) and len(prefix) <= 3):
        raise ValueError(prefix)


def _addresses(text: str) -> tuple[IPInterface, ...]:
    out = []
    for item in _items(text, spaces_separate=True):
        try:
            _split_prefix(item)
            out.append(ipaddress.ip_interface(item))
        except ValueError:
            raise _Invalid(f"{_show(item)} is not a valid address with prefix") from None
    return tuple(out)


def _networks(text: str) -> tuple[IPNetwork, ...]:
    out = []
    for item in _items(text, spaces_separate=False):
        try:
            _split_prefix(item)
            # strict=False clears host bits, as wg does with 10.0.0.1/24 -> 10.0.0.0/24.
            out.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise _Invalid(f"{_show(item)} is not a valid network") from None
    return tuple(out)


def _host(text: str) -> str:
    """A host name or IPv4 literal; an all-numeric name is a broken IPv4 literal, not a name."""
    if re.fullmatch(r"[0-9.]+", text):
        try:
            return str(ipaddress.IPv4Address(text))
        except ValueError:
            raise ValueError(f"{_show(text)} is not a valid IPv4 address") from None
    if len(text) > 253 or not _HOST_NAME.fullmatch(text):
        raise ValueError(f"{_show(text)} is not a valid host name")
    return text


def _dns(text: str) -> tuple[IPAddress | str, ...]:
    out: list[IPAddress | str] = []
    for item in _items(text, spaces_separate=True):
        if _LOOKS_LIKE_IP.fullmatch(item):
            try:
                out.append(ipaddress.ip_address(item))
            except ValueError:
                raise _Invalid(f"{_show(item)} is not a valid IP address") from None
        elif len(item) <= 253 and _HOST_NAME.fullmatch(item):
            out.append(item)
        else:
            raise _Invalid(f"{_show(item)} is neither an IP address nor a search domain")
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
        _Key("AllowedIPs", "Peer", _networks, repeats=True),
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


def _read_sections(text: str, path: str) -> list[_Section]:
    sections: list[_Section] = []
    for number, raw in enumerate(text.split("\n"), start=1):
        fail = functools.partial(ConfigError, path, number)
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if line.startswith("["):
            kind = _SECTIONS.get(line.lower()) if line.isascii() else None
            if kind is None:
                raise fail(None, f"unknown section {_show(line)}; expected [Interface] or [Peer]")
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
    if "PrivateKey" not in values:
        raise ConfigError(path, section.line, "PrivateKey", "required in [Interface]")
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
        private_key=values["PrivateKey"],
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


def parse(text: str, path: str = "<string>", name: str | None = None) -> Config:
    """Parse and validate config text; ``path`` is for messages and the interface name.

    ``name`` overrides the interface name taken from the path, and is checked at once.
    Raises ConfigError on the first problem, top to bottom.
    """
    sections = _read_sections(text, path)
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
    peers: list[PeerConfig] = []
    seen: dict[bytes, int] = {}
    for section in sections:
        if section.kind != "Peer":
            continue
        peer = _build_peer(section, path)
        key_line = section.lines["PublicKey"]
        if peer.public_key == own_public:
            # The kernel silently ignores such a peer; a config that has one is a mistake.
            raise ConfigError(path, key_line, "PublicKey", "is this interface's own public key")
        if peer.public_key in seen:
            raise ConfigError(
                path,
                key_line,
                "PublicKey",
                f"the same key as the peer on line {seen[peer.public_key]}",
            )
        seen[peer.public_key] = section.line
        peers.append(peer)
    config = Config(path, interface, tuple(peers), name)
    if name is not None:
        _ = config.interface_name  # raises if the override is not a valid name
    return config


def load(path: str | os.PathLike[str], name: str | None = None) -> tuple[Config, list[str]]:
    """Read, parse and validate a config file; returns it with warnings for the user.

    The interface name is checked here (from the file's stem, or ``name``), so a Config from
    `load` always has a usable `Config.interface_name`. Raises ConfigError.
    """
    path = os.fspath(path)
    try:
        with open(path, "rb") as file:
            data = file.read()
            file_mode = os.fstat(file.fileno()).st_mode
    except OSError as error:
        raise ConfigError(path, None, None, f"cannot read: {error.strerror or error}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        raise ConfigError(path, line, None, "not UTF-8 text") from None
    config = parse(text, path, name)
    _ = config.interface_name
    return config, _permission_warnings(path, file_mode)


def _permission_warnings(path: str, file_mode: int) -> list[str]:
    # wg-quick's rule: warn when the file and its directory both grant some permission to
    # "other" (mode & dir mode & 0007); a 0644 file inside a 0700 directory is not reachable.
    real = os.path.realpath(path)
    try:
        dir_mode = os.stat(os.path.dirname(real)).st_mode
    except OSError:
        dir_mode = 0o007  # cannot tell: judge by the file alone
    if file_mode & dir_mode & 0o007:
        return [f"Warning: `{real}' is world accessible"]
    return []


def to_text(config: Config) -> str:
    """Write a config in the file format; `parse` of the result gives an equal Config.

    Used for SaveConfig, so the text holds the private key: write it with mode 0600.
    """
    i = config.interface
    lines = ["[Interface]", f"PrivateKey = {encode_key(i.private_key)}"]
    if i.listen_port is not None:
        lines.append(f"ListenPort = {i.listen_port}")
    if i.fwmark is not None:
        lines.append(f"FwMark = {i.fwmark:#x}")  # hex, as `wg showconf` writes it
    if i.addresses:
        lines.append("Address = " + ", ".join(str(a) for a in i.addresses))
    if i.mtu is not None:
        lines.append(f"MTU = {i.mtu}")
    if i.dns_servers or i.dns_search:
        lines.append("DNS = " + ", ".join([*map(str, i.dns_servers), *i.dns_search]))
    if i.table != "auto":
        lines.append(f"Table = {i.table}")
    for key, commands in (
        ("PreUp", i.pre_up),
        ("PostUp", i.post_up),
        ("PreDown", i.pre_down),
        ("PostDown", i.post_down),
    ):
        for command in commands:
            if "#" in command or "\n" in command or command != command.strip() or not command:
                # The file format cannot carry these: '#' starts a comment, lines are stripped.
                raise ValueError(f"{key} {_show(command)} cannot be written to a config file")
            lines.append(f"{key} = {command}")
    if i.save_config:
        lines.append("SaveConfig = true")
    if not i.offload:
        lines.append("Offload = off")
    for peer in config.peers:
        lines += ["", "[Peer]", f"PublicKey = {encode_key(peer.public_key)}"]
        if peer.preshared_key is not None:
            lines.append(f"PresharedKey = {encode_key(peer.preshared_key)}")
        if peer.allowed_ips:
            lines.append("AllowedIPs = " + ", ".join(str(n) for n in peer.allowed_ips))
        if peer.endpoint is not None:
            lines.append(f"Endpoint = {peer.endpoint}")
        if peer.persistent_keepalive is not None:
            lines.append(f"PersistentKeepalive = {peer.persistent_keepalive}")
    return "\n".join(lines) + "\n"
