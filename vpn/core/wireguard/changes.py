"""What a configuration change asks of a Device, and what the Device reports back.

A ChangeSet is built from a `wg set` request, a config file (`vpn up`, `vpn reload`) or
code (`Endpoint.set_peer`); `Device.apply` validates it whole before it changes anything.
A DeviceSnapshot is the one projection of the running state: `wg show`, `vpn show`,
SaveConfig and the endpoint's counters all render it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

from vpn.core.types import Address, Network

from .allowedips import Prefix


class ChangeError(ValueError):
    """A ChangeSet the device refuses; nothing of it was applied."""


@dataclass
class PeerChange:
    """One `public_key=` section of a set request. None means "leave as it is"."""

    public_key: bytes
    remove: bool = False
    update_only: bool = False
    preshared_key: bytes | None = None  # 32 zero bytes clear it
    endpoint: Address | None = None
    persistent_keepalive: int | None = None  # seconds, 0 turns it off
    replace_allowed_ips: bool = False
    allowed_ips: list[Network] = field(default_factory=list)

    def __repr__(self) -> str:
        # Never show the preshared key; the public key is public, a prefix tells peers apart.
        return (f"PeerChange({self.public_key.hex()[:8]}..., remove={self.remove}, "
                f"allowed_ips={len(self.allowed_ips)})")


@dataclass
class ChangeSet:
    """A whole validated set request: applied all at once or not at all."""

    private_key: bytes | None = None  # 32 zero bytes remove it
    listen_port: int | None = None
    fwmark: int | None = None  # 0 turns it off
    replace_peers: bool = False
    peers: list[PeerChange] = field(default_factory=list)

    def __repr__(self) -> str:
        return (f"ChangeSet(private_key={'<hidden>' if self.private_key else None}, "
                f"listen_port={self.listen_port}, fwmark={self.fwmark}, "
                f"replace_peers={self.replace_peers}, peers={self.peers!r})")


class PeerSnapshot(NamedTuple):
    """One peer as `get=1` reports it: plain values in a tuple, so a snapshot of 10,000
    peers taken at one moment on the event loop costs milliseconds (a dataclass instance
    each doubled it, an ipaddress object per prefix made it 140 ms)."""

    public_key: bytes
    preshared_key: bytes | None = None
    endpoint: Address | None = None
    last_handshake: float | None = None  # wall-clock seconds
    tx_bytes: int = 0
    rx_bytes: int = 0
    persistent_keepalive: int = 0
    # As numbers; a device's in no order (the formatters sort them as `networks` does),
    # a parsed answer's in the answer's.
    allowed_ips: tuple[Prefix, ...] = ()

    def __repr__(self) -> str:
        return f"PeerSnapshot({self.public_key.hex()[:8]}..., endpoint={self.endpoint})"


@dataclass
class DeviceSnapshot:
    """The interface as `get=1` reports it."""

    private_key: bytes | None
    listen_port: int
    fwmark: int = 0
    peers: list[PeerSnapshot] = field(default_factory=list)

    def __repr__(self) -> str:
        return f"DeviceSnapshot(listen_port={self.listen_port}, peers={self.peers!r})"
