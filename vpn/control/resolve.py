"""Endpoint host names to addresses, retried as `wg` retries them.

wg (wireguard-tools' config.c) tries getaddrinfo once and then WG_ENDPOINT_RESOLUTION_RETRIES
more times (default 15, or "infinity"), 1 s apart at first, each wait 1.2 times the last, at
most 20 s; an answer that the name does not exist (EAI_NONAME, EAI_FAIL, EAI_NODATA) is final
at once, since asking again cannot change it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from vpn.control.config_model import Endpoint
from vpn.core.types import Address

log = logging.getLogger("vpn.endpoint")

RETRIES_VARIABLE = "WG_ENDPOINT_RESOLUTION_RETRIES"
DEFAULT_RETRIES = 15
FIRST_DELAY = 1.0
DELAY_GROWTH = 1.2
MAX_DELAY = 20.0
_PERMANENT = frozenset(code for code in (getattr(socket, name, None) for name in
                                         ("EAI_NONAME", "EAI_FAIL", "EAI_NODATA"))
                       if code is not None)
_MAX_RETRIES = 2**31 - 1  # wg's bound (INT_MAX)

GetAddrInfo = Callable[..., Awaitable[list[tuple[Any, ...]]]]


class ResolveError(ValueError):
    """The endpoint cannot be resolved, or the retry count is not a number; says which."""


def retries_from(environ: Mapping[str, str] = os.environ) -> int | None:
    """WG_ENDPOINT_RESOLUTION_RETRIES as wg reads it; None for "infinity"."""
    value = environ.get(RETRIES_VARIABLE)
    if value is None:
        return DEFAULT_RETRIES
    if value == "infinity":
        return None
    if not value.isascii() or not value.isdigit() or int(value) > _MAX_RETRIES:
        raise ResolveError(f"cannot parse {RETRIES_VARIABLE}={value!r}: "
                           "not a number of retries or 'infinity'")
    return int(value)


async def resolve(endpoint: Endpoint, getaddrinfo: GetAddrInfo, retries: int | None,
                  sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> Address:
    """`endpoint` as an (ip, port) address, IPv4 first when the name has both; up to
    `retries` more tries (None: no end) while the failure may pass. Raises ResolveError."""
    delay = FIRST_DELAY
    tries = 0
    while True:
        tries += 1
        try:
            infos = await getaddrinfo(endpoint.host, endpoint.port, type=socket.SOCK_DGRAM)
        except UnicodeError:  # the IDNA encoding refused the name: asking again cannot help
            raise ResolveError(f"cannot resolve endpoint {endpoint}: not a valid host name"
                               ) from None
        except OSError as err:
            reason = err.strerror or str(err)
            final = isinstance(err, socket.gaierror) and err.errno in _PERMANENT
            if final or (retries is not None and tries > retries):
                raise ResolveError(f"cannot resolve endpoint {endpoint}: {reason} "
                                   f"(after {tries} {'try' if tries == 1 else 'tries'})"
                                   ) from None
            log.warning("cannot resolve endpoint %s: %s; trying again in %.2f s", endpoint,
                        reason, delay)
            await sleep(delay)
            delay = min(MAX_DELAY, delay * DELAY_GROWTH)
            continue
        if not infos:
            raise ResolveError(f"cannot resolve endpoint {endpoint}: no address")
        ipv4_first = sorted(infos, key=lambda info: info[0] != socket.AF_INET)
        return str(ipv4_first[0][4][0]), endpoint.port
