"""One interface's link events over rtnetlink: its MTU set, or the interface deleted.

wg-quick drives a userspace implementation with `ip`: it sets the MTU after start and ends
it with `ip link delete`. `LinkWatch` is a non-blocking netlink socket in the RTMGRP_LINK
group; the caller polls `fd` and reads `events()`. Plain struct parsing: no pyroute2 loop.
"""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass

RTMGRP_LINK = 0x1
RTM_NEWLINK = 16
RTM_DELLINK = 17
IFLA_MTU = 4
_NLMSGHDR = struct.Struct("=IHHII")  # length, type, flags, sequence, port id
_IFINFOMSG = struct.Struct("=BxHiII")  # family, type, index, flags, change
_RTATTR = struct.Struct("=HH")  # length, type
_MTU = struct.Struct("=I")


@dataclass(frozen=True)
class LinkEvent:
    deleted: bool
    mtu: int | None = None  # in an RTM_NEWLINK: the link's MTU now


class LinkWatch:
    """Link events of the interface `index`, from the namespace the caller is in."""

    def __init__(self, index: int) -> None:
        self.index = index
        self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_NONBLOCK
                                   | socket.SOCK_CLOEXEC, socket.NETLINK_ROUTE)
        try:
            self._sock.bind((0, RTMGRP_LINK))
        except OSError:
            self._sock.close()
            raise

    @property
    def fd(self) -> int:
        return self._sock.fileno()

    def events(self) -> list[LinkEvent]:
        """Every pending event of our interface. A lost message (ENOBUFS: the socket's
        buffer overflowed) is answered by asking the kernel whether the link still exists."""
        out: list[LinkEvent] = []
        while True:
            try:
                data = self._sock.recv(65536)
            except BlockingIOError:
                return out
            except OSError:  # ENOBUFS
                try:
                    socket.if_indextoname(self.index)
                except OSError:
                    out.append(LinkEvent(deleted=True))
                continue
            out += parse_link_events(data, self.index)

    def close(self) -> None:
        self._sock.close()


def parse_link_events(data: bytes, index: int) -> list[LinkEvent]:
    """The RTM_NEWLINK and RTM_DELLINK messages for interface `index` in one datagram."""
    out = []
    at = 0
    while at + _NLMSGHDR.size <= len(data):
        length, kind, _, _, _ = _NLMSGHDR.unpack_from(data, at)
        if length < _NLMSGHDR.size or at + length > len(data):
            break  # malformed: the kernel never sends this
        body = at + _NLMSGHDR.size
        ours = (kind in (RTM_NEWLINK, RTM_DELLINK)
                and length >= _NLMSGHDR.size + _IFINFOMSG.size
                and _IFINFOMSG.unpack_from(data, body)[2] == index)
        if ours and kind == RTM_DELLINK:
            out.append(LinkEvent(deleted=True))
        elif ours:
            out.append(LinkEvent(deleted=False,
                                 mtu=_mtu(data, body + _IFINFOMSG.size, at + length)))
        at += (length + 3) & ~3
    return out


def _mtu(data: bytes, at: int, end: int) -> int | None:
    while at + _RTATTR.size <= end:
        length, kind = _RTATTR.unpack_from(data, at)
        if length < _RTATTR.size:
            return None
        if kind == IFLA_MTU and length >= _RTATTR.size + _MTU.size:
            return int(_MTU.unpack_from(data, at + _RTATTR.size)[0])
        at += (length + 3) & ~3
    return None
