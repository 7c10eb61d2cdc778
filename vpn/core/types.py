"""The few types every layer shares, defined once."""

from __future__ import annotations

import ipaddress

Buffer = bytes | bytearray | memoryview  # what packet and message code reads from
Address = tuple[str, int]  # (ip, port) as the socket layer reports it
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def endpoint_text(address: Address) -> str:
    """An address as wg writes it: `ip:port`, `[ip6]:port`."""
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
