"""Endpoint names resolved as `wg` resolves them: transient failures retried with a growing
pause as many times as WG_ENDPOINT_RESOLUTION_RETRIES says, permanent ones at once."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import pytest

from vpn.host import resolve


class _Loop:
    """getaddrinfo that fails with the given codes first, then answers."""

    def __init__(self, failures: list[int]) -> None:
        self.failures = failures
        self.calls = 0

    async def getaddrinfo(self, host: str, port: int, **_: Any) -> list[Any]:
        self.calls += 1
        if self.failures:
            code = self.failures.pop(0)
            raise socket.gaierror(code, {socket.EAI_AGAIN: "Temporary failure in name "
                                         "resolution"}.get(code, "Name or service not known"))
        return [(socket.AF_INET6, socket.SOCK_DGRAM, 0, "", ("fd00::1", port, 0, 0)),
                (socket.AF_INET, socket.SOCK_DGRAM, 0, "", ("198.18.0.1", port))]


def _run(loop: _Loop, attempts_left: int | None) -> tuple[Any, list[float]]:
    pauses: list[float] = []

    async def sleep(seconds: float) -> None:
        pauses.append(seconds)

    async def go() -> Any:
        return await resolve.resolve(loop, "vpn.example", 51820,  # type: ignore[arg-type]
                                     attempts_left=attempts_left, sleep=sleep)

    return asyncio.run(go()), pauses


def test_transient_failures_are_retried_with_growing_pauses(
        caplog: pytest.LogCaptureFixture) -> None:
    address, pauses = _run(_Loop([socket.EAI_AGAIN] * 3), attempts_left=15)
    assert address == ("198.18.0.1", 51820)  # IPv4 first, as wg
    assert pauses == pytest.approx([1.0, 1.2, 1.44])
    assert ("Temporary failure in name resolution: `vpn.example:51820'. Trying again in "
            "1.00 seconds...") in caplog.text


def test_the_pause_stops_growing_at_20_seconds() -> None:
    _, pauses = _run(_Loop([socket.EAI_AGAIN] * 25), attempts_left=None)
    assert max(pauses) == 20.0 and len(pauses) == 25


def test_retries_run_out() -> None:
    loop = _Loop([socket.EAI_AGAIN] * 5)
    with pytest.raises(resolve.ResolveError) as info:
        _run(loop, attempts_left=2)
    assert loop.calls == 3 and info.value.strerror == "Temporary failure in name resolution"


def test_a_permanent_failure_is_not_retried() -> None:
    loop = _Loop([socket.EAI_NONAME])
    with pytest.raises(resolve.ResolveError):
        _run(loop, attempts_left=None)
    assert loop.calls == 1


@pytest.mark.parametrize(("value", "expected"),
                         [(None, 15), ("0", 0), ("7", 7), ("infinity", None)])
def test_retries_from_the_environment(value: str | None, expected: int | None) -> None:
    environ = {} if value is None else {resolve.RETRIES_VARIABLE: value}
    assert resolve.retries(environ) == expected


@pytest.mark.parametrize("value", ["", "-1", "inf", "3s", "99999999999"])
def test_a_bad_retries_value_is_refused_as_wg_does(value: str) -> None:
    with pytest.raises(ValueError, match="Unable to parse WG_ENDPOINT_RESOLUTION_RETRIES"):
        resolve.retries({resolve.RETRIES_VARIABLE: value})
