"""vpn-userspace's command line (its readiness handshake is vpn/host/background.py's,
tested there), and the link
events it stops on (`ip link delete`) or follows (`ip link set mtu`)."""

from __future__ import annotations

import os
import struct

import pytest

from vpn import userspace
from vpn.host.linkwatch import RTM_DELLINK, RTM_NEWLINK, LinkEvent, parse_link_events


@pytest.mark.parametrize("argv", [[], ["-f"], ["a", "b"], ["-x"], ["-f", "a", "b"]])
def test_usage(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert userspace.main(argv) == userspace.EXIT_USAGE
    assert "Usage: vpn-userspace [-f/--foreground] INTERFACE-NAME" in capsys.readouterr().err


def test_version_is_printed_as_wireguard_go_prints_its_own(
        capsys: pytest.CaptureFixture[str]) -> None:
    from vpn import version

    assert userspace.main(["--version"]) == userspace.EXIT_OK
    out, err = capsys.readouterr()
    assert out == f"vpn-userspace {version()}\n" and err == ""


def test_bad_interface_name(capsys: pytest.CaptureFixture[str]) -> None:
    assert userspace.main(["-f", "no/slash"]) == userspace.EXIT_FAILURE
    assert "not a valid interface name" in capsys.readouterr().err


def test_a_bad_metrics_address_in_the_environment(capsys: pytest.CaptureFixture[str],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VPN_METRICS", "[::1]")
    assert userspace.main(["-f", "wg0"]) == userspace.EXIT_USAGE
    assert "VPN_METRICS: metrics address '[::1]': expected HOST:PORT" in capsys.readouterr().err


def _link_message(kind: int, index: int, mtu: int | None) -> bytes:
    attrs = b""
    if mtu is not None:
        attrs = struct.pack("=HHI", 8, 4, mtu)
    attrs += struct.pack("=HH", 9, 3) + b"wg0\0\0" + b"\0" * 3  # IFLA_IFNAME, padded
    body = struct.pack("=BxHiII", 0, 0xFFFE, index, 0x1090, 0) + attrs
    return struct.pack("=IHHII", 16 + len(body), kind, 0, 0, 0) + body


def test_link_events_of_our_interface_only() -> None:
    data = (_link_message(RTM_NEWLINK, 7, 1380) + _link_message(RTM_NEWLINK, 8, 1500)
            + _link_message(RTM_NEWLINK, 7, None) + _link_message(RTM_DELLINK, 7, 1380))
    assert parse_link_events(data, 7) == [
        LinkEvent(deleted=False, mtu=1380), LinkEvent(deleted=False, mtu=None),
        LinkEvent(deleted=True),
    ]
    assert parse_link_events(data[:-5], 8) == [LinkEvent(deleted=False, mtu=1500)]
    assert parse_link_events(os.urandom(7), 7) == []


@pytest.mark.parametrize(("env", "value", "reason"),
                         [("VPN_THREADS", "many", "thread count"),
                          ("VPN_THREADS", "65", "thread count"),
                          ("VPN_BUSY_POLL", "-1", "busy-poll budget"),
                          ("VPN_BUSY_POLL", "10001", "busy-poll budget"),
                          ("VPN_SCHED_SLICE", "99", "scheduler slice"),
                          ("VPN_SCHED_SLICE", "soon", "scheduler slice")])
def test_a_bad_data_path_knob_in_the_environment(env: str, value: str, reason: str,
                                                 capsys: pytest.CaptureFixture[str],
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(env, value)
    assert userspace.main(["-f", "wg0"]) == userspace.EXIT_USAGE
    assert f"{env}: {reason}" in capsys.readouterr().err
