"""systemd's readiness protocol (sd_notify): `Type=notify` units hear READY=1 and STOPPING=1,
and with `WatchdogSec=` a WATCHDOG=1 keep-alive while the endpoint is well.

One datagram per message to the AF_UNIX socket named by $NOTIFY_SOCKET (a path, or an
abstract address written with a leading '@'); without that variable it does nothing.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Callable, Mapping

log = logging.getLogger("vpn.host.notify")

READY = "READY=1"
STOPPING = "STOPPING=1"
WATCHDOG = "WATCHDOG=1"


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


def watchdog_period(environ: Mapping[str, str] = os.environ, pid: int | None = None
                    ) -> float | None:
    """How often to send WATCHDOG=1, in seconds: half of WATCHDOG_USEC, as sd_watchdog_enabled(3)
    advises; None when systemd expects no keep-alive from this process (no or a bad
    WATCHDOG_USEC, or a WATCHDOG_PID that is another process's, e.g. a hook's parent)."""
    usec = environ.get("WATCHDOG_USEC", "")
    owner = environ.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0 or not environ.get("NOTIFY_SOCKET"):
        return None
    if owner and owner != str(os.getpid() if pid is None else pid):
        return None
    return int(usec) / 2 / 1e6


class Watchdog:
    """WATCHDOG=1 every `period` seconds from the event loop, but only when `alive()` says
    the data path is well: a wedged loop sends nothing because it runs nothing, and a loop
    whose data path is broken skips the keep-alive, so systemd kills and restarts us."""

    def __init__(self, period: float, alive: Callable[[], bool],
                 environ: Mapping[str, str] = os.environ) -> None:
        self.period = period
        self.alive = alive
        self.environ = environ
        self.sent = self.skipped = 0
        self._failing = False
        self._handle: asyncio.TimerHandle | None = None

    @classmethod
    def from_environ(cls, alive: Callable[[], bool],
                     environ: Mapping[str, str] = os.environ) -> Watchdog | None:
        period = watchdog_period(environ)
        return None if period is None else cls(period, alive, environ)

    def start(self) -> None:
        """The first keep-alive now, then one every period (call from the running loop)."""
        self._beat()

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _beat(self) -> None:
        alive = self.alive()
        if alive:
            notify(WATCHDOG, self.environ)
            self.sent += 1
        else:
            if not self._failing:  # once per failure: systemd's kill follows soon
                log.error("the data path failed its liveness check: no WATCHDOG=1 for "
                          "systemd, which restarts the service at WatchdogSec")
            self.skipped += 1
        self._failing = not alive
        self._handle = asyncio.get_running_loop().call_later(self.period, self._beat)
