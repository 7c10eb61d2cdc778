"""The endpoint: one WireGuard interface brought up from a config, as an asyncio API.

`async with Endpoint.from_config(path) as ep:` opens the TUN, applies addresses, routes and
hooks, binds the UDP socket and runs the data path until the block ends; `vpn up` uses this.
`Endpoint.userspace(name)` is the same lifecycle without a file or any host setup, for
wg-quick to drive (`vpn-userspace`).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import json
import logging
import os
import signal
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from vpn.control import running, uapi
from vpn.control.config import load, to_text
from vpn.control.config_model import Config, ConfigError, InterfaceConfig, PeerConfig
from vpn.control.config_model import Endpoint as EndpointAddress
from vpn.control.counters import Counters, gather
from vpn.control.metrics_server import Address as MetricsAddress
from vpn.control.metrics_server import MetricsServer
from vpn.control.resolve import ResolveError, retries_from
from vpn.control.resolve import resolve as resolve_endpoint
from vpn.control.show import plural
from vpn.control.uapi import UapiError
from vpn.control.uapi_server import SOCKET_DIR, UapiServer, UapiServerError
from vpn.core.keys import encode_key
from vpn.core.types import Address, endpoint_text
from vpn.core.wireguard import Device, Peer
from vpn.core.wireguard.changes import ChangeError, ChangeSet, DeviceSnapshot
from vpn.core.wireguard.peer import PeerEvent
from vpn.host import netlink, netsetup
from vpn.host.linkwatch import LinkWatch
from vpn.io import native
from vpn.io.datapath import DataPath
from vpn.io.tun import TunDevice, TunError
from vpn.io.udp import UdpError, UdpSocket

log = logging.getLogger("vpn.endpoint")

# The timers run at the core's next deadline; this much later at most is not worth a
# second wakeup (the protocol's timers are seconds-scale, their jitter 1/3 s).
TIMER_SLACK = 0.02
# The watchdog's liveness check fails when the protocol timers are this late: the loop
# still wakes for the keep-alive, but the data path's own work no longer runs.
TIMERS_LATE = 5.0
# A userspace interface's MTU until wg-quick sets its own, as wireguard-go's DefaultMTU.
USERSPACE_MTU = 1420


class EndpointError(RuntimeError):
    """The endpoint could not start or do what was asked; nothing half-done is left."""


# Everything start() may raise for a reason a user can fix; the message says which.
StartError = (EndpointError, TunError, netsetup.SetupError, UapiServerError, OSError)


class Endpoint:
    """A running WireGuard interface. Start with `start()` or `async with`."""

    def __init__(
        self,
        config: Config,
        *,
        interface: str | None = None,
        clock: Callable[[], float] = time.monotonic,
        socket_dir: Path = SOCKET_DIR,
        on_down: Callable[[], None] | None = None,
        host_setup: bool = True,
        metrics: MetricsAddress | None = None,
    ) -> None:
        self.config = config
        # False: the TUN and the socket only, as wireguard-go; whoever started us (wg-quick)
        # sets addresses, MTU and routes with `ip`, and deleting the link stops us.
        self.host_setup = host_setup
        self._link_watch: LinkWatch | None = None
        self._deleted = False  # under us: seen by a TUN read or a link event
        self.name = interface or config.interface_name
        self.clock = clock
        self.device: Device | None = None
        self.tun: TunDevice | None = None
        self.udp: UdpSocket | None = None
        self.datapath: DataPath | None = None
        self.mtu = 0
        self._applied: netsetup.Applied | None = None
        self._setup: netsetup.InterfaceSetup | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = float("inf")
        self._stopped = asyncio.Event()
        self.socket_dir = socket_dir
        self.uapi: UapiServer | None = None
        self.metrics_address = metrics  # HOST:PORT to serve /metrics on; None: off
        self.metrics: MetricsServer | None = None
        # `vpn down` (set=vpn-down): by default the process signals itself, which is exactly
        # what `vpn up` already stops cleanly on; a library user passes its own callback.
        self.on_down = on_down or (lambda: os.kill(os.getpid(), signal.SIGTERM))
        self.handshakes_completed = 0
        self._in_session: set[bytes] = set()  # peers whose session's first handshake is logged
        self._reload_task: asyncio.Task[None] | None = None

    @classmethod
    def from_config(cls, path: str | Path, *, interface: str | None = None,
                    metrics: MetricsAddress | None = None) -> Endpoint:
        """Load and validate a wg-quick style file (ConfigError on a bad one)."""
        config, warnings = load(path, interface)
        _log_warnings(warnings)
        return cls(config, metrics=metrics)

    @classmethod
    def userspace(cls, name: str, *, metrics: MetricsAddress | None = None) -> Endpoint:
        """An interface with no config file, no private key, no peers and no host setup:
        everything arrives over the management socket (`wg setconf`) and `ip`. Raises
        ConfigError for a bad interface name."""
        config = Config(path="", interface=InterfaceConfig(private_key=None), name=name)
        return cls(config, host_setup=False, metrics=metrics)

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        """Bring the interface up; on any failure undo what was done and raise."""
        loop = asyncio.get_running_loop()
        iface = self.config.interface
        endpoints = await resolve_all(loop, self.config)
        device = Device(iface.private_key)
        try:
            owed_keepalive = device.apply(running.config_changes(self.config, endpoints),
                                          self.clock())
        except ChangeError as err:  # too many peers
            raise EndpointError(f"{self.config.path}: {err}") from None
        try:
            # Claim the management socket first: a live one means another endpoint has this
            # name (maybe in another netns, where the TUN name alone would not clash).
            self.uapi = UapiServer(self.name, self, directory=self.socket_dir)
            self.uapi.bind()
            if self.metrics_address is not None:  # bound now: later we lack the privilege
                self.metrics = MetricsServer(self.metrics_address, self.snapshot)
                self.metrics.bind()
            fwmark = self._open_interface(endpoints) or iface.fwmark
            self.udp = UdpSocket.open(iface.listen_port or 0, fwmark=fwmark)
        except BaseException:
            self._release()
            raise
        assert self.tun is not None  # _open_interface opened it
        device.set_mtu(self.mtu)
        device.listen_port, device.fwmark = self.udp.port, fwmark or 0
        self.device = device
        self.datapath = DataPath(device, self.tun, self.udp, mtu=self.mtu, clock=self.clock)
        loop.add_reader(self.tun.fd, self.datapath.on_tun_readable)
        loop.add_reader(self.udp.fd, self.datapath.on_udp_readable)
        self.datapath.on_tun_gone = self._interface_deleted
        if self._link_watch is not None:
            loop.add_reader(self._link_watch.fd, self._on_link_events)
        device.on_earlier_deadline = self._arm_timers
        device.on_peer_event = self._log_peer_event
        assert self.uapi is not None
        await self.uapi.start()
        if self.metrics is not None:
            await self.metrics.serve()
        # SIGHUP reloads, as for other daemons; only the main thread may set signal handlers.
        with contextlib.suppress(RuntimeError, ValueError, NotImplementedError):
            loop.add_signal_handler(signal.SIGHUP, self._on_sighup)
        now = self.clock()
        for peer in owed_keepalive:
            self.datapath.send_control(peer, peer.keepalive(now))
        self._arm_timers(device.wake_at)
        await self._run_post_up()
        # "up" once PostUp has run too: a failed PostUp undoes everything, so not before.
        log.info(
            "interface %s up: listen port %d, MTU %d, TUN offloads %s, UDP GSO %s, GRO %s, "
            "fast path %s, %s",
            self.name, self.udp.port, self.mtu, self.tun.offload.describe(),
            "on" if self.udp.gso_enabled else "off", "on" if self.udp.gro_enabled else "off",
            native.fast_path()[1], plural(len(device.peers), "peer"),
        )

    async def _run_post_up(self) -> None:
        """PostUp, last, with the management socket serving: wg-quick's `PostUp = wg set %i
        private-key FILE` talks to it (so the hooks run in a thread, the loop answering).
        A failure undoes everything without PreDown or PostDown, as a failed host setup."""
        try:
            for command in self.config.interface.post_up:
                await asyncio.to_thread(netsetup.run_hook, "PostUp", command, self.name)
        except BaseException:
            if self._applied is not None:
                for problem in self._applied.undo():
                    log.warning("teardown: %s", problem)
                self._applied = None
            await self.stop()
            raise

    def _open_interface(self, endpoints: dict[bytes, Address]) -> int | None:
        """The TUN and, with host setup, what wg-quick does around it but PostUp: PreUp,
        MTU, addresses, routes, DNS. Returns the fwmark Table = auto chose, if any."""
        iface = self.config.interface
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
            allowed_ips=tuple(n for p in self.config.peers for n in p.allowed_ips),
            table=iface.table,
            fwmark=iface.fwmark,
            dns_servers=iface.dns_servers,
            dns_search=iface.dns_search,
            pre_up=(),  # already run
            post_up=(),  # run by start() once the management socket serves
            pre_down=iface.pre_down,
            post_down=(),  # run by _release once the interface is gone
        )
        self._applied = netsetup.apply(self._setup)
        return self._applied.fwmark

    def _on_link_events(self) -> None:
        """`ip link set mtu` and `ip link delete` from whoever drives us (wg-quick)."""
        assert self._link_watch is not None
        for event in self._link_watch.events():
            if event.deleted:
                self._interface_deleted()
                return
            if event.mtu is not None and event.mtu != self.mtu:
                self._set_mtu(event.mtu)

    def _interface_deleted(self) -> None:
        """Stop: the interface is gone (seen by a TUN read or a link event, whichever first)."""
        if self._deleted:
            return  # the other of the two saw it first
        self._deleted = True
        loop = asyncio.get_running_loop()
        for dev in (self.tun, self._link_watch):
            if dev is not None and dev.fd >= 0:
                loop.remove_reader(dev.fd)
        log.info("interface %s was deleted: stopping", self.name)
        self.on_down()

    def _set_mtu(self, mtu: int) -> None:
        assert self.device is not None and self.datapath is not None
        log.info("interface %s: MTU now %d", self.name, mtu)
        self.mtu = self.datapath.mtu = mtu
        self.device.set_mtu(mtu)

    async def stop(self) -> None:
        """Stop the data path and remove everything start() added. Safe to call twice."""
        if self.uapi is not None:
            self.uapi.stop_serving()  # no management requests while things come down
        if self.metrics is not None:
            self.metrics.close()
            self.metrics = None
        # Not removed: that would restore SIGHUP's default, which kills the process half-way
        # through the teardown below. A SIGHUP from now on is only logged.
        with contextlib.suppress(RuntimeError, ValueError, NotImplementedError):
            asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, ignore_sighup)
        if self.device is not None:
            self.device.on_earlier_deadline = self.device.on_peer_event = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        loop = asyncio.get_running_loop()
        for dev in (self.tun, self.udp, self._link_watch):
            if dev is not None and dev.fd >= 0:
                loop.remove_reader(dev.fd)
        if self.datapath is not None:
            # The offload picture of the whole run, one line, for people and tests alike.
            log.info("interface %s stopping; offload: %s", self.name,
                     json.dumps(self.datapath.stats.summary(), sort_keys=True))
        if self.config.interface.save_config and self.device is not None:
            self.save_config()
        self._release()
        if self.device is not None:
            for peer in list(self.device.peers.values()):
                self.device.remove_peer(peer.public_key)  # drops every session key
        self._stopped.set()
        log.info("interface %s down", self.name)

    def _release(self) -> None:
        problems = []
        was_up = self._applied is not None
        if self._applied is not None and self._setup is not None:
            gone = netsetup.teardown(self._applied, self._setup)
            # Deleted under us (`ip link del`): its addresses and routes went with it, and
            # failing to remove them again is expected, not worth a warning.
            for problem in gone if self._deleted else ():
                log.debug("teardown: %s (the interface was deleted already)", problem)
            problems += [] if self._deleted else gone
            self._applied = None
        if self.metrics is not None:
            self.metrics.close()
            self.metrics = None
        if self.udp is not None:
            self.udp.close()
            self.udp = None
        if self._link_watch is not None:
            self._link_watch.close()
            self._link_watch = None
        if self.tun is not None:
            self.tun.close()  # the kernel removes the device, its addresses and routes
            self.tun = None
        if was_up:  # as wg-quick: PostDown once the interface is gone, and only if it was up
            problems += netsetup.run_hooks_reporting(
                "PostDown", self.config.interface.post_down, self.name
            )
        for problem in problems:
            log.warning("teardown: %s", problem)
        if self.uapi is not None:
            # Last, so that `vpn down`, which waits for the socket to go, finds the rest gone.
            self.uapi.close()
            self.uapi = None

    def serving(self) -> bool:
        """Whether the data path is alive, for systemd's watchdog: its TUN and UDP socket
        open and watched, and the protocol timers running on time."""
        if self.datapath is None or self._deleted or self.tun is None or self.udp is None:
            return False
        return self.tun.fd >= 0 and self.udp.fd >= 0 and \
            self.clock() - self._timer_at < TIMERS_LATE

    async def wait_stopped(self) -> None:
        await self._stopped.wait()

    async def __aenter__(self) -> Endpoint:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- timers: armed at the core's next deadline ---------------------------------------------

    def _arm_timers(self, deadline: float) -> None:
        """Wake for the timers at `deadline` (the core calls this when a timer is armed
        earlier than any before it), unless a wakeup is due about then anyway."""
        if deadline == float("inf") or deadline >= self._timer_at - TIMER_SLACK:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = deadline
        delay = max(0.0, deadline - self.clock())
        self._timer = asyncio.get_running_loop().call_later(delay, self._on_timers)

    def _on_timers(self) -> None:
        self._timer, self._timer_at = None, float("inf")
        assert self.datapath is not None and self.device is not None
        self.datapath.on_tick()
        self._arm_timers(self.device.wake_at)

    def _log_peer_event(self, peer: Peer, event: PeerEvent) -> None:
        key = peer.public_key
        if event is PeerEvent.HANDSHAKE_COMPLETE:
            self.handshakes_completed += 1
            # A session's first handshake is news; its rekeys (every 2 minutes per peer
            # while traffic flows) are not.
            level = logging.DEBUG if key in self._in_session else logging.INFO
            self._in_session.add(key)
            log.log(level, "peer %s: handshake completed (endpoint %s)", encode_key(key),
                    endpoint_text(peer.endpoint) if peer.endpoint else "(none)")
        elif event is PeerEvent.GIVE_UP and peer.endpoint is not None:
            log.warning("peer %s: no handshake response, giving up for now", encode_key(key))
        else:  # giving up without an endpoint: nothing was sent; it is for the peer to call
            if event is PeerEvent.KEYS_ZEROED:
                self._in_session.discard(key)
            log.debug("peer %s: %s", encode_key(key), event)

    # -- peers at run time ------------------------------------------------------------------

    async def set_peer(self, peer_config: PeerConfig) -> None:
        """Add a peer, or change an existing one's key, endpoint, keepalive and AllowedIPs.

        Routes are not changed (as with `wg set`); sessions of a changed peer are kept.
        """
        address = await resolve(asyncio.get_running_loop(), peer_config.endpoint)
        self.apply(ChangeSet(peers=[running.peer_change(peer_config, address)]))

    def remove_peer(self, public_key: bytes) -> None:
        self.apply(ChangeSet(peers=[uapi.PeerChange(public_key, remove=True)]))

    def _running_device(self) -> Device:
        if self.device is None:
            raise EndpointError("the endpoint is not running")
        return self.device

    # -- the management API (vpn.control.uapi_server calls these) -----------------------

    def uapi_get(self) -> DeviceSnapshot:
        return self._running_device().snapshot()

    def uapi_stats(self) -> dict[str, object]:
        stats = self.snapshot().to_stats()
        # The file reload reads, for `vpn save IFACE` run from anywhere (None: wg-quick's).
        stats["config_path"] = os.path.abspath(self.config.path) if self.config.path else None
        return stats

    def uapi_down(self) -> None:
        log.info("interface %s: stop requested over the management socket", self.name)
        self.on_down()

    async def uapi_reload(self) -> None:
        await self.reload()

    async def reload(self) -> None:
        """Re-read the config file and apply the difference the way `wg syncconf` does.

        Unchanged peers keep their sessions; removed peers go, new ones come. Like syncconf
        it changes WireGuard settings only: addresses, MTU, routes, DNS and hooks stay as
        they were at start. Raises UapiError (nothing applied) for a bad file.
        """
        device = self._running_device()
        if not self.config.path:
            raise UapiError(uapi.EINVAL, "no config file to reload: this interface is "
                                         "configured over its management socket only")
        try:
            config, warnings = load(self.config.path, self.config.name)
        except ConfigError as error:
            raise UapiError(uapi.EINVAL, str(error)) from None
        _log_warnings(warnings)
        try:
            endpoints = await resolve_all(asyncio.get_running_loop(), config)
        except EndpointError as error:
            raise UapiError(uapi.EINVAL, str(error)) from None
        # fwmark None (absent from the file) keeps what runs, e.g. the mark Table=auto chose.
        self.uapi_set(running.config_changes(config, endpoints, current=list(device.peers)))
        log.info("interface %s: configuration reloaded from %s (%s)", self.name,
                 config.path, plural(len(config.peers), "peer"))

    def _on_sighup(self) -> None:
        async def run() -> None:
            try:
                await self.reload()
            except (UapiError, EndpointError) as error:
                log.error("interface %s: reload failed, nothing changed: %s", self.name, error)

        self._reload_task = asyncio.get_running_loop().create_task(run())

    def uapi_set(self, changes: ChangeSet) -> None:
        """Apply a validated set request, all of it or (raising UapiError) none of it."""
        try:
            self.apply(changes)
        except ChangeError as error:
            raise UapiError(uapi.EINVAL, str(error)) from None

    def apply(self, changes: ChangeSet) -> None:
        """The one way the running configuration changes: all of `changes` or, raising
        ChangeError (the device refuses it) or UapiError (the socket cannot follow), none.
        Everything that can fail happens before the first change to the running state."""
        device = self._running_device()
        assert self.udp is not None and self.datapath is not None
        device.check(changes)
        fwmark = device.fwmark if changes.fwmark is None else changes.fwmark
        new_udp = None
        if changes.listen_port is not None and changes.listen_port != self.udp.port:
            new_udp = self._open_udp(changes.listen_port, fwmark)
        elif fwmark != device.fwmark:
            try:
                self.udp.set_mark(fwmark)
            except OSError as err:
                raise UapiError(-(err.errno or errno.EIO), f"fwmark: {err.strerror}") from None
        # -- nothing below can fail ----------------------------------------------------------
        public_key = device.public_key
        now = self.clock()
        owed_keepalive = device.apply(changes, now)
        if device.public_key is None and public_key is not None:
            log.info("interface %s: private key removed, every session ended", self.name)
        elif device.public_key != public_key:
            log.info("interface %s: private key changed, public key now %s", self.name,
                     _key_text(device.public_key))
        if new_udp is not None:
            self._swap_udp(new_udp)
        device.fwmark = fwmark
        device.listen_port = self.udp.port
        self.config = running.running_config(
            self.config, device.snapshot(),
            record_port=bool(self.config.interface.listen_port) or changes.listen_port is not None,
        )
        for peer in owed_keepalive:
            self.datapath.send_control(peer, peer.keepalive(now))

    def _open_udp(self, port: int, fwmark: int) -> UdpSocket:
        try:
            return UdpSocket.open(port, fwmark=fwmark or None)
        except UdpError as err:
            code = uapi.EADDRINUSE if err.errno == errno.EADDRINUSE else -(err.errno or 5)
            raise UapiError(code, f"listen_port: {err}") from None
        except OSError as err:
            raise UapiError(-(err.errno or 5), f"listen_port: {err.strerror}") from None

    def _swap_udp(self, new: UdpSocket) -> None:
        """Move the data path to a socket opened on the new port; the old one closes."""
        assert self.udp is not None and self.datapath is not None
        loop = asyncio.get_running_loop()
        old = self.udp
        new.stats = old.stats  # the counters describe the interface, not one socket
        loop.remove_reader(old.fd)
        self.udp = self.datapath.udp = new
        loop.add_reader(new.fd, self.datapath.on_udp_readable)
        old.close()
        log.info("interface %s: now listening on UDP port %d", self.name, new.port)

    # -- state ------------------------------------------------------------------------------

    def snapshot(self) -> Counters:
        """Every counter, at this moment: what `vpn show --json` and /metrics render."""
        device = self._running_device()
        assert self.datapath is not None and self.udp is not None and self.tun is not None
        return gather(self.name, device, mtu=self.mtu, tun_offloads=self.tun.offload.describe(),
                      fast_path=native.fast_path()[0], udp_gso=self.udp.gso_enabled,
                      udp_gro=self.udp.gro_enabled, datapath=self.datapath.stats.summary(),
                      udp=self.udp.stats.summary(),
                      handshakes_completed=self.handshakes_completed)

    def counters(self) -> dict[str, Any]:  # JSON, for library users
        """The snapshot's counters, peers listed with their public keys."""
        snapshot = self.snapshot()
        return {**snapshot.to_stats(), "peers": snapshot.peers_json()}

    def save_config(self) -> None:
        """SaveConfig = true: write the running peers (endpoints as last seen) back."""
        assert self.device is not None
        path = Path(self.config.path)
        config = running.with_seen_endpoints(self.config, self.device.snapshot())
        try:
            running.write_atomically(path, to_text(config))
        except OSError as err:
            log.error("could not save the configuration to %s: %s", path, err.strerror)
            return
        log.info("configuration saved to %s", path)


def _log_warnings(warnings: list[str]) -> None:
    """The config's warnings, written for a terminal as wg writes them ("Warning: ..."),
    logged without the word the WARNING level already says."""
    for warning in warnings:
        log.warning("%s", warning.replace("Warning: ", "", 1))


def _key_text(key: bytes | None) -> str | None:
    return None if key is None else encode_key(key)


def ignore_sighup() -> None:
    log.info("SIGHUP ignored: the interface is starting or stopping")


async def resolve_all(loop: asyncio.AbstractEventLoop, config: Config) -> dict[bytes, Address]:
    """Every peer's config Endpoint resolved, by public key (peers without one left out)."""
    endpoints = {}
    for peer in config.peers:
        address = await resolve(loop, peer.endpoint)
        if address is not None:
            endpoints[peer.public_key] = address
    return endpoints


async def resolve(
    loop: asyncio.AbstractEventLoop, endpoint: EndpointAddress | None
) -> Address | None:
    """A config Endpoint (IP literal or host name) as an (ip, port) address, retried as
    `wg` retries (WG_ENDPOINT_RESOLUTION_RETRIES, vpn.control.resolve)."""
    if endpoint is None:
        return None
    try:
        return await resolve_endpoint(endpoint, loop.getaddrinfo, retries_from())
    except ResolveError as err:
        raise EndpointError(str(err)) from None
