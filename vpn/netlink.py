"""Interface configuration over rtnetlink (pyroute2): MTU, link state, addresses.

Never shells out to `ip`; every call acts on the namespace the process is in when it runs.
"""

from __future__ import annotations

import ipaddress

from pyroute2 import IPRoute


def link_index(ipr: IPRoute, name: str) -> int:
    found = ipr.link_lookup(ifname=name)
    if not found:
        raise LookupError(f"no interface named {name!r}")
    return found[0]


def set_link(name: str, *, mtu: int | None = None, up: bool = True) -> None:
    with IPRoute() as ipr:
        index = link_index(ipr, name)
        if mtu is not None:
            ipr.link("set", index=index, mtu=mtu)
        ipr.link("set", index=index, state="up" if up else "down")


def add_address(name: str, cidr: str) -> None:
    iface = ipaddress.ip_interface(cidr)
    with IPRoute() as ipr:
        ipr.addr(
            "add",
            index=link_index(ipr, name),
            address=str(iface.ip),
            prefixlen=iface.network.prefixlen,
        )
