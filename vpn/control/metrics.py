"""A counters snapshot as Prometheus text (format 0.0.4) or OpenMetrics 1.0 text.

Written here rather than with prometheus_client: the runtime dependencies stay uvloop,
cryptography and pyroute2, and the format's rules for what we emit are few (HELP and TYPE
lines, label escaping, `_total` and `_info` suffixes, `# EOF`). The tests parse the output
with prometheus_client's parsers. Pure: a snapshot in, bytes out, linear in the peers.

The names of the per-peer bytes and handshake time, and their labels, are
prometheus_wireguard_exporter's, so dashboards built for it work unchanged.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from vpn.control.counters import Counters, PeerCounters
from vpn.core.keys import encode_key

PROMETHEUS_TYPE = "text/plain; version=0.0.4; charset=utf-8"
OPENMETRICS_TYPE = "application/openmetrics-text; version=1.0.0; charset=utf-8"

Sample = tuple[str, float]  # label text (`a="x",b="y"`, escaped) and value

# Help for the data path's and the UDP socket's counts (vpn/io/datapath.py, vpn/io/udp.py);
# a count not listed here is exported too, under its own name.
DATAPATH_HELP = {
    "tun_reads": "Packets read from the TUN device (a super-packet counts once)",
    "super_packets": "TSO/USO super-packets read from the TUN device",
    "segments_split": "Segments the super-packets were split into",
    "datagrams_sent": "WireGuard datagrams sent",
    "datagrams_received": "WireGuard datagrams received",
    "full_receive_batches": "UDP wakeups that found a whole receive batch waiting",
    "packets_written": "Decrypted packets delivered to the TUN device",
    "tun_writes": "Writes to the TUN device (a jumbo frame counts once)",
    "jumbo_frames": "Coalesced (GRO) frames written to the TUN device",
    "jumbo_segments": "Packets carried by the coalesced frames",
    "handshakes_received": "Handshake messages received",
    "icmp_unreachable_sent": "ICMP unreachable replies for packets no peer's AllowedIPs cover",
    "lost_session_handshakes": "Handshakes started for data on a session we no longer have",
}
UDP_HELP = {
    "gso_sends": "UDP GSO sends (several datagrams in one call)",
    "gso_segments": "Datagrams sent by UDP GSO sends",
    "plain_sends": "UDP sends of one datagram",
    "gro_receives": "UDP GRO receives (several datagrams in one)",
    "gro_segments": "Datagrams received by UDP GRO receives",
    "receives": "UDP receive calls that returned data",
    "send_dropped": "Datagrams given to a send call that did not leave",
    "gso_fallbacks": "GSO sends the kernel refused, sent again one datagram at a time",
    "truncated": "Received datagrams larger than the receive buffer",
    "receive_errors": "UDP receive calls that failed",
}


def escape_label(value: str) -> str:
    r"""A label value as both formats quote it: \ " and newline escaped."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _escape_help(text: str, openmetrics: bool) -> str:
    text = text.replace("\\", "\\\\").replace("\n", "\\n")
    return text.replace('"', '\\"') if openmetrics else text


def _value(value: float) -> str:
    return str(value) if isinstance(value, int) else repr(float(value))


class _Writer:
    """The lines of one exposition; a family is written whole (HELP, TYPE, samples)."""

    def __init__(self, openmetrics: bool) -> None:
        self.openmetrics = openmetrics
        self.lines: list[str] = []

    def family(self, name: str, kind: str, help_text: str, samples: Iterable[Sample]) -> None:
        """`name` without its suffix; kind "counter" adds `_total` to the samples, "info"
        adds `_info` (a gauge of value 1 in the 0.0.4 format, which has no info type)."""
        suffix = {"counter": "_total", "info": "_info"}.get(kind, "")
        if self.openmetrics:
            family, declared = name, kind
        else:  # 0.0.4 declares the sample name itself; an info is a gauge there
            family, declared = name + suffix, "gauge" if kind == "info" else kind
        self.lines.append(f"# HELP {family} {_escape_help(help_text, self.openmetrics)}")
        self.lines.append(f"# TYPE {family} {declared}")
        sample_name = name + suffix
        self.lines += [f"{sample_name}{{{text}}} {_value(value)}" if text
                       else f"{sample_name} {_value(value)}" for text, value in samples]

    def text(self) -> bytes:
        if self.openmetrics:
            self.lines.append("# EOF")
        return ("\n".join(self.lines) + "\n").encode()


def labels(*pairs: tuple[str, str]) -> str:
    """Label pairs as a sample writes them between braces, values escaped; built once per
    peer and shared by its samples."""
    return ",".join(f'{name}="{escape_label(value)}"' for name, value in pairs)


