"""Managing a running interface: the `wg` management protocol's handler, reload (SIGHUP and
`vpn reload`), the one `apply` path every change takes, and SaveConfig."""

from __future__ import annotations

import asyncio
import errno
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from vpn.control import running, uapi
from vpn.control.config import to_text
from vpn.control.config_model import Config, ConfigError, PeerConfig
from vpn.control.show import plural
from vpn.control.uapi import UapiError
from vpn.core.keys import encode_key
from vpn.core.wireguard.changes import ChangeError, ChangeSet
from vpn.core.wireguard.snapshot import SlicedSnapshot
from vpn.endpoint.errors import EndpointError
from vpn.endpoint.loading import load_config, resolve, resolve_all
from vpn.endpoint.runtime import Runtime
from vpn.host.memory import collect_removed
from vpn.io.udp import UdpError, UdpSocket

log = logging.getLogger("vpn.endpoint")  # the name people read, as the endpoint's others


class Managed(Protocol):
    """What management needs of the endpoint it manages."""

    name: str
    config: Config  # as loaded: its path and name, and the settings the device does not hold
    on_down: Callable[[], None]

    def running(self) -> Runtime:
        """The started interface's runtime; EndpointError when it is not running."""


class Management:
    """Serves `vpn.control.uapi_server` (its UapiHandler) and the library's changes."""

    def __init__(self, endpoint: Managed) -> None:
        self.endpoint = endpoint
        self._reload_task: asyncio.Task[None] | None = None
        # Whether SaveConfig records the listening port: a port asked for (in the file or
        # by a change) is saved, one the kernel chose is not, so a restart asks for any.
        self._port_asked = bool(endpoint.config.interface.listen_port)

    # -- the management protocol ------------------------------------------------------------

    def uapi_get(self) -> SlicedSnapshot:
        return SlicedSnapshot(self.endpoint.running().device)

    def uapi_stats(self) -> dict[str, object]:
        stats = self.endpoint.running().snapshot().to_stats()
        # The file reload reads, for `vpn save IFACE` run from anywhere (None: wg-quick's).
        path = self.endpoint.config.path
        stats["config_path"] = os.path.abspath(path) if path else None
        return stats

    def uapi_down(self) -> None:
        log.info("interface %s: stop requested over the management socket", self.endpoint.name)
        self.endpoint.on_down()

    async def uapi_reload(self) -> None:
        await self.reload()

    def uapi_set(self, changes: ChangeSet) -> None:
        """Apply a validated set request, all of it or (raising UapiError) none of it."""
        try:
            self.apply(changes)
        except ChangeError as error:
            raise UapiError(uapi.EINVAL, str(error)) from None

    # -- reload ----------------------------------------------------------------------------

    async def reload(self) -> None:
        """Re-read the config file and apply the difference the way `wg syncconf` does.

        Unchanged peers keep their sessions; removed peers go, new ones come. Like syncconf
        it changes WireGuard settings only: addresses, MTU, routes, DNS and hooks stay as
        they were at start. Raises UapiError (nothing applied) for a bad file.
        """
        device = self.endpoint.running().device
        current = self.endpoint.config
        if not current.path:
            raise UapiError(uapi.EINVAL, "no config file to reload: this interface is "
                                         "configured over its management socket only")
        try:
            config = load_config(current.path, current.name)
        except ConfigError as error:
            raise UapiError(uapi.EINVAL, str(error)) from None
        try:
            endpoints = await resolve_all(asyncio.get_running_loop(), config)
        except EndpointError as error:
            raise UapiError(uapi.EINVAL, str(error)) from None
        # fwmark None (absent from the file) keeps what runs, e.g. the mark Table=auto chose.
        self.uapi_set(running.config_changes(config, endpoints, current=list(device.peers)))
        log.info("interface %s: configuration reloaded from %s (%s)", self.endpoint.name,
                 config.path, plural(len(config.peers), "peer"))

    def on_sighup(self) -> None:
        async def run() -> None:
            try:
                await self.reload()
            except (UapiError, EndpointError) as error:
                log.error("interface %s: reload failed, nothing changed: %s",
                          self.endpoint.name, error)

        self._reload_task = asyncio.get_running_loop().create_task(run())

    # -- changes ---------------------------------------------------------------------------

    async def set_peer(self, peer_config: PeerConfig) -> None:
        """Add a peer, or change an existing one's key, endpoint, keepalive and AllowedIPs.

        Routes are not changed (as with `wg set`); sessions of a changed peer are kept.
        """
        address = await resolve(asyncio.get_running_loop(), peer_config.endpoint)
        self.apply(ChangeSet(peers=[running.peer_change(peer_config, address)]))

    def remove_peer(self, public_key: bytes) -> None:
        self.apply(ChangeSet(peers=[uapi.PeerChange(public_key, remove=True)]))

    def apply(self, changes: ChangeSet) -> None:
        """The one way the running configuration changes: all of `changes` or, raising
        ChangeError (the device refuses it) or UapiError (the socket cannot follow), none.
        Everything that can fail happens before the first change to the running state."""
        runtime = self.endpoint.running()
        device = runtime.device
        device.check(changes)
        fwmark = device.fwmark if changes.fwmark is None else changes.fwmark
        new_udp = None
        if changes.listen_port is not None and changes.listen_port != runtime.udp.port:
            new_udp = _open_udp(changes.listen_port, fwmark)
        elif fwmark != device.fwmark:
            try:
                runtime.udp.set_mark(fwmark)
            except OSError as err:
                raise UapiError(-(err.errno or errno.EIO), f"fwmark: {err.strerror}") from None
        # -- nothing below can fail ----------------------------------------------------------
        name, public_key = self.endpoint.name, device.public_key
        now = runtime.clock()
        owed_keepalive = device.apply(changes, now)
        if device.public_key is None and public_key is not None:
            log.info("interface %s: private key removed, every session ended", name)
        elif device.public_key != public_key:
            log.info("interface %s: private key changed, public key now %s", name,
                     _key_text(device.public_key))
        if new_udp is not None:
            runtime.swap_udp(new_udp)
        device.fwmark = fwmark
        device.listen_port = runtime.udp.port
        # The running configuration is read from the device when saved, not rebuilt here: a
        # snapshot of 10,000 peers on every `wg set` held the loop for about 5 ms.
        self._port_asked |= changes.listen_port is not None
        runtime.send_keepalives(owed_keepalive, now)
        if changes.replace_peers or any(peer.remove for peer in changes.peers):
            collect_removed()

    # -- SaveConfig ------------------------------------------------------------------------

    def save_config(self) -> None:
        """SaveConfig = true: write the running configuration back, the interface's key,
        port and mark and the peers as they run now (endpoints as last seen), as `wg-quick
        save` does; the file's other settings as they were."""
        path = Path(self.endpoint.config.path)
        config = running.running_config(self.endpoint.config,
                                        self.endpoint.running().device.snapshot(),
                                        record_port=self._port_asked)
        try:
            running.write_atomically(path, to_text(config))
        except OSError as err:
            log.error("could not save the configuration to %s: %s", path, err.strerror)
            return
        log.info("configuration saved to %s", path)


def _open_udp(port: int, fwmark: int) -> UdpSocket:
    try:
        return UdpSocket.open(port, fwmark=fwmark or None)
    except UdpError as err:
        code = uapi.EADDRINUSE if err.errno == errno.EADDRINUSE else -(err.errno or 5)
        raise UapiError(code, f"listen_port: {err}") from None
    except OSError as err:
        raise UapiError(-(err.errno or 5), f"listen_port: {err.strerror}") from None


def _key_text(key: bytes | None) -> str | None:
    return None if key is None else encode_key(key)
