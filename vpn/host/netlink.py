"""Interface configuration over rtnetlink (pyroute2): links, addresses, routes, policy rules.

Never shells out to `ip`; every call acts on the namespace the calling thread is in when it runs.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, ParamSpec, TypeVar

from vpn.core.types import IPAddress
from vpn.host.pyroute2_lean import IPRoute, NetlinkError

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface

MAIN_TABLE = 254
FIB_RULE_INVERT = 0x2  # linux/fib_rules.h: the rule matches packets its selectors do not
IFF_UP = 0x1
IP6_USER_METRIC = 1024
RT_SCOPE_LINK = 253
RTPROT_BOOT = 3

_P = ParamSpec("_P")
_R = TypeVar("_R")


def _family(version: int) -> int:
    return socket.AF_INET if version == 4 else socket.AF_INET6


def _rtnl(func: Callable[_P, _R]) -> Callable[_P, _R]:
    """Make a netlink helper callable from inside a running event loop, errors as OSError.

    pyroute2's synchronous IPRoute drives a private event loop and refuses to start while
    another loop runs in the thread. Inside a loop the helper runs in a short-lived thread
    instead: a new thread starts in its creator's network namespace, so the namespace the
    caller entered with netns.inside() still applies. NetlinkError becomes OSError so
    callers need no pyroute2 types.
    """

    def direct(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        try:
            return func(*args, **kwargs)
        except NetlinkError as err:
            raise OSError(err.code, str(err.args[1]) if len(err.args) > 1 else "") from None

    @functools.wraps(func)
    def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return direct(*args, **kwargs)
        outcome: list[_R] = []
        failure: list[BaseException] = []

        def target() -> None:
            try:
                outcome.append(direct(*args, **kwargs))
            except BaseException as err:
                failure.append(err)

        thread = threading.Thread(target=target, name=f"netlink-{func.__name__}")
        thread.start()
        thread.join()
        if failure:
            raise failure[0]
        return outcome[0]

    return wrapper


@contextmanager
def _ipr() -> Iterator[IPRoute]:
    with IPRoute() as ipr:
        yield ipr


def link_index(ipr: IPRoute, name: str) -> int:
    found = ipr.link_lookup(ifname=name)
    if not found:
        raise LookupError(f"no interface named {name!r}")
    return int(found[0])


# --- links ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Link:
    index: int
    name: str
    mtu: int
    up: bool  # administratively up (IFF_UP), whatever the carrier


@_rtnl
def get_link(name: str) -> Link:
    with _ipr() as ipr:
        msg = ipr.link("get", index=link_index(ipr, name))[0]
        return Link(msg["index"], name, msg.get("IFLA_MTU"), bool(msg["flags"] & IFF_UP))


@_rtnl
def set_link(name: str, *, mtu: int | None = None, up: bool = True) -> None:
    with _ipr() as ipr:
        index = link_index(ipr, name)
        if mtu is not None:
            ipr.link("set", index=index, mtu=mtu)
        ipr.link("set", index=index, state="up" if up else "down")


@_rtnl
def set_mtu(name: str, mtu: int) -> None:
    with _ipr() as ipr:
        ipr.link("set", index=link_index(ipr, name), mtu=mtu)


@_rtnl
def set_up(name: str, up: bool = True) -> None:
    with _ipr() as ipr:
        ipr.link("set", index=link_index(ipr, name), state="up" if up else "down")


# --- addresses --------------------------------------------------------------------------


def add_address(name: str, cidr: str | IPInterface) -> None:
    _address("add", name, cidr)


def del_address(name: str, cidr: str | IPInterface) -> None:
    _address("del", name, cidr)


@_rtnl
def addresses(name: str, version: int) -> list[IPAddress]:
    """The addresses of one family on interface `name`, in the kernel's order (as `ip addr`)."""
    with _ipr() as ipr:
        index = link_index(ipr, name)
        return [ipaddress.ip_address(msg.get("IFA_ADDRESS"))
                for msg in ipr.addr("dump", family=_family(version)) if msg["index"] == index]


@_rtnl
def _address(command: str, name: str, cidr: str | IPInterface) -> None:
    iface = ipaddress.ip_interface(cidr)
    with _ipr() as ipr:
        ipr.addr(
            command,
            index=link_index(ipr, name),
            address=str(iface.ip),
            prefixlen=iface.network.prefixlen,
        )


# --- routes -----------------------------------------------------------------------------


def _route_attrs(ipr: IPRoute, dst: IPNetwork, ifname: str, table: int) -> dict[str, Any]:
    return {
        "family": _family(dst.version),
        "dst": str(dst),
        "oif": link_index(ipr, ifname),
        "table": table,
        # As `ip route add DST dev X` makes it: scope link (no gateway), protocol boot.
        # Deleting with the same values matches exactly that route.
        "scope": RT_SCOPE_LINK,
        "proto": RTPROT_BOOT,
        # The metric `ip route add` gives: 0 for IPv4, 1024 for IPv6. Naming it on delete
        # too keeps an IPv6 delete off the kernel's own prefix route (metric 256).
        "priority": 0 if dst.version == 4 else IP6_USER_METRIC,
    }


@_rtnl
def add_route(dst: IPNetwork, ifname: str, *, table: int = MAIN_TABLE) -> None:
    """`ip route add DST dev IFNAME table TABLE`; OSError(EEXIST) if the kernel has it."""
    with _ipr() as ipr:
        ipr.route("add", **_route_attrs(ipr, dst, ifname, table))


