"""The native fast path (the C modules beside the Python they accelerate) or the Python
reference: `VPN_FAST_PATH=python` forces the reference for the whole process. Each module
decides once, at import, from PYTHON_FORCED and whether its C twin was built; `fast_path`
sums the decisions up for the start log and `vpn show`."""

from __future__ import annotations

import os

PYTHON_FORCED = os.environ.get("VPN_FAST_PATH") == "python"


def fast_path() -> tuple[str, str]:
    """("native" or "python", what the start log says): native only when every native piece
    runs; otherwise the reason of each that does not."""
    from vpn import udp
    from vpn.offload import gro, gso
    from vpn.wireguard import fastpath

    if PYTHON_FORCED:
        return "python", "python (VPN_FAST_PATH=python)"
    reasons = (fastpath.FAST_PATH_REASON, gso.FAST_PATH_REASON, gro.FAST_PATH_REASON,
               udp.FAST_PATH_REASON)
    missing = [reason for reason in reasons if reason]
    if missing:
        return "python", f"python ({'; '.join(missing)})"
    return "native", ("native (transport AEAD, GSO split, GRO and batch receive in C, "
                      f"{fastpath.OPENSSL_VERSION})")
