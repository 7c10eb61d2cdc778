"""Every counter of a running interface, taken at one moment: the one snapshot that
`vpn show --json` (over get=vpn-stats) and the metrics endpoint both render.

`gather` is the one place it is built. It copies plain numbers only (no UAPI text, no
formatting), in time linear in the peers, so a scrape costs the data path one short pause.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from vpn.core.keys import encode_key
from vpn.core.types import Address, Network, endpoint_text
from vpn.core.wireguard import Device
from vpn.core.wireguard.allowedips import Prefix, networks


@dataclass(frozen=True, slots=True)
class PeerCounters:
    public_key: bytes
    endpoint: Address | None
    allowed_prefixes: tuple[Prefix, ...]  # as numbers: formatted off the loop (allowed_ips)
    rx_bytes: int
    tx_bytes: int
    latest_handshake: float | None  # wall-clock seconds; None: never
    handshakes: int  # completed
    endpoint_changes: int
    drops: Mapping[str, int]  # by reason, those the data path can tell are this peer's

    def allowed_ips(self) -> list[Network]:
        return networks(self.allowed_prefixes)


@dataclass(frozen=True, slots=True)
class Counters:
    interface: str
    public_key: bytes | None
    listen_port: int
    mtu: int
    tun_offloads: str
    fast_path: str  # "native" or "python"
    udp_gso: bool
    udp_gro: bool
    datapath: Mapping[str, int]  # DataPathStats' counts (vpn/io/datapath.py)
    udp: Mapping[str, int]  # UdpStats' counts (vpn/io/udp.py)
    drops: Mapping[str, int]  # the data path's, by reason
    protocol_drops: Mapping[str, int]  # the handshake code's (Device.drops), by reason
    udp_send_errors: Mapping[str, int]  # by errno name
    handshakes_completed: int
    peers: tuple[PeerCounters, ...]

    def to_stats(self) -> dict[str, Any]:
        """The get=vpn-stats tree (flattened to `a.b=value` lines by uapi.format_stats);
        peers are keyed by the hex of their public key, which fits a stats key."""
        udp = {**self.udp, "send_errors": dict(self.udp_send_errors)}
        return {
            "interface": self.interface,
            "public_key": encode_key(self.public_key) if self.public_key else None,
            "listen_port": self.listen_port,
            "mtu": self.mtu,
            "tun_offloads": self.tun_offloads,
            "fast_path": self.fast_path,
            # As DataPathStats.summary() has it: the socket's counts under datapath too.
            "datapath": {**self.datapath, "drops": dict(self.drops), "udp": udp},
            "udp": udp,
            "protocol_drops": dict(self.protocol_drops),
            "handshakes": {"received": self.datapath.get("handshakes_received", 0),
                           "completed": self.handshakes_completed},
            "udp_offloads": {"gso": int(self.udp_gso), "gro": int(self.udp_gro)},
            "peers": {peer.public_key.hex(): {"handshakes": peer.handshakes,
                                              "endpoint_changes": peer.endpoint_changes,
                                              "drops": dict(peer.drops)}
                      for peer in self.peers},
        }

    def peers_json(self) -> list[dict[str, Any]]:
        """The peers as `Endpoint.counters()` lists them (JSON)."""
        return [
            {
                "public_key": encode_key(peer.public_key),
                "endpoint": endpoint_text(peer.endpoint) if peer.endpoint else None,
                "allowed_ips": [str(n) for n in peer.allowed_ips()],
                "rx_bytes": peer.rx_bytes,
                "tx_bytes": peer.tx_bytes,
                "last_handshake": peer.latest_handshake,
                "handshakes": peer.handshakes,
                "endpoint_changes": peer.endpoint_changes,
                "drops": dict(peer.drops),
            }
            for peer in self.peers
        ]


def _ints(summary: Mapping[str, object]) -> dict[str, int]:
    return {k: v for k, v in summary.items() if isinstance(v, int) and not isinstance(v, bool)}


def _counts(value: object) -> dict[str, int]:
    return _ints(value) if isinstance(value, Mapping) else {}


def gather(
    name: str,
    device: Device,
    *,
    mtu: int,
    tun_offloads: str,
    fast_path: str,
    udp_gso: bool,
    udp_gro: bool,
    datapath: Mapping[str, object],
    udp: Mapping[str, object],
    handshakes_completed: int,
) -> Counters:
    """The snapshot, from the device (its peers) and the summaries of DataPathStats and
    UdpStats (their `summary()`: counts, and maps of counts by reason)."""
    prefixes_for = device.allowed_ips.prefixes_for
    peers = tuple(
        PeerCounters(
            public_key=peer.public_key,
            endpoint=peer.endpoint,
            allowed_prefixes=prefixes_for(peer),
            rx_bytes=peer.rx_bytes,
            tx_bytes=peer.tx_bytes,
            latest_handshake=peer.last_handshake_wall,
            handshakes=peer.handshakes,
            endpoint_changes=peer.endpoint_changes,
            drops=dict(peer.drops) if peer.drops else {},
        )
        for peer in device.peers.values()
    )
    return Counters(
        interface=name,
        public_key=device.public_key,
        listen_port=device.listen_port,
        mtu=mtu,
        tun_offloads=tun_offloads,
        fast_path=fast_path,
        udp_gso=udp_gso,
        udp_gro=udp_gro,
        datapath=_ints(datapath),
        udp=_ints(udp),
        drops=_counts(datapath.get("drops")),
        protocol_drops=dict(device.drops),
        udp_send_errors=_counts(udp.get("send_errors")),
        handshakes_completed=handshakes_completed,
        peers=peers,
    )
