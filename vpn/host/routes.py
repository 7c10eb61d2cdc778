"""Routes to a tunnel's AllowedIPs and the policy rules of its default route, as wg-quick.

`Table =` picks where they go: auto (main, and a table of its own for a default route),
off (nowhere), or a table number or rt_tables name.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from pathlib import Path

from vpn.host import netlink
from vpn.host.netlink import IPNetwork
from vpn.host.steps import SetupError, Steps, reason, unless_gone

log = logging.getLogger("vpn.host.netsetup")  # the host setup's one logger (see steps.py)

FIRST_AUTO_TABLE = 51820  # wg-quick's first choice of table and fwmark for a default route
# iproute2 reads its names from /etc first, then the distribution's defaults.
RT_TABLES_FILES = (Path("/etc/iproute2/rt_tables"), Path("/usr/share/iproute2/rt_tables"))
BUILTIN_TABLES = {"default": 253, "main": netlink.MAIN_TABLE, "local": 255}
SRC_VALID_MARK = Path("/proc/sys/net/ipv4/conf/all/src_valid_mark")


def parse_table(value: str) -> str | int:
    """Table = auto | off | number | name from rt_tables; SetupError for anything else."""
    word = value.strip()
    if word.lower() in ("auto", "off"):
        return word.lower()
    try:
        number = int(word, 16) if word.lower().startswith("0x") else int(word, 10)
    except ValueError:
        named = table_names().get(word)
        if named is None:
            files = " or ".join(str(p) for p in RT_TABLES_FILES)
            raise SetupError(
                f"Table = {word}: not auto, off, a number or a table name in {files}"
            ) from None
        number = named
    if not 0 < number < 2**32:
        raise SetupError(f"Table = {word}: a routing table is numbered 1 to 4294967295")
    return number


def table_names() -> dict[str, int]:
    """Routing table names: iproute2's built-in ones and those of its rt_tables files."""
    names: dict[str, int] = {}
    for base in RT_TABLES_FILES:
        extra = sorted(base.with_name(base.name + ".d").glob("*.conf"))
        for path in (base, *extra):
            try:
                text = path.read_text(encoding="utf-8", errors="replace")
            except OSError:
                continue
            for line in text.splitlines():
                fields = line.split("#", 1)[0].split()
                if len(fields) != 2:
                    continue
                try:
                    number = int(fields[0], 0)
                except ValueError:
                    continue
                names.setdefault(fields[1], number)  # the first definition wins, as in ip
    names.update(BUILTIN_TABLES)
    return names


def add_routes(
    steps: Steps, ifname: str, allowed_ips: Iterable[IPNetwork], table: str | int,
    fwmark: int | None,
) -> int | None:
    """Route `allowed_ips` through `ifname`, in `table` ("auto" or a number from parse_table).

    Returns the table given to a default route, if any (FwMark, else the first free one
    from 51820): the endpoint marks its own packets with it so that they escape the tunnel.
    """
    # Most specific first, as wg-quick sorts `wg show allowed-ips`.
    prefixes = sorted(set(allowed_ips), key=lambda n: (-n.prefixlen, n.version, n))
    # The main table's routes through this interface, read once and kept current here:
    # one dump per prefix would make a few hundred AllowedIPs take seconds.
    routed: dict[int, list[IPNetwork]] = {}
    default_table = None
    for prefix in prefixes:
        if isinstance(table, int):
            _add_route(steps, prefix, ifname, table)
        elif prefix.prefixlen == 0:
            if default_table is None:
                default_table = fwmark if fwmark is not None else _free_table()
            _add_default_route(steps, prefix, ifname, default_table)
        else:
            if prefix.version not in routed:
                routed[prefix.version] = netlink.routes(prefix.version, ifname=ifname)
            if any(prefix.subnet_of(r) for r in routed[prefix.version]):  # type: ignore[arg-type]
                # Like wg-quick: a route through this interface already carries the
                # prefix, typically the kernel's route for an Address in the same subnet.
                log.debug("[#] %s already routed through %s", prefix, ifname)
                continue
            _add_route(steps, prefix, ifname, netlink.MAIN_TABLE)
            routed[prefix.version].append(prefix)
    return default_table


def _free_table() -> int:
    table = FIRST_AUTO_TABLE
    while netlink.routes(4, table=table) or netlink.routes(6, table=table):
        table += 1
    return table


def _add_route(steps: Steps, prefix: IPNetwork, ifname: str, table: int) -> None:
    where = "" if table == netlink.MAIN_TABLE else f" table {table}"
    steps.do(
        f"adding route {prefix} via {ifname}{where}",
        lambda: netlink.add_route(prefix, ifname, table=table),
        f"removing route {prefix} via {ifname}{where}",
        unless_gone(lambda: netlink.del_route(prefix, ifname, table=table)),
    )


def _add_default_route(steps: Steps, prefix: IPNetwork, ifname: str, table: int) -> None:
    """wg-quick's default route: a table of its own, entered by packets without the mark.

    `not fwmark T table T` sends everything but the endpoint's own (marked) packets to the
    tunnel's table; `table main suppress_prefixlength 0` first lets more specific routes of
    the main table (the LAN, the tunnel's peers) win over the main table's default route.
    """
    version = prefix.version
    _remove_leftover_rules(version, table)
    _add_rule(
        steps, f"adding rule -{version} not fwmark {table} table {table}",
        lambda: netlink.add_rule(version, table, fwmark=table, invert=True),
    )
    _add_rule(
        steps, f"adding rule -{version} table main suppress_prefixlength 0",
        lambda: netlink.add_rule(version, netlink.MAIN_TABLE, suppress_prefixlength=0),
    )
    _add_route(steps, prefix, ifname, table)
    if version == 4:
        # Reverse-path filtering must see the mark, or replies to the endpoint's marked
        # packets are dropped. Left set on teardown as wg-quick does: other tunnels may
        # rely on it and it changes nothing for unmarked traffic.
        try:
            SRC_VALID_MARK.write_text("1\n")
        except OSError as err:
            raise SetupError(
                f"setting net.ipv4.conf.all.src_valid_mark=1: {reason(err)}"
            ) from err


def _remove_leftover_rules(version: int, table: int) -> None:
    """A run killed before its teardown (SIGKILL, a crash) leaves its two rules behind,
    while its table empties with its interface. A `not fwmark T table T` rule for our table
    while that table holds no route is such a leftover: remove it, and one `table main
    suppress_prefixlength 0` rule with each, so restarts do not pile rules up."""
    try:
        if netlink.routes(version, table=table):
            return
        found = netlink.rules(version)
        stale = [r for r in found if r.table == table and r.fwmark == table and r.invert]
        suppress = [r for r in found if r.table == netlink.MAIN_TABLE and r.fwmark is None
                    and r.suppress_prefixlength == 0]
        for rule in stale + suppress[:len(stale)]:
            log.warning("removing rule %s, left by a run that did not stop cleanly",
                        rule.describe())
            netlink.del_rule(rule)
    except (OSError, LookupError) as err:
        raise SetupError(f"removing leftover rules for table {table}: {reason(err)}") from err


def _add_rule(steps: Steps, doing: str, add: Callable[[], netlink.Rule]) -> None:
    log.debug("[#] %s", doing)
    try:
        rule = add()
    except (OSError, LookupError) as err:
        raise SetupError(f"{doing}: {reason(err)}") from err
    steps.record(f"removing rule {rule.describe()}", unless_gone(lambda: netlink.del_rule(rule)))
