"""The metrics endpoint: `GET /metrics` over HTTP/1.x on the endpoint's own event loop.

Off by default (`vpn up --metrics HOST:PORT`, VPN_METRICS). The listening socket is bound
at start, before the process gives up its privileges. Each connection gets one answer and
is closed. A request head is read with a size limit and a deadline, and only so many
connections are served at once, so a slow or hostile client costs a file descriptor for a
few seconds, never the loop; a bad request gets 400 and changes nothing.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
from collections.abc import Callable

from vpn.control import metrics
from vpn.control.counters import Counters

log = logging.getLogger("vpn.metrics")

ENV = "VPN_METRICS"
MAX_REQUEST_HEAD = 8192  # request line and headers; Prometheus sends about 300 bytes
READ_TIMEOUT = 5.0
WRITE_TIMEOUT = 10.0
MAX_CONNECTIONS = 16
METHODS = ("GET", "HEAD")

Address = tuple[str, int]


class MetricsAddressError(ValueError):
    """A --metrics/VPN_METRICS value that is not HOST:PORT."""


def parse_address(text: str) -> Address:
    """`HOST:PORT`, `[IPv6]:PORT` or `:PORT` (every address) as (host, port); host is an IP
    address or a name to resolve. Raises MetricsAddressError saying what is wrong."""
    host, sep, port_text = text.strip().rpartition(":")
    if not sep or text.strip().endswith("]"):
        raise MetricsAddressError(f"metrics address {text!r}: expected HOST:PORT, "
                                  "such as 127.0.0.1:9586 or [::1]:9586")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise MetricsAddressError(f"metrics address {text!r}: {host!r} in brackets is "
                                      "not an IPv6 address") from None
    elif ":" in host:
        raise MetricsAddressError(f"metrics address {text!r}: write an IPv6 address in "
                                  "brackets, such as [::1]:9586")
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise MetricsAddressError(f"metrics address {text!r}: the port must be 1-65535")
    return host, int(port_text)


def _response(status: str, content_type: str, body: bytes, *, head: bool = False,
              extra: str = "") -> bytes:
    return (f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\n{extra}Connection: close\r\n\r\n"
            ).encode() + (b"" if head else body)


def _plain(status: str, text: str, extra: str = "") -> bytes:
    return _response(status, "text/plain; charset=utf-8", (text + "\n").encode(), extra=extra)


async def answer(head: bytes, snapshot: Callable[[], Counters]) -> bytes:
    """The whole response to one request head (request line and headers, CRLF-ended).
    The snapshot is taken on the loop (a few microseconds a peer); the text is written
    in a thread, so the data path keeps its turns while a large one is rendered."""
    try:
        text = head.decode("ascii")
    except UnicodeDecodeError:
        return _plain("400 Bad Request", "bad request: not ASCII")
    request_line, *header_lines = text.split("\r\n")
    parts = request_line.split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        return _plain("400 Bad Request", "bad request: expected METHOD /path HTTP/1.x")
    method, target, _ = parts
    headers = {}
    for line in header_lines:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            return _plain("400 Bad Request", "bad request: malformed header line")
        headers[name.lower()] = value.strip()
    if target.split("?", 1)[0] != "/metrics":
        return _plain("404 Not Found", "not found: the metrics are at /metrics")
    if method not in METHODS:
        return _plain("405 Method Not Allowed", "method not allowed: use GET",
                      extra="Allow: GET, HEAD\r\n")
    openmetrics = metrics.wants_openmetrics(headers.get("accept", ""))
    body = await asyncio.to_thread(metrics.render, snapshot(), openmetrics=openmetrics)
    kind = metrics.OPENMETRICS_TYPE if openmetrics else metrics.PROMETHEUS_TYPE
    return _response("200 OK", kind, body, head=method == "HEAD")


class MetricsServer:
    """Serves `snapshot()` rendered; bind() at start (privileged), serve() on the loop."""

    def __init__(self, address: Address, snapshot: Callable[[], Counters]) -> None:
        self.address = address
        self.snapshot = snapshot
        self._sock: socket.socket | None = None
        self._server: asyncio.Server | None = None
        self._active = 0

    def bind(self) -> None:
        """Claim the address now (OSError if taken or not ours), dual-stack for `[::]`."""
        host, port = self.address
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM,
                                   flags=socket.AI_PASSIVE)
        family, _, _, _, sockaddr = infos[0]
        sock = socket.socket(family, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(sockaddr)
            sock.listen(MAX_CONNECTIONS)
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        self._sock = sock

    @property
    def port(self) -> int:
        assert self._sock is not None
        return int(self._sock.getsockname()[1])

    async def serve(self) -> None:
        assert self._sock is not None
        self._server = await asyncio.start_server(self._on_client, sock=self._sock,
                                                  limit=MAX_REQUEST_HEAD)
        log.info("metrics at http://%s/metrics", _url_host(self.address, self.port))

    def close(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        elif self._sock is not None:
            self._sock.close()
        self._sock = None

    async def _on_client(self, reader: asyncio.StreamReader,
                         writer: asyncio.StreamWriter) -> None:
        self._active += 1
        try:
            if self._active > MAX_CONNECTIONS:
                return  # closed unanswered: a scraper retries at its next interval
            response = await self._read_and_answer(reader)
            if response:
                writer.write(response)
                await asyncio.wait_for(writer.drain(), WRITE_TIMEOUT)
                if not response.startswith(b"HTTP/1.1 200"):
                    # Unread request bytes at close would reset the connection and could
                    # discard the answer: end ours, then read theirs away, bounded.
                    writer.write_eof()
                    await asyncio.wait_for(_discard(reader), READ_TIMEOUT)
        except (OSError, TimeoutError):
            pass  # the client went away or stalled: its problem only
        finally:
            self._active -= 1
            writer.close()

    async def _read_and_answer(self, reader: asyncio.StreamReader) -> bytes:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), READ_TIMEOUT)
        except asyncio.LimitOverrunError:
            return _plain("400 Bad Request", f"bad request: head over {MAX_REQUEST_HEAD} bytes")
        except asyncio.IncompleteReadError as error:
            if not error.partial:
                return b""  # connected and closed: a port check
            return _plain("400 Bad Request", "bad request: incomplete request head")
        except TimeoutError:
            return _plain("408 Request Timeout", "request timeout")
        try:
            return await answer(head[:-4], self.snapshot)
        except Exception:  # a bug of ours: the scrape fails, the endpoint goes on
            log.exception("metrics: rendering failed")
            return _plain("500 Internal Server Error", "internal error (logged)")


async def _discard(reader: asyncio.StreamReader, limit: int = 1 << 16) -> None:
    while limit > 0 and (chunk := await reader.read(min(limit, 4096))):
        limit -= len(chunk)


def _url_host(address: Address, port: int) -> str:
    host = address[0] or "0.0.0.0"
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
