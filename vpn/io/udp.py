"""The endpoint's one dual-stack UDP socket, sending with UDP GSO and receiving with UDP GRO.

The socket owns UDP GSO: `send_messages` takes datagrams laid back to back and finds the
runs GSO can send, chunks them to its limits and falls back to plain sends. Sends never
block or raise: errors are counted. The system calls are `_sendmsg` and `_sendto` (the
in-memory double in lab/doubles.py replaces just those).
"""

from __future__ import annotations

import errno
import logging
import socket
import struct
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import groupby
from typing import TYPE_CHECKING, Protocol

from vpn.core.native import twin
from vpn.core.types import Address, Buffer
from vpn.io.buffers import reserve

if TYPE_CHECKING:
    from vpn.io.receivebuffers import ReceiveBuffer

try:
    import vpn.io._udp as _udp
except ImportError as error:  # not built: receive_batch serves
    _udp = None  # type: ignore[assignment]  # only reached when NATIVE says "python"
    NATIVE = twin("batch receive", error)
else:
    NATIVE = twin("batch receive")

log = logging.getLogger("vpn.io.udp")


class DatagramScreen(Protocol):
    """A protocol's screen for the native receive (vpn.core.wireguard.screen.Screen is one):
    `capsule` hands _udp.c its verdict on a datagram (vpn/core/include/screen.h); `screen`
    applies it to one receive, for receives that do not come through _udp.c."""

    @property
    def capsule(self) -> object: ...

    def screen(self, data: Buffer, segment_size: int, /
               ) -> tuple[list[tuple[int, int]], tuple[int, ...] | None, bool]: ...

# NATIVE: the native receive (recvmmsg and a screen, vpn/io/_udp.c) or, with
# VPN_FAST_PATH=python or without the module, receive_batch datagram by datagram.


# <linux/udp.h>: Python 3.11's socket module has neither constant.
SOL_UDP = 17
UDP_SEGMENT = 103
UDP_GRO = 104
# <asm-generic/socket.h>: the *FORCE variants ignore net.core.[rw]mem_max (CAP_NET_ADMIN).
SO_SNDBUFFORCE = 32
SO_RCVBUFFORCE = 33

# The kernel refuses GSO sends of more than 64 segments (UDP_MAX_SEGMENTS) and no UDP
# datagram, super or not, may exceed 65535 - 20 (IPv4 header) - 8 (UDP header) bytes.
MAX_GSO_SEGMENTS = 64
MAX_UDP_PAYLOAD = 65507
# A receive buffer this large never truncates: a GRO receive is capped at 64 KB.
RECEIVE_SLOT = 65535
# UDP_GRO's cmsg carries one int, the segment size.
_GRO_CMSG_SPACE = socket.CMSG_SPACE(4)
_SEGMENT = struct.Struct("=H")
_GRO_SIZE = struct.Struct("=i")
# A plain int: socket.MSG_TRUNC is an IntFlag, and `int & IntFlag` goes through the enum
# machinery, which measured 0.7 us per receive, as much as the recvmsg itself.
_MSG_TRUNC = int(socket.MSG_TRUNC)

# Errors a GSO send answers with when offload itself is the problem: EIO when the egress
# device lacks checksum offload (older kernels; 6.18 segments in software instead) or an
# xfrm policy covers the route, EINVAL with UDP checksums off (SO_NO_CHECK). Anything else,
# congestion (EAGAIN, ENOBUFS) included, drops the rest of the burst: by the time it could
# be retried it is stale, and the protocol above recovers from loss.
_GSO_UNUSABLE = frozenset({errno.EIO, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP})
# Source addresses (spoofable by anyone) are cached; the cache is reset past this size.
_ADDRESS_CACHE_MAX = 4096


class UdpError(OSError):
    """Opening or configuring the UDP socket failed; the message says what to do."""


