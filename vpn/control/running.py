"""The running configuration, between the wg-quick file and the Device.

A Config becomes the ChangeSet that applies it (`vpn up`, `vpn reload`, `Endpoint.set_peer`);
the Device's snapshot becomes a Config again (what SaveConfig writes) or the peers of the
endpoint's counters. Nothing here touches a device: the endpoint applies what this builds.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Mapping
from dataclasses import replace
from pathlib import Path

from vpn.control.config_model import Config, PeerConfig
from vpn.control.config_model import Endpoint as EndpointAddress
from vpn.core.types import Address
from vpn.core.wireguard.allowedips import networks
from vpn.core.wireguard.changes import ChangeSet, DeviceSnapshot, PeerChange


def peer_change(peer: PeerConfig, endpoint: Address | None) -> PeerChange:
    """A [Peer] section as a change that sets all of it; `endpoint` None keeps the one
    learned from the peer."""
    return PeerChange(
        peer.public_key,
        preshared_key=peer.preshared_key or bytes(32),
        endpoint=endpoint,
        persistent_keepalive=peer.persistent_keepalive or 0,
        replace_allowed_ips=True,
        allowed_ips=list(peer.allowed_ips),
    )


def config_changes(
    config: Config, endpoints: Mapping[bytes, Address], current: Iterable[bytes] = ()
) -> ChangeSet:
    """What makes a device with the peers `current` run `config`, as `wg syncconf` does:
    peers not in the file go, the others are set whole and keep their sessions. listen_port
    and fwmark None (absent from the file) keep what runs."""
    interface = config.interface
    wanted = {peer.public_key for peer in config.peers}
    peers = [PeerChange(key, remove=True) for key in current if key not in wanted]
    peers += [peer_change(peer, endpoints.get(peer.public_key)) for peer in config.peers]
    return ChangeSet(private_key=interface.private_key, listen_port=interface.listen_port,
                     fwmark=interface.fwmark, peers=peers)


def running_config(config: Config, snapshot: DeviceSnapshot, *, record_port: bool) -> Config:
    """`config` with the interface's key, port and mark and the peers as they run now.
    A port the kernel chose stays unrecorded (`record_port` False), so a saved config asks
    for any port again."""
    peers = tuple(
        PeerConfig(
            public_key=peer.public_key,
            preshared_key=peer.preshared_key,
            allowed_ips=tuple(networks(peer.allowed_ips)),
            endpoint=EndpointAddress(*peer.endpoint) if peer.endpoint is not None else None,
            persistent_keepalive=peer.persistent_keepalive or None,
        )
        for peer in snapshot.peers
    )
    interface = replace(
        config.interface,
        private_key=snapshot.private_key,
        listen_port=snapshot.listen_port if record_port else None,
        fwmark=snapshot.fwmark or None,
    )
    return replace(config, interface=interface, peers=peers)


def write_atomically(path: Path, text: str) -> None:
    """Write aside and rename over, so a crash mid-write cannot cost the old file. The file
    holds the private key, so it is created 0600 whatever the umask. Raises OSError."""
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.rename(temp, path)
    except OSError:
        with contextlib.suppress(OSError):
            temp.unlink()
        raise
