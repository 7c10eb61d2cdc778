"""The system side of bringing a tunnel interface up and down, the way wg-quick does it.

Hooks, addresses, MTU, link state, DNS (dns.py), routes and fwmark rules (routes.py), a
default route's firewall rules (firewall.py), in wg-quick's order; every step is recorded
(steps.py) and undone exactly.
"""

from __future__ import annotations

import functools
import ipaddress
import logging
from collections.abc import Iterable
from dataclasses import dataclass

from vpn.core.types import IPAddress
from vpn.host import dns, firewall, netlink, routes
from vpn.host.hooks import run_hook, run_hooks_reporting
from vpn.host.netlink import IPInterface, IPNetwork
from vpn.host.steps import SetupError, Steps, reason, unless_gone

log = logging.getLogger(__name__)

TUNNEL_OVERHEAD = 80  # wg-quick's margin: outer IPv6 40 + UDP 8 + WireGuard data header 32
FALLBACK_LINK_MTU = 1500


@dataclass(frozen=True)
class InterfaceSetup:
    """Everything the system needs to know about one tunnel interface (wg-quick's keys)."""

    ifname: str
    addresses: tuple[IPInterface, ...]
    mtu: int
    allowed_ips: tuple[IPNetwork, ...]  # all peers' AllowedIPs
    table: str = "auto"  # "auto", "off", or a table number or name
    fwmark: int | None = None
    dns_servers: tuple[IPAddress, ...] = ()
    dns_search: tuple[str, ...] = ()
    pre_up: tuple[str, ...] = ()
    post_up: tuple[str, ...] = ()
    pre_down: tuple[str, ...] = ()
    post_down: tuple[str, ...] = ()


@dataclass
class Applied(Steps):
    """What apply() changed, in order, so that undo() reverses exactly that."""

    setup: InterfaceSetup
    run_hooks: bool
    # The mark the endpoint must put on its UDP socket (SO_MARK) so that its own packets
    # escape the tunnel's default route: FwMark, or the table picked for a default route.
    fwmark: int | None = None
    default_table: int | None = None  # the table holding the default route(s), if any


def apply(setup: InterfaceSetup, *, run_hooks: bool = True) -> Applied:
    """Configure the existing interface `setup.ifname`; all or nothing.

    Order as wg-quick: PreUp hooks, addresses, MTU, link up, DNS, routes (their rules and
    a default route's firewall), PostUp hooks. On failure every step already taken is
    undone and SetupError raised.
    """
    # Everything that can be checked without touching the system is, first.
    table = routes.parse_table(setup.table)
    if setup.dns_servers or setup.dns_search:
        dns.check_resolvconf(setup.dns_servers, setup.dns_search)
    applied = Applied(setup, run_hooks, fwmark=setup.fwmark or None)
    try:
        if run_hooks:
            for command in setup.pre_up:
                run_hook("PreUp", command, setup.ifname)
        try:
            link = netlink.get_link(setup.ifname)
        except (OSError, LookupError) as err:
            raise SetupError(f"reading interface {setup.ifname}: {reason(err)}") from err
        for address in setup.addresses:
            applied.do(
                f"adding address {address} to {setup.ifname}",
                functools.partial(netlink.add_address, setup.ifname, address),
                f"removing address {address} from {setup.ifname}",
                unless_gone(functools.partial(netlink.del_address, setup.ifname, address)),
            )
        if link.mtu != setup.mtu:
            applied.do(
                f"setting MTU {setup.mtu} on {setup.ifname}",
                lambda: netlink.set_mtu(setup.ifname, setup.mtu),
                f"restoring MTU {link.mtu} on {setup.ifname}",
                lambda: netlink.set_mtu(setup.ifname, link.mtu),
            )
        if not link.up:
            applied.do(
                f"setting {setup.ifname} up",
                lambda: netlink.set_up(setup.ifname, True),
                f"setting {setup.ifname} down",
                lambda: netlink.set_up(setup.ifname, False),
            )
        if setup.dns_servers or setup.dns_search:
            dns.set_dns(applied, setup.ifname, setup.dns_servers, setup.dns_search)
        if table != "off":
            default_table = routes.add_routes(
                applied, setup.ifname, setup.allowed_ips, table, applied.fwmark
            )
            if default_table is not None:
                applied.default_table = applied.fwmark = default_table
                full = sorted({n.version for n in setup.allowed_ips if n.prefixlen == 0})
                firewall.add_default(applied, setup.ifname, full, default_table)
        if run_hooks:
            for command in setup.post_up:
                run_hook("PostUp", command, setup.ifname)
    except BaseException as err:
        # BaseException: a Ctrl-C halfway must not leave half a configuration behind either.
        errors = applied.undo()
        if errors:
            log.warning("while undoing a failed setup of %s: %s", setup.ifname, "; ".join(errors))
        if isinstance(err, SetupError) and errors:
            raise SetupError(f"{err}; could not undo: {'; '.join(errors)}") from err
        raise
    return applied


def teardown(applied: Applied, setup: InterfaceSetup | None = None) -> list[str]:
    """PreDown hooks, undo everything apply() did, PostDown hooks; never raises.

    Returns the problems met (failed hooks, steps that could not be undone) for logging.
    """
    setup = setup or applied.setup
    errors = []
    if applied.run_hooks:
        errors += run_hooks_reporting("PreDown", setup.pre_down, setup.ifname)
    errors += applied.undo()
    if applied.run_hooks:
        errors += run_hooks_reporting("PostDown", setup.post_down, setup.ifname)
    return errors


def auto_mtu(endpoint_ips: Iterable[IPAddress], *, fwmark: int | None = None) -> int:
    """wg-quick's MTU when none is configured: the largest path MTU to an endpoint, minus 80.

    The MTU of a path is the route's mtu or its device's (as `ip route get` shows it);
    without endpoints (or routes to them) the default route's; 1500 when nothing is found.
    `fwmark` looks the routes up as the endpoint's marked socket will, past a tunnel route.
    """
    best = 0
    for ip in endpoint_ips:
        best = max(best, netlink.route_mtu(ipaddress.ip_address(ip), mark=fwmark) or 0)
    if not best:
        # wg-quick looks at the IPv4 default route only; an IPv6-only host has just the other.
        for version in (4, 6):
            best = netlink.default_route_mtu(version) or 0
            if best:
                break
    return (best or FALLBACK_LINK_MTU) - TUNNEL_OVERHEAD
