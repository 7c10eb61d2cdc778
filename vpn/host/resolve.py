"""Endpoint host names resolved as `wg` resolves them: a transient failure is retried after
a pause growing from 1 s by 1.2x up to 20 s, WG_ENDPOINT_RESOLUTION_RETRIES times (default
15, or "infinity"); a permanent one (no such name) fails at once."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Awaitable, Callable, Mapping

from vpn.core.types import Address

log = logging.getLogger("vpn.host.resolve")

RETRIES_VARIABLE = "WG_ENDPOINT_RESOLUTION_RETRIES"
DEFAULT_RETRIES = 15
FIRST_PAUSE, MAX_PAUSE, GROWTH = 1.0, 20.0, 1.2
# glibc's permanent answers: waiting cannot change them.
PERMANENT = frozenset(code for code in (socket.EAI_NONAME, socket.EAI_FAIL,
                                        getattr(socket, "EAI_NODATA", None)) if code is not None)


class ResolveError(OSError):
    """A host name that did not resolve: `errno` the EAI code, `strerror` the reason."""


def retries(environ: Mapping[str, str] = os.environ) -> int | None:
    """How many times a transient failure is retried; None for "infinity". ValueError for
    a value `wg` would refuse too."""
    text = environ.get(RETRIES_VARIABLE)
    if text is None:
        return DEFAULT_RETRIES
    if text == "infinity":
        return None
    if not text.isascii() or not text.isdigit() or int(text) > 2**31 - 1:
        raise ValueError(f"Unable to parse {RETRIES_VARIABLE}: `{text}'")
    return int(text)


async def resolve(
    loop: asyncio.AbstractEventLoop, host: str, port: int, *, attempts_left: int | None,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> Address:
    """(ip, port) for `host`, IPv4 first (as `wg`); raises ResolveError."""
    pause = FIRST_PAUSE
    while True:
        try:
            infos = await loop.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
        except OSError as err:
            reason = err.strerror or str(err)
            permanent = isinstance(err, socket.gaierror) and err.errno in PERMANENT
            if permanent or attempts_left == 0:
                raise ResolveError(err.errno, reason) from None
            log.warning("%s: `%s:%d'. Trying again in %.2f seconds...", reason, host, port, pause)
            await sleep(pause)
            pause = min(MAX_PAUSE, pause * GROWTH)
            if attempts_left is not None:
                attempts_left -= 1
            continue
        family_order = sorted(infos, key=lambda info: info[0] != socket.AF_INET)
        return str(family_order[0][4][0]), port
