"""Short scheduler slices for the data path's threads (EEVDF, Linux 6.12 and later).

Why: on a machine whose cores are all busy (a `wg show` of 10,000 peers parsing its 3 MB
answer, a compile, iperf3), a data-path thread that wakes for a packet waits for a core
until the task on it has used up its slice: 0.75 ms x (1 + log2 of the CPUs) by default,
and a packet through a tunnel wakes such a thread at each end, twice. EEVDF gives a task
that asks for a shorter slice an earlier virtual deadline, so a woken data-path thread
preempts a task running a long one. The CPU share does not change, only how finely it is
cut. The request is sched_setattr(2)'s `sched_runtime` for SCHED_OTHER and SCHED_BATCH
(the kernel clamps it to 0.1..100 ms); it needs no privilege, and kernels before 6.12
ignore it, which `request` reports as 0.

The request is per thread and carries SCHED_FLAG_RESET_ON_FORK: the threads and processes
a data-path thread starts (hooks, nft, the handshake workers) keep the kernel's default.
The thread's policy and nice value are kept; a thread under another policy (SCHED_FIFO,
SCHED_IDLE, set by an operator) is left alone.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import struct

__all__ = ["DEFAULT_SLICE_US", "MAX_SLICE_US", "MIN_SLICE_US", "SLICE_ENV", "request"]

SLICE_ENV = "VPN_SCHED_SLICE"
# Microseconds; 0 leaves the kernel's default. 100 (the kernel's floor) by measurement:
# docs/architecture.md, "Scheduler slices".
DEFAULT_SLICE_US = 100
MIN_SLICE_US, MAX_SLICE_US = 100, 100_000  # the kernel's clamp

# (sched_setattr, sched_getattr) per architecture, from the kernel's syscall tables.
_SYSCALLS = {"x86_64": (314, 315), "aarch64": (274, 275), "riscv64": (274, 275),
             "i386": (351, 352), "i686": (351, 352), "armv7l": (380, 381),
             "ppc64le": (355, 356), "s390x": (345, 346)}
_SCHED_OTHER, _SCHED_BATCH = 0, 3
_RESET_ON_FORK = 0x01
# struct sched_attr, version 0: size, policy, flags, nice, priority, runtime, deadline, period.
_ATTR = struct.Struct("=IIQiIQQQ")

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


def request(slice_us: int) -> int:
    """Ask for `slice_us` (> 0) slices for the calling thread; the slice the kernel then
    reports, in microseconds (0: it keeps its default, as kernels before 6.12 do, or the
    thread is under another policy). OSError when the call is refused (a seccomp filter) or
    this architecture's numbers are unknown."""
    numbers = _SYSCALLS.get(platform.machine())
    if numbers is None:
        raise OSError(errno.ENOSYS, f"sched_setattr's number on {platform.machine()} is unknown")
    set_number, get_number = numbers
    attr = _get(get_number)
    policy, nice = attr[1], attr[3]
    if policy not in (_SCHED_OTHER, _SCHED_BATCH):
        return 0
    wanted = _ATTR.pack(_ATTR.size, policy, _RESET_ON_FORK, nice, 0, slice_us * 1000, 0, 0)
    if _libc.syscall(set_number, 0, ctypes.create_string_buffer(wanted, _ATTR.size), 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"sched_setattr: {os.strerror(err)}")
    return int(_get(get_number)[5]) // 1000


def _get(number: int) -> tuple[int, ...]:
    """The calling thread's struct sched_attr, version 0's fields."""
    buffer = ctypes.create_string_buffer(_ATTR.size)
    if _libc.syscall(number, 0, buffer, _ATTR.size, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"sched_getattr: {os.strerror(err)}")
    return _ATTR.unpack(buffer.raw)
