"""Landlock: the running endpoint's filesystem, cut down to what it still opens.

Being uid 0 without capabilities still opens every file root owns (/etc/shadow, /dev/sda).
After setup the endpoint needs only: its code and the system's libraries (lazy imports,
nft and iptables-restore at teardown), name resolution's files in /etc, /dev/null and
the random devices, /proc and /sys to read, its management socket's directory, the
xtables lock, its log file's directory, and its config's directory (reload reads the file,
SaveConfig writes it aside and renames it over). Everything else is refused with EACCES.

Syscalls through libc's syscall(); numbers, structures and access bits from
linux/landlock.h (the ruleset attribute's first field, handled_access_fs, is all this
uses, so any ABI from 1 accepts it; the path-beneath attribute is packed, 12 bytes).
"""

from __future__ import annotations

import ctypes
import os
import sys
from collections.abc import Iterable
from pathlib import Path

from vpn.host.logs import LOG_DIRS

__all__ = ["available", "restrict", "rules_for"]

_SYS_CREATE_RULESET, _SYS_ADD_RULE, _SYS_RESTRICT_SELF = 444, 445, 446  # every arch but alpha
_CREATE_RULESET_VERSION = 1
_RULE_PATH_BENEATH = 1

EXECUTE = 1 << 0
WRITE_FILE = 1 << 1
READ_FILE = 1 << 2
READ_DIR = 1 << 3
REMOVE_FILE = 1 << 5
MAKE_REG = 1 << 8
TRUNCATE = 1 << 14  # ABI 3
_ABI1_ALL = (1 << 13) - 1  # EXECUTE .. MAKE_SYM
_REFER = 1 << 13  # ABI 2

READ = EXECUTE | READ_FILE | READ_DIR
FILE_RIGHTS = EXECUTE | WRITE_FILE | READ_FILE | TRUNCATE  # what a rule on a file may hold
# Reload and SaveConfig: the file itself, a temporary beside it, the rename over it.
CONFIG_DIR = READ | WRITE_FILE | REMOVE_FILE | MAKE_REG | TRUNCATE
# A background endpoint's log file (vpn/host/logs.py) is reopened, or made anew, after
# logrotate moves it away.
LOG_DIR = READ | WRITE_FILE | MAKE_REG | TRUNCATE

SYSTEM_READ = ("/usr", "/lib", "/lib32", "/lib64", "/bin", "/sbin", "/proc", "/sys",
               "/etc/alternatives", "/etc/iproute2", "/etc/ld.so.cache", "/etc/ld.so.conf",
               "/etc/ld.so.conf.d", "/etc/localtime", "/etc/resolv.conf", "/etc/hosts",
               "/etc/host.conf", "/etc/nsswitch.conf", "/etc/gai.conf", "/etc/services",
               "/etc/protocols", "/dev/urandom", "/dev/random")
SYSTEM_WRITE = ("/dev/null", "/run/xtables.lock")


class _PathBeneath(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


def available() -> int:
    """The kernel's Landlock ABI version, 0 where there is none (or it is disabled)."""
    abi = _libc.syscall(_SYS_CREATE_RULESET, None, ctypes.c_size_t(0),
                        ctypes.c_uint32(_CREATE_RULESET_VERSION))
    return max(int(abi), 0)


def rules_for(config: str | None, socket_dir: str) -> list[tuple[str, int]]:
    """(path, rights) for the running endpoint: the system's, the interpreter's and this
    package's files to read, and the few places it writes: the socket's directory, and the
    config's (where its path names it, and where it really is when that is a symlink)."""
    code = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix,
            str(Path(__file__).resolve().parents[2]), *sys.path}
    code -= {"", "/"}  # the current directory of `python -m` may be anything, even /
    rules = [(path, READ) for path in (*SYSTEM_READ, *sorted(code))]
    rules += [(path, READ | WRITE_FILE | TRUNCATE) for path in SYSTEM_WRITE]
    rules.append((socket_dir, READ | REMOVE_FILE))
    rules += [(str(directory), LOG_DIR) for directory in LOG_DIRS]
    if config:
        for where in sorted({os.path.abspath(config), os.path.realpath(config)}):
            rules.append((os.path.dirname(where), CONFIG_DIR))
    return rules


def restrict(rules: Iterable[tuple[str, int]]) -> None:
    """Confine this process (and what it runs) to `rules`, for good. Needs no_new_privs
    (set by capabilities.keep_only) or CAP_SYS_ADMIN. Paths that do not exist are skipped.
    Raises OSError when the kernel has no Landlock or refuses."""
    abi = available()
    if abi < 1:
        raise OSError(ctypes.get_errno(), "Landlock is not available in this kernel")
    handled = _ABI1_ALL | (_REFER if abi >= 2 else 0) | (TRUNCATE if abi >= 3 else 0)
    attr = ctypes.c_uint64(handled)
    ruleset = _libc.syscall(_SYS_CREATE_RULESET, ctypes.byref(attr),
                            ctypes.c_size_t(ctypes.sizeof(attr)), ctypes.c_uint32(0))
    if ruleset < 0:
        _raise("landlock_create_ruleset")
    try:
        for path, rights in rules:
            _add(ruleset, path, rights & handled)
        if _libc.syscall(_SYS_RESTRICT_SELF, ctypes.c_int(ruleset), ctypes.c_uint32(0)) != 0:
            _raise("landlock_restrict_self")
    finally:
        os.close(ruleset)


def _add(ruleset: int, path: str, rights: int) -> None:
    try:
        fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    except FileNotFoundError:
        return
    try:
        if not os.path.isdir(path):
            rights &= FILE_RIGHTS
        beneath = _PathBeneath(allowed_access=rights, parent_fd=fd)
        if _libc.syscall(_SYS_ADD_RULE, ctypes.c_int(ruleset), ctypes.c_int(_RULE_PATH_BENEATH),
                         ctypes.byref(beneath), ctypes.c_uint32(0)) != 0:
            _raise(f"landlock_add_rule {path}")
    finally:
        os.close(fd)


def _raise(what: str) -> None:
    err = ctypes.get_errno()
    raise OSError(err, f"{what}: {os.strerror(err)}")
