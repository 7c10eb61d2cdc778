"""The interface's host side, from open to close: the TUN device, what wg-quick does around
it (hooks, MTU, addresses, routes, DNS) when the endpoint sets the host up, and the link
events of whoever else drives it (wg-quick's `ip link set mtu` and `ip link delete`)."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
from collections.abc import Callable

from vpn.control.config_model import Config
from vpn.core.types import Address
from vpn.host import netlink, netsetup
from vpn.host.linkwatch import LinkWatch
from vpn.io.tun import TunDevice

log = logging.getLogger("vpn.endpoint")  # the name people read, as the endpoint's others

# A userspace interface's MTU until wg-quick sets its own, as wireguard-go's DefaultMTU.
USERSPACE_MTU = 1420


class Interface:
    """One interface's TUN and host setup. `on_deleted` runs once when it is deleted under
    us; `on_mtu` when its MTU is set from outside."""

    def __init__(self, name: str, *, host_setup: bool, on_deleted: Callable[[], None],
                 on_mtu: Callable[[int], None]) -> None:
        self.name = name
        # False: the TUN only, as wireguard-go; whoever started us (wg-quick) sets
        # addresses, MTU and routes with `ip`, and deleting the link stops us.
        self.host_setup = host_setup
        self._on_deleted = on_deleted
        self._on_mtu = on_mtu
        self.tun: TunDevice | None = None
        self.mtu = 0
        self.deleted = False  # under us: seen by a TUN read or a link event
        self._link_watch: LinkWatch | None = None
        self._config: Config | None = None
        self._applied: netsetup.Applied | None = None
        self._setup: netsetup.InterfaceSetup | None = None

    def open(self, config: Config, endpoints: dict[bytes, Address]) -> int | None:
        """The TUN and, with host setup, what wg-quick does around it but PostUp: PreUp,
        MTU, addresses, routes, DNS. Returns the fwmark Table = auto chose, if any."""
        self._config = config
        iface = config.interface
        if not self.host_setup:
            self.tun = TunDevice.open(self.name, vnet_hdr=True, offload=True)
            self.mtu = USERSPACE_MTU
            netlink.set_mtu(self.tun.name, self.mtu)
            self._link_watch = LinkWatch(socket.if_nametoindex(self.tun.name))
            return None
        # As wg-quick: PreUp runs before the interface exists; a failure stops everything.
        for command in iface.pre_up:
            netsetup.run_hook("PreUp", command, self.name)
        self.tun = TunDevice.open(self.name, vnet_hdr=iface.offload, offload=iface.offload)
        self.mtu = iface.mtu or netsetup.auto_mtu(
            (ipaddress.ip_address(addr[0]) for addr in endpoints.values()),
            fwmark=iface.fwmark,
        )
        self._setup = netsetup.InterfaceSetup(
            ifname=self.tun.name,
            addresses=iface.addresses,
            mtu=self.mtu,
            allowed_ips=tuple(n for p in config.peers for n in p.allowed_ips),
            table=iface.table,
            fwmark=iface.fwmark,
            dns_servers=iface.dns_servers,
            dns_search=iface.dns_search,
            pre_up=(),  # already run
            post_up=(),  # run by run_post_up once the management socket serves
            pre_down=iface.pre_down,
            post_down=(),  # run by close once the interface is gone
        )
        self._applied = netsetup.apply(self._setup)
        return self._applied.fwmark

    async def run_post_up(self) -> None:
        """PostUp, in a thread (its hooks may talk to our own management socket, which the
        loop answers meanwhile). A failure undoes the host setup, without PreDown or
        PostDown as for a failed setup, and raises."""
        assert self._config is not None  # opened
        try:
            for command in self._config.interface.post_up:
                await asyncio.to_thread(netsetup.run_hook, "PostUp", command, self.name)
        except BaseException:
            if self._applied is not None:
                for problem in self._applied.undo():
                    log.warning("teardown: %s", problem)
                self._applied = None
            raise

    def watch(self) -> None:
        """Hear the link events (a userspace interface's only: with host setup we set it up
        and nobody else changes it)."""
        if self._link_watch is not None:
            asyncio.get_running_loop().add_reader(self._link_watch.fd, self._on_link_events)

    def _on_link_events(self) -> None:
        assert self._link_watch is not None
        for event in self._link_watch.events():
            if event.deleted:
                self.gone()
                return
            if event.mtu is not None and event.mtu != self.mtu:
                self.mtu = event.mtu
                self._on_mtu(event.mtu)

    def gone(self) -> None:
        """The interface is gone (seen by a TUN read or a link event, whichever first)."""
        if self.deleted:
            return  # the other of the two saw it first
        self.deleted = True
        self.unwatch()
        log.info("interface %s was deleted: stopping", self.name)
        self._on_deleted()

    def unwatch(self) -> None:
        """Stop reading the TUN and the link events."""
        loop = asyncio.get_running_loop()
        for dev in (self.tun, self._link_watch):
            if dev is not None and dev.fd >= 0:
                loop.remove_reader(dev.fd)

    def alive(self) -> bool:
        return not self.deleted and self.tun is not None and self.tun.fd >= 0

    def close(self) -> list[str]:
        """Undo the host setup and close the TUN, and with it the interface; then PostDown,
        if it was up. Returns what could not be undone."""
        problems = []
        was_up = self._applied is not None
        if self._applied is not None and self._setup is not None:
            gone = netsetup.teardown(self._applied, self._setup)
            # Deleted under us (`ip link del`): its addresses and routes went with it, and
            # failing to remove them again is expected, not worth a warning.
            for problem in gone if self.deleted else ():
                log.debug("teardown: %s (the interface was deleted already)", problem)
            problems += [] if self.deleted else gone
            self._applied = None
        if self._link_watch is not None:
            self._link_watch.close()
            self._link_watch = None
        if self.tun is not None:
            self.tun.close()  # the kernel removes the device, its addresses and routes
            self.tun = None
        if was_up and self._config is not None:
            # As wg-quick: PostDown once the interface is gone, and only if it was up.
            problems += netsetup.run_hooks_reporting(
                "PostDown", self._config.interface.post_down, self.name)
        return problems
