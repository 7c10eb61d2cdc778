"""The endpoint: one WireGuard interface brought up from a config, as an asyncio API.

`async with Endpoint.from_config(path) as ep:` opens the TUN, applies addresses, routes and
hooks, binds the UDP socket and runs the data path until the block ends; `vpn up` uses this.
`Endpoint.userspace(name)` is the same lifecycle without a file or any host setup, for
wg-quick to drive (`vpn-userspace`). This module is the lifecycle: start, stop and release;
what runs in between is `runtime.py`'s, and what changes it `management.py`'s.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from vpn.control import running
from vpn.control.config_model import Config, InterfaceConfig, PeerConfig
from vpn.control.counters import Counters
from vpn.control.metrics_server import Address as MetricsAddress
from vpn.control.metrics_server import MetricsServer
from vpn.control.show import plural
from vpn.control.uapi_server import SOCKET_DIR, UapiServer
from vpn.core.wireguard import Device
from vpn.core.wireguard.changes import ChangeError
from vpn.endpoint.errors import EndpointError
from vpn.endpoint.interface import Interface
from vpn.endpoint.loading import load_config, resolve_all
from vpn.endpoint.management import Management
from vpn.endpoint.runtime import Runtime
from vpn.endpoint.tuning import DEFAULTS, Tuning
from vpn.io import native
from vpn.io.udp import UdpSocket

log = logging.getLogger("vpn.endpoint")


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
        tuning: Tuning = DEFAULTS,
    ) -> None:
        self.config = config
        self.tuning = tuning  # the data path's knobs
        self.name = interface or config.interface_name
        # False: the TUN and the socket only, as wireguard-go (see Interface).
        self.host_setup = host_setup
        self.clock = clock
        self.interface = Interface(self.name, host_setup=host_setup,
                                   on_deleted=self._interface_deleted,
                                   on_mtu=self._mtu_changed)
        self.runtime: Runtime | None = None  # from start to stop
        self.management = Management(self)
        self._stopped = asyncio.Event()
        self.socket_dir = socket_dir
        self.uapi: UapiServer | None = None
        self.metrics_address = metrics  # HOST:PORT to serve /metrics on; None: off
        self.metrics: MetricsServer | None = None
        # `vpn down` (set=vpn-down): by default the process signals itself, which is exactly
        # what `vpn up` already stops cleanly on; a library user passes its own callback.
        self.on_down = on_down or (lambda: os.kill(os.getpid(), signal.SIGTERM))

    @classmethod
    def from_config(cls, path: str | Path, *, interface: str | None = None,
                    metrics: MetricsAddress | None = None,
                    tuning: Tuning = DEFAULTS) -> Endpoint:
        """Load and validate a wg-quick style file (ConfigError on a bad one)."""
        return cls(load_config(path, interface), metrics=metrics, tuning=tuning)

    @classmethod
    def userspace(cls, name: str, *, metrics: MetricsAddress | None = None,
                  tuning: Tuning = DEFAULTS) -> Endpoint:
        """An interface with no config file, no private key, no peers and no host setup:
        everything arrives over the management socket (`wg setconf`) and `ip`. Raises
        ConfigError for a bad interface name."""
        config = Config(path="", interface=InterfaceConfig(private_key=None), name=name)
        return cls(config, host_setup=False, metrics=metrics, tuning=tuning)

    # -- start ------------------------------------------------------------------------------

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
            self.uapi = UapiServer(self.name, self.management, directory=self.socket_dir)
            self.uapi.bind()
            if self.metrics_address is not None:  # bound now: later we lack the privilege
                self.metrics = MetricsServer(self.metrics_address, self.snapshot)
                self.metrics.bind()
            fwmark = self.interface.open(self.config, endpoints) or iface.fwmark
            udp = UdpSocket.open(iface.listen_port or 0, fwmark=fwmark)
        except BaseException:
            self._release()
            raise
        tun, mtu = self.interface.tun, self.interface.mtu
        assert tun is not None  # Interface.open opened it
        device.set_mtu(mtu)
        device.listen_port, device.fwmark = udp.port, fwmark or 0
        self.runtime = runtime = Runtime(self.name, device, tun, udp, mtu=mtu, clock=self.clock,
                                         tuning=self.tuning)
        runtime.start(on_tun_gone=self.interface.gone)
        self.interface.watch()
        await self.uapi.start()
        if self.metrics is not None:
            await self.metrics.serve()
        # SIGHUP reloads, as for other daemons; only the main thread may set signal handlers.
        with contextlib.suppress(RuntimeError, ValueError, NotImplementedError):
            loop.add_signal_handler(signal.SIGHUP, self.management.on_sighup)
        runtime.run_timers(owed_keepalive)
        await self._run_post_up()
        # "up" once PostUp has run too: a failed PostUp undoes everything, so not before.
        log.info(
            "interface %s up: listen port %d, MTU %d, TUN offloads %s, UDP GSO %s, GRO %s, "
            "fast path %s, %s",
            self.name, udp.port, mtu, tun.offload.describe(),
            "on" if udp.gso_enabled else "off", "on" if udp.gro_enabled else "off",
            native.fast_path()[1], plural(len(device.peers), "peer"),
        )

    async def _run_post_up(self) -> None:
        """PostUp, last, with the management socket serving: wg-quick's `PostUp = wg set %i
        private-key FILE` talks to it. A failure undoes everything."""
        try:
            await self.interface.run_post_up()
        except BaseException:
            await self.stop()
            raise

    # -- while running ----------------------------------------------------------------------

    def running(self) -> Runtime:
        if self.runtime is None:
            raise EndpointError("the endpoint is not running")
        return self.runtime

    def _interface_deleted(self) -> None:
        self.on_down()

    def _mtu_changed(self, mtu: int) -> None:
        self.running().set_mtu(mtu)

    def serving(self) -> bool:
        """Whether the data path is alive, for systemd's watchdog: its TUN and UDP socket
        open and watched, and the protocol timers running on time."""
        return self.runtime is not None and self.interface.alive() and self.runtime.serving()

    # -- stop -------------------------------------------------------------------------------

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
        runtime = self.runtime
        if runtime is not None:
            runtime.stop()
        self.interface.unwatch()
        if self.config.interface.save_config and runtime is not None:
            self.management.save_config()
        self._release()
        if runtime is not None:
            runtime.end_sessions()
        self._stopped.set()
        log.info("interface %s down", self.name)

    def _release(self) -> None:
        if self.metrics is not None:
            self.metrics.close()
            self.metrics = None
        if self.runtime is not None:
            self.runtime.udp.close()
        for problem in self.interface.close():
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

    # -- the library's view of the running interface ---------------------------------------

    async def set_peer(self, peer_config: PeerConfig) -> None:
        """Add a peer or change one (Management.set_peer)."""
        await self.management.set_peer(peer_config)

    def remove_peer(self, public_key: bytes) -> None:
        self.management.remove_peer(public_key)

    def snapshot(self) -> Counters:
        """Every counter, at this moment: what `vpn show --json` and /metrics render."""
        return self.running().snapshot()

    def counters(self) -> dict[str, Any]:  # JSON, for library users
        """The snapshot's counters, peers listed with their public keys."""
        snapshot = self.snapshot()
        return {**snapshot.to_stats(), "peers": snapshot.peers_json()}


def ignore_sighup() -> None:
    log.info("SIGHUP ignored: the interface is starting or stopping")
