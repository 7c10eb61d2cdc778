"""The wg-quick config file: `load` reads and checks one, `to_text` writes one back.

The dataclasses are config_model's and the syntax is config_parse's; this is where a
file meets the disk: its encoding, wg-quick's permission warning, SaveConfig's text.
"""

from __future__ import annotations

import os

from vpn.control.config_model import (
    INTERFACE_NAME,
    Config,
    ConfigError,
    checked_interface_name,
    quote,
    stem,
)
from vpn.control.config_parse import parse
from vpn.core.keys import encode_key

# wg-quick's one place for configs: `wg-quick up wg0` reads /etc/wireguard/wg0.conf.
CONFIG_DIR = "/etc/wireguard"


def is_bare(arg: str) -> bool:
    """A CONFIG_FILE|INTERFACE argument that is meant as a name: no slash, no .conf."""
    return "/" not in arg and not arg.endswith(".conf")


def config_path(arg: str) -> str:
    """A command's CONFIG_FILE|INTERFACE argument as a path, as wg-quick reads it: a bare
    interface name is the file of that name in /etc/wireguard."""
    if is_bare(arg) and INTERFACE_NAME.fullmatch(arg):
        return os.path.join(CONFIG_DIR, f"{arg}.conf")
    return arg


def interface_of(arg: str) -> str:
    """A CONFIG_FILE|INTERFACE argument as the interface name (a file's name is its stem,
    as for `vpn up`); raises ConfigError for a name that is not a valid interface name."""
    return checked_interface_name(arg if is_bare(arg) else stem(arg), arg)


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
        text = data.decode("utf-8-sig")  # a leading BOM (Windows editors) is not text
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        raise ConfigError(path, line, None, "not UTF-8 text") from None
    warnings: list[str] = []
    config = parse(text, path, name, warnings)
    _ = config.interface_name
    return config, _permission_warnings(path, file_mode) + warnings


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
    lines = ["[Interface]"]
    if i.private_key is not None:
        lines.append(f"PrivateKey = {encode_key(i.private_key)}")
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
                raise ValueError(f"{key} {quote(command)} cannot be written to a config file")
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


# What `wg-quick strip` removes, and our own Offload: the keys `wg setconf` does not know.
NOT_FOR_SETCONF = frozenset(("Address", "MTU", "DNS", "Table", "PreUp", "PostUp", "PreDown",
                             "PostDown", "SaveConfig", "Offload"))


def strip_text(config: Config) -> str:
    """The config as `wg setconf` takes it (what `wg-quick strip` prints)."""
    lines = to_text(config).splitlines()
    return "\n".join(ln for ln in lines if ln.split(" = ", 1)[0] not in NOT_FOR_SETCONF) + "\n"
