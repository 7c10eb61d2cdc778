"""Endpoint names resolved with wg's retries: its count (WG_ENDPOINT_RESOLUTION_RETRIES,
default 15, "infinity"), its waits (1 s, then 1.2 times longer, at most 20 s), no retry for a
name that does not exist, then an error that names the endpoint. No real DNS: a stub
getaddrinfo and a recording sleep."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import pytest

from vpn.control.config_model import Endpoint
from vpn.control.resolve import DEFAULT_RETRIES, ResolveError, resolve, retries_from

HOST = Endpoint("vpn.example", 51820)
V4 = (socket.AF_INET, socket.SOCK_DGRAM, 17, "", ("198.18.0.7", 51820))
V6 = (socket.AF_INET6, socket.SOCK_DGRAM, 17, "", ("fd00::7", 51820, 0, 0))


class Stub:
    """getaddrinfo failing `failures` times with `code`, then answering `answer`."""

    def __init__(self, failures: int, code: int = socket.EAI_AGAIN,
                 answer: list[tuple[Any, ...]] | None = None) -> None:
        self.failures, self.code, self.answer = failures, code, answer or [V6, V4]
        self.calls = 0
        self.slept: list[float] = []

    async def getaddrinfo(self, host: str, port: int, **hints: Any) -> list[tuple[Any, ...]]:
        assert (host, port, hints) == (HOST.host, HOST.port, {"type": socket.SOCK_DGRAM})
        self.calls += 1
        if self.calls <= self.failures:
            raise socket.gaierror(self.code, "Temporary failure in name resolution")
        return self.answer

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)

    def run(self, retries: int | None) -> tuple[str, int]:
        return asyncio.run(resolve(HOST, self.getaddrinfo, retries, self.sleep))


def test_a_passing_failure_is_retried_with_growing_waits() -> None:
    stub = Stub(failures=3)
    assert stub.run(DEFAULT_RETRIES) == ("198.18.0.7", 51820)  # IPv4 first, as before
    assert stub.calls == 4
    assert stub.slept == pytest.approx([1.0, 1.2, 1.44])


def test_the_default_is_one_try_and_15_retries_then_an_error_naming_the_endpoint() -> None:
    stub = Stub(failures=100)
    with pytest.raises(ResolveError) as caught:
        stub.run(retries_from({}))
    assert stub.calls == 16
    assert str(caught.value) == ("cannot resolve endpoint vpn.example:51820: Temporary "
                                 "failure in name resolution (after 16 tries)")
    assert len(stub.slept) == 15 and stub.slept[-1] == pytest.approx(1.2 ** 14)
    longer = Stub(failures=100)
    with pytest.raises(ResolveError):
        longer.run(30)
    assert longer.slept[-5:] == [20.0] * 5  # the wait stops growing at 20 s


def test_zero_retries_and_infinity() -> None:
    once = Stub(failures=1)
    with pytest.raises(ResolveError, match=r"\(after 1 try\)"):
        once.run(retries_from({"WG_ENDPOINT_RESOLUTION_RETRIES": "0"}))
    assert retries_from({"WG_ENDPOINT_RESOLUTION_RETRIES": "infinity"}) is None
    patient = Stub(failures=500)
    assert patient.run(None) == ("198.18.0.7", 51820) and patient.calls == 501


@pytest.mark.parametrize("code", [socket.EAI_NONAME, socket.EAI_FAIL])
def test_a_name_that_does_not_exist_is_not_retried(code: int) -> None:
    stub = Stub(failures=1, code=code)
    with pytest.raises(ResolveError, match=r"vpn\.example:51820"):
        stub.run(DEFAULT_RETRIES)
    assert stub.calls == 1 and stub.slept == []


@pytest.mark.parametrize("value", ["", "-1", "1.5", "ten", "2147483648", " 3", "٣"])
def test_a_retry_count_that_is_not_a_number_is_refused(value: str) -> None:
    with pytest.raises(ResolveError, match="WG_ENDPOINT_RESOLUTION_RETRIES"):
        retries_from({"WG_ENDPOINT_RESOLUTION_RETRIES": value})


def test_the_real_resolver_fails_fast_on_an_invalid_name() -> None:
    """loop.getaddrinfo on a name no resolver is asked about (".invalid" with an empty
    label is refused locally), through the endpoint's own function."""
    from vpn.endpoint import EndpointError
    from vpn.endpoint.loading import resolve as endpoint_resolve

    async def run() -> None:
        await endpoint_resolve(asyncio.get_running_loop(), Endpoint("bad..invalid", 1))

    with pytest.raises(EndpointError, match=r"bad\.\.invalid:1: not a valid host name"):
        asyncio.run(run())
