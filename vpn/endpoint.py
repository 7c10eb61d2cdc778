"""The endpoint: one WireGuard interface brought up from a config, as an asyncio API.

`async with Endpoint.from_config(path) as ep:` opens the TUN, applies addresses, routes and
hooks, binds the UDP socket and runs the data path until the block ends; `vpn up` uses this.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ipaddress
import json
import logging
import socket
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from vpn import netsetup
from vpn.config import Config, PeerConfig, load, to_text
from vpn.config import Endpoint as EndpointAddress
from vpn.datapath import DataPath, endpoint_text
from vpn.tun import TunDevice, TunError
from vpn.udp import Address, UdpSocket
from vpn.wireguard import Device, Peer

log = logging.getLogger("vpn.endpoint")

TICK_SECONDS = 0.1  # protocol timers are seconds-scale; jitter is 1/3 s


class EndpointError(RuntimeError):
    """The endpoint could not start or do what was asked; nothing half-done is left."""


# Everything start() may raise for a reason a user can fix; the message says which.
StartError = (EndpointError, TunError, netsetup.SetupError, OSError)


def key_text(key: bytes) -> str:
    """A public key as `wg` prints it (never call this with a private key)."""
    return base64.b64encode(key).decode()


class Endpoint:
    """A running WireGuard interface. Start with `start()` or `async with`."""

    def __init__(
        self,
        config: Config,
        *,
        interface: str | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.name = interface or config.interface_name
        self.clock = clock
        self.device: Device | None = None
        self.tun: TunDevice | None = None
        self.udp: UdpSocket | None = None
        self.datapath: DataPath | None = None
        self.mtu = 0
        self._applied: netsetup.Applied | None = None
        self._setup: netsetup.InterfaceSetup | None = None
        self._ticker: asyncio.Task[None] | None = None
        self._stopped = asyncio.Event()

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
        for peer_config in self.config.peers:
            add_peer(device, peer_config, endpoints.get(peer_config.public_key))
        try:
            self.tun = TunDevice.open(self.name, vnet_hdr=iface.offload, offload=iface.offload)
            self.mtu = iface.mtu or netsetup.auto_mtu(
                ipaddress.ip_address(addr[0]) for addr in endpoints.values()
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
                pre_up=iface.pre_up,
                post_up=iface.post_up,
                pre_down=iface.pre_down,
                post_down=iface.post_down,
            )
            self._applied = netsetup.apply(self._setup)
            fwmark = self._applied.fwmark or iface.fwmark
            self.udp = UdpSocket.open(iface.listen_port or 0, fwmark=fwmark)
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
        log.info(
            "interface %s up: listen port %d, MTU %d, TUN offloads %s, UDP GSO %s, GRO %s, "
            "%d peer(s)",
            self.name, self.udp.port, self.mtu, self.tun.offload.describe(),
            "on" if self.udp.gso_enabled else "off", "on" if self.udp.gro_enabled else "off",
            len(device.peers),
        )
        now = self.clock()
        for peer in device.peers.values():
            if peer.timers.persistent_interval and peer.endpoint is not None:
                self.datapath.send_control(peer, peer.keepalive(now))

    async def stop(self) -> None:
        """Stop the data path and remove everything start() added. Safe to call twice."""
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
        if self._applied is not None and self._setup is not None:
            for problem in netsetup.teardown(self._applied, self._setup):
                log.warning("teardown: %s", problem)
            self._applied = None
        if self.udp is not None:
            self.udp.close()
            self.udp = None
        if self.tun is not None:
            self.tun.close()  # the kernel removes the device, its addresses and routes
            self.tun = None

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
                    log.info("peer %s: handshake completed (endpoint %s)",
                             key_text(peer.public_key), endpoint_text(peer.endpoint))
                elif event == "give_up":
                    log.warning("peer %s: no handshake response, giving up for now",
                                key_text(peer.public_key))
                else:
                    log.debug("peer %s: %s", key_text(peer.public_key), event)

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

    # -- state ------------------------------------------------------------------------------

    def counters(self) -> dict:
        """Peers (public keys, endpoints, bytes, handshakes) and the data path's counters."""
        device = self._running_device()
        assert self.datapath is not None and self.udp is not None and self.tun is not None
        peers = []
        for peer in device.peers.values():
            peers.append({
                "public_key": key_text(peer.public_key),
                "endpoint": endpoint_text(peer.endpoint) if peer.endpoint else None,
                "allowed_ips": [str(n) for n in device.allowed_ips.entries_for(peer)],
                "rx_bytes": peer.rx_bytes,
                "tx_bytes": peer.tx_bytes,
                "last_handshake": peer.last_handshake_wall,
            })
        return {
            "interface": self.name,
            "public_key": key_text(device.public_key),
            "listen_port": self.udp.port,
            "mtu": self.mtu,
            "tun_offloads": self.tun.offload.describe(),
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
        path.write_text(to_text(replace(self.config, peers=tuple(peers))))
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
