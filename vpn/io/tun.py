"""The Linux TUN device opened with IFF_VNET_HDR and negotiated offloads.

The device owns the offload of what it reads: `read_packets` hands out TunReads, each an IP
packet or a super-packet that the device splits, on demand, into complete packets or into a
layout the caller describes (the room it wants before and after each segment), so the data
path never sees a virtio-net header. `read_batch` is the raw form, (header, packet view)
pairs, for the offload relay and the tests. Both read into preallocated buffers.

It owns GRO on write too: `deliver` takes the receive walk's records of plaintext packets,
coalesced (with the TUN's offloads) until `flush` writes each frame as the 10-byte
virtio-net header and the frame's parts in one writev; a kernel that refuses a coalesced
write (EINVAL) turns coalescing off for good. It counts both sides in `TunStats`.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import struct
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from vpn.core.drops import Drop
from vpn.core.offload import split
from vpn.core.offload.gro import RECORD, Coalesced, FrameCoalescer, receive_coalescer
from vpn.core.offload.gso import (
    Fields,
    RunRead,
    shape_packet,
    split_fields,
    split_into_fields,
    split_runs,
)
from vpn.core.packet.virtio import HEADER, NO_OFFLOAD, VIRTIO_NET_HDR_LEN, VirtioNetHeader
from vpn.core.types import Buffer
from vpn.io.buffers import reserve
from vpn.io.udp import NATIVE  # the same C module as the batch receive, the same choice

try:
    from vpn.io._udp import read_frames as _native_read_frames
except ImportError:  # not built: the Python twin below serves, as NATIVE says
    _native_read_frames = None  # type: ignore[assignment]

log = logging.getLogger("vpn.io.tun")

TUN_PATH = "/dev/net/tun"

# ioctl request numbers from <linux/if_tun.h> (_IOW('T', n, int) / _IOR('T', n, unsigned int)).
TUNSETIFF = 0x400454CA
TUNGETFEATURES = 0x800454CF
TUNSETOFFLOAD = 0x400454D0
TUNSETVNETHDRSZ = 0x400454D8

IFF_TUN = 0x0001
IFF_MULTI_QUEUE = 0x0100
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000

TUN_F_CSUM = 0x01
TUN_F_TSO4 = 0x02
TUN_F_TSO6 = 0x04
TUN_F_TSO_ECN = 0x08
TUN_F_USO4 = 0x20
TUN_F_USO6 = 0x40

OFFLOAD_NAMES = {
    TUN_F_CSUM: "csum",
    TUN_F_TSO4: "tso4",
    TUN_F_TSO6: "tso6",
    TUN_F_TSO_ECN: "tso_ecn",
    TUN_F_USO4: "uso4",
    TUN_F_USO6: "uso6",
}

# Tried in order until the kernel accepts one; an unknown bit is EINVAL. USO4/USO6 only
# exist together (Linux 6.2+), ECN only with TSO, and every offload needs CSUM.
OFFLOAD_LADDER = (
    TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_TSO_ECN | TUN_F_USO4 | TUN_F_USO6,
    TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_TSO_ECN,
    TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6,
    TUN_F_CSUM,
    0,
)

# The largest packet plus its header: a smaller read buffer truncates silently.
MAX_PACKET = 65535
READ_SLOT = VIRTIO_NET_HDR_LEN + MAX_PACKET


# The header reported for reads from a device without IFF_VNET_HDR.
PLAIN = VirtioNetHeader()
_PLAIN_FIELDS: Fields = (0, 0, 0, 0, 0, 0)


class TunError(OSError):
    """Opening or configuring the TUN device failed; the message says what to do."""


class TunGone(TunError):
    """The interface was deleted under the open device (`ip link delete`, as `wg-quick
    down` does): the kernel answers every read with EBADFD from then on."""


def read_frames_python(fd: int, slots: Sequence[memoryview]) -> list[int]:
    """The twin of _udp.read_frames: one non-blocking read into each of `slots` in turn
    until nothing is waiting or they are all used; the lengths read. An error raises when
    nothing was read yet, and after a read ends the drain (the next call meets it)."""
    lengths: list[int] = []
    for slot in slots:
        try:
            lengths.append(os.readv(fd, (slot,)))
        except BlockingIOError:
            break
        except OSError:
            if lengths:
                break
            raise
    return lengths


# The drain TunDevice reads with: the native one, or its twin where the module is not built
# or VPN_FAST_PATH=python.
_read_frames = (_native_read_frames if NATIVE.native and _native_read_frames is not None
                else read_frames_python)


def offload_names(flags: int) -> list[str]:
    return [name for bit, name in OFFLOAD_NAMES.items() if flags & bit]


@dataclass(frozen=True, slots=True)
class OffloadResult:
    """What TUNSETOFFLOAD accepted out of what was requested."""

    flags: int
    requested: int

    @property
    def tso(self) -> bool:
        return bool(self.flags & (TUN_F_TSO4 | TUN_F_TSO6))

    @property
    def uso(self) -> bool:
        return bool(self.flags & TUN_F_USO4)

    def describe(self) -> str:
        got = "+".join(offload_names(self.flags)) or "none"
        missing = self.requested & ~self.flags
        if not missing:
            return got
        return f"{got} (not available: {'+'.join(offload_names(missing))})"


@dataclass(slots=True)
class TunStats:
    """The device's offload picture, reads and writes; the data path reports them under
    these names, nothing resets them."""

    super_packets: int = 0  # reads with a GSO type that were split
    segments_split: int = 0  # the segments they became
    tun_writes: int = 0  # successful writes (a jumbo frame is one)
    jumbo_frames: int = 0  # writes that carried more than one segment
    jumbo_segments: int = 0  # the segments those carried
    drops: Counter[str] = field(default_factory=Counter)  # tun_write_*, gro_write_refused

    def counts(self) -> dict[str, int]:
        """The counts but `drops`."""
        return {"super_packets": self.super_packets, "segments_split": self.segments_split,
                "tun_writes": self.tun_writes, "jumbo_frames": self.jumbo_frames,
                "jumbo_segments": self.jumbo_segments}


class TunRead:
    """One read: an IP packet, or a TSO/USO super-packet that stands for several (the send
    path's vpn.core.wireguard.send.Read). `packet` is a view of the read buffer (the
    device's, valid until the next read, or the slot the caller gave). The split counts in
    the device's TunStats once: in `shape` when the loop thread asks it first (the split
    then runs on a worker and counts nothing), else in the split."""

    __slots__ = ("_fields", "_stats", "packet", "segmented")

    def __init__(self, fields: Fields, packet: memoryview, stats: TunStats) -> None:
        self._fields = fields  # the virtio-net header's
        self._stats: TunStats | None = stats
        self.packet = packet
        self.segmented = fields[1] != 0  # a gso_type: a super-packet

    def shape(self) -> tuple[int, int, int]:
        """(count, full, last) as split_into will return them, nothing written (gso.shape);
        OffloadError as packets. Counts the split now, on the calling thread."""
        shape = shape_packet(self.packet, *self._fields)
        stats = self._stats
        if stats is not None and self.segmented:  # _count, inline: asked of every read
            stats.super_packets += 1
            stats.segments_split += shape[0]
        self._stats = None
        return shape

    def packets(self) -> list[Buffer]:
        """The complete packets, every checksum filled in (gso.split); OffloadError for a
        header the kernel should not have sent."""
        segments = split_fields(self._fields, self.packet)
        if self._fields[1]:  # _count, inline: asked of every plain read the send walk seals
            self._count(len(segments))
        return segments

    def split_into(self, out: bytearray | memoryview, offset: int, gap: int, tail: int
                   ) -> tuple[int, int, int]:
        """The complete packets laid out in `out` (gso.split_into): segment i at offset + gap
        + i * (gap + full + tail); returns (count, full, last)."""
        count, full, last = split_into_fields(out, offset, self._fields, self.packet, gap, tail)
        self._count(count)
        return count, full, last

    def _count(self, segments: int) -> None:
        stats = self._stats
        if stats is not None and self._fields[1]:
            stats.super_packets += 1
            stats.segments_split += segments


def split_reads(reads: Sequence[object], out: bytearray | memoryview, offset: int, gap: int,
                tail: int) -> list[tuple[int, int, int]]:
    """TunRead.split_into for each of `reads` in one call (gso.split_runs: the native split
    releases the GIL once for them all), back to back from `offset`; each one's (count,
    full, last), counted as split_into counts. ValueError for a read that is not a
    TunRead, or for out too small; OffloadError for the first read the split rejects;
    either way before anything is written."""
    taken: list[TunRead] = []
    runs: list[RunRead] = []
    for read in reads:
        if not isinstance(read, TunRead):
            raise ValueError(f"not a TUN read: {type(read).__name__}")
        taken.append(read)
        runs.append((read.packet, *read._fields))
    shapes = split_runs(out, offset, runs, gap, tail)
    for tun_read, shape in zip(taken, shapes, strict=True):
        if tun_read._stats is not None:  # not shaped first: counted here
            tun_read._count(shape[0])
    return shapes


class TunDevice:
    """One queue of a TUN device; close() (or the context manager) releases it."""

    def __init__(
        self,
        fd: int,
        name: str,
        *,
        vnet_hdr: bool,
        offload: OffloadResult,
        batch: int,
    ) -> None:
        self.fd = fd
        self.name = name
        self.vnet_hdr = vnet_hdr
        self.offload = offload
        self.stats = TunStats()
        self.batch = batch
        self._slot = READ_SLOT if vnet_hdr else MAX_PACKET
        self._buffer = reserve(self._slot * batch)
        self._views = [
            self._buffer[i * self._slot : (i + 1) * self._slot] for i in range(batch)
        ]
        # GRO on write needs the virtio-net header; off for good after a refused write.
        self.coalescing = vnet_hdr
        self._gro: FrameCoalescer | None = None  # over _gro_buffer
        self._gro_buffer: Buffer | None = None
        self._gathered = False  # the coalescer holds packets not yet flushed
        self._write_errnos_logged: set[str] = set()  # tun_write_error's errnos, logged once

    @classmethod
    def open(
        cls,
        name: str,
        *,
        vnet_hdr: bool = True,
        offload: bool = True,
        multi_queue: bool = False,
        batch: int = 64,
    ) -> TunDevice:
        """Create (or attach to) TUN device `name`, non-blocking, with offloads negotiated.

        With vnet_hdr=False the device carries plain IP packets and no offload is possible.
        """
        if len(name.encode()) > 15:
            raise TunError(errno.EINVAL, f"interface name {name!r} is longer than 15 bytes")
        try:
            fd = os.open(TUN_PATH, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        except FileNotFoundError:
            raise TunError(
                errno.ENOENT, f"{TUN_PATH} is missing: load the tun module (modprobe tun)"
            ) from None
        except PermissionError:
            raise TunError(errno.EPERM, f"cannot open {TUN_PATH}: run as root") from None
        try:
            features = struct.unpack("I", fcntl.ioctl(fd, TUNGETFEATURES, bytes(4)))[0]
            flags = IFF_TUN | IFF_NO_PI
            if vnet_hdr:
                if not features & IFF_VNET_HDR:
                    raise TunError(errno.ENOTSUP, "this kernel's TUN has no IFF_VNET_HDR")
                flags |= IFF_VNET_HDR
            if multi_queue:
                flags |= IFF_MULTI_QUEUE
            ifreq = struct.pack("16sH22x", name.encode(), flags)
            try:
                ifreq = fcntl.ioctl(fd, TUNSETIFF, ifreq)
            except PermissionError:
                raise TunError(
                    errno.EPERM, f"creating TUN {name!r} needs CAP_NET_ADMIN (run as root)"
                ) from None
            except OSError as err:
                if err.errno in (errno.EBUSY, errno.EINVAL):
                    raise TunError(
                        err.errno,
                        f"interface name {name!r} is taken (an existing device of another "
                        "type, or a TUN with other flags or already attached)",
                    ) from None
                raise
            actual = ifreq[:16].rstrip(b"\0").decode()
            result = OffloadResult(0, 0)
            if vnet_hdr:
                fcntl.ioctl(fd, TUNSETVNETHDRSZ, struct.pack("i", VIRTIO_NET_HDR_LEN))
                result = negotiate_offloads(fd) if offload else set_offloads(fd, 0)
            return cls(fd, actual, vnet_hdr=vnet_hdr, offload=result, batch=batch)
        except BaseException:
            os.close(fd)
            raise

    def read_packets(self, slots: Sequence[memoryview] | None = None) -> list[TunRead]:
        """Drain up to `batch` reads without blocking, as the send path takes them. The
        packets are views of buffers reused by the next call (use them before reading
        again), or, given `slots` (each READ_SLOT bytes; read_slots makes them), of those,
        one read each in order, the caller's until it reuses them."""
        stats = self.stats
        frames = self._frames(self._views if slots is None else slots)
        if not self.vnet_hdr:
            return [TunRead(_PLAIN_FIELDS, frame, stats) for frame in frames]
        fields = HEADER.unpack_from
        return [TunRead(fields(frame), frame[VIRTIO_NET_HDR_LEN:], stats)
                for frame in frames if len(frame) >= VIRTIO_NET_HDR_LEN]

    def read_batch(self) -> list[tuple[VirtioNetHeader, memoryview]]:
        """Drain up to `batch` reads without blocking: (virtio-net header, packet) each.

        The views point into buffers reused by the next call: use them before reading again.
        """
        if not self.vnet_hdr:
            return [(PLAIN, frame) for frame in self._frames(self._views)]
        return [(VirtioNetHeader.unpack(frame), frame[VIRTIO_NET_HDR_LEN:])
                for frame in self._frames(self._views) if len(frame) >= VIRTIO_NET_HDR_LEN]

    def read_slots(self) -> list[memoryview]:
        """A batch of read slots of the caller's own, for read_packets(slots)."""
        buffer = reserve(self._slot * self.batch)
        return [buffer[i * self._slot:(i + 1) * self._slot] for i in range(self.batch)]

    def _frames(self, slots: Sequence[memoryview]) -> list[memoryview]:
        """The system calls: frames (the virtio-net header first, with IFF_VNET_HDR) read
        into `slots`, one each, until nothing more is waiting or they are all used; one
        native call (read_frames), so that a wakeup of one packet, a ping, pays for no
        Python per read and no exception for the read that finds nothing."""
        try:
            lengths = _read_frames(self.fd, slots)
        except OSError as err:
            if err.errno == errno.EBADFD:
                raise TunGone(err.errno, f"{self.name}: the interface was deleted") from None
            raise
        # As many lengths as frames read: the slots past them stay unused.
        return [slot[:n] for slot, n in zip(slots, lengths, strict=False)]

    def write(self, header: bytes, parts: Sequence[Buffer]) -> None:
        """Write one frame: the virtio-net header (ignored without IFF_VNET_HDR) then parts.
        The system call itself, and all of it (lab.doubles.MemoryTun replaces this and
        _frames, the reads).

        Raises OSError as the kernel reports it (EINVAL for a header it rejects).
        """
        if self.vnet_hdr:
            os.writev(self.fd, (header, *parts))
        else:
            os.writev(self.fd, parts)

    # -- the write side: GRO, counted writes, the EINVAL fallback ------------------------------

    def deliver(self, buffer: Buffer, records: Buffer, nrec: int) -> None:
        """The packets the first `nrec` records (RECORD: offset in `buffer`, IP length, slot)
        name: gathered into frames until `flush`, or without coalescing written one by one
        now. `buffer` must stay as it is until `flush` (or `clear`)."""
        if not nrec:
            return
        if not self.coalescing or (nrec == 1 and not self._gathered):
            # One packet alone (a ping, a lone ACK) is the frame the coalescer would make of
            # it (the packet as it is, NO_OFFLOAD): written now, without the coalescer.
            self._write_each(buffer, records, nrec, self.stats)
            return
        if self._gro is None or buffer is not self._gro_buffer:
            self.flush()
            self._gro = receive_coalescer(buffer, udp=self.offload.uso)
            self._gro_buffer = buffer
        self._gro.add_records(records, 0, nrec)
        self._gathered = True

    def flush(self) -> None:
        """Write every frame gathered since the last flush, in order."""
        if self._gathered and self._gro is not None:
            self._gathered = False
            self.write_gathered(self._gro.frames(), self.stats)

    def deliver_now(self, buffer: Buffer, records: Buffer, nrec: int, stats: TunStats
                    ) -> None:
        """deliver and flush at once with a coalescer of the call's own, counted in
        `stats`: for a worker thread (the device's coalescer and stats are the loop's)."""
        if not self.coalescing or nrec == 1:  # as deliver's: each packet as it is
            self._write_each(buffer, records, nrec, stats)
        elif nrec:
            self.write_gathered(self.gather(buffer, records, nrec), stats)

    def gather(self, buffer: Buffer, records: Buffer, nrec: int) -> list[Coalesced]:
        """The frames deliver_now would write of these records (with coalescing, nrec > 1),
        made now and written later by write_gathered: a worker coalesces a job beside other
        jobs, while the plaintexts it just wrote are in its core's cache, and its turn
        only writes. `buffer` must stay as it is until they are written."""
        gro = receive_coalescer(buffer, udp=self.offload.uso)
        gro.add_records(records, 0, nrec)
        return gro.frames()

    def write_gathered(self, frames: list[Coalesced], stats: TunStats) -> None:
        """Write frames that gather (or a flush) made, counted in `stats`."""
        write = self._write
        for frame in frames:
            write(frame.header, frame.parts, frame.segments, stats)

    def _write_each(self, buffer: Buffer, records: Buffer, nrec: int, stats: TunStats
                    ) -> None:
        """The packets the records name, each as it is (NO_OFFLOAD), without the coalescer
        (nor a frame object: a ping's every packet comes this way)."""
        write = self._write
        for at, length, _ in RECORD.iter_unpack(records[:RECORD.size * nrec]):
            write(NO_OFFLOAD, (buffer[at:at + length],), 1, stats)

    def clear(self) -> None:
        """Forget what was gathered (it points into a buffer about to be overwritten)."""
        self._gathered = False
        if self._gro is not None:
            self._gro.clear()

    def write_packet(self, packet: Buffer) -> None:
        """One packet as it is, without offload."""
        self._write(NO_OFFLOAD, (packet,), 1, self.stats)

    def _write(self, header: bytes, parts: Sequence[Buffer], segments: int, stats: TunStats
               ) -> None:
        """One frame of `segments` packets written and counted; its failures counted (and
        a refused coalesced frame written again packet by packet), never raised."""
        try:
            self.write(header, parts)
        except BlockingIOError:
            stats.drops[Drop.TUN_WRITE_FULL] += segments
            return
        except OSError as err:
            if err.errno == errno.EINVAL and segments > 1:
                self._refuse_coalescing(header, parts, stats)
                return
            stats.drops[Drop.TUN_WRITE_ERROR] += 1
            self._log_write_error(err)
            return
        stats.tun_writes += 1
        if segments > 1:
            stats.jumbo_frames += 1
            stats.jumbo_segments += segments

    def _log_write_error(self, err: OSError) -> None:
        """The errno of a refused write, the first time each one happens: the counter has
        one reason for them all, the log says which."""
        code = err.errno or 0
        name = errno.errorcode.get(code, str(code))
        if name not in self._write_errnos_logged:
            self._write_errnos_logged.add(name)
            log.warning("the kernel refused a TUN write (%s): counted as drops.tun_write_error "
                        "(each errno logged once)", name)

    def _refuse_coalescing(self, header: bytes, parts: Sequence[Buffer], stats: TunStats
                           ) -> None:
        """Some stable kernels reject valid coalesced writes: write plain from now on."""
        log.warning("the kernel refused a coalesced TUN write (EINVAL); writing segments "
                    "one by one from now on")
        self.coalescing = False
        stats.drops[Drop.GRO_WRITE_REFUSED] += 1
        for segment in split(VirtioNetHeader.unpack(header), b"".join(parts)):
            self._write(NO_OFFLOAD, (segment,), 1, stats)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> TunDevice:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def set_offloads(fd: int, flags: int) -> OffloadResult:
    fcntl.ioctl(fd, TUNSETOFFLOAD, flags)
    return OffloadResult(flags, flags)


def negotiate_offloads(fd: int) -> OffloadResult:
    """Ask for the most the kernel may give, stepping down the ladder on EINVAL."""
    for flags in OFFLOAD_LADDER:
        try:
            fcntl.ioctl(fd, TUNSETOFFLOAD, flags)
        except OSError as err:
            if err.errno != errno.EINVAL:
                raise
            continue
        return OffloadResult(flags, OFFLOAD_LADDER[0])
    raise TunError(errno.EINVAL, "TUNSETOFFLOAD refused even no offload at all")
