"""Capabilities through libc (capget/capset, prctl), for dropping all but a few after setup.

Constants and the version-3 capset layout come from linux/capability.h and linux/prctl.h:
a header {u32 version, int pid} and two {u32 effective, permitted, inheritable} words
(capabilities 0-31, then 32-63).
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Iterable
from errno import EINVAL
from pathlib import Path

__all__ = ["CAP_NET_ADMIN", "CAP_NET_BIND_SERVICE", "CAP_SYS_MODULE", "keep_only", "status"]

CAP_SETPCAP = 8
CAP_NET_BIND_SERVICE = 10
CAP_NET_ADMIN = 12
CAP_SYS_MODULE = 16
_LINUX_CAPABILITY_VERSION_3 = 0x20080522
PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4


class _Header(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _Data(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32)]


_libc = ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _last_cap() -> int:
    return int(Path("/proc/sys/kernel/cap_last_cap").read_text())


def keep_only(keep: Iterable[int]) -> None:
    """Drop every capability but `keep` from this process for good: the bounding set (so no
    program it executes gets one back), the ambient and inheritable sets, then the
    permitted and effective ones; and set no_new_privs, so no setuid or file-capability
    program raises it again. Raises OSError if the kernel refuses a step."""
    kept = set(keep)
    now = status()
    bounded = [cap for cap in range(_last_cap() + 1)
               if now["CapBnd"] >> cap & 1 and cap not in kept]
    # Needs CAP_SETPCAP, so before capset; EINVAL: a capability this kernel lacks. Without
    # CAP_SETPCAP (a systemd unit whose CapabilityBoundingSet= leaves it out) the step is
    # moot: under no_new_privs, set below, a program executed gets no capability beyond
    # the permitted set, which capset cuts to `keep`.
    if bounded and now["CapEff"] >> CAP_SETPCAP & 1:
        for cap in bounded:
            if _libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0 and ctypes.get_errno() != EINVAL:
                _check(-1, f"PR_CAPBSET_DROP {cap}")
    _check(_libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0), "PR_CAP_AMBIENT")
    mask = sum(1 << cap for cap in kept)
    data = (_Data * 2)()
    for i in range(2):
        word = (mask >> (32 * i)) & 0xFFFFFFFF
        data[i] = _Data(effective=word, permitted=word, inheritable=0)
    header = _Header(version=_LINUX_CAPABILITY_VERSION_3, pid=0)
    _check(_libc.capset(ctypes.byref(header), data), "capset")
    _check(_libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "PR_SET_NO_NEW_PRIVS")


def status(pid: int | str = "self") -> dict[str, int]:
    """CapInh, CapPrm, CapEff, CapBnd and CapAmb of a process, as /proc shows them."""
    found = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key.startswith("Cap"):
            found[key] = int(value.strip(), 16)
    return found
