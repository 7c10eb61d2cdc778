"""systemd's readiness protocol (sd_notify): `Type=notify` units hear READY=1 and STOPPING=1.

One datagram per message to the AF_UNIX socket named by $NOTIFY_SOCKET (a path, or an
abstract address written with a leading '@'); without that variable it does nothing.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping

log = logging.getLogger("vpn.host.notify")

READY = "READY=1"
STOPPING = "STOPPING=1"


def notify(message: str, environ: Mapping[str, str] = os.environ) -> bool:
    """Send `message` (e.g. READY=1) to systemd; False when not run by it or it failed.

    A failure is logged, never raised: the service still works, systemd only hears late.
    """
    address = environ.get("NOTIFY_SOCKET", "")
    if not address:
        return False
    if address.startswith("@"):  # abstract namespace: a NUL byte instead of the '@'
        address = "\0" + address[1:]
    elif not address.startswith("/"):
        log.warning("NOTIFY_SOCKET %r is neither a path nor an abstract address", address)
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto(message.encode(), address)
    except OSError as err:
        log.warning("cannot tell systemd %s: %s", message, err.strerror or err)
        return False
    return True
