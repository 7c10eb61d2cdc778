"""A started interface's moving parts: the core's Device, the data path on the event loop,
the protocol timers, and the counters of it all."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable, Iterable

from vpn.control.counters import Counters, gather
from vpn.core.types import Address
from vpn.core.wireguard import Device, Peer
from vpn.endpoint.peer_events import PeerEventLog
from vpn.endpoint.timers import Timers
from vpn.endpoint.tuning import Tuning
from vpn.io import native, schedslice
from vpn.io.busypoll import BusyPoll
from vpn.io.datapath import DataPath
from vpn.io.handshakes import HandshakeWorker
from vpn.io.tun import TunDevice
from vpn.io.udp import UdpSocket

log = logging.getLogger("vpn.endpoint")  # the name people read, as the endpoint's others


class Runtime:
    """The data path between `tun` and `udp` for `device`, from `start` to `stop`."""

    def __init__(self, name: str, device: Device, tun: TunDevice, udp: UdpSocket, *,
                 mtu: int, clock: Callable[[], float], tuning: Tuning) -> None:
        threads = tuning.threads if tuning.threads > 1 else 0  # 0, 1: inline, on this thread
        self.slice_us = tuning.slice_us
        self.name = name
        self.device = device
        self.tun = tun
        self.udp = udp
        self.clock = clock
        self.datapath = DataPath(
            device, tun, udp, mtu=mtu, clock=clock, threads=threads,
            on_worker_start=self._request_slice,
            call_soon_threadsafe=asyncio.get_running_loop().call_soon_threadsafe
            if threads > 1 else None)
        # What the loop calls when a descriptor is readable: the walks themselves, or with
        # a busy-poll budget, each walk followed by a bounded poll of both (vpn/io/busypoll.py).
        self.on_tun_readable = self.datapath.on_tun_readable
        self.on_udp_readable = self.datapath.on_udp_readable
        self._polled = {"tun": True, "udp": True}  # False: paused or gone, not to be polled
        self.busy_poll: BusyPoll | None = None
        if tuning.busy_poll_us > 0:
            self.busy_poll = BusyPoll(tuning.busy_poll_us, self.datapath.on_tun_readable,
                                      self.datapath.on_udp_readable, self._polled_fds)
            self.on_tun_readable = self.busy_poll.on_tun_readable
            self.on_udp_readable = self.busy_poll.on_udp_readable
        self.timers = Timers(clock, self._tick)
        self.peer_events = PeerEventLog()
        self._stopping = False
        self.handshakes: HandshakeWorker | None = None  # from start to stop

    def start(self, on_tun_gone: Callable[[], None]) -> None:
        """Watch both descriptors and hear the core's timers and peer events."""
        loop = asyncio.get_running_loop()
        loop.add_reader(self.tun.fd, self.on_tun_readable)
        loop.add_reader(self.udp.fd, self.on_udp_readable)

        def tun_gone() -> None:
            self._polled["tun"] = False  # its errors are the interface's end, seen once
            on_tun_gone()

        self.datapath.on_tun_gone = tun_gone
        workers = self.datapath.send_workers
        slice_us = self._request_slice(warn=True)
        log.info("interface %s: sealing on %s; busy-poll %s; scheduler slice %s", self.name,
                 f"{workers.threads} worker threads" if workers else "the event loop's thread",
                 f"up to {self.busy_poll.cap_ns // 1000} us" if self.busy_poll else "off",
                 f"{slice_us} us" if slice_us else "the kernel's default")
        if workers is not None:  # backpressure: no TUN reads while no job buffer is free
            workers.slots.pause, workers.slots.resume = self._pause_tun, self._resume_tun
        receivers = self.datapath.receive_workers
        if receivers is not None:  # and no socket reads while no receive buffer is
            receivers.buffers.pause, receivers.buffers.resume = (self._pause_udp,
                                                                 self._resume_udp)
        self.device.on_earlier_deadline = self.timers.arm
        self.device.on_peer_event = self.peer_events
        self.handshakes = HandshakeWorker(self.device, loop, self.clock, self._send_replies)
        self.handshakes.start()

    def _request_slice(self, warn: bool = False) -> int:
        """The calling data-path thread's scheduler slice asked for (the loop's, each
        worker's): what the kernel reports, 0 for its default. A refusal is logged once, by
        the loop's thread, and changes nothing else."""
        if not self.slice_us:
            return 0
        try:
            return schedslice.request(self.slice_us)
        except OSError as error:
            if warn:
                log.warning("interface %s: scheduler slice not set: %s", self.name, error)
            return 0

    def _send_replies(self, datagrams: list[tuple[Address, bytes]]) -> None:
        """The handshake worker's answers, each to the source of what it answers."""
        for dest, datagram in datagrams:
            self.udp.send(dest, datagram)
        self.datapath.stats.datagrams_sent += len(datagrams)

    def _pause_tun(self) -> None:
        self._polled["tun"] = False
        if self.tun.fd >= 0:
            asyncio.get_running_loop().remove_reader(self.tun.fd)

    def _resume_tun(self) -> None:
        if self.tun.fd >= 0 and not self._stopping:
            self._polled["tun"] = True
            asyncio.get_running_loop().add_reader(self.tun.fd, self.on_tun_readable)

    def _pause_udp(self) -> None:
        self._polled["udp"] = False
        if self.udp.fd >= 0:
            asyncio.get_running_loop().remove_reader(self.udp.fd)

    def _resume_udp(self) -> None:
        if self.udp.fd >= 0 and not self._stopping:
            self._polled["udp"] = True
            asyncio.get_running_loop().add_reader(self.udp.fd, self.on_udp_readable)

    def _polled_fds(self) -> tuple[int, int]:
        """The busy-poll's descriptors: those the loop watches now, -1 for the others."""
        if self._stopping:
            return -1, -1
        return (self.tun.fd if self._polled["tun"] else -1,
                self.udp.fd if self._polled["udp"] else -1)

    def run_timers(self, owed_keepalive: Iterable[Peer]) -> None:
        """Send the keep-alives the initial configuration owes; the timers run from now."""
        self.send_keepalives(owed_keepalive, self.clock())
        self.timers.arm(self.device.wake_at)

    def _tick(self) -> float:
        self.datapath.on_tick()
        return self.device.wake_at

    def stop(self) -> None:
        """No more callbacks from the core, the timers or the descriptors (which stay open:
        the lifecycle closes them)."""
        self.device.on_earlier_deadline = self.device.on_peer_event = None
        self.timers.cancel()
        self._stopping = True
        if self.handshakes is not None:
            self.handshakes.close()  # its threads end here: none outlives the interface
        loop = asyncio.get_running_loop()
        for dev in (self.tun, self.udp):
            if dev.fd >= 0:
                loop.remove_reader(dev.fd)
        self.datapath.close()  # what the workers were given is sent before the socket closes
        # The offload picture of the whole run, one line, for people and tests alike.
        log.info("interface %s stopping; offload: %s", self.name,
                 json.dumps(self.datapath.stats.summary(), sort_keys=True))

    def end_sessions(self) -> None:
        for peer in list(self.device.peers.values()):
            self.device.remove_peer(peer.public_key)  # drops every session key

    def send_keepalives(self, peers: Iterable[Peer], now: float) -> None:
        for peer in peers:
            self.datapath.send_control(peer, peer.keepalive(now))

    def set_mtu(self, mtu: int) -> None:
        log.info("interface %s: MTU now %d", self.name, mtu)
        self.datapath.mtu = mtu
        self.device.set_mtu(mtu)

    def swap_udp(self, new: UdpSocket) -> None:
        """Move the data path to a socket opened on the new port; the old one closes."""
        loop = asyncio.get_running_loop()
        old = self.udp
        new.stats = old.stats  # the counters describe the interface, not one socket
        loop.remove_reader(old.fd)
        workers = self.datapath.send_workers
        with workers.send_lock if workers is not None else contextlib.nullcontext():
            self.udp = self.datapath.udp = new  # no worker is sending on the old one
            old.close()
        loop.add_reader(new.fd, self.on_udp_readable)
        log.info("interface %s: now listening on UDP port %d", self.name, new.port)

    def serving(self) -> bool:
        """Both descriptors open and the protocol timers running on time."""
        return self.tun.fd >= 0 and self.udp.fd >= 0 and self.timers.on_time()

    def snapshot(self) -> Counters:
        """Every counter, at this moment: what `vpn show --json` and /metrics render."""
        return gather(self.name, self.device, mtu=self.datapath.mtu,
                      tun_offloads=self.tun.offload.describe(),
                      fast_path=native.fast_path()[0], udp_gso=self.udp.gso_enabled,
                      udp_gro=self.udp.gro_enabled, datapath=self.datapath.stats.summary(),
                      udp=self.udp.stats.summary(),
                      handshakes_completed=self.peer_events.handshakes_completed)
