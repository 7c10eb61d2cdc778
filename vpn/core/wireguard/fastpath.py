"""Which code seals and opens transport messages: the native module or the Python reference.

Decided once, at import: "native" when vpn/core/wireguard/_transport.c was built and the
environment does not say VPN_FAST_PATH=python; otherwise "python", with the reason the
endpoint logs at start. Keypair (keypair.py) is the only user; its pure-Python loops stay
the reference the native code is tested equal to.
"""

from __future__ import annotations

from typing import Literal

from vpn.core.native import PYTHON_FORCED

try:
    from ._transport import OPENSSL_VERSION, TransportKey
    from ._transport import accept_run as native_accept_run
except ImportError as error:  # not built (or no usable libcrypto): the Python path runs
    TransportKey = None  # type: ignore[assignment, misc]
    native_accept_run = None  # type: ignore[assignment]
    OPENSSL_VERSION = ""
    _MISSING = f"native transport module not available ({error})"
else:
    _MISSING = ""

__all__ = ["FAST_PATH", "FAST_PATH_REASON", "OPENSSL_VERSION", "FastPath", "TransportKey",
           "native_accept_run"]

FastPath = Literal["native", "python"]


def _decide() -> tuple[FastPath, str]:
    if PYTHON_FORCED:
        return "python", "VPN_FAST_PATH=python"
    if _MISSING:
        return "python", _MISSING
    return "native", ""


FAST_PATH, FAST_PATH_REASON = _decide()