def _exporter_labels(own: str, key: str, peer: PeerCounters) -> str:
    """prometheus_wireguard_exporter's labels: interface, public_key, allowed_ips (comma
    separated), and remote_ip and remote_port once the peer has an endpoint."""
    pairs = [("public_key", key), ("allowed_ips", ",".join(str(n) for n in peer.allowed_ips()))]
    if peer.endpoint is not None:
        pairs += [("remote_ip", peer.endpoint[0]), ("remote_port", str(peer.endpoint[1]))]
    return f"{own},{labels(*pairs)}"


def _by_reason(own: str, counts: Mapping[str, int], label: str = "reason") -> list[Sample]:
    return [(f"{own},{labels((label, reason))}", n) for reason, n in sorted(counts.items())]


def render(counters: Counters, *, openmetrics: bool = False) -> bytes:
    """The exposition of one interface's snapshot."""
    out = _Writer(openmetrics)
    own = labels(("interface", counters.interface))
    peers = counters.peers
    keys = [encode_key(p.public_key) for p in peers]
    exporter = [_exporter_labels(own, key, p) for key, p in zip(keys, peers, strict=True)]
    out.family("wireguard_sent_bytes", "counter", "Bytes sent to the peer",
               zip(exporter, (p.tx_bytes for p in peers), strict=True))
    out.family("wireguard_received_bytes", "counter", "Bytes received from the peer",
               zip(exporter, (p.rx_bytes for p in peers), strict=True))
    out.family("wireguard_latest_handshake_seconds", "gauge",
               "Seconds since the epoch of the latest handshake (0: never)",
               zip(exporter, (int(p.latest_handshake or 0) for p in peers), strict=True))
    keyed = [f"{own},{labels(('public_key', key))}" for key in keys]
    out.family("vpn_peer_handshakes", "counter", "Handshakes completed with the peer",
               zip(keyed, (p.handshakes for p in peers), strict=True))
    out.family("vpn_peer_endpoint_changes", "counter",
               "Times an authenticated message set or moved the peer's endpoint",
               zip(keyed, (p.endpoint_changes for p in peers), strict=True))
    out.family("vpn_peer_drops", "counter",
               "The peer's packets and messages dropped, by reason (those the data path can "
               "tell are the peer's; every drop is in vpn_drops_total)",
               [(f"{text},{labels(('reason', reason))}", n)
                for text, p in zip(keyed, peers, strict=True)
                for reason, n in sorted(p.drops.items())])
    out.family("vpn_peers", "gauge", "Configured peers", [(own, len(peers))])
    out.family("vpn_fast_path", "info", "Which per-packet code runs: native (C) or python",
               [(f"{own},{labels(('path', counters.fast_path))}", 1)])
    out.family("vpn_udp_offload_enabled", "gauge", "UDP offloads in use (1) or not (0)",
               [(f'{own},offload="gso"', int(counters.udp_gso)),
                (f'{own},offload="gro"', int(counters.udp_gro))])
    out.family("vpn_mtu_bytes", "gauge", "The interface's MTU", [(own, counters.mtu)])
    out.family("vpn_drops", "counter", "Packets and datagrams the data path dropped, by reason",
               _by_reason(own, counters.drops))
    out.family("vpn_handshake_drops", "counter",
               "Handshake messages the protocol refused, by reason (in vpn_drops_total too, "
               "but for the ones the data path never sees)",
               _by_reason(own, counters.protocol_drops))
    out.family("vpn_udp_send_errors", "counter", "Failed UDP sends, by errno",
               _by_reason(own, counters.udp_send_errors, "errno"))
    out.family("vpn_handshakes_completed", "counter", "Handshakes completed, every peer",
               [(own, counters.handshakes_completed)])
    for prefix, counts, helps in (("vpn_", counters.datapath, DATAPATH_HELP),
                                  ("vpn_udp_", counters.udp, UDP_HELP)):
        for key, n in counts.items():
            out.family(prefix + key, "counter", helps.get(key, key.replace("_", " ")),
                       [(own, n)])
    return out.text()


def wants_openmetrics(accept: str) -> bool:
    """Whether an Accept header asks for OpenMetrics text (Prometheus sends it first, with a
    q-value, when its scrape protocols allow it)."""
    for item in accept.split(","):
        media, _, params = item.strip().partition(";")
        if media.strip().lower() != "application/openmetrics-text":
            continue
        for param in params.split(";"):
            key, _, q = param.strip().partition("=")
            if key.strip() == "q" and q.strip() in ("0", "0.0", "0.00", "0.000"):
                break
        else:
            return True
    return False
