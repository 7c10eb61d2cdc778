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


# One peer at one moment, as plain values in an exact tuple: PeerSnapshot's fields, in order.
PeerRow = tuple[bytes, bytes | None, Address | None, float | None, int, int, int,
                tuple[Prefix, ...]]


class PeerSnapshot(NamedTuple):
    """One peer as `get=1` reports it: a PeerRow with names."""

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
    """The interface as `get=1` reports it.

    The peers are kept as `rows`, exact tuples of plain values: a 10,000-peer snapshot
    taken at one moment on the event loop costs milliseconds (an ipaddress object per
    prefix made it 140 ms), and the garbage collector stops tracking such tuples, where it
    never stops tracking a NamedTuple: 10,000 of those per get, alive while the answer is
    written in slices, made a full collection (over 100 ms with 10,000 peers) due every
    few gets. `peers` names them, for everything but that answer.
    """

    private_key: bytes | None
    listen_port: int
    fwmark: int = 0
    rows: list[PeerRow] = field(default_factory=list)

    @property
    def peers(self) -> list[PeerSnapshot]:
        return list(map(PeerSnapshot._make, self.rows))

    def __repr__(self) -> str:
        return f"DeviceSnapshot(listen_port={self.listen_port}, peers={self.peers!r})"