@dataclass(slots=True)
class UdpStats:
    """Counters of the socket's life; the data path reads them, nothing resets them."""

    gso_sends: int = 0
    gso_segments: int = 0
    plain_sends: int = 0
    gro_receives: int = 0
    gro_segments: int = 0
    receives: int = 0
    send_errors: Counter[str] = field(default_factory=Counter)
    # Datagrams given to a send call that did not leave (congestion or an error).
    send_dropped: int = 0
    gso_fallbacks: int = 0
    truncated: int = 0
    receive_errors: int = 0  # receive calls that failed (a pending ICMP error, say)

    def summary(self) -> dict[str, object]:
        return {
            "gso_sends": self.gso_sends,
            "gso_segments": self.gso_segments,
            "plain_sends": self.plain_sends,
            "gro_receives": self.gro_receives,
            "gro_segments": self.gro_segments,
            "receives": self.receives,
            "send_errors": dict(self.send_errors),
            "send_dropped": self.send_dropped,
            "gso_fallbacks": self.gso_fallbacks,
            "truncated": self.truncated,
            "receive_errors": self.receive_errors,
        }


def _error_name(err: OSError) -> str:
    if isinstance(err, socket.gaierror):
        # An IPv6 peer on the IPv4-only fallback socket: Python fails to build the address.
        return "EAFNOSUPPORT"
    return errno.errorcode.get(err.errno or 0, str(err.errno))


def _make_socket(family: int) -> socket.socket:
    # Close-on-exec so PostUp scripts and other children never inherit the tunnel socket.
    return socket.socket(family, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)


