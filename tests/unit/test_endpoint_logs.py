"""What the endpoint logs about peers and config warnings: news at INFO/WARNING, routine
(rekeys, a peer nobody can call) at DEBUG, each word once."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import pytest

from vpn.core.keys import encode_key
from vpn.core.wireguard.peer import PeerEvent
from vpn.endpoint.loading import log_warnings
from vpn.endpoint.peer_events import PeerEventLog

KEY = bytes([5] * 32)


@dataclass
class _Peer:  # what the event log reads of a peer
    public_key: bytes
    endpoint: tuple[str, int] | None


def _levels(caplog: pytest.LogCaptureFixture) -> list[tuple[int, str]]:
    out = [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "vpn.endpoint"]
    caplog.clear()
    return out


def test_a_sessions_first_handshake_is_info_and_its_rekeys_debug(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, "vpn")
    events, peer = PeerEventLog(), _Peer(KEY, ("198.18.0.2", 51820))
    done = f"peer {encode_key(KEY)}: handshake completed (endpoint 198.18.0.2:51820)"
    events(peer, PeerEvent.HANDSHAKE_COMPLETE)  # type: ignore[arg-type]
    events(peer, PeerEvent.HANDSHAKE_COMPLETE)  # type: ignore[arg-type]
    assert _levels(caplog) == [(logging.INFO, done), (logging.DEBUG, done)]
    # The session ended (keys zeroed after 9 minutes without one): the next one is news.
    events(peer, PeerEvent.KEYS_ZEROED)  # type: ignore[arg-type]
    events(peer, PeerEvent.HANDSHAKE_COMPLETE)  # type: ignore[arg-type]
    assert [level for level, _ in _levels(caplog)] == [logging.DEBUG, logging.INFO]
    assert events.handshakes_completed == 3


def test_giving_up_is_a_warning_only_for_a_peer_with_an_endpoint(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, "vpn")
    events = PeerEventLog()
    events(_Peer(KEY, None), PeerEvent.GIVE_UP)  # type: ignore[arg-type]
    assert [level for level, _ in _levels(caplog)] == [logging.DEBUG]
    events(_Peer(KEY, ("198.18.0.2", 1)), PeerEvent.GIVE_UP)  # type: ignore[arg-type]
    assert _levels(caplog) == [
        (logging.WARNING, f"peer {encode_key(KEY)}: no handshake response, giving up for now")]


def test_config_warnings_do_not_say_warning_twice(caplog: pytest.LogCaptureFixture) -> None:
    log_warnings(["Warning: `/etc/wireguard/wg0.conf' is world accessible",
                   "/etc/wireguard/wg0.conf:7: Warning: AllowedIP has nonzero host part: "
                   "10.0.0.1/24"])
    assert _levels(caplog) == [
        (logging.WARNING, "`/etc/wireguard/wg0.conf' is world accessible"),
        (logging.WARNING, "/etc/wireguard/wg0.conf:7: AllowedIP has nonzero host part: "
                          "10.0.0.1/24")]
