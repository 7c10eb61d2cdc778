"""Which code seals and opens transport messages: the native module or the Python reference.

Decided once, at import, by vpn/core/native.py's rule (NATIVE): "native" when
vpn/core/wireguard/_transport.c was built and the environment does not say
VPN_FAST_PATH=python; otherwise "python", with the reason the endpoint logs at start.
Keypair (keypair.py) is the only user; its pure-Python loops stay the reference the
native code is tested equal to.
"""

from __future__ import annotations

from vpn.core.native import twin

try:
    from ._transport import OPENSSL_VERSION, TransportKey
    from ._transport import accept_run as native_accept_run
except ImportError as error:  # not built (or no usable libcrypto): the Python path runs
    TransportKey = None  # type: ignore[assignment, misc]
    native_accept_run = None  # type: ignore[assignment]
    OPENSSL_VERSION = ""
    NATIVE = twin("transport module", error)
else:
    NATIVE = twin("transport module")

__all__ = ["FAST_PATH", "NATIVE", "OPENSSL_VERSION", "TransportKey", "native_accept_run"]

FAST_PATH = NATIVE.path  # Keypair's (keypair.py)
