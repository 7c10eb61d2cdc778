"""A config file as the endpoint reads it, at start and at each reload: loaded, its warnings
logged, and its peers' Endpoint names resolved."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from vpn.control.config import load
from vpn.control.config_model import Config
from vpn.control.config_model import Endpoint as EndpointAddress
from vpn.control.resolve import ResolveError, retries_from
from vpn.control.resolve import resolve as resolve_endpoint
from vpn.core.types import Address
from vpn.endpoint.errors import EndpointError

# Every module of the endpoint logs as "vpn.endpoint": the name people (and scripts) read.
log = logging.getLogger("vpn.endpoint")


def load_config(path: str | Path, interface: str | None) -> Config:
    """Load and validate a wg-quick style file (ConfigError on a bad one), logging its
    warnings."""
    config, warnings = load(path, interface)
    log_warnings(warnings)
    return config


def log_warnings(warnings: list[str]) -> None:
    """The config's warnings, written for a terminal as wg writes them ("Warning: ..."),
    logged without the word the WARNING level already says."""
    for warning in warnings:
        log.warning("%s", warning.replace("Warning: ", "", 1))


async def resolve_all(loop: asyncio.AbstractEventLoop, config: Config) -> dict[bytes, Address]:
    """Every peer's config Endpoint resolved, by public key (peers without one left out)."""
    endpoints = {}
    for peer in config.peers:
        address = await resolve(loop, peer.endpoint)
        if address is not None:
            endpoints[peer.public_key] = address
    return endpoints


async def resolve(
    loop: asyncio.AbstractEventLoop, endpoint: EndpointAddress | None
) -> Address | None:
    """A config Endpoint (IP literal or host name) as an (ip, port) address, retried as
    `wg` retries (WG_ENDPOINT_RESOLUTION_RETRIES, vpn.control.resolve)."""
    if endpoint is None:
        return None
    try:
        return await resolve_endpoint(endpoint, loop.getaddrinfo, retries_from())
    except ResolveError as err:
        raise EndpointError(str(err)) from None
