"""wg-quick's firewall rules for a tunnel's default route, per address family.

They drop packets for the tunnel's own addresses that arrive on another interface, and carry
the endpoint's fwmark through conntrack so that replies to its UDP packets are routed (and
pass the reverse-path check) as the marked packets were. With `nft` on the PATH (wg-quick's
`type -p nft`) a table `ip|ip6 wg-quick-IFACE`, else iptables-restore rules tagged with
wg-quick's comment: written exactly as wg-quick writes them, so the host looks the same, and
found again by those names at teardown or after a run that was killed before it.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from collections.abc import Iterable, Sequence

from vpn.core.types import IPAddress
from vpn.host import netlink
from vpn.host.steps import SetupError, Steps, reason

log = logging.getLogger("vpn.host.netsetup")  # the host setup's one logger (see steps.py)

NFT_FAMILY = {4: "ip", 6: "ip6"}
IPTABLES = {4: "iptables", 6: "ip6tables"}
TOOL_TIMEOUT = 30.0  # seconds; these tools answer in milliseconds unless the host is stuck


def nft_table(ifname: str) -> str:
    return f"wg-quick-{ifname}"


def iptables_marker(ifname: str) -> str:
    return f'-m comment --comment "wg-quick(8) rule for {ifname}"'


def nft_script(ifname: str, version: int, addresses: Iterable[IPAddress], mark: int) -> str:
    """The `nft -f` input wg-quick writes for one family's default route."""
    pf = NFT_FAMILY[version]
    table = f"{pf} {nft_table(ifname)}"
    lines = [
        f"add table {table}",
        f"add chain {table} preraw {{ type filter hook prerouting priority -300; }}",
        f"add chain {table} premangle {{ type filter hook prerouting priority -150; }}",
        f"add chain {table} postmangle {{ type filter hook postrouting priority -150; }}",
    ]
    lines += [f'add rule {table} preraw iifname != "{ifname}" {pf} daddr {address} '
              "fib saddr type != local drop" for address in addresses]
    lines += [f"add rule {table} postmangle meta l4proto udp mark {mark} ct mark set mark",
              f"add rule {table} premangle meta l4proto udp meta mark set ct mark"]
    return "\n".join(lines) + "\n"


def iptables_script(ifname: str, addresses: Iterable[IPAddress], mark: int) -> str:
    """The `iptables-restore -n` input wg-quick writes where nft is absent (either family)."""
    marker = iptables_marker(ifname)
    lines = ["*raw"]
    lines += [f"-I PREROUTING ! -i {ifname} -d {address} -m addrtype ! --src-type LOCAL "
              f"-j DROP {marker}" for address in addresses]
    lines += ["COMMIT", "*mangle",
              f"-I POSTROUTING -m mark --mark {mark} -p udp -j CONNMARK --save-mark {marker}",
              f"-I PREROUTING -p udp -j CONNMARK --restore-mark {marker}",
              "COMMIT"]
    return "\n".join(lines) + "\n"


def nft_deletions(listing: str, ifname: str) -> str:
    """`nft -f` input deleting the interface's tables named in `nft list tables` output."""
    suffix = f" {nft_table(ifname)}"
    return "".join(f"delete {line.strip()}\n" for line in listing.splitlines()
                   if line.strip().startswith("table ") and line.strip().endswith(suffix))


def iptables_deletions(saved: str, ifname: str) -> str:
    """`iptables-restore -n` input deleting the interface's rules found in iptables-save
    output, or "" when it has none."""
    marker = iptables_marker(ifname)
    kept = []
    found = False
    for line in saved.splitlines():
        if line.startswith("-A ") and marker in line:
            kept.append("-D " + line[3:])
            found = True
        elif line.startswith("*") or line == "COMMIT":
            kept.append(line)
    return "\n".join(kept) + "\n" if found else ""


def add_default(steps: Steps, ifname: str, versions: Sequence[int], mark: int) -> None:
    """Install the rules for the default routes of `versions` through `ifname`, whose
    packets the endpoint marks with `mark`; recorded in `steps` to be removed at teardown.

    Leftovers of a run on the same interface that was killed before its teardown are
    removed first: the interface is ours now, so whatever carries its name is stale.
    """
    for removed in remove(ifname):
        log.warning("removed %s, left by a run that did not stop cleanly", removed)
    nft = shutil.which("nft")
    if nft is None and not all(shutil.which(f"{IPTABLES[v]}-restore") for v in versions):
        raise SetupError(
            f"a default route through {ifname} needs its firewall rules, as wg-quick's: "
            "neither nft nor iptables-restore is installed (the nftables or iptables package)"
        )

    def undo() -> None:
        remove(ifname)

    steps.record(f"removing the firewall rules for {ifname}", undo)
    # wg-quick's order (its `sort -nr` puts ::/0 first), which is the order nft lists them.
    for version in sorted(versions, reverse=True):
        try:
            addresses = netlink.addresses(ifname, version)
        except (OSError, LookupError) as err:
            raise SetupError(f"reading the addresses of {ifname}: {reason(err)}") from err
        if nft is not None:
            table = f"table {NFT_FAMILY[version]} {nft_table(ifname)}"
            _run(f"adding nftables {table}", [nft, "-f", "-"],
                 nft_script(ifname, version, addresses, mark))
        else:
            tool = f"{IPTABLES[version]}-restore"
            _run(f"adding {IPTABLES[version]} rules for {ifname}", [tool, "-n"],
                 iptables_script(ifname, addresses, mark))


def remove(ifname: str) -> list[str]:
    """Remove every firewall rule wg-quick (or we) installed for `ifname`, with whichever
    of nft and iptables is installed, as wg-quick's remove_firewall; returns what it removed.
    """
    removed = []
    nft = shutil.which("nft")
    if nft is not None:
        listing = _read([nft, "list", "tables"])
        script = nft_deletions(listing, ifname)
        if script:
            _run(f"removing nftables tables {nft_table(ifname)}", [nft, "-f", "-"], script)
            removed += [line.removeprefix("delete ") for line in script.splitlines()]
    for version in (4, 6):
        tool = IPTABLES[version]
        if shutil.which(f"{tool}-save") is None:
            continue
        script = iptables_deletions(_read([f"{tool}-save"]), ifname)
        if script:
            _run(f"removing {tool} rules for {ifname}", [f"{tool}-restore", "-n"], script)
            removed.append(f"{tool} rules for {ifname}")
    return removed


def _read(argv: list[str]) -> str:
    """A listing, or "" where the tool cannot list (no nf_tables in this kernel), as
    wg-quick reads it: then there is nothing of ours to remove either."""
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=TOOL_TIMEOUT)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return proc.stdout if proc.returncode == 0 else ""


def _run(doing: str, argv: list[str], script: str) -> None:
    log.debug("[#] %s", doing)
    tool = os.path.basename(argv[0])
    try:
        proc = subprocess.run(argv, input=script, capture_output=True, text=True,
                              timeout=TOOL_TIMEOUT)
    except subprocess.TimeoutExpired as err:
        raise SetupError(f"{doing}: {tool} did not answer in {TOOL_TIMEOUT:.0f} s") from err
    except OSError as err:
        raise SetupError(f"{doing}: running {tool}: {reason(err)}") from err
    if proc.returncode != 0:
        said = (proc.stderr.strip() or proc.stdout.strip()).splitlines()
        raise SetupError(f"{doing}: {tool} exited {proc.returncode}"
                         + (f": {said[0]}" if said else ""))
