"""Give back what setup used and no longer needs, once the endpoint is up.

Parsing the config, the netlink dumps and the imports leave freed blocks in the C heap that
glibc keeps for reuse; an endpoint then idles for months with them resident. One collection
and malloc_trim(3) return them to the kernel (about 1-2 MB); elsewhere (musl) it does nothing.
"""

from __future__ import annotations

import ctypes
import gc

__all__ = ["release_setup_memory"]


def release_setup_memory() -> None:
    gc.collect()
    try:
        trim = ctypes.CDLL(None).malloc_trim  # the C library the interpreter runs on
    except (OSError, AttributeError):  # no glibc: nothing to trim with
        return
    trim.argtypes = [ctypes.c_size_t]
    trim(0)
