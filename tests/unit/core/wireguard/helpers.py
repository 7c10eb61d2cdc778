"""Shared helpers for the WireGuard unit tests: two devices that know each other."""

from __future__ import annotations

import os
from dataclasses import dataclass

from vpn.core.types import Address, Buffer
from vpn.core.wireguard import Device, Peer

A_ADDR = ("198.18.1.1", 51820)
B_ADDR = ("198.18.1.2", 51821)


class WallClock:
    """A wall clock that moves with the test's monotonic `now`."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self.t = start

    def __call__(self) -> float:
        return self.t


@dataclass
class OneMessage:
    """What Device.receive made of one datagram: the packet it delivered (b"" if none), what
    it sends back, and its drop reason (None: none)."""

    packet: bytes
    replies: list[bytes]
    drop_reason: str | None


def receive_one(device: Device, data: Buffer, source: Address, now: float) -> OneMessage:
    """One datagram through the one receive path, as the data path's wakeup would take it."""
    got = device.receive([(data, len(data), source)], now)
    packets = got.packets()
    return OneMessage(bytes(packets[0]) if packets else b"", [d for _, d in got.send],
                      next(iter(got.drops), None))


@dataclass
class Pair:
    a: Device
    b: Device
    pa: Peer  # a's view of b
    pb: Peer  # b's view of a
    wall: WallClock
    psk: bytes | None

    def handshake(self, now: float) -> None:
        """a initiates, b answers, a confirms with a keepalive b consumes."""
        self.wall.t = 1_700_000_000.0 + now
        init = self.pa.initiate_handshake(now)
        assert init, "initiation was rate limited"
        r1 = self.b.handle_handshake_message(init[0], A_ADDR, now)
        assert r1.drop_reason is None, r1.drop_reason
        r2 = self.a.handle_handshake_message(r1.replies[0], B_ADDR, now)
        assert r2.drop_reason is None, r2.drop_reason
        for data in r2.replies:
            t = receive_one(self.b, data, A_ADDR, now)
            assert t.drop_reason is None, t.drop_reason


def make_pair(psk: bytes | None = None) -> Pair:
    wall = WallClock()
    a = Device(os.urandom(32), wall_clock=wall, jitter=lambda: 0.0)
    b = Device(os.urandom(32), wall_clock=wall, jitter=lambda: 0.0)
    pa = a.add_peer(b.public_key, preshared_key=psk, endpoint=B_ADDR)
    pb = b.add_peer(a.public_key, preshared_key=psk, endpoint=A_ADDR)
    a.allowed_ips.insert("198.18.0.2/32", pa)
    a.allowed_ips.insert("fd00::2/128", pa)
    b.allowed_ips.insert("198.18.0.1/32", pb)
    b.allowed_ips.insert("fd00::1/128", pb)
    return Pair(a, b, pa, pb, wall, psk)


def ipv4_packet(src: str, dst: str, payload: bytes = b"x" * 20) -> bytes:
    """A minimal IPv4 header (checksum not needed by the protocol layer) plus payload."""
    import ipaddress

    total = 20 + len(payload)
    return (
        bytes([0x45, 0])
        + total.to_bytes(2, "big")
        + bytes(4)
        + bytes([64, 17, 0, 0])
        + ipaddress.IPv4Address(src).packed
        + ipaddress.IPv4Address(dst).packed
        + payload
    )


def mac1_valid(kind: int, victim_public: bytes) -> bytes:
    """An initiation (1) or response (2) from nobody with a valid mac1 for the victim and
    no mac2: it passes the cheap check and would cost the victim Diffie-Hellman work."""
    from vpn.core.wireguard.constants import LABEL_MAC1
    from vpn.core.wireguard.crypto import hash_, mac
    from vpn.core.wireguard.messages import INITIATION_MAC1_OFFSET, RESPONSE_MAC1_OFFSET

    offset = INITIATION_MAC1_OFFSET if kind == 1 else RESPONSE_MAC1_OFFSET
    body = bytes([kind, 0, 0, 0]) + os.urandom(offset - 4)
    return body + mac(hash_(LABEL_MAC1, victim_public), body) + bytes(16)


def handshake_shaped(count: int) -> list[bytes]:
    """Random bytes in the exact shape of initiations, responses and cookie replies (type
    byte, zero reserved bytes, exact size): what a flood of garbage at those sizes looks
    like once it passes the length checks. mac1 fails; a cookie reply's index is no one's."""
    shapes = [(1, 148), (2, 92), (3, 64)]
    return [bytes([kind, 0, 0, 0]) + os.urandom(size - 4)
            for kind, size in (shapes[i % 3] for i in range(count))]
