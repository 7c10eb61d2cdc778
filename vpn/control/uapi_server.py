"""The management socket: /var/run/wireguard/IFACE.sock serving the userspace API to `wg`.

Owns the socket file's life (stale vs live detection, 0600 mode, removal on exit) and reads
requests within fixed limits; what a request means is vpn.control.uapi's business and the handler's.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import socket
import stat
from pathlib import Path
from typing import Protocol

from vpn.control import uapi
from vpn.control.get_formatter import FormatterStopped, GetFormatter, SnapshotInSlices
from vpn.control.uapi import ChangeSet, UapiError

log = logging.getLogger("vpn.control.uapi")

SOCKET_DIR = Path("/var/run/wireguard")  # where `wg` looks; shared by every netns
# A set request is parsed as it streams in, so what it holds is the parsed changes, not its
# text; the socket is root's alone (0600), so the bound is for memory, not against strangers.
# 64 MiB is 16 times a peer with 130,560 allowed IPs (about 4 MiB of request), and at most
# about 1.5 GiB of parsed prefixes (an IPv6 one is some 550 bytes as a Python object).
MAX_REQUEST_BYTES = 64 << 20
MAX_LINE_BYTES = 4096  # the longest valid line is about 90 bytes
MAX_CONNECTIONS = 16
# A client that goes quiet mid-request would hold a connection slot forever without this.
READ_TIMEOUT = 10.0


class UapiServerError(OSError):
    """The socket cannot be served: another endpoint has it, or the directory is unusable."""


class UapiHandler(Protocol):
    """What the server asks of the endpoint; every call runs on the event loop, uninterrupted."""

    def uapi_get(self) -> SnapshotInSlices:
        """The snapshot a get answer describes, to be taken with the loop running between
        its slices; one configuration's even if a set lands between two."""

    def uapi_set(self, changes: ChangeSet) -> None:
        """Apply all of it or, raising UapiError, none of it."""

    def uapi_stats(self) -> dict[str, object]: ...

    def uapi_down(self) -> None: ...

    async def uapi_reload(self) -> None:
        """Re-read the config file and apply the difference; UapiError if it is bad."""


class _Abort(Exception):
    """The connection cannot go on: answer `code` (if not None) and close it."""

    def __init__(self, code: int | None, reason: str) -> None:
        super().__init__(reason)
        self.code = code


def socket_path(name: str, directory: Path = SOCKET_DIR) -> Path:
    if not name or "/" in name or name in (".", ".."):
        raise UapiServerError(errno.EINVAL, f"{name!r} is not an interface name")
    return directory / f"{name}.sock"


