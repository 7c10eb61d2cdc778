"""`vpn show`: what `wg show` shows plus the offload picture, as text or as stable JSON.

Pure: takes a get=1 snapshot and the get=vpn-stats counters (None for a socket served by
another implementation) and returns a dict or lines; the command line does the socket work.
"""

from __future__ import annotations

from typing import Any

from vpn.control.uapi import DeviceSnapshot, prefix_text
from vpn.core.keys import encode_key, public_from_private
from vpn.core.types import endpoint_text


def _ratio(part: int, whole: int) -> float:
    return round(part / whole, 2) if whole else 0.0


def _int(tree: dict[str, Any], *path: str) -> int:
    node: Any = tree
    for part in path:
        node = node.get(part, {}) if isinstance(node, dict) else {}
    return node if isinstance(node, int) else 0


def offload_view(stats: dict[str, Any]) -> dict[str, Any]:
    """The counters of get=vpn-stats, named and averaged for people (the JSON `offload`)."""
    dp = stats.get("datapath", {})
    udp = stats.get("udp", {})
    drops = dict(dp.get("drops", {})) if isinstance(dp, dict) else {}
    return {
        "tun_offloads": str(stats.get("tun_offloads", "")),
        "mtu": _int(stats, "mtu"),
        "udp_gso": bool(_int(stats, "udp_offloads", "gso")),
        "udp_gro": bool(_int(stats, "udp_offloads", "gro")),
        "fast_path": str(stats.get("fast_path", "")),  # "native" or "python"
        "tun_reads": _int(dp, "tun_reads"),
        "super_packets": _int(dp, "super_packets"),
        "segments_per_super_packet": _ratio(_int(dp, "segments_split"), _int(dp, "super_packets")),
        "tun_writes": _int(dp, "tun_writes"),
        "jumbo_frames": _int(dp, "jumbo_frames"),
        "segments_per_jumbo_frame": _ratio(_int(dp, "jumbo_segments"), _int(dp, "jumbo_frames")),
        "datagrams_sent": _int(dp, "datagrams_sent"),
        "datagrams_received": _int(dp, "datagrams_received"),
        "udp_gso_sends": _int(udp, "gso_sends"),
        "segments_per_gso_send": _ratio(_int(udp, "gso_segments"), _int(udp, "gso_sends")),
        "udp_gro_receives": _int(udp, "gro_receives"),
        "segments_per_gro_receive": _ratio(_int(udp, "gro_segments"), _int(udp, "gro_receives")),
        "handshakes_received": _int(stats, "handshakes", "received"),
        "handshakes_completed": _int(stats, "handshakes", "completed"),
        "drops": drops,
        "protocol_drops": dict(stats.get("protocol_drops", {}) or {}),
        "udp_send_errors": dict(udp.get("send_errors", {}) or {}) if isinstance(udp, dict) else {},
        # Every other count, under its own name (the UDP socket's prefixed udp_): the
        # offload figures above are these, named and averaged for people.
        **{k: v for k, v in _counts(dp).items() if k not in _NAMED},
        **{f"udp_{k}": v for k, v in _counts(udp).items() if f"udp_{k}" not in _NAMED},
    }


# The counts offload_view names itself; the others it adds as they are.
_NAMED = frozenset({"tun_reads", "super_packets", "tun_writes", "jumbo_frames", "datagrams_sent",
                    "datagrams_received", "udp_gso_sends", "udp_gro_receives",
                    "handshakes_received"})


def _counts(tree: object) -> dict[str, int]:
    if not isinstance(tree, dict):
        return {}
    return {k: v for k, v in tree.items() if isinstance(v, int)}


def _peer_counts(stats: dict[str, Any] | None, public_key: bytes) -> dict[str, Any]:
    """A peer's own counters from get=vpn-stats (None: not served by a vpn endpoint)."""
    peers = stats.get("peers") if stats is not None else None
    mine = peers.get(public_key.hex()) if isinstance(peers, dict) else None
    if not isinstance(mine, dict):
        return {"handshakes": None, "endpoint_changes": None, "drops": None}
    return {"handshakes": _int(mine, "handshakes"),
            "endpoint_changes": _int(mine, "endpoint_changes"),
            "drops": _counts(mine.get("drops"))}


def show_view(name: str, snapshot: DeviceSnapshot, stats: dict[str, Any] | None) -> dict[str, Any]:
    """The `vpn show --json` object for one interface (documented in the README)."""
    public = public_from_private(snapshot.private_key) if snapshot.private_key else None
    return {
        "interface": name,
        "public_key": encode_key(public) if public else None,
        "listen_port": snapshot.listen_port,
        "fwmark": snapshot.fwmark,
        "peers": [
            {
                "public_key": encode_key(peer.public_key),
                "preshared_key": peer.preshared_key is not None,
                "endpoint": endpoint_text(peer.endpoint) if peer.endpoint else None,
                "allowed_ips": [prefix_text(p) for p in peer.allowed_ips],
                # get=1 says 0 for "never" (as wg reads it); the JSON says null.
                "latest_handshake": peer.last_handshake or None,
                "rx_bytes": peer.rx_bytes,
                "tx_bytes": peer.tx_bytes,
                "persistent_keepalive": peer.persistent_keepalive,
                **_peer_counts(stats, peer.public_key),
            }
            for peer in snapshot.peers
        ],
        "offload": offload_view(stats) if stats is not None else None,
    }