@_rtnl
def del_route(dst: IPNetwork, ifname: str, *, table: int = MAIN_TABLE) -> None:
    with _ipr() as ipr:
        ipr.route("del", **_route_attrs(ipr, dst, ifname, table))


def _route_dst(msg: dict[str, Any], version: int) -> IPNetwork:
    dst = msg.get("RTA_DST") or ("0.0.0.0" if version == 4 else "::")
    return ipaddress.ip_network(f"{dst}/{msg['dst_len']}")


@_rtnl
def routes(version: int, *, table: int = MAIN_TABLE, ifname: str | None = None) -> list[IPNetwork]:
    """Destinations of the routes in `table` (through `ifname` when given)."""
    with _ipr() as ipr:
        oif = link_index(ipr, ifname) if ifname is not None else None
        found = []
        for msg in ipr.route("dump", family=_family(version)):
            if msg.get("RTA_TABLE", msg["table"]) != table:
                continue
            if oif is not None and msg.get("RTA_OIF") != oif:
                continue
            found.append(_route_dst(msg, version))
        return found


@_rtnl
def route_mtu(dst: IPAddress, *, mark: int | None = None) -> int | None:
    """The MTU towards `dst` as `ip route get` sees it: the route's mtu, else its device's.

    None when there is no route.
    """
    with _ipr() as ipr:
        extra = {"mark": mark} if mark else {}
        try:
            msg = ipr.route("get", family=_family(dst.version), dst=str(dst), **extra)[0]
        except NetlinkError:
            return None  # unreachable: no device to take an MTU from
        return _mtu_of(ipr, msg)


@_rtnl
def default_route_mtu(version: int) -> int | None:
    """The MTU of the main table's default route (route mtu, else its device's), or None."""
    with _ipr() as ipr:
        for msg in ipr.route("dump", family=_family(version)):
            if msg.get("RTA_TABLE", msg["table"]) == MAIN_TABLE and msg["dst_len"] == 0:
                mtu = _mtu_of(ipr, msg)
                if mtu:
                    return mtu
        return None


def _mtu_of(ipr: IPRoute, msg: dict[str, Any]) -> int | None:
    metrics = msg.get("RTA_METRICS")
    if metrics is not None and metrics.get("RTAX_MTU"):
        return int(metrics.get("RTAX_MTU"))
    oif = msg.get("RTA_OIF")
    if oif is None:
        return None
    mtu = ipr.link("get", index=oif)[0].get("IFLA_MTU")
    return None if mtu is None else int(mtu)


# --- policy rules -----------------------------------------------------------------------


@dataclass(frozen=True)
class Rule:
    """One `ip rule`, with the priority the kernel gave it so exactly it can be deleted."""

    version: int
    table: int
    priority: int
    fwmark: int | None = None
    invert: bool = False  # `not fwmark M`
    suppress_prefixlength: int | None = None

    def describe(self) -> str:
        parts = [f"-{self.version}", f"priority {self.priority}"]
        if self.fwmark is not None:
            parts.append(f"{'not ' if self.invert else ''}fwmark {self.fwmark}")
        parts.append(f"table {'main' if self.table == MAIN_TABLE else self.table}")
        if self.suppress_prefixlength is not None:
            parts.append(f"suppress_prefixlength {self.suppress_prefixlength}")
        return " ".join(parts)

    def _attrs(self) -> dict[str, Any]:
        attrs: dict[str, Any] = {
            "family": _family(self.version),
            "table": self.table,
            "priority": self.priority,
            "flags": FIB_RULE_INVERT if self.invert else 0,
        }
        if self.fwmark is not None:
            attrs["fwmark"] = self.fwmark
        if self.suppress_prefixlength is not None:
            attrs["suppress_prefixlen"] = self.suppress_prefixlength
        return attrs


def _next_rule_priority(ipr: IPRoute, version: int) -> int:
    # What `ip rule add` without a priority gets from the kernel: one below the first rule
    # after the local table's (pref 0). pyroute2 would otherwise pin every rule to 32000.
    prefs = sorted(msg.get("FRA_PRIORITY", 0) for msg in ipr.rule("dump", family=_family(version)))
    after_first = [p for p in prefs[1:] if p > 0]
    return after_first[0] - 1 if after_first else 0


@_rtnl
def add_rule(
    version: int,
    table: int,
    *,
    fwmark: int | None = None,
    invert: bool = False,
    suppress_prefixlength: int | None = None,
) -> Rule:
    """`ip -V rule add [not] [fwmark M] table T [suppress_prefixlength N]`; returns the rule."""
    with _ipr() as ipr:
        rule = Rule(
            version, table, _next_rule_priority(ipr, version), fwmark, invert,
            suppress_prefixlength,
        )
        ipr.rule("add", **rule._attrs())
        return rule


@_rtnl
def del_rule(rule: Rule) -> None:
    with _ipr() as ipr:
        ipr.rule("del", **rule._attrs())


@_rtnl
def rules(version: int) -> list[Rule]:
    """The policy rules of one family, in priority order (to inspect, and for tests)."""
    with _ipr() as ipr:
        found = []
        for msg in ipr.rule("dump", family=_family(version)):
            suppress = msg.get("FRA_SUPPRESS_PREFIXLEN")
            found.append(Rule(
                version,
                msg.get("FRA_TABLE", msg["table"]),
                msg.get("FRA_PRIORITY", 0),
                msg.get("FRA_FWMARK"),
                bool(msg["flags"] & FIB_RULE_INVERT),
                None if suppress in (None, 0xFFFFFFFF) else suppress,
            ))
        return sorted(found, key=lambda r: r.priority)
