"""The metrics endpoint's HTTP handling, over real loopback TCP on a real event loop: what
a scraper gets, what a bad or slow client gets, and that neither stops the next scrape."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest
import uvloop
from prometheus_client.parser import text_string_to_metric_families

from tests.unit.control.test_metrics import counters
from vpn.control import metrics_server
from vpn.control.metrics_server import MetricsAddressError, MetricsServer, parse_address


def serving(test: Callable[[int], Awaitable[None]]) -> None:
    """Run `test(port)` against a server on the endpoint's kind of loop (uvloop)."""
    async def main() -> None:
        srv = MetricsServer(("127.0.0.1", 0), counters)
        srv.bind()
        await srv.serve()
        try:
            await test(srv.port)
        finally:
            srv.close()

    uvloop.run(main())


async def exchange(port: int, request: bytes) -> tuple[str, dict[str, str], bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    await writer.drain()
    raw = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    status, *lines = head.decode().split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    return status, headers, body


def test_get_metrics_is_prometheus_text() -> None:
    serving(get_metrics)


async def get_metrics(port: int) -> None:
    status, headers, body = await exchange(port, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status == "HTTP/1.1 200 OK"
    assert headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    assert int(headers["content-length"]) == len(body)
    names = {f.name for f in text_string_to_metric_families(body.decode())}
    assert {"wireguard_sent_bytes", "vpn_drops"} <= names


def test_openmetrics_on_request() -> None:
    serving(get_openmetrics)


async def get_openmetrics(port: int) -> None:
    status, headers, body = await exchange(
        port, b"GET /metrics?x=1 HTTP/1.1\r\n"
        b"Accept: application/openmetrics-text;version=1.0.0,text/plain;q=0.5\r\n\r\n")
    assert status.endswith("200 OK")
    assert headers["content-type"].startswith("application/openmetrics-text; version=1.0.0")
    assert body.endswith(b"# EOF\n")


@pytest.mark.parametrize(("request_bytes", "status"), [
    (b"GET / HTTP/1.1\r\n\r\n", "404 Not Found"),
    (b"POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n", "405 Method Not Allowed"),
    (b"GET /metrics\r\n\r\n", "400 Bad Request"),
    (b"GET /metrics SPDY/3\r\n\r\n", "400 Bad Request"),
    (b"\xff\xfe /metrics HTTP/1.1\r\n\r\n", "400 Bad Request"),
    (b"GET /metrics HTTP/1.1\r\nno colon here\r\n\r\n", "400 Bad Request"),
    (b"GET /metrics HTTP/1.1\r\nX: " + b"a" * 20000 + b"\r\n\r\n", "400 Bad Request"),
    (b"GET /metr", "400 Bad Request"),  # then the client half-closes
])
def test_bad_requests_are_answered_and_the_next_scrape_works(request_bytes: bytes,
                                                             status: str) -> None:
    serving(lambda port: bad_request(port, request_bytes, status))


async def bad_request(port: int, request_bytes: bytes, status: str) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request_bytes)
    if not request_bytes.endswith(b"\r\n\r\n"):
        writer.write_eof()
    raw = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    assert raw.startswith(f"HTTP/1.1 {status}\r\n".encode()), raw[:80]
    assert raw.split(b"\r\n\r\n", 1)[1].strip()  # a short body says why
    ok, _, _ = await exchange(port, b"GET /metrics HTTP/1.1\r\n\r\n")
    assert ok.endswith("200 OK")


def test_a_silent_client_times_out_and_does_not_hold_the_loop(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(metrics_server, "READ_TIMEOUT", 0.2)
    serving(silent_client)


async def silent_client(port: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /metrics HTTP/1.1\r\n")  # and then nothing
    # Meanwhile the loop serves others.
    ok, _, _ = await exchange(port, b"GET /metrics HTTP/1.1\r\n\r\n")
    assert ok.endswith("200 OK")
    raw = await asyncio.wait_for(reader.read(), 10)
    assert raw.startswith(b"HTTP/1.1 408 ")
    writer.close()


def test_head_has_no_body() -> None:
    serving(head_request)


async def head_request(port: int) -> None:
    status, headers, body = await exchange(port, b"HEAD /metrics HTTP/1.0\r\n\r\n")
    assert status.endswith("200 OK") and int(headers["content-length"]) > 0 and body == b""


@pytest.mark.parametrize(("text", "address"), [
    ("127.0.0.1:9586", ("127.0.0.1", 9586)), ("[::1]:9586", ("::1", 9586)),
    (":9586", ("", 9586)), ("localhost:1", ("localhost", 1)),
])
def test_addresses(text: str, address: tuple[str, int]) -> None:
    assert parse_address(text) == address


@pytest.mark.parametrize("text", ["9586", "[::1]", "::1:9586", "[x]:1", "host:0", "host:65536",
                                  "h:p"])
def test_bad_addresses_say_what_is_wrong(text: str) -> None:
    with pytest.raises(MetricsAddressError, match="metrics address"):
        parse_address(text)


def test_a_taken_port_is_an_error_at_bind() -> None:
    first = MetricsServer(("127.0.0.1", 0), counters)
    first.bind()
    try:
        second = MetricsServer(("127.0.0.1", first.port), counters)
        with pytest.raises(OSError):
            second.bind()
    finally:
        first.close()
