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
"""

from __future__ import annotations

import ctypes
import gc

__all__ = ["collect_removed", "release_setup_memory"]


def release_setup_memory() -> None:
    gc.collect()
    gc.freeze()
    try:
        trim = ctypes.CDLL(None).malloc_trim  # the C library the interpreter runs on
    except (OSError, AttributeError):  # no glibc: nothing to trim with
        return
    trim.argtypes = [ctypes.c_size_t]
    trim(0)


def collect_removed() -> None:
    """After peers were removed: free whatever cycles they left among the frozen objects.
    Nothing to do where release_setup_memory never froze (a library user's process)."""
    if not gc.get_freeze_count():
        return
    gc.unfreeze()
    gc.collect()
    gc.freeze()
