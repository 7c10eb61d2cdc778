"""A Device's snapshot taken a slice of peers at a time, so that the event loop (the data
path) runs between slices while a 10,000-peer `wg show` is served.

One view all the same: the Device counts its configuration changes (`generation`), and a
change between two slices starts the snapshot over, so no answer mixes two configurations.
The live values (endpoint, last handshake, byte counts) are each read when its peer's slice
is, as wireguard-go reads each peer under its own lock.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from .allowedips import Prefix
from .changes import DeviceSnapshot, PeerRow

if TYPE_CHECKING:
    from .device import Device
    from .peer import Peer

# About 0.4 us a peer: a slice of 256 holds the loop for a tenth of a millisecond.
PEERS_PER_SLICE = 256
# Changes that keep landing mid-snapshot (a `wg set` loop) must not starve it: after this
# many restarts the rest is read in one go, a pause as long as an unsliced snapshot's.
MAX_RESTARTS = 3
_NO_PSK = bytes(32)


def peer_rows(peers: Iterable[Peer], prefixes_for: Callable[[Peer], tuple[Prefix, ...]]
              ) -> list[PeerRow]:
    """Each peer as a snapshot row: plain values read in one pass."""
    return [
        (
            peer.public_key,
            psk if (psk := peer.handshake.psk) != _NO_PSK else None,
            peer.endpoint,
            peer.last_handshake_wall,
            peer.tx_bytes,
            peer.rx_bytes,
            int(peer.timers.persistent_interval),
            prefixes_for(peer),
        )
        for peer in peers
    ]


class SlicedSnapshot:
    """`device.snapshot()`, taken by calling `step()` until it returns the snapshot; each
    step reads at most `peers_per_slice` peers."""

    __slots__ = ("_done", "_peers", "_rows", "_snapshot", "device", "generation",
                 "peers_per_slice", "restarts")

    def __init__(self, device: Device, peers_per_slice: int = PEERS_PER_SLICE) -> None:
        if peers_per_slice < 1:
            raise ValueError("peers_per_slice must be at least 1")
        self.device = device
        self.peers_per_slice = peers_per_slice
        self.restarts = 0
        self._start()

    def _start(self) -> None:
        device = self.device
        self.generation = device.generation
        self._peers = list(device.peers.values())
        self._done = 0
        self._rows: list[PeerRow] = []
        self._snapshot = DeviceSnapshot(private_key=device.private_key,
                                        listen_port=device.listen_port, fwmark=device.fwmark,
                                        rows=self._rows)

    @property
    def current(self) -> DeviceSnapshot:
        """The snapshot being taken: its rows so far (they only grow); a new one when it
        starts over."""
        return self._snapshot

    def step(self) -> DeviceSnapshot | None:
        """Read the next slice: the finished snapshot after the last, else None."""
        if self.device.generation != self.generation:
            self.restarts += 1
            self._start()
        count = self.peers_per_slice if self.restarts < MAX_RESTARTS else len(self._peers)
        end = self._done + count
        self._rows += peer_rows(self._peers[self._done:end], self.device.allowed_ips.prefixes_for)
        self._done = end
        return self._snapshot if end >= len(self._peers) else None