def _set_buffer(sock: socket.socket, force: int, plain: int, size: int) -> None:
    """Set a socket buffer past net.core.*mem_max when root (as wireguard-go does)."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, force, size)
    except PermissionError:
        # Unprivileged: the kernel silently caps this at net.core.[rw]mem_max.
        sock.setsockopt(socket.SOL_SOCKET, plain, size)


class UdpSocket:
    """A non-blocking UDP socket for every peer; close() (or the context manager) frees it."""

    screens = NATIVE.native  # receive_screened is there (the native receive runs)

    def __init__(self, sock: socket.socket, *, gso: bool, gro: bool, batch: int = 64) -> None:
        self._sock = sock
        self.fd = sock.fileno()
        self.family = sock.family
        self.port: int = sock.getsockname()[1]
        # What the kernel granted (it reports double the request: its bookkeeping share).
        self.receive_buffer = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
        self.send_buffer = sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
        self.gso_enabled = gso
        self.gro_enabled = gro
        self.batch = batch
        self.stats = UdpStats()
        self._dual_stack = sock.family == socket.AF_INET6
        # raw sockaddr from recvmsg -> (ip, port), and (ip, port) -> sockaddr for sendmsg.
        self._sources: dict[tuple, Address] = {}
        self._dests: dict[Address, tuple[str, int]] = {}
        self._gso_plans: dict[int, tuple[int, list[tuple[int, int, bytes]]]] = {}
        self._buffer = reserve(RECEIVE_SLOT * batch)
        self._names: dict[bytes, Address] = {}  # the same, keyed by the raw sockaddr bytes
        whole = self._whole = self._buffer
        self._slots = [
            (whole[i * RECEIVE_SLOT : (i + 1) * RECEIVE_SLOT],) for i in range(batch)
        ]

    @classmethod
    def open(
        cls,
        port: int = 0,
        *,
        fwmark: int | None = None,
        buffer_bytes: int = 7 << 20,
        gso: bool = True,
        gro: bool = True,
        batch: int = 64,
    ) -> UdpSocket:
        """Bind `port` (0: any) on every address, IPv4 and IPv6 in one socket if possible."""
        try:
            sock = _make_socket(socket.AF_INET6)
            family = socket.AF_INET6
        except OSError as err:
            # ipv6.disable=1 on the kernel command line: there is no AF_INET6 at all.
            if err.errno not in (errno.EAFNOSUPPORT, errno.EPROTONOSUPPORT):
                raise
            sock = _make_socket(socket.AF_INET)
            family = socket.AF_INET
        try:
            if family == socket.AF_INET6:
                # One socket for both families: IPv4 peers appear as ::ffff:a.b.c.d.
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            _set_buffer(sock, SO_RCVBUFFORCE, socket.SO_RCVBUF, buffer_bytes)
            _set_buffer(sock, SO_SNDBUFFORCE, socket.SO_SNDBUF, buffer_bytes)
            if fwmark is not None:
                _set_mark(sock, fwmark)
            try:
                sock.bind(("::" if family == socket.AF_INET6 else "0.0.0.0", port))
            except OSError as err:
                if err.errno == errno.EADDRINUSE:
                    raise UdpError(err.errno, f"UDP port {port} is already in use") from None
                if err.errno in (errno.EACCES, errno.EPERM):
                    raise UdpError(
                        err.errno,
                        f"binding UDP port {port} needs CAP_NET_BIND_SERVICE (run as root)",
                    ) from None
                raise
            gso_ok = gso and _probe_gso(sock)
            gro_ok = gro and _enable_gro(sock)
            return cls(sock, gso=gso_ok, gro=gro_ok, batch=batch)
        except BaseException:
            sock.close()
            raise

    # -- sending ------------------------------------------------------------------------------

    def _sockaddr(self, dest: Address) -> tuple[str, int]:
        addr = self._dests.get(dest)
        if addr is None:
            host, port = dest
            if self._dual_stack and ":" not in host:
                host = "::ffff:" + host
            if len(self._dests) >= _ADDRESS_CACHE_MAX:
                self._dests.clear()
            addr = self._dests[dest] = (host, port)
        return addr

    def _sendmsg(self, data: memoryview, cmsg: list[tuple[int, int, bytes]],
                 addr: tuple[str, int]) -> None:
        """The system call of a GSO send: `data` as datagrams of the cmsg's segment size."""
        self._sock.sendmsg((data,), cmsg, 0, addr)

    def _sendto(self, data: Buffer, addr: tuple[str, int]) -> None:
        """The system call of a plain send: one datagram."""
        self._sock.sendto(data, addr)

    def send(self, dest: Address, data: bytes | memoryview) -> None:
        """Send one datagram; errors are counted, never raised."""
        try:
            self._sendto(data, self._dests.get(dest) or self._sockaddr(dest))
        except OSError as err:
            self._count_error(err, 1)
            return
        self.stats.plain_sends += 1

    def send_messages(self, dest: Address, buffer: memoryview, lengths: Sequence[int]) -> None:
        """Send the datagrams laid back to back in `buffer` (`lengths` theirs, in order) in
        as few sends as UDP GSO's rule allows: a run of datagrams all the same size, only the
        last smaller (a shorter one ends a run). Errors as in send_segments."""
        n = len(lengths)
        if n == 1:  # one datagram (a ping, an ACK): one plain send, as send_segments makes
            self.send(dest, buffer[:lengths[0]])
            return
        send_segments = self.send_segments
        first = lengths[0] if n else 0
        last = lengths[-1] if n else 0
        if last <= first and lengths.count(first) == n - (last != first):
            # One run (a super-packet sealed whole), told by two C-speed scans.
            send_segments(dest, buffer[:first * (n - 1) + last], first, n, last)
            return
        offset = run_start = run_size = run_count = 0
        for size, same in groupby(lengths):
            count = len(list(same))
            start = offset
            offset += size * count
            if run_count:
                if size < run_size:  # the run's last datagram
                    send_segments(dest, buffer[run_start:start + size], run_size,
                                  run_count + 1, size)
                    start += size
                    count -= 1
                else:
                    send_segments(dest, buffer[run_start:start], run_size, run_count,
                                  run_size)
            run_start, run_size, run_count = start, size, count
        if run_count:
            send_segments(dest, buffer[run_start:offset], run_size, run_count, run_size)

    def send_segments(
        self, dest: Address, buffer: memoryview, segment_size: int, count: int, last_size: int
    ) -> None:
        """Send `count` datagrams laid back to back in `buffer`, all `segment_size` bytes
        but the last (`last_size`), with as few sendmsg calls as UDP GSO allows.

        Never blocks or raises OSError: a failed send drops the rest of the burst and is
        counted in stats.send_errors, except the fallbacks described at _GSO_UNUSABLE.
        """
        if count <= 0:
            return
        addr = self._dests.get(dest) or self._sockaddr(dest)
        total = segment_size * (count - 1) + last_size
        plan = self._gso_plans.get(segment_size) or self._gso_plan(segment_size)
        per_chunk, cmsg = plan
        if count == 1 or per_chunk < 2 or not self.gso_enabled:
            self._send_each(addr, buffer, segment_size, 0, total)
            return
        stats = self.stats
        if count <= per_chunk:
            # The common case (one TUN read of up to 64 KB): a single sendmsg.
            try:
                self._sendmsg(buffer[:total], cmsg, addr)
            except OSError as err:
                self._gso_failed(err, addr, buffer, segment_size, 0, total)
                return
            stats.gso_sends += 1
            stats.gso_segments += count
            return
        sendmsg = self._sendmsg
        chunk_bytes = per_chunk * segment_size
        offset = 0
        while offset < total:
            end = min(offset + chunk_bytes, total)
            if end - offset <= segment_size:
                # A lone trailing datagram: a GSO send of one segment gains nothing.
                self._send_each(addr, buffer, segment_size, offset, total)
                return
            try:
                sendmsg(buffer[offset:end], cmsg, addr)
            except OSError as err:
                self._gso_failed(err, addr, buffer, segment_size, offset, total)
                return
            stats.gso_sends += 1
            stats.gso_segments += -(-(end - offset) // segment_size)
            offset = end

    def _gso_plan(self, segment_size: int) -> tuple[int, list[tuple[int, int, bytes]]]:
        """Segments per sendmsg for this size, and the UDP_SEGMENT cmsg to send them with."""
        if not 0 < segment_size <= MAX_UDP_PAYLOAD:
            raise ValueError(f"segment size {segment_size} is not a UDP datagram size")
        per_chunk = min(MAX_GSO_SEGMENTS, MAX_UDP_PAYLOAD // segment_size)
        cmsg = [(SOL_UDP, UDP_SEGMENT, _SEGMENT.pack(segment_size))]
        plan = self._gso_plans[segment_size] = (per_chunk, cmsg)
        return plan

    def _gso_failed(
        self, err: OSError, addr: tuple[str, int], buffer: memoryview, segment_size: int,
        offset: int, total: int,
    ) -> None:
        code = err.errno
        if code in _GSO_UNUSABLE:
            # EINVAL is also what a bad destination earns; the first datagram sent plainly
            # tells whether offload is really to blame before it is given up for good.
            first = min(offset + segment_size, total)
            try:
                self._sendto(buffer[offset:first], addr)
            except OSError as plain_err:
                self._count_error(plain_err, -(-(total - offset) // segment_size))
                return
            self.stats.plain_sends += 1
            self.gso_enabled = False
            self.stats.gso_fallbacks += 1
            log.warning(
                "UDP GSO send failed with %s: sending one datagram per call from now on",
                _error_name(err),
            )
            self._send_each(addr, buffer, segment_size, first, total)
        elif code == errno.EMSGSIZE:
            # The segment does not fit the route's MTU: GSO cannot fragment, a plain send
            # can. The path may recover (a PMTU entry expiring), so GSO stays on.
            self.stats.send_errors["EMSGSIZE"] += 1
            self._send_each(addr, buffer, segment_size, offset, total)
        else:
            self._count_error(err, -(-(total - offset) // segment_size))

    def _send_each(
        self, addr: tuple[str, int], buffer: memoryview, segment_size: int, offset: int,
        total: int,
    ) -> None:
        sendto = self._sendto
        sent = 0
        try:
            while offset < total:
                end = min(offset + segment_size, total)
                sendto(buffer[offset:end], addr)
                sent += 1
                offset = end
        except OSError as err:
            self._count_error(err, -(-(total - offset) // segment_size))
        finally:
            self.stats.plain_sends += sent

    def _count_error(self, err: OSError, lost: int) -> None:
        self.stats.send_errors[_error_name(err)] += 1
        self.stats.send_dropped += lost

    # -- receiving ----------------------------------------------------------------------------

    def receive_batch(self, into: ReceiveBuffer | None = None
                      ) -> list[tuple[memoryview, int, Address]]:
        """Drain up to `batch` receives without blocking: (data, segment size, source).

        With GRO one receive holds several datagrams of `segment size` (the last may be
        shorter). The views are reused by the next call; with `into`, they are of its
        buffer (as many receives as it has slots), which the caller owns.
        """
        out: list[tuple[memoryview, int, Address]] = []
        recv = self._sock.recvmsg_into
        sources = self._sources
        gro_receives = gro_segments = truncated = 0
        for slot in self._slots if into is None else into.slots:
            try:
                n, ancdata, flags, raw = recv(slot, _GRO_CMSG_SPACE)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                # Not expected (an unconnected socket without IP_RECVERR is not told of
                # ICMP errors); whatever it is, it says nothing about the datagrams queued.
                self.stats.receive_errors += 1
                continue
            if flags & _MSG_TRUNC:
                truncated += 1
                continue
            size = n
            if ancdata:
                level, kind, value = ancdata[0]
                if level == SOL_UDP and kind == UDP_GRO:
                    size = _GRO_SIZE.unpack(value)[0]
                    gro_receives += 1
                    gro_segments += -(-n // size)
            source = sources.get(raw)
            if source is None:
                source = self._normalise(raw)
            out.append((slot[0][:n], size, source))
        stats = self.stats
        stats.receives += len(out)
        if gro_receives:
            stats.gro_receives += gro_receives
            stats.gro_segments += gro_segments
        if truncated:
            stats.truncated += truncated
        return out

    def receive_screened(
        self, screen: DatagramScreen, into: ReceiveBuffer | None = None
    ) -> tuple[list[tuple[memoryview, int, Address]], tuple[int, ...] | None, list[Address]]:
        """receive_batch in one recvmmsg, each datagram screened first by `screen` (in
        vpn/io/_udp.c, with the screen's verdict function): returns what passed, in
        receive_batch's form, the drops by the screen's reasons (None: none), and the sources
        of the datagrams the screen asked to hear about. `into` as for receive_batch."""
        whole, batch = (self._whole, self.batch) if into is None else (into.data, len(into.slots))
        entries, counts, lost, (receives, gro_receives, gro_segments, truncated,
                                errors) = _udp.receive(self.fd, whole, RECEIVE_SLOT,
                                                       batch, screen.capsule)
        names = self._names
        out = []
        for offset, length, size, raw in entries:
            source = names.get(raw)
            if source is None:
                source = self._name(raw)
            out.append((whole[offset:offset + length], size, source))
        stats = self.stats
        stats.receives += receives
        if gro_receives:
            stats.gro_receives += gro_receives
            stats.gro_segments += gro_segments
        if truncated:
            stats.truncated += truncated
        if errors:
            stats.receive_errors += errors
        # (Mostly no lost sessions: no comprehension's call then.)
        return out, counts, [names.get(raw) or self._name(raw) for raw in lost] if lost else []

    def _name(self, raw: bytes) -> Address:
        """(ip, port) of a raw struct sockaddr from the native receive."""
        family = int.from_bytes(raw[:2], sys.byteorder)
        if family == socket.AF_INET6 and len(raw) >= 24:
            host = socket.inet_ntop(socket.AF_INET6, raw[8:24])
            if host.startswith("::ffff:") and "." in host:
                host = host[7:]
        elif family == socket.AF_INET and len(raw) >= 8:
            host = socket.inet_ntop(socket.AF_INET, raw[4:8])
        else:
            host = ""
        if len(self._names) >= _ADDRESS_CACHE_MAX:
            self._names.clear()
        source = self._names[raw] = (host, int.from_bytes(raw[2:4], "big"))
        return source

    def _normalise(self, raw: tuple) -> Address:
        host: str = raw[0]
        if host.startswith("::ffff:") and "." in host:
            host = host[7:]
        if len(self._sources) >= _ADDRESS_CACHE_MAX:
            self._sources.clear()
        source = self._sources[raw] = (host, raw[1])
        return source

    # -- lifetime -----------------------------------------------------------------------------

    def set_mark(self, fwmark: int) -> None:
        """SO_MARK on the running socket (0 clears it); UdpError if the kernel refuses."""
        _set_mark(self._sock, fwmark)

    def close(self) -> None:
        if self.fd >= 0:
            self._sock.close()
            self.fd = -1

    def __enter__(self) -> UdpSocket:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _set_mark(sock: socket.socket, fwmark: int) -> None:
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, fwmark)
    except PermissionError:
        raise UdpError(
            errno.EPERM, f"setting fwmark {fwmark:#x} needs CAP_NET_ADMIN (run as root)"
        ) from None


def _probe_gso(sock: socket.socket) -> bool:
    """UDP_SEGMENT exists since Linux 4.18; older kernels answer ENOPROTOOPT."""
    try:
        sock.getsockopt(SOL_UDP, UDP_SEGMENT)
    except OSError:
        return False
    return True


def _enable_gro(sock: socket.socket) -> bool:
    """UDP_GRO exists since Linux 5.0."""
    try:
        sock.setsockopt(SOL_UDP, UDP_GRO, 1)
    except OSError:
        return False
    return True
