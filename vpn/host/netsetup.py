"""The system side of bringing a tunnel interface up and down, the way wg-quick does it.

Hooks, addresses, MTU, link state, DNS (resolvconf), routes and fwmark policy rules; undone exactly.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import shutil
import subprocess
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from vpn.core.types import IPAddress
from vpn.host import netlink

log = logging.getLogger(__name__)

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface

FIRST_AUTO_TABLE = 51820  # wg-quick's first choice of table and fwmark for a default route
TUNNEL_OVERHEAD = 80  # wg-quick's margin: outer IPv6 40 + UDP 8 + WireGuard data header 32
FALLBACK_LINK_MTU = 1500
# iproute2 reads its names from /etc first, then the distribution's defaults.
RT_TABLES_FILES = (Path("/etc/iproute2/rt_tables"), Path("/usr/share/iproute2/rt_tables"))
BUILTIN_TABLES = {"default": 253, "main": netlink.MAIN_TABLE, "local": 255}
RESOLVCONF_INTERFACE_ORDER = Path("/etc/resolvconf/interface-order")
SRC_VALID_MARK = Path("/proc/sys/net/ipv4/conf/all/src_valid_mark")


class SetupError(RuntimeError):
    """A step of bringing the interface up failed; the message names the step and value."""


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
class Applied:
    """What apply() changed, in order, so that undo() reverses exactly that."""

    setup: InterfaceSetup
    run_hooks: bool
    # The mark the endpoint must put on its UDP socket (SO_MARK) so that its own packets
    # escape the tunnel's default route: FwMark, or the table picked for a default route.
    fwmark: int | None = None
    default_table: int | None = None  # the table holding the default route(s), if any
    _steps: list[tuple[str, Callable[[], None]]] = field(default_factory=list)

    @property
    def steps(self) -> list[str]:
        """What is currently in place, as the undo actions that would remove it."""
        return [what for what, _ in self._steps]

    def record(self, undoing: str, undo: Callable[[], None]) -> None:
        self._steps.append((undoing, undo))

    def undo(self) -> list[str]:
        """Reverse every step, last first; never raises. Returns what could not be undone."""
        errors = []
        while self._steps:
            undoing, action = self._steps.pop()
            log.debug("[#] %s", undoing)
            try:
                action()
            except Exception as err:
                errors.append(f"{undoing}: {_reason(err)}")
        return errors


def apply(setup: InterfaceSetup, *, run_hooks: bool = True) -> Applied:
    """Configure the existing interface `setup.ifname`; all or nothing.

    Order as wg-quick: PreUp hooks, addresses, MTU, link up, DNS, routes (and rules),
    PostUp hooks. On failure every step already taken is undone and SetupError raised.
    """
    # Everything that can be checked without touching the system is, first.
    table = parse_table(setup.table)
    if setup.dns_servers or setup.dns_search:
        _check_resolvconf(setup)
    applied = Applied(setup, run_hooks, fwmark=setup.fwmark or None)
    try:
        if run_hooks:
            for command in setup.pre_up:
                run_hook("PreUp", command, setup.ifname)
        try:
            link = netlink.get_link(setup.ifname)
        except (OSError, LookupError) as err:
            raise SetupError(f"reading interface {setup.ifname}: {_reason(err)}") from err
        for address in setup.addresses:
            _step(
                applied, f"adding address {address} to {setup.ifname}",
                lambda a=address: netlink.add_address(setup.ifname, a),
                f"removing address {address} from {setup.ifname}",
                _unless_gone(lambda a=address: netlink.del_address(setup.ifname, a)),
            )
        if link.mtu != setup.mtu:
            _step(
                applied, f"setting MTU {setup.mtu} on {setup.ifname}",
                lambda: netlink.set_mtu(setup.ifname, setup.mtu),
                f"restoring MTU {link.mtu} on {setup.ifname}",
                lambda: netlink.set_mtu(setup.ifname, link.mtu),
            )
        if not link.up:
            _step(
                applied, f"setting {setup.ifname} up",
                lambda: netlink.set_up(setup.ifname, True),
                f"setting {setup.ifname} down",
                lambda: netlink.set_up(setup.ifname, False),
            )
        if setup.dns_servers or setup.dns_search:
            _set_dns(applied, setup)
        if table != "off":
            _add_routes(applied, setup, table)
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


# --- tables -----------------------------------------------------------------------------


def parse_table(value: str) -> str | int:
    """Table = auto | off | number | name from rt_tables; SetupError for anything else."""
    word = value.strip()
    if word.lower() in ("auto", "off"):
        return word.lower()
    try:
        number = int(word, 16) if word.lower().startswith("0x") else int(word, 10)
    except ValueError:
        number = table_names().get(word)
        if number is None:
            files = " or ".join(str(p) for p in RT_TABLES_FILES)
            raise SetupError(
                f"Table = {word}: not auto, off, a number or a table name in {files}"
            ) from None
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


# --- steps ------------------------------------------------------------------------------


def _reason(err: BaseException) -> str:
    if isinstance(err, OSError) and err.strerror:
        return err.strerror
    if isinstance(err, LookupError) and err.args:
        return str(err.args[0])
    return str(err) or type(err).__name__


def _step(
    applied: Applied, doing: str, do: Callable[[], None], undoing: str, undo: Callable[[], None]
) -> None:
    """Do one system change and remember how to reverse it; SetupError names the step."""
    log.debug("[#] %s", doing)
    try:
        do()
    except (OSError, LookupError) as err:
        raise SetupError(f"{doing}: {_reason(err)}") from err
    applied.record(undoing, undo)


def _unless_gone(remove: Callable[[], None]) -> Callable[[], None]:
    """A removal that counts as done when the thing is already gone.

    Some go by themselves: the kernel drops IPv6 addresses when the link goes down, and
    routes and rules may have been removed by hand or with the device.
    """

    def run() -> None:
        try:
            remove()
        except OSError as err:
            if err.errno not in (errno.EADDRNOTAVAIL, errno.ESRCH, errno.ENOENT, errno.ENODEV):
                raise
        except LookupError:
            pass  # the interface itself is gone, and all it carried with it

    return run


def _add_routes(applied: Applied, setup: InterfaceSetup, table: str | int) -> None:
    ifname = setup.ifname
    # Most specific first, as wg-quick sorts `wg show allowed-ips`.
    prefixes = sorted(set(setup.allowed_ips), key=lambda n: (-n.prefixlen, n.version, n))
    # The main table's routes through this interface, read once and kept current here:
    # one dump per prefix would make a few hundred AllowedIPs take seconds.
    routed: dict[int, list[IPNetwork]] = {}
    for prefix in prefixes:
        if isinstance(table, int):
            _add_route(applied, prefix, ifname, table)
        elif prefix.prefixlen == 0:
            _add_default_route(applied, prefix, ifname)
        else:
            if prefix.version not in routed:
                routed[prefix.version] = netlink.routes(prefix.version, ifname=ifname)
            if any(prefix.subnet_of(r) for r in routed[prefix.version]):  # type: ignore[arg-type]
                # Like wg-quick: a route through this interface already carries the
                # prefix, typically the kernel's route for an Address in the same subnet.
                log.debug("[#] %s already routed through %s", prefix, ifname)
                continue
            _add_route(applied, prefix, ifname, netlink.MAIN_TABLE)
            routed[prefix.version].append(prefix)


def _add_route(applied: Applied, prefix: IPNetwork, ifname: str, table: int) -> None:
    where = "" if table == netlink.MAIN_TABLE else f" table {table}"
    _step(
        applied, f"adding route {prefix} via {ifname}{where}",
        lambda: netlink.add_route(prefix, ifname, table=table),
        f"removing route {prefix} via {ifname}{where}",
        _unless_gone(lambda: netlink.del_route(prefix, ifname, table=table)),
    )


def _add_default_route(applied: Applied, prefix: IPNetwork, ifname: str) -> None:
    """wg-quick's default route: a table of its own, entered by packets without the mark.

    `not fwmark T table T` sends everything but the endpoint's own (marked) packets to the
    tunnel's table; `table main suppress_prefixlength 0` first lets more specific routes of
    the main table (the LAN, the tunnel's peers) win over the main table's default route.
    """
    if applied.default_table is None:
        table = applied.fwmark
        if table is None:
            table = FIRST_AUTO_TABLE
            while netlink.routes(4, table=table) or netlink.routes(6, table=table):
                table += 1
        applied.default_table = applied.fwmark = table
    table = applied.default_table
    version = prefix.version
    _remove_leftover_rules(version, table)
    _add_rule(
        applied, f"adding rule -{version} not fwmark {table} table {table}",
        lambda: netlink.add_rule(version, table, fwmark=table, invert=True),
    )
    _add_rule(
        applied, f"adding rule -{version} table main suppress_prefixlength 0",
        lambda: netlink.add_rule(version, netlink.MAIN_TABLE, suppress_prefixlength=0),
    )
    _add_route(applied, prefix, ifname, table)
    if version == 4:
        # Reverse-path filtering must see the mark, or replies to the endpoint's marked
        # packets are dropped. Left set on teardown as wg-quick does: other tunnels may
        # rely on it and it changes nothing for unmarked traffic.
        try:
            SRC_VALID_MARK.write_text("1\n")
        except OSError as err:
            raise SetupError(
                f"setting net.ipv4.conf.all.src_valid_mark=1: {_reason(err)}"
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
        raise SetupError(f"removing leftover rules for table {table}: {_reason(err)}") from err


def _add_rule(applied: Applied, doing: str, add: Callable[[], netlink.Rule]) -> None:
    log.debug("[#] %s", doing)
    try:
        rule = add()
    except (OSError, LookupError) as err:
        raise SetupError(f"{doing}: {_reason(err)}") from err
    applied.record(
        f"removing rule {rule.describe()}", _unless_gone(lambda: netlink.del_rule(rule))
    )


# --- DNS --------------------------------------------------------------------------------


def _check_resolvconf(setup: InterfaceSetup) -> None:
    if shutil.which("resolvconf") is None:
        values = ", ".join([*map(str, setup.dns_servers), *setup.dns_search])
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


def _set_dns(applied: Applied, setup: InterfaceSetup) -> None:
    name = resolvconf_interface(setup.ifname)
    lines = [f"nameserver {server}\n" for server in setup.dns_servers]
    if setup.dns_search:
        lines.append(f"search {' '.join(setup.dns_search)}\n")
    _step(
        applied, f"setting DNS through resolvconf -a {name}",
        lambda: _resolvconf(["-a", name, "-m", "0", "-x"], "".join(lines)),
        f"removing DNS through resolvconf -d {name}",
        lambda: _resolvconf(["-d", name, "-f"], ""),
    )


def _resolvconf(args: Sequence[str], stdin: str) -> None:
    proc = subprocess.run(
        ["resolvconf", *args], input=stdin, capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        detail = (proc.stderr or proc.stdout).strip() or f"exit status {proc.returncode}"
        raise OSError(0, detail)


# --- hooks ------------------------------------------------------------------------------


def run_hook(stage: str, command: str, ifname: str) -> None:
    """Run one PreUp/PostUp/PreDown/PostDown command with bash, `%i` as the interface.

    Output goes where ours goes, as with wg-quick: capturing it would also make us wait
    for any background process the hook starts, which keeps the pipe open.
    """
    command = command.replace("%i", ifname)
    log.info("%s: %s", stage, command)
    try:
        proc = subprocess.run(["bash", "-c", command], stdin=subprocess.DEVNULL, check=False)
    except OSError as err:
        raise SetupError(f"{stage} hook `{command}`: {_reason(err)}") from err
    if proc.returncode != 0:
        raise SetupError(f"{stage} hook `{command}` failed with exit status {proc.returncode}")


def run_hooks_reporting(stage: str, commands: Sequence[str], ifname: str) -> list[str]:
    """Run hooks whose failure must not stop a teardown; return the failures as text."""
    errors = []
    for command in commands:
        try:
            run_hook(stage, command, ifname)
        except SetupError as err:
            errors.append(str(err))
    return errors
