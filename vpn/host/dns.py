"""A tunnel's DNS servers and search domains, handed to resolvconf as wg-quick does."""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path

from vpn.core.types import IPAddress
from vpn.host import helper
from vpn.host.steps import SetupError, Steps

RESOLVCONF_INTERFACE_ORDER = Path("/etc/resolvconf/interface-order")


def check_resolvconf(servers: Sequence[IPAddress], search: Sequence[str]) -> None:
    """SetupError before anything is touched when DNS is configured but cannot be set."""
    if shutil.which("resolvconf") is None:
        values = ", ".join([*map(str, servers), *search])
        raise SetupError(
            f"DNS = {values} needs resolvconf (apt-get install openresolv), "
            "which is not installed"
        )


def resolvconf_interface(ifname: str, order_file: Path | None = None) -> str:
    """The record name wg-quick gives resolvconf: `<prefix>.<ifname>` or just `<ifname>`.

    Debian's resolvconf orders records by the patterns of its interface-order file; the
    first plain `name*` pattern there (`tun*`) becomes the prefix, so the tunnel's DNS
    ranks as a VPN's. openresolv has no such file and gets the bare interface name.
    """
    try:
        lines = (order_file or RESOLVCONF_INTERFACE_ORDER).read_text(errors="replace").splitlines()
    except OSError:
        return ifname
    for line in lines:
        pattern = line.strip()
        stem = pattern[:-1]
        if pattern.endswith("*") and stem and all(c.isalnum() or c == "-" for c in stem):
            return f"{stem}.{ifname}"
    return ifname


def set_dns(
    steps: Steps, ifname: str, servers: Sequence[IPAddress], search: Sequence[str]
) -> None:
    """Add the tunnel's resolvconf record, recording its removal in `steps`."""
    name = resolvconf_interface(ifname)
    lines = [f"nameserver {server}\n" for server in servers]
    if search:
        lines.append(f"search {' '.join(search)}\n")
    steps.do(
        f"setting DNS through resolvconf -a {name}",
        lambda: _resolvconf(["-a", name, "-m", "0", "-x"], "".join(lines)),
        f"removing DNS through resolvconf -d {name}",
        lambda: _resolvconf(["-d", name, "-f"], ""),
    )


def _resolvconf(args: Sequence[str], stdin: str) -> None:
    proc = helper.run(["resolvconf", *args], input=stdin, capture=True)
    if proc.returncode != 0:
        detail = (proc.stderr or proc.stdout).strip() or f"exit status {proc.returncode}"
        raise OSError(0, detail)
