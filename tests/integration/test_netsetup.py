"""netsetup against the real kernel: addresses, MTU, routes, fwmark rules, DNS, hooks, undo.

Each test configures a TUN in a fresh namespace, reads the result back with `ip`, tears down.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from lab import netns
from lab.netns import Host, Lab
from vpn.host import dns, netsetup, routes
from vpn.host.netsetup import InterfaceSetup, SetupError
from vpn.io.tun import TunDevice

pytestmark = pytest.mark.netns

IF = "wg0"


def net(*cidrs: str) -> tuple:
    return tuple(ipaddress.ip_network(c) for c in cidrs)


def addrs(*cidrs: str) -> tuple:
    return tuple(ipaddress.ip_interface(c) for c in cidrs)


def setup(**kw: object) -> InterfaceSetup:
    base: dict = {"ifname": IF, "addresses": addrs("198.18.1.1/24"), "mtu": 1420,
                  "allowed_ips": ()}
    return InterfaceSetup(**{**base, **kw})


@contextmanager
def tun_in(host: Host) -> Iterator[None]:
    with netns.inside(host.ns), TunDevice.open(IF):
        yield


def ip(host: Host, *args: str) -> str:
    return host.run("ip", *args).stdout


def wg0_state(host: Host) -> str:
    """Everything netsetup may have touched, for before/after comparisons."""
    return "\n".join([
        ip(host, "-o", "addr", "show", "dev", IF),
        # The kernel attaches a qdisc when a link first goes up and keeps it: not ours.
        re.sub(r" qdisc \S+", "", ip(host, "-o", "link", "show", "dev", IF)),
        ip(host, "-4", "route", "show", "table", "all"),
        ip(host, "-6", "route", "show", "table", "all"),
        ip(host, "-4", "rule"),
        ip(host, "-6", "rule"),
    ])


def test_addresses_mtu_and_link_state(lab: Lab) -> None:
    host = lab.host("n")
    with tun_in(host):
        before = wg0_state(host)
        applied = netsetup.apply(setup(addresses=addrs("198.18.1.1/24", "fd00:1::1/64"),
                                       mtu=1380))
        shown = ip(host, "-o", "addr", "show", "dev", IF)
        assert "inet 198.18.1.1/24" in shown and "inet6 fd00:1::1/64" in shown
        link = ip(host, "link", "show", "dev", IF)
        assert "mtu 1380" in link and ",UP" in link
        assert applied.fwmark is None
        assert netsetup.teardown(applied) == []
        assert wg0_state(host) == before
        assert "198.18.1.1" not in wg0_state(host) and ",UP" not in ip(host, "link", "show", IF)


def test_auto_routes_one_per_prefix_skipping_covered(lab: Lab) -> None:
    host = lab.host("n")
    with tun_in(host):
        before = wg0_state(host)
        applied = netsetup.apply(setup(
            addresses=addrs("198.18.1.1/24", "fd00:1::1/64"),
            # 198.18.1.0/24 and fd00:1::/64 are carried by the addresses' own routes.
            allowed_ips=net("198.18.2.0/24", "198.18.3.5/32", "198.18.1.0/24",
                            "fd00:2::/48", "fd00:1::/64"),
        ))
        v4, v6 = ip(host, "-4", "route", "show", "dev", IF), ip(host, "-6", "route", "show",
                                                                 "dev", IF)
        assert "198.18.2.0/24 scope link" in v4 and "198.18.3.5 scope link" in v4
        assert "fd00:2::/48 metric 1024" in v6
        assert v4.count("198.18.1.0/24") == 1 and v6.count("fd00:1::/64") == 1
        assert "table 51820" not in ip(host, "-4", "route", "show", "table", "all")
        assert "lookup 51820" not in ip(host, "rule") and applied.fwmark is None
        assert netsetup.teardown(applied) == []
        assert wg0_state(host) == before


def test_default_route_gets_its_own_table_and_fwmark_rules(lab: Lab) -> None:
    host = lab.host("n")
    with tun_in(host):
        before = wg0_state(host)
        applied = netsetup.apply(setup(
            addresses=addrs("198.18.1.1/32", "fd00:1::1/128"),
            allowed_ips=net("0.0.0.0/0", "::/0", "198.18.4.0/24"),
        ))
        assert applied.fwmark == applied.default_table == 51820
        for family in ("-4", "-6"):
            rules = ip(host, family, "rule").splitlines()
            suppress = [r for r in rules if "lookup main suppress_prefixlength 0" in r]
            marked = [r for r in rules if "not from all fwmark 0xca6c lookup 51820" in r]
            assert len(suppress) == 1 and len(marked) == 1, rules
            # The main table's specific routes must be consulted before the tunnel's table.
            assert int(suppress[0].split(":")[0]) < int(marked[0].split(":")[0])
            assert f"default dev {IF}" in ip(host, family, "route", "show", "table", "51820")
        assert "198.18.4.0/24" in ip(host, "route", "show", "dev", IF)
        src_valid_mark = host.run("cat", "/proc/sys/net/ipv4/conf/all/src_valid_mark")
        assert src_valid_mark.stdout.strip() == "1"
        assert netsetup.teardown(applied) == []
        assert wg0_state(host) == before
        assert "table 51820" not in ip(host, "-6", "route", "show", "table", "all")


def test_rules_left_by_a_killed_run_are_removed_at_the_next_start(lab: Lab) -> None:
    host = lab.host("n")
    config = setup(addresses=addrs("198.18.1.1/32", "fd00:1::1/128"),
                   allowed_ips=net("0.0.0.0/0", "::/0"))
    before = [ip(host, family, "rule") for family in ("-4", "-6")]
    # A run killed by SIGKILL: set up, then the TUN closes without any teardown.
    with tun_in(host):
        netsetup.apply(config)
    assert [ip(host, family, "rule") for family in ("-4", "-6")] != before
    with tun_in(host):
        applied = netsetup.apply(config)
        for family in ("-4", "-6"):
            rules = ip(host, family, "rule")
            assert rules.count("suppress_prefixlength 0") == 1, rules
            assert rules.count("lookup 51820") == 1, rules
        assert netsetup.teardown(applied) == []
    assert [ip(host, family, "rule") for family in ("-4", "-6")] == before


def test_default_route_table_skips_used_tables_and_follows_fwmark(lab: Lab) -> None:
    host = lab.host("n")
    host.run("ip", "route", "add", "blackhole", "198.18.9.0/24", "table", "51820")
    with tun_in(host):
        applied = netsetup.apply(setup(allowed_ips=net("0.0.0.0/0")))
        assert applied.fwmark == 51821
        assert "not from all fwmark 0xca6d lookup 51821" in ip(host, "rule")
        assert netsetup.teardown(applied) == []
        # A configured FwMark is the table, as wg-quick does it.
        applied = netsetup.apply(setup(allowed_ips=net("::/0"), fwmark=0x1234))
        assert applied.fwmark == applied.default_table == 0x1234
        assert "not from all fwmark 0x1234 lookup 4660" in ip(host, "-6", "rule")
        assert netsetup.teardown(applied) == []
        assert "4660" not in ip(host, "-6", "rule")


def test_configured_fwmark_is_reported_without_a_default_route(lab: Lab) -> None:
    host = lab.host("n")
    with tun_in(host):
        applied = netsetup.apply(setup(allowed_ips=net("198.18.2.0/24"), fwmark=77))
        assert applied.fwmark == 77 and applied.default_table is None
        assert "fwmark" not in ip(host, "rule")
        netsetup.teardown(applied)


def test_table_off_adds_no_routes_or_rules(lab: Lab) -> None:
    host = lab.host("n")
    with tun_in(host):
        before_rules = ip(host, "rule")
        applied = netsetup.apply(setup(table="off",
                                       allowed_ips=net("0.0.0.0/0", "198.18.2.0/24")))
        routes = ip(host, "-4", "route", "show", "table", "all", "dev", IF)
        assert "198.18.2.0" not in routes and "default" not in routes
        assert ip(host, "rule") == before_rules and applied.fwmark is None
        assert "198.18.1.1/24" in ip(host, "addr", "show", IF)  # the rest still happens
        assert netsetup.teardown(applied) == []


def test_numbered_table_takes_every_route_without_rules(lab: Lab) -> None:
    host = lab.host("n")
    with tun_in(host):
        before = wg0_state(host)
        applied = netsetup.apply(setup(table="1234",
                                       allowed_ips=net("0.0.0.0/0", "198.18.2.0/24", "::/0")))
        v4 = ip(host, "-4", "route", "show", "table", "1234")
        assert f"default dev {IF}" in v4 and f"198.18.2.0/24 dev {IF}" in v4
        assert f"default dev {IF}" in ip(host, "-6", "route", "show", "table", "1234")
        assert "198.18.2.0" not in ip(host, "route", "show")  # not in main
        assert "1234" not in ip(host, "rule") and applied.fwmark is None
        assert netsetup.teardown(applied) == []
        assert wg0_state(host) == before


def test_table_names(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rt_tables = tmp_path / "rt_tables"
    rt_tables.write_text("# comment\n254 main\n100\tvpn # ours\n0x20 hexed\n")
    (tmp_path / "rt_tables.d").mkdir()
    (tmp_path / "rt_tables.d" / "more.conf").write_text("300 extra\n100 ignored-dup\n")
    monkeypatch.setattr(routes, "RT_TABLES_FILES", (rt_tables, tmp_path / "missing"))
    assert routes.parse_table("auto") == "auto" and routes.parse_table("Off") == "off"
    assert routes.parse_table("vpn") == 100 and routes.parse_table("extra") == 300
    assert routes.parse_table("hexed") == 0x20 and routes.parse_table("main") == 254
    assert routes.parse_table("1234") == 1234 and routes.parse_table("0x10") == 16
    with pytest.raises(SetupError, match="Table = nope: not auto, off, a number or a table"):
        routes.parse_table("nope")
    with pytest.raises(SetupError, match="numbered 1 to"):
        routes.parse_table("0")


def test_unknown_table_name_fails_before_anything(lab: Lab) -> None:
    host = lab.host("n")
    with tun_in(host):
        before = wg0_state(host)
        with pytest.raises(SetupError, match="Table = no-such-table"):
            netsetup.apply(setup(table="no-such-table", allowed_ips=net("198.18.2.0/24")))
        assert wg0_state(host) == before


def test_failing_postup_undoes_everything(lab: Lab) -> None:
    host = lab.host("n")
    with tun_in(host):
        before = wg0_state(host)
        with pytest.raises(SetupError, match="PostUp hook `exit 3` failed with exit status 3"):
            netsetup.apply(setup(
                addresses=addrs("198.18.1.1/24", "fd00:1::1/64"), mtu=1300,
                allowed_ips=net("0.0.0.0/0", "::/0", "198.18.2.0/24", "fd00:2::/48"),
                post_up=("exit 3",),
            ))
        assert wg0_state(host) == before


def test_route_that_cannot_be_added_undoes_the_rest(lab: Lab) -> None:
    host = lab.host("n")
    # Another device already holds the identical route, so the kernel refuses ours.
    host.run("ip", "link", "add", "other0", "type", "veth", "peer", "name", "other1")
    host.run("ip", "link", "set", "other0", "up")
    host.run("ip", "route", "add", "198.18.9.0/24", "dev", "other0")
    with tun_in(host):
        before = wg0_state(host)
        with pytest.raises(SetupError) as info:
            netsetup.apply(setup(
                addresses=addrs("198.18.1.1/24", "fd00:1::1/64"),
                allowed_ips=net("198.18.2.0/24", "fd00:2::/48", "198.18.9.0/24"),
            ))
        assert str(info.value) == f"adding route 198.18.9.0/24 via {IF}: File exists"
        assert wg0_state(host) == before
        assert "198.18.9.0/24 dev other0" in ip(host, "route", "show")


def test_hooks_substitute_the_interface_and_run_in_its_namespace(
    lab: Lab, tmp_path: Path
) -> None:
    host = lab.host("n")
    log = tmp_path / "hooks.log"
    hooks = {
        stage: (f"echo {stage} %i >> {log}",)
        for stage in ("pre_up", "post_up", "pre_down", "post_down")
    }
    # Only in the namespace does `ip link show wg0` find the device.
    hooks["post_up"] += (f"ip -o link show %i | grep -q %i && echo seen >> {log}",)
    with tun_in(host):
        applied = netsetup.apply(setup(**hooks))
        assert netsetup.teardown(applied) == []
        assert log.read_text().split("\n") == [
            "pre_up wg0", "post_up wg0", "seen", "pre_down wg0", "post_down wg0", ""]
        log.unlink()
        applied = netsetup.apply(setup(**hooks), run_hooks=False)
        assert netsetup.teardown(applied) == [] and not log.exists()


def test_failing_down_hooks_are_reported_not_raised(lab: Lab) -> None:
    host = lab.host("n")
    with tun_in(host):
        before = wg0_state(host)
        applied = netsetup.apply(setup(allowed_ips=net("198.18.2.0/24"),
                                       pre_down=("false",), post_down=("exit 4",)))
        errors = netsetup.teardown(applied)
        assert errors == ["PreDown hook `false` failed with exit status 1",
                          "PostDown hook `exit 4` failed with exit status 4"]
        assert wg0_state(host) == before


def test_dns_without_resolvconf_fails_before_anything(
    lab: Lab, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    host = lab.host("n")
    marker = tmp_path / "preup-ran"
    with tun_in(host):
        before = wg0_state(host)
        with monkeypatch.context() as m:
            m.setenv("PATH", str(tmp_path))  # wherever resolvconf is, not on this PATH
            with pytest.raises(SetupError) as info:
                netsetup.apply(setup(
                    dns_servers=(ipaddress.ip_address("198.18.0.53"),),
                    dns_search=("example.test",),
                    pre_up=(f"touch {marker}",),
                ))
        assert str(info.value) == (
            "DNS = 198.18.0.53, example.test needs resolvconf (apt-get install openresolv), "
            "which is not installed"
        )
        assert not marker.exists() and wg0_state(host) == before


def test_dns_through_resolvconf(
    lab: Lab, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Our own test double of the external command: it records its arguments and input.
    calls = tmp_path / "calls"
    fake = tmp_path / "bin" / "resolvconf"
    fake.parent.mkdir()
    fake.write_text(f'#!/bin/sh\n{{ echo "args: $*"; cat; }} >> {calls}\n')
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake.parent}{os.pathsep}{os.environ['PATH']}")
    order = tmp_path / "interface-order"
    order.write_text("lo.inet6*\nlo.inet*\nlo\ntun*\ntap*\n*\n")
    monkeypatch.setattr(dns, "RESOLVCONF_INTERFACE_ORDER", order)
    host = lab.host("n")
    with tun_in(host):
        applied = netsetup.apply(setup(
            dns_servers=(ipaddress.ip_address("198.18.0.53"), ipaddress.ip_address("fd00::53")),
            dns_search=("a.test", "b.test"),
        ))
        assert calls.read_text() == (
            "args: -a tun.wg0 -m 0 -x\nnameserver 198.18.0.53\nnameserver fd00::53\n"
            "search a.test b.test\n"
        )
        assert netsetup.teardown(applied) == []
        assert calls.read_text().endswith("args: -d tun.wg0 -f\n")


def test_resolvconf_record_name(tmp_path: Path) -> None:
    order = tmp_path / "interface-order"
    assert dns.resolvconf_interface("wg0", order) == "wg0"  # openresolv: no such file
    order.write_text("lo.inet*\nlo\ntun*\n")
    assert dns.resolvconf_interface("wg0", order) == "tun.wg0"


def test_apply_from_a_running_event_loop(lab: Lab) -> None:
    """The endpoint calls apply() from its asyncio loop, inside the namespace it entered."""
    host = lab.host("n")

    async def up_and_down() -> list[str]:
        applied = netsetup.apply(setup(allowed_ips=net("198.18.2.0/24")))
        assert "198.18.2.0/24" in ip(host, "route", "show", "dev", IF)
        return netsetup.teardown(applied)

    with tun_in(host):
        assert asyncio.run(up_and_down()) == []
        assert "198.18.2.0/24" not in ip(host, "route", "show")


def test_auto_mtu_follows_the_route_to_the_endpoints(lab: Lab) -> None:
    a, b = lab.host("a"), lab.host("b")
    lab.link(a, b, a_addrs=["198.18.20.1/24", "fd00:20::1/64"],
             b_addrs=["198.18.20.2/24", "fd00:20::2/64"], mtu=1400)
    a.run("ip", "route", "add", "198.18.30.0/24", "dev", "to-b", "mtu", "1300")
    with netns.inside(a.ns):
        assert netsetup.auto_mtu([ipaddress.ip_address("198.18.20.2")]) == 1320
        assert netsetup.auto_mtu([ipaddress.ip_address("fd00:20::2")]) == 1320
        # A route's own mtu wins over its device's; the largest path is taken.
        assert netsetup.auto_mtu([ipaddress.ip_address("198.18.30.1")]) == 1220
        both = [ipaddress.ip_address("198.18.30.1"), ipaddress.ip_address("198.18.20.2")]
        assert netsetup.auto_mtu(both) == 1320
        # Unreachable endpoints and no default route: 1500 - 80.
        assert netsetup.auto_mtu([ipaddress.ip_address("203.0.113.1")]) == 1420
        assert netsetup.auto_mtu([]) == 1420
    a.run("ip", "route", "add", "default", "via", "198.18.20.2")
    with netns.inside(a.ns):
        assert netsetup.auto_mtu([]) == 1320