def dump_lines(name: str, snapshot: DeviceSnapshot, with_interface: bool) -> list[str]:
    """`wg show IFACE dump` (`wg show all dump` with `with_interface`): tab-separated, one
    line for the interface (private key, public key, port, fwmark) and one per peer
    (public key, preshared key, endpoint, allowed IPs, latest handshake, rx, tx,
    keepalive), keys in full as there: the socket and the command are root's."""
    def maybe_key(key: bytes | None) -> str:
        return encode_key(key) if key is not None else "(none)"

    prefix = [name] if with_interface else []
    private = snapshot.private_key
    public = public_from_private(private) if private is not None else None
    lines = [[*prefix, maybe_key(private), maybe_key(public), str(snapshot.listen_port),
              f"{snapshot.fwmark:#x}" if snapshot.fwmark else "off"]]
    for peer in snapshot.peers:
        lines.append([
            *prefix, encode_key(peer.public_key), maybe_key(peer.preshared_key),
            endpoint_text(peer.endpoint) if peer.endpoint else "(none)",
            ",".join(map(prefix_text, peer.allowed_ips)) or "(none)",
            str(int(peer.last_handshake or 0)), str(peer.rx_bytes), str(peer.tx_bytes),
            str(peer.persistent_keepalive or "off"),
        ])
    return ["\t".join(line) for line in lines]


def _bytes(n: int) -> str:
    """A byte count as `wg show` writes it: B below 1 KiB, then two decimals."""
    if n < 1024:
        return f"{n} B"
    for unit, size in (("KiB", 1 << 10), ("MiB", 1 << 20), ("GiB", 1 << 30)):
        if n < size << 10:
            return f"{n / size:.2f} {unit}"
    return f"{n / (1 << 40):.2f} TiB"


def plural(count: int, noun: str, suffix: str = "s") -> str:
    """"1 peer", "2 peers": a count as people write it."""
    return f"{count} {noun}{suffix * (count != 1)}"


def _duration(seconds: int) -> str:
    """`wg show`'s spans: years (of 365 days) down to seconds, the zero ones left out."""
    parts: list[str] = []
    for unit, size in (("year", 365 * 86400), ("day", 86400), ("hour", 3600),
                       ("minute", 60), ("second", 1)):
        count, seconds = divmod(seconds, size)
        if count:
            parts.append(plural(count, unit))
    return ", ".join(parts)


def _ago(now: float, then: float) -> str:
    """As `wg show`, in whole seconds of each clock."""
    seconds = int(now) - int(then)
    if seconds == 0:
        return "Now"
    if seconds < 0:
        return "(System clock wound backward; connection problems may ensue.)"
    return f"{_duration(seconds)} ago"


def _by_latest_handshake(peers: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """`wg show`'s order: the most recent handshake first, peers that never had one last,
    ties as the device lists them."""
    return sorted(peers, key=lambda peer: -(peer["latest_handshake"] or 0))


def show_text(view: dict[str, Any], now: float) -> str:
    """The human form: `wg show`'s text, line for line (without its colours), then the
    offload section."""
    lines = [f"interface: {view['interface']}"]
    if view["public_key"]:
        lines.append(f"  public key: {view['public_key']}")
        lines.append("  private key: (hidden)")
    if view["listen_port"]:
        lines.append(f"  listening port: {view['listen_port']}")
    if view["fwmark"]:
        lines.append(f"  fwmark: {view['fwmark']:#x}")
    for peer in _by_latest_handshake(view["peers"]):
        lines += ["", f"peer: {peer['public_key']}"]
        if peer["preshared_key"]:
            lines.append("  preshared key: (hidden)")
        if peer["endpoint"]:
            lines.append(f"  endpoint: {peer['endpoint']}")
        lines.append(f"  allowed ips: {', '.join(peer['allowed_ips']) or '(none)'}")
        if peer["latest_handshake"]:
            lines.append(f"  latest handshake: {_ago(now, peer['latest_handshake'])}")
        if peer["rx_bytes"] or peer["tx_bytes"]:
            lines.append(f"  transfer: {_bytes(peer['rx_bytes'])} received, "
                         f"{_bytes(peer['tx_bytes'])} sent")
        if peer["persistent_keepalive"]:
            lines.append(f"  persistent keepalive: every "
                         f"{_duration(peer['persistent_keepalive'])}")
    off = view["offload"]
    lines.append("")
    if off is None:
        lines.append("offload: (no counters: this socket is not served by a vpn endpoint)")
        return "\n".join(lines)
    lines += [
        "offload:",
        f"  TUN offloads: {off['tun_offloads']}, MTU {off['mtu']}",
        f"  UDP: GSO {'on' if off['udp_gso'] else 'off'}, GRO {'on' if off['udp_gro'] else 'off'}",
        f"  fast path: {off['fast_path']}",
        f"  super-packets read: {off['super_packets']} of {off['tun_reads']} TUN reads, "
        f"{off['segments_per_super_packet']} segments each",
        f"  jumbo frames written: {off['jumbo_frames']} of {off['tun_writes']} TUN writes, "
        f"{off['segments_per_jumbo_frame']} segments each",
        f"  UDP GSO sends: {off['udp_gso_sends']}, {off['segments_per_gso_send']} datagrams each",
        f"  UDP GRO receives: {off['udp_gro_receives']}, "
        f"{off['segments_per_gro_receive']} datagrams each",
        f"  handshakes: {off['handshakes_completed']} completed, "
        f"{off['handshakes_received']} handshake messages received",
    ]
    # A handshake message's drop is counted by the data path and by the protocol alike:
    # the protocol's count is shown only where it says something the other does not.
    drops = {**off["drops"], **{f"protocol:{k}": v for k, v in off["protocol_drops"].items()
                                if off["drops"].get(k) != v},
             **{f"udp_send:{k}": v for k, v in off["udp_send_errors"].items()}}
    if drops:
        lines.append("  drops: " + ", ".join(f"{k} {v}" for k, v in sorted(drops.items())))
    else:
        lines.append("  drops: none")
    return "\n".join(lines)
