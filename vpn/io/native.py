"""The native fast path (the C modules beside the Python they accelerate) or the Python
reference, summed up over every layer for the start log and `vpn show`."""

from __future__ import annotations

from vpn.core.native import PYTHON_FORCED


def fast_path() -> tuple[str, str]:
    """("native" or "python", what the start log says): native only when every native piece
    runs; otherwise the reason of each that does not."""
    from vpn.core.offload import gro, gso
    from vpn.core.wireguard import crypto, fastpath, screen
    from vpn.io import udp

    if PYTHON_FORCED:
        return "python", "python (VPN_FAST_PATH=python)"
    reasons = (fastpath.FAST_PATH_REASON, gso.FAST_PATH_REASON, gro.FAST_PATH_REASON,
               udp.FAST_PATH_REASON, screen.FAST_PATH_REASON, crypto.HANDSHAKE_PATH_REASON)
    missing = [reason for reason in reasons if reason]
    if missing:
        return "python", f"python ({'; '.join(missing)})"
    return "native", ("native (transport AEAD, GSO split, GRO, batch receive and the "
                      "handshake's X25519 and AEADs in C, "
                      f"{fastpath.OPENSSL_VERSION})")
