"""Segmentation (GSO) and coalescing (GRO) of TCP and UDP packets for an IFF_VNET_HDR TUN.

Pure functions over buffers: ``split`` for reads from the TUN, ``coalesce`` for writes to it.
"""

from vpn.core.offload.gro import Coalesced, Coalescer, coalesce
from vpn.core.offload.gso import split
from vpn.core.packet.errors import OffloadError

__all__ = ["Coalesced", "Coalescer", "OffloadError", "coalesce", "split"]
