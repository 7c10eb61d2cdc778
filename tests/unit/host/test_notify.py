"""sd_notify against a datagram socket bound where systemd would bind it: path or abstract."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from vpn.host import notify


@pytest.fixture(params=["path", "abstract"])
def listener(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[socket.socket,
                                                                                str]]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    if request.param == "path":
        address = str(tmp_path / "notify")
        sock.bind(address)
    else:
        address = f"@vpn-test-notify-{os.getpid()}"
        sock.bind("\0" + address[1:])
    sock.settimeout(2)
    with sock:
        yield sock, address


def test_messages_arrive_one_datagram_each(listener: tuple[socket.socket, str]) -> None:
    sock, address = listener
    env = {"NOTIFY_SOCKET": address}
    assert notify.notify(notify.READY, env) and notify.notify(notify.STOPPING, env)
    assert sock.recv(4096) == b"READY=1"
    assert sock.recv(4096) == b"STOPPING=1"


def test_without_systemd_nothing_is_sent() -> None:
    assert notify.notify(notify.READY, {}) is False
    assert notify.notify(notify.READY, {"NOTIFY_SOCKET": ""}) is False


def test_a_bad_socket_is_logged_not_raised(tmp_path: Path,
                                           caplog: pytest.LogCaptureFixture) -> None:
    assert notify.notify(notify.READY, {"NOTIFY_SOCKET": str(tmp_path / "absent")}) is False
    assert notify.notify(notify.READY, {"NOTIFY_SOCKET": "relative"}) is False
    assert "cannot tell systemd READY=1" in caplog.text and "neither a path" in caplog.text
