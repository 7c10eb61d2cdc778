"""The native fast path (the C modules beside the Python they accelerate) or the Python
reference, summed up over every layer for the start log and `vpn show`."""

from __future__ import annotations

from vpn.core.native import PYTHON_FORCED, Twin


def twins() -> tuple[Twin, ...]:
    """Every C module's choice (vpn/core/native.py's rule), each read from its module."""
    from vpn.core.offload import gro, gso
    from vpn.core.wireguard import crypto, fastpath, screen
    from vpn.io import udp

    return (fastpath.NATIVE, gso.NATIVE, gro.NATIVE, udp.NATIVE, screen.NATIVE, crypto.NATIVE)


def fast_path() -> tuple[str, str]:
    """("native" or "python", what the start log says): native only when every native piece
    runs; otherwise the reason of each that does not."""
    from vpn.core.wireguard import fastpath

    if PYTHON_FORCED:
        return "python", "python (VPN_FAST_PATH=python)"
    missing = [twin.reason for twin in twins() if not twin.native]
    if missing:
        return "python", f"python ({'; '.join(missing)})"
    return "native", ("native (transport AEAD, GSO split, GRO, batch receive and the "
                      "handshake's X25519 and AEADs in C, "
                      f"{fastpath.OPENSSL_VERSION})")