def socket_is_live(path: Path) -> bool:
    """Whether something accepts connections on `path` (a stale file refuses them)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC) as probe:
        probe.settimeout(2.0)
        try:
            probe.connect(str(path))
        except (ConnectionRefusedError, FileNotFoundError):
            return False
        except OSError as err:
            # EACCES and the like: someone's socket we cannot judge; do not delete it.
            raise UapiServerError(err.errno, f"{path}: cannot tell whether it is in use: "
                                  f"{err.strerror}") from None
    return True


class UapiServer:
    """The asyncio unix-socket server for one interface. bind(), start(), close()."""

    def __init__(self, name: str, handler: UapiHandler, *, directory: Path = SOCKET_DIR) -> None:
        self.name = name
        self.handler = handler
        self.directory = directory
        self.path = socket_path(name, directory)
        self._sock: socket.socket | None = None
        self._identity: tuple[int, int] | None = None  # (st_dev, st_ino) of our socket file
        self._server: asyncio.AbstractServer | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._formatter = GetFormatter()  # its thread ends with the server

    def bind(self) -> None:
        """Claim the socket path: replace a stale socket, refuse a live one. Not yet serving."""
        self._make_directory()
        if self.path.exists() or self.path.is_symlink():
            mode = self.path.lstat().st_mode
            if not stat.S_ISSOCK(mode):
                raise UapiServerError(errno.EEXIST, f"{self.path} exists and is not a socket")
            if socket_is_live(self.path):
                raise UapiServerError(
                    errno.EADDRINUSE,
                    f"{self.path} is in use: another endpoint serves {self.name}",
                )
            log.info("replacing stale socket %s", self.path)
        # Bind under a temporary name, restrict it, then rename over the final one: the socket
        # is never reachable with the umask's mode, and a stale file is replaced atomically.
        temp = self.directory / f".{self.name}.{os.getpid()}.sock"
        with contextlib.suppress(FileNotFoundError):
            temp.unlink()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            sock.bind(str(temp))
            os.chmod(temp, 0o600)
            sock.listen(MAX_CONNECTIONS)
            os.rename(temp, self.path)
            info = self.path.lstat()
        except BaseException:
            sock.close()
            with contextlib.suppress(OSError):
                temp.unlink()
            raise
        sock.setblocking(False)
        self._sock = sock
        self._identity = (info.st_dev, info.st_ino)

    def _make_directory(self) -> None:
        try:
            self.directory.mkdir(mode=0o755, parents=True)
            os.chmod(self.directory, 0o755)  # mkdir's mode is filtered by the umask
        except FileExistsError:
            pass

    async def start(self) -> None:
        """Begin accepting connections (after bind())."""
        assert self._sock is not None, "bind() first"
        self._server = await asyncio.start_unix_server(
            self._connection, sock=self._sock, limit=MAX_LINE_BYTES
        )

    def stop_serving(self) -> None:
        """Accept no more connections and drop the open ones; the file stays until close()."""
        if self._server is not None:
            self._server.close()
            self._server = None
        elif self._sock is not None:
            self._sock.close()
        self._sock = None
        for writer in list(self._writers):
            writer.close()
        self._writers.clear()
        self._formatter.close()

    def close(self) -> None:
        """stop_serving() and remove the socket file if it is still ours."""
        self.stop_serving()
        if self._identity is not None:
            try:
                info = self.path.lstat()
                # Another endpoint may have replaced a socket it judged stale; leave theirs.
                if (info.st_dev, info.st_ino) == self._identity:
                    self.path.unlink()
            except FileNotFoundError:
                pass
            self._identity = None

    # -- connections ------------------------------------------------------------------------

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if len(self._writers) >= MAX_CONNECTIONS:
            log.warning("management socket: too many connections, refusing one")
            writer.close()
            return
        self._writers.add(writer)
        try:
            while await self._request(reader, writer):
                pass
        except _Abort as abort:
            log.warning("management socket: %s", abort)
            if abort.code is not None:
                writer.write(uapi.format_errno(abort.code).encode())
                with contextlib.suppress(OSError):
                    await writer.drain()
        except (ConnectionError, OSError):
            pass  # the client went away; nothing to answer
        finally:
            self._writers.discard(writer)
            writer.close()

    async def _readline(self, reader: asyncio.StreamReader) -> str | None:
        """One line without its newline; None at a clean end of input."""
        try:
            # asyncio.timeout, not wait_for: wait_for makes a task per line, which was most
            # of the time a 130,000-line request took.
            async with asyncio.timeout(READ_TIMEOUT):
                raw = await reader.readline()
        except TimeoutError:
            raise _Abort(None, "client silent for too long") from None
        except ValueError:  # asyncio's "separator not found, chunk exceeds the limit"
            raise _Abort(uapi.EPROTO, f"line longer than {MAX_LINE_BYTES} bytes") from None
        if not raw:
            return None
        if not raw.endswith(b"\n"):
            raise _Abort(uapi.EPROTO, "request truncated (no newline before end of input)")
        try:
            return raw[:-1].decode("ascii")
        except UnicodeDecodeError:
            raise _Abort(uapi.EPROTO, "request is not ASCII text") from None

    async def _request(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        """Serve one request; False when the client is done."""
        op = await self._readline(reader)
        if op is None:
            return False
        if op in (uapi.OP_GET, uapi.OP_STATS, uapi.OP_DOWN, uapi.OP_RELOAD):
            if await self._readline(reader) != "":
                raise _Abort(uapi.EINVAL, f"{op} must be followed by an empty line")
            if op == uapi.OP_GET:
                await self._send_get(writer)
                return True
            answer = await self._reload() if op == uapi.OP_RELOAD else self._run(op, None)
        elif op == uapi.OP_SET:
            answer = self._run(op, await self._read_set(reader))
        else:
            # As wireguard-go, an unknown operation ends the connection; we say why first.
            raise _Abort(uapi.EINVAL, f"unknown operation {uapi.key_name(op)}")
        writer.write(answer.encode())
        await writer.drain()
        if op == uapi.OP_DOWN:
            self.handler.uapi_down()
            return False
        return True

    async def _read_set(self, reader: asyncio.StreamReader) -> uapi.SetParser:
        """A set request's lines, parsed as they arrive, to its closing empty line (also
        past a bad line, so the answer comes after the whole request, as for a good one)."""
        parser = uapi.SetParser()
        size = 0
        while (line := await self._readline(reader)) != "":
            if line is None:
                raise _Abort(uapi.EPROTO, "request truncated (no empty line before end of input)")
            size += len(line) + 1
            if size > MAX_REQUEST_BYTES:
                raise _Abort(uapi.EPROTO, f"request over {MAX_REQUEST_BYTES} bytes")
            parser.feed(line)
        return parser

    async def _send_get(self, writer: asyncio.StreamWriter) -> None:
        """The get answer: its snapshot taken on the loop a slice of peers at a time, each
        slice formatted on the formatter's thread while the loop waits for it in its poll
        (serving the data path), then written. 10,000 peers would hold the loop for about
        5 ms to take and 10-25 ms to format in one piece, and its packets would wait."""
        try:
            answer = await self._formatter.answer(self.handler.uapi_get())
        except FormatterStopped:
            raise _Abort(None, "closing with a get unanswered") from None
        except Exception:  # a bug must not take the endpoint down; the client hears EIO
            log.exception("%s: %s failed", self.name, uapi.OP_GET)
            answer = uapi.format_errno(uapi.EIO).encode()
        writer.write(answer)
        await writer.drain()  # waits only while the client is slower than we are

    async def _reload(self) -> str:
        try:
            await self.handler.uapi_reload()
        except UapiError as err:
            log.warning("%s: reload refused: %s (errno=%d)", self.name, err, err.code)
            return uapi.format_refusal(err.code, str(err))
        except Exception:
            log.exception("%s: reload failed", self.name)
            return uapi.format_errno(uapi.EIO)
        return uapi.format_errno(0)

    def _run(self, op: str, body: uapi.SetParser | None) -> str:
        """The answer to one complete request; never raises."""
        try:
            if op == uapi.OP_STATS:
                return uapi.format_stats(self.handler.uapi_stats())
            if op == uapi.OP_SET:
                assert body is not None
                changes = body.result()
                self.handler.uapi_set(changes)
                log.info("%s: configuration changed over the management socket", self.name)
            return uapi.format_errno(0)
        except UapiError as err:
            log.warning("%s: %s refused: %s (errno=%d)", self.name, op, err, err.code)
            return uapi.format_errno(err.code)
        except Exception:  # a bug must not take the endpoint down; the client hears EIO
            log.exception("%s: %s failed", self.name, op)
            return uapi.format_errno(uapi.EIO)


# -- the client side, for `vpn show` and `vpn down` ----------------------------------------


def request(name: str, payload: str, *, directory: Path = SOCKET_DIR,
            timeout: float = 5.0) -> list[list[str]]:
    """Send one or more requests; return each answer's lines (up to and with errno=)."""
    path = socket_path(name, directory)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC) as sock:
        sock.settimeout(timeout)
        sock.connect(str(path))
        sock.sendall(payload.encode())
        expected = payload.count("\n\n")
        answers: list[list[str]] = []
        current: list[str] = []
        buffer = b""
        while len(answers) < expected:
            chunk = sock.recv(65536)
            if not chunk:
                break
            buffer += chunk
            *complete, buffer = buffer.split(b"\n")
            for raw in complete:
                line = raw.decode("ascii", "replace")
                if line == "":
                    if current:
                        answers.append(current)
                        current = []
                    continue
                current.append(line)
        return answers


def interfaces(directory: Path = SOCKET_DIR) -> list[str]:
    """The names with a socket in `directory` (ours and other userspace implementations')."""
    try:
        return sorted(p.name[: -len(".sock")] for p in directory.glob("*.sock")
                      if not p.name.startswith("."))
    except OSError:
        return []
