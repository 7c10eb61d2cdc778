"""sd_notify against a datagram socket bound where systemd would bind it: path or abstract."""

from __future__ import annotations

import asyncio
import os
import socket
import time
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


def test_the_watchdog_period_is_half_of_watchdog_usec() -> None:
    env = {"NOTIFY_SOCKET": "/run/systemd/notify", "WATCHDOG_USEC": "30000000"}
    assert notify.watchdog_period(env) == 15.0
    assert notify.watchdog_period({**env, "WATCHDOG_PID": str(os.getpid())}) == 15.0
    # Meant for another process (systemd names the main one), or not asked for at all.
    assert notify.watchdog_period({**env, "WATCHDOG_PID": str(os.getpid() + 1)}) is None
    assert notify.watchdog_period({"WATCHDOG_USEC": "30000000"}) is None
    for bad in ("", "0", "-5", "soon"):
        assert notify.watchdog_period({**env, "WATCHDOG_USEC": bad}) is None


def _receive_all(sock: socket.socket) -> list[bytes]:
    sock.setblocking(False)
    out = []
    while True:
        try:
            out.append(sock.recv(4096))
        except BlockingIOError:
            return out


def test_the_watchdog_beats_only_while_the_data_path_is_alive(
        listener: tuple[socket.socket, str], caplog: pytest.LogCaptureFixture) -> None:
    sock, address = listener
    env = {"NOTIFY_SOCKET": address, "WATCHDOG_USEC": "20000"}  # a beat every 10 ms
    health = {"alive": True}

    async def run() -> notify.Watchdog:
        dog = notify.Watchdog.from_environ(lambda: health["alive"], env)
        assert dog is not None and dog.period == 0.01
        dog.start()
        while dog.sent < 3:
            await asyncio.sleep(0.005)
        health["alive"] = False
        while dog.skipped < 3:
            await asyncio.sleep(0.005)
        dog.stop()
        return dog

    dog = asyncio.run(run())
    beats = _receive_all(sock)
    # Every keep-alive that was counted arrived, and none while the check failed.
    assert beats == [b"WATCHDOG=1"] * dog.sent and dog.sent >= 3
    assert caplog.text.count("failed its liveness check") == 1


def test_a_wedged_loop_sends_no_keep_alive(listener: tuple[socket.socket, str]) -> None:
    sock, address = listener
    env = {"NOTIFY_SOCKET": address, "WATCHDOG_USEC": "20000"}

    async def run() -> int:
        dog = notify.Watchdog(0.01, lambda: True, env)
        dog.start()  # the first beat at once
        time.sleep(0.2)  # the loop is stuck here: twenty periods without a beat
        sent = dog.sent
        dog.stop()
        return sent

    assert asyncio.run(run()) == 1
    assert _receive_all(sock) == [b"WATCHDOG=1"]
