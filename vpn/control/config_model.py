"""A wg-quick config as frozen dataclasses, with the checks that belong to a value's type.

Pure. An `Endpoint` parses and checks its own text and a `Config` its interface name; the
file's syntax is config_parse's. Key material never appears in a repr or a message.
"""

from __future__ import annotations

import base64
import ipaddress
import re
from dataclasses import dataclass, field, fields
from pathlib import PurePath
from typing import Any

from vpn.core.keys import public_from_private
from vpn.core.types import IPAddress

IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# wg-quick's own rule for interface names (and so for config file stems): Linux allows 15 bytes.
INTERFACE_NAME = re.compile(r"[a-zA-Z0-9_=+.-]{1,15}")

DIGITS = re.compile(r"[0-9]+")
_LABEL = r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
HOST_NAME = re.compile(rf"{_LABEL}(?:\.{_LABEL})*\.?")
_KEY_LIKE = re.compile(r"[A-Za-z0-9+/=]{20,}")


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


def quote(value: str, *, hide_keys: bool = True) -> str:
    """Quote a value for a message, cut short so a junk line stays readable.

    A key pasted on the wrong line must not reach a log either, so long base64 or hex runs
    are hidden: no config value has a reason to contain one.
    """
    if hide_keys:
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
                raise ValueError(f"{quote(text)} is not [address]:port")
            host, port_text = text[1:close], text[close + 2 :]
            try:
                host = str(ipaddress.ip_address(host))
            except ValueError:
                raise ValueError(f"{quote(host)} is not an IP address") from None
        else:
            host, colon, port_text = text.rpartition(":")
            if not colon or not host:
                raise ValueError(f"{quote(text)} is not host:port")
            if ":" in host:
                raise ValueError(
                    f"{quote(text)}: an IPv6 address needs brackets, like [fd00::1]:51820"
                )
            host = _host(host)
        if not DIGITS.fullmatch(port_text) or not 1 <= int(port_text) <= 65535:
            raise ValueError(f"{quote(port_text)} is not a port number (1 to 65535)")
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

    private_key: bytes | None  # None: none yet (wg-quick's `PostUp = wg set %i private-key`)
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
    def public_key(self) -> bytes | None:
        return None if self.private_key is None else public_from_private(self.private_key)

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
        return checked_interface_name(self.name if self.name is not None else stem(self.path),
                                      self.path)


def checked_interface_name(name: str, path: str) -> str:
    """`name` when it is a valid interface name; raises ConfigError naming it (a name is
    not key material, so it is shown whole, up to 64 characters)."""
    if INTERFACE_NAME.fullmatch(name):
        return name
    too_long = f", not {len(name)}" if len(name) > 15 else ""
    raise ConfigError(
        path,
        None,
        None,
        f"{quote(name, hide_keys=False)} is not a valid interface name "
        f"(1 to 15 characters{too_long}, from a-z A-Z 0-9 _ = + . -)",
    )


def stem(path: str) -> str:
    """The interface name a config file gives, as wg-quick takes it: the file's name
    before ".conf" (another file's, its stem)."""
    name = PurePath(path).name
    return name.removesuffix(".conf") if name.endswith(".conf") else PurePath(path).stem


def _host(text: str) -> str:
    """A host name or IPv4 literal; an all-numeric name is a broken IPv4 literal, not a name."""
    if re.fullmatch(r"[0-9.]+", text):
        try:
            return str(ipaddress.IPv4Address(text))
        except ValueError:
            raise ValueError(f"{quote(text)} is not a valid IPv4 address") from None
    if len(text) > 253 or not HOST_NAME.fullmatch(text):
        raise ValueError(f"{quote(text)} is not a valid host name")
    return text
