"""Give back what setup used and no longer needs, once the endpoint is up, and keep the
collector off what setup built.

Parsing the config, the netlink dumps and the imports leave freed blocks in the C heap that
glibc keeps for reuse; an endpoint then idles for months with them resident. One collection
and malloc_trim(3) return them to the kernel (about 1-2 MB); elsewhere (musl) it does nothing.

What survives setup (the modules, the peers, their tries and tables) lives as long as the
endpoint, yet every full collection would walk it again: at 10,000 peers that is ~100,000
objects and a 100-300 ms pause of the data path, every few minutes as keypairs come and go.
`gc.freeze()` moves them out of the collector's sight; they are still freed by reference
counting when a peer goes. Only a reference cycle among frozen objects would outlive its
peer, so after a change that removed peers, `collect_removed` unfreezes, collects once (the
same pause, but at a configuration change, not at random) and freezes again.

The data path's blocks come and go by the megabyte: a receive's jumbo frames are 64 KiB
bodies each, made and freed every wakeup. glibc gives the top of its heap back to the kernel
as soon as more than 128 KiB is free there, so every wakeup paid to fault the same pages in
again (480 page faults per 2 MiB of frames). `keep_heap_headroom` has it keep HEAP_HEADROOM
free at the top (M_TOP_PAD: grown by that much more, trimmed down to that much, untouched
pages never resident): the inline receive walk ran about 1.6x as fast (5.6 -> 8.7-9.1
Gbit/s in `python -m bench.pipeline`).
"""

from __future__ import annotations

import ctypes
import gc
from typing import Any

__all__ = ["HEAP_HEADROOM", "collect_removed", "keep_heap_headroom", "release_setup_memory"]

HEAP_HEADROOM = 16 << 20  # bytes glibc keeps free at the top of each heap
_M_TOP_PAD = -2  # mallopt(3)'s parameter number, from glibc's malloc.h


def release_setup_memory() -> None:
    gc.collect()
    gc.freeze()
    trim = _libc_function("malloc_trim")
    if trim is not None:
        trim.argtypes = [ctypes.c_size_t]
        trim(0)


def keep_heap_headroom() -> bool:
    """Keep HEAP_HEADROOM free at the top of the C heap instead of giving it back at once;
    False where there is no glibc to ask (nothing changes there)."""
    mallopt = _libc_function("mallopt")
    if mallopt is None:
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    return bool(mallopt(_M_TOP_PAD, HEAP_HEADROOM))


def _libc_function(name: str) -> Any:
    """`name` from the C library the interpreter runs on; None where it has none."""
    try:
        return getattr(ctypes.CDLL(None), name)
    except (OSError, AttributeError):
        return None


def collect_removed() -> None:
    """After peers were removed: free whatever cycles they left among the frozen objects.
    Nothing to do where release_setup_memory never froze (a library user's process)."""
    if not gc.get_freeze_count():
        return
    gc.unfreeze()
    gc.collect()
    gc.freeze()
