"""The endpoint: one WireGuard interface brought up from a config, as an asyncio API.

`async with Endpoint.from_config(path) as ep:` opens the TUN, applies addresses, routes and
hooks, binds the UDP socket and runs the data path until the block ends; `vpn up` uses this.
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
from dataclasses import replace
from pathlib import Path

from vpn.control import uapi
from vpn.control.config import Config, ConfigError, PeerConfig, load, to_text
from vpn.control.config import Endpoint as EndpointAddress
from vpn.control.uapi import ChangeSet, DeviceSnapshot, PeerSnapshot, UapiError
from vpn.control.uapi_server import SOCKET_DIR, UapiServer, UapiServerError
from vpn.core.keys import encode_key, public_from_private
from vpn.core.types import Address, endpoint_text
from vpn.core.wireguard import Device, Peer
from vpn.host import netsetup
from vpn.io import native
from vpn.io.datapath import DataPath
from vpn.io.tun import TunDevice, TunError
from vpn.io.udp import UdpError, UdpSocket

log = logging.getLogger("vpn.endpoint")

TICK_SECONDS = 0.1  # protocol timers are seconds-scale; jitter is 1/3 s


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
    ) -> None:
        self.config = config
        self.name = interface or config.interface_name
        self.clock = clock
        self.device: Device | None = None
        self.tun: TunDevice | None = None
        self.udp: UdpSocket | None = None
        self.datapath: DataPath | None = None
        self.mtu = 0
        self.fwmark = 0
        self._applied: netsetup.Applied | None = None
        self._setup: netsetup.InterfaceSetup | None = None
        self._ticker: asyncio.Task[None] | None = None
        self._stopped = asyncio.Event()
        self.socket_dir = socket_dir
        self.uapi: UapiServer | None = None
        # `vpn down` (set=vpn-down): by default the process signals itself, which is exactly
        # what `vpn up` already stops cleanly on; a library user passes its own callback.
        self.on_down = on_down or (lambda: os.kill(os.getpid(), signal.SIGTERM))
        self.handshakes_completed = 0
        self._reload_task: asyncio.Task[None] | None = None

    @classmethod
    def from_config(cls, path: str | Path, *, interface: str | None = None) -> Endpoint:
        """Load and validate a wg-quick style file (ConfigError on a bad one)."""
        config, warnings = load(path, interface)
        for warning in warnings:
            log.warning("%s", warning)
        return cls(config)

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        """Bring the interface up; on any failure undo what was done and raise."""
        loop = asyncio.get_running_loop()
        iface = self.config.interface
        endpoints = {
            peer.public_key: await resolve(loop, peer.endpoint)
            for peer in self.config.peers
            if peer.endpoint is not None
        }
        device = Device(iface.private_key)
        try:
            for peer_config in self.config.peers:
                add_peer(device, peer_config, endpoints.get(peer_config.public_key))
        except ValueError as err:  # too many peers, or a peer with our own key
            raise EndpointError(f"{self.config.path}: {err}") from None
        try:
            # Claim the management socket first: a live one means another endpoint has this
            # name (maybe in another netns, where the TUN name alone would not clash).
            self.uapi = UapiServer(self.name, self, directory=self.socket_dir)
            self.uapi.bind()
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
                post_up=iface.post_up,
                pre_down=iface.pre_down,
                post_down=(),  # run by _release once the interface is gone
            )
            self._applied = netsetup.apply(self._setup)
            fwmark = self._applied.fwmark or iface.fwmark
            self.udp = UdpSocket.open(iface.listen_port or 0, fwmark=fwmark)
            self.fwmark = fwmark or 0
        except BaseException:
            self._release()
            raise
        for peer in device.peers.values():
            peer.mtu = self.mtu
        self.device = device
        self.datapath = DataPath(device, self.tun, self.udp, mtu=self.mtu, clock=self.clock)
        loop.add_reader(self.tun.fd, self.datapath.on_tun_readable)
        loop.add_reader(self.udp.fd, self.datapath.on_udp_readable)
        self._ticker = loop.create_task(self._tick())
        assert self.uapi is not None
        await self.uapi.start()
        # SIGHUP reloads, as for other daemons; only the main thread may set signal handlers.
        with contextlib.suppress(RuntimeError, ValueError, NotImplementedError):
            loop.add_signal_handler(signal.SIGHUP, self._on_sighup)
        log.info(
            "interface %s up: listen port %d, MTU %d, TUN offloads %s, UDP GSO %s, GRO %s, "
            "fast path %s, %d peer(s)",
            self.name, self.udp.port, self.mtu, self.tun.offload.describe(),
            "on" if self.udp.gso_enabled else "off", "on" if self.udp.gro_enabled else "off",
            native.fast_path()[1], len(device.peers),
        )
        now = self.clock()
        for peer in device.peers.values():
            if peer.timers.persistent_interval and peer.endpoint is not None:
                self.datapath.send_control(peer, peer.keepalive(now))

    async def stop(self) -> None:
        """Stop the data path and remove everything start() added. Safe to call twice."""
        if self.uapi is not None:
            self.uapi.stop_serving()  # no management requests while things come down
        # Not removed: that would restore SIGHUP's default, which kills the process half-way
        # through the teardown below. A SIGHUP from now on is only logged.
        with contextlib.suppress(RuntimeError, ValueError, NotImplementedError):
            asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, ignore_sighup)
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
            self._ticker = None
        loop = asyncio.get_running_loop()
        for dev in (self.tun, self.udp):
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
            problems += netsetup.teardown(self._applied, self._setup)
            self._applied = None
        if self.udp is not None:
            self.udp.close()
            self.udp = None
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

    async def wait_stopped(self) -> None:
        await self._stopped.wait()

    async def __aenter__(self) -> Endpoint:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _tick(self) -> None:
        assert self.datapath is not None and self.device is not None
        while True:
            await asyncio.sleep(TICK_SECONDS)
            self.datapath.on_tick()
            self._log_peer_events()

    def _log_peer_events(self) -> None:
        assert self.device is not None
        for peer in self.device.peers.values():
            while peer.events:
                event = peer.events.popleft()
                if event == "handshake_complete":
                    self.handshakes_completed += 1
                    log.info("peer %s: handshake completed (endpoint %s)",
                             encode_key(peer.public_key),
                             endpoint_text(peer.endpoint) if peer.endpoint else "(none)")
                elif event == "give_up":
                    log.warning("peer %s: no handshake response, giving up for now",
                                encode_key(peer.public_key))
                else:
                    log.debug("peer %s: %s", encode_key(peer.public_key), event)

    # -- peers at run time ------------------------------------------------------------------

    async def set_peer(self, peer_config: PeerConfig) -> None:
        """Add a peer, or change an existing one's key, endpoint, keepalive and AllowedIPs.

        Routes are not changed (as with `wg set`); sessions of a changed peer are kept.
        """
        device = self._running_device()
        address = await resolve(asyncio.get_running_loop(), peer_config.endpoint)
        peer = device.peers.get(peer_config.public_key)
        if peer is None:
            peer = add_peer(device, peer_config, address)
            peer.mtu = self.mtu
        else:
            peer.handshake.psk = peer_config.preshared_key or bytes(32)
            keepalive = peer_config.persistent_keepalive or 0
            peer.timers.set_persistent_keepalive(keepalive, self.clock())
            if address is not None:
                peer.endpoint = address
            device.allowed_ips.remove_by_peer(peer)
            for network in peer_config.allowed_ips:
                device.allowed_ips.insert(network, peer)
        peers = [p for p in self.config.peers if p.public_key != peer_config.public_key]
        self.config = replace(self.config, peers=(*peers, peer_config))

    def remove_peer(self, public_key: bytes) -> None:
        device = self._running_device()
        device.remove_peer(public_key)
        peers = tuple(p for p in self.config.peers if p.public_key != public_key)
        self.config = replace(self.config, peers=peers)

    def _running_device(self) -> Device:
        if self.device is None:
            raise EndpointError("the endpoint is not running")
        return self.device

    # -- the management API (vpn.control.uapi_server calls these) -----------------------

    def uapi_get(self) -> DeviceSnapshot:
        device = self._running_device()
        assert self.udp is not None
        peers = []
        for peer in device.peers.values():
            psk = peer.handshake.psk
            peers.append(PeerSnapshot(
                public_key=peer.public_key,
                preshared_key=psk if any(psk) else None,
                endpoint=peer.endpoint,
                last_handshake=peer.last_handshake_wall,
                tx_bytes=peer.tx_bytes,
                rx_bytes=peer.rx_bytes,
                persistent_keepalive=int(peer.timers.persistent_interval),
                allowed_ips=device.allowed_ips.entries_for(peer),
            ))
        return DeviceSnapshot(
            private_key=self.config.interface.private_key,
            listen_port=self.udp.port,
            fwmark=self.fwmark,
            peers=peers,
        )

    def uapi_stats(self) -> dict[str, object]:
        stats = self.counters()
        del stats["peers"]  # get=1 has them; this request carries only counters
        stats["public_key"] = encode_key(self._running_device().public_key)
        stats["handshakes"] = {
            "received": self.datapath.stats.handshakes_received if self.datapath else 0,
            "completed": self.handshakes_completed,
        }
        assert self.udp is not None
        stats["udp_offloads"] = {"gso": int(self.udp.gso_enabled), "gro": int(self.udp.gro_enabled)}
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
        try:
            config, warnings = load(self.config.path, self.config.name)
        except ConfigError as error:
            raise UapiError(uapi.EINVAL, str(error)) from None
        for warning in warnings:
            log.warning("%s", warning)
        loop = asyncio.get_running_loop()
        iface = config.interface
        changes = ChangeSet(private_key=iface.private_key, listen_port=iface.listen_port,
                            fwmark=iface.fwmark)  # None: keep (e.g. the mark Table=auto chose)
        wanted = {peer.public_key for peer in config.peers}
        changes.peers = [uapi.PeerChange(key, remove=True) for key in device.peers
                         if key not in wanted]
        for peer_config in config.peers:
            try:
                address = await resolve(loop, peer_config.endpoint)
            except EndpointError as error:
                raise UapiError(uapi.EINVAL, str(error)) from None
            changes.peers.append(uapi.PeerChange(
                peer_config.public_key,
                preshared_key=peer_config.preshared_key or bytes(32),
                endpoint=address,  # None keeps the endpoint learned from the peer
                persistent_keepalive=peer_config.persistent_keepalive or 0,
                replace_allowed_ips=True,
                allowed_ips=list(peer_config.allowed_ips),
            ))
        self.uapi_set(changes)
        log.info("interface %s: configuration reloaded from %s (%d peers)", self.name,
                 config.path, len(config.peers))

    def _on_sighup(self) -> None:
        async def run() -> None:
            try:
                await self.reload()
            except (UapiError, EndpointError) as error:
                log.error("interface %s: reload failed, nothing changed: %s", self.name, error)

        self._reload_task = asyncio.get_running_loop().create_task(run())

    def uapi_set(self, changes: ChangeSet) -> None:
        """Apply a validated set request, all of it or (raising UapiError) none of it.

        Everything that can fail (the new private key, the peer count, opening a new UDP
        socket, setting the fwmark) happens before the first change to the running state.
        """
        device = self._running_device()
        assert self.udp is not None and self.datapath is not None
        now = self.clock()
        private_key = self.config.interface.private_key
        new_private = changes.private_key
        if new_private is not None and new_private == private_key:
            new_private = None
        try:
            own_public = public_from_private(new_private) if new_private else device.public_key
        except ValueError:
            raise UapiError(uapi.EINVAL, "private_key: not a usable X25519 key") from None
        self._check_peer_count(device, changes, own_public)
        fwmark = self.fwmark if changes.fwmark is None else changes.fwmark
        new_udp = None
        if changes.listen_port is not None and changes.listen_port != self.udp.port:
            new_udp = self._open_udp(changes.listen_port, fwmark)
        elif fwmark != self.fwmark:
            try:
                with socket.socket(fileno=os.dup(self.udp.fd)) as same:  # the same socket
                    same.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, fwmark)
            except OSError as err:
                raise UapiError(-(err.errno or 5), f"fwmark: {err.strerror}") from None
        # -- nothing below can fail ----------------------------------------------------------
        if new_private is not None:
            device = self._replace_device(new_private)
        if changes.replace_peers:
            for key in list(device.peers):
                device.remove_peer(key)
        keepalive_now: list[Peer] = []
        for change in changes.peers:
            peer = self._apply_peer(device, change, now)
            if peer is not None and change.persistent_keepalive and peer.endpoint is not None:
                keepalive_now.append(peer)
        if new_udp is not None:
            self._swap_udp(new_udp)
        self.fwmark = fwmark
        self._sync_config(private_key if new_private is None else new_private,
                          port_set=changes.listen_port is not None)
        for peer in keepalive_now:
            # As wireguard-go: a newly set persistent keepalive sends one at once.
            self.datapath.send_control(peer, peer.keepalive(now))

    def _check_peer_count(self, device: Device, changes: ChangeSet, own: bytes) -> None:
        keys = set() if changes.replace_peers else set(device.peers)
        keys.discard(own)
        for change in changes.peers:
            if change.remove:
                keys.discard(change.public_key)
            elif change.public_key != own and not change.update_only:
                keys.add(change.public_key)
        if len(keys) > device.max_peers:
            raise UapiError(uapi.EINVAL, f"more than {device.max_peers} peers")

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

    def _replace_device(self, private_key: bytes) -> Device:
        """A new identity: a new Device with the same peers (sessions cannot survive it)."""
        old = self._running_device()
        assert self.datapath is not None
        new = Device(private_key)
        new.drops = old.drops
        for peer in list(old.peers.values()):
            if peer.public_key == new.public_key:
                continue  # as wireguard-go: a peer with our own new key is dropped
            psk = peer.handshake.psk
            copy = new.add_peer(
                peer.public_key,
                preshared_key=psk if any(psk) else None,
                persistent_keepalive=peer.timers.persistent_interval,
                endpoint=peer.endpoint,
            )
            copy.mtu, copy.rx_bytes, copy.tx_bytes = peer.mtu, peer.rx_bytes, peer.tx_bytes
            copy.last_handshake_wall = peer.last_handshake_wall
            for network in old.allowed_ips.entries_for(peer):
                new.allowed_ips.insert(network, copy)
        for key in list(old.peers):
            old.remove_peer(key)  # zeroes the old sessions' keys
        self.device = self.datapath.device = new
        log.info("interface %s: private key changed, public key now %s", self.name,
                 encode_key(new.public_key))
        return new

    def _apply_peer(self, device: Device, change: uapi.PeerChange, now: float) -> Peer | None:
        if change.public_key == device.public_key:
            return None  # wireguard-go ignores a peer with the interface's own key
        if change.remove:
            device.remove_peer(change.public_key)
            return None
        peer = device.peers.get(change.public_key)
        if peer is None:
            if change.update_only:
                return None
            peer = device.add_peer(change.public_key)
            peer.mtu = self.mtu
        if change.preshared_key is not None:
            peer.handshake.psk = change.preshared_key
        if change.endpoint is not None:
            peer.endpoint = change.endpoint
        if change.persistent_keepalive is not None:
            peer.timers.set_persistent_keepalive(change.persistent_keepalive, now)
        if change.replace_allowed_ips:
            device.allowed_ips.remove_by_peer(peer)
        for network in change.allowed_ips:
            device.allowed_ips.insert(network, peer)
        return peer

    def _sync_config(self, private_key: bytes, *, port_set: bool) -> None:
        """Keep self.config what the interface runs, for SaveConfig and `counters()`."""
        device = self._running_device()
        assert self.udp is not None
        peers = []
        for peer in device.peers.values():
            psk = peer.handshake.psk
            endpoint = None
            if peer.endpoint is not None:
                endpoint = EndpointAddress(peer.endpoint[0], peer.endpoint[1])
            keepalive = int(peer.timers.persistent_interval)
            peers.append(PeerConfig(
                public_key=peer.public_key,
                preshared_key=psk if any(psk) else None,
                allowed_ips=tuple(device.allowed_ips.entries_for(peer)),
                endpoint=endpoint,
                persistent_keepalive=keepalive or None,
            ))
        interface = replace(
            self.config.interface,
            private_key=private_key,
            # A port chosen by the kernel stays unrecorded, so a saved config asks for any port.
            listen_port=self.udp.port if self.config.interface.listen_port or port_set else None,
            fwmark=self.fwmark or None,
        )
        self.config = replace(self.config, interface=interface, peers=tuple(peers))

    # -- state ------------------------------------------------------------------------------

    def counters(self) -> dict:
        """Peers (public keys, endpoints, bytes, handshakes) and the data path's counters."""
        device = self._running_device()
        assert self.datapath is not None and self.udp is not None and self.tun is not None
        peers = []
        for peer in device.peers.values():
            peers.append({
                "public_key": encode_key(peer.public_key),
                "endpoint": endpoint_text(peer.endpoint) if peer.endpoint else None,
                "allowed_ips": [str(n) for n in device.allowed_ips.entries_for(peer)],
                "rx_bytes": peer.rx_bytes,
                "tx_bytes": peer.tx_bytes,
                "last_handshake": peer.last_handshake_wall,
            })
        return {
            "interface": self.name,
            "public_key": encode_key(device.public_key),
            "listen_port": self.udp.port,
            "mtu": self.mtu,
            "tun_offloads": self.tun.offload.describe(),
            "fast_path": native.fast_path()[0],
            "peers": peers,
            "datapath": self.datapath.stats.summary(),
            "udp": self.udp.stats.summary(),
            "protocol_drops": dict(device.drops),
        }

    def save_config(self) -> None:
        """SaveConfig = true: write the running peers (endpoints as last seen) back."""
        assert self.device is not None
        peers = []
        for peer_config in self.config.peers:
            peer = self.device.peers.get(peer_config.public_key)
            if peer is not None and peer.endpoint is not None:
                host, port = peer.endpoint
                peer_config = replace(peer_config, endpoint=EndpointAddress(host, port))
            peers.append(peer_config)
        path = Path(self.config.path)
        text = to_text(replace(self.config, peers=tuple(peers)))
        # Written aside and renamed over: a crash mid-write must not cost the old file. The
        # new file holds the private key, so it is created 0600 whatever the umask.
        temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            with os.fdopen(fd, "w") as out:
                out.write(text)
                out.flush()
                os.fsync(out.fileno())
            os.rename(temp, path)
        except OSError as err:
            with contextlib.suppress(OSError):
                temp.unlink()
            log.error("could not save the configuration to %s: %s", path, err.strerror)
            return
        log.info("configuration saved to %s", path)


def add_peer(device: Device, peer_config: PeerConfig, endpoint: Address | None) -> Peer:
    peer = device.add_peer(
        peer_config.public_key,
        preshared_key=peer_config.preshared_key,
        persistent_keepalive=peer_config.persistent_keepalive or 0,
        endpoint=endpoint,
    )
    for network in peer_config.allowed_ips:
        device.allowed_ips.insert(network, peer)
    return peer


def ignore_sighup() -> None:
    log.info("SIGHUP ignored: the interface is starting or stopping")


async def resolve(
    loop: asyncio.AbstractEventLoop, endpoint: EndpointAddress | None
) -> Address | None:
    """A config Endpoint (IP literal or host name) as an (ip, port) address."""
    if endpoint is None:
        return None
    try:
        infos = await loop.getaddrinfo(endpoint.host, endpoint.port, type=socket.SOCK_DGRAM)
    except OSError as err:
        raise EndpointError(f"cannot resolve endpoint {endpoint}: {err}") from None
    family_order = sorted(infos, key=lambda info: info[0] != socket.AF_INET)
    return family_order[0][4][0], endpoint.port
