"""When the device demands cookies (HandshakeLoad), on the protocol's clock: by its backlog
of Diffie-Hellman work, the mac1-valid initiations and responses of one wakeup (one `now`),
and for UNDER_LOAD_TIME after; never by garbage, bad mac1 or cookie replies."""

from __future__ import annotations

from tests.unit.core.wireguard.helpers import (
    A_ADDR,
    B_ADDR,
    Pair,
    handshake_shaped,
    mac1_valid,
    make_pair,
)
from vpn.core.wireguard import Device
from vpn.core.wireguard.constants import REKEY_TIMEOUT, UNDER_LOAD_BACKLOG, UNDER_LOAD_TIME


def stranger(i: int) -> tuple[str, int]:
    return (f"198.18.5.{2 + i % 200}", 1024 + i)


def flood(device: Device, count: int, now: float, kind: int = 1) -> list[str]:
    """`count` mac1-valid messages from strangers in one wakeup; what became of each."""
    out = []
    for i in range(count):
        result = device.handle_handshake_message(mac1_valid(kind, device.public_key),
                                                 stranger(i), now)
        out.append(result.event or result.drop_reason or "")
    return out


def legit_initiation(pair: Pair, now: float) -> str | None:
    (init,) = pair.pa.initiate_handshake(now)
    return pair.b.handle_handshake_message(init, A_ADDR, now).event


def test_handshake_sized_garbage_never_makes_load(pair: Pair) -> None:
    # Ten thousand in one wakeup, far past any threshold, then a real initiation in it.
    for i, datagram in enumerate(handshake_shaped(10_000)):
        result = pair.b.handle_handshake_message(datagram, stranger(i), 0.0)
        assert result.drop_reason in ("bad_mac1", "unknown_receiver_index"), result
    assert legit_initiation(pair, 0.0) == "initiation_consumed"
    assert pair.b.drops["cookie_sent"] == 0


def test_the_backlog_of_one_wakeup_makes_load() -> None:
    below = make_pair()
    assert flood(below.b, UNDER_LOAD_BACKLOG - 2, 0.0) == ["bad_static_auth"] * (
        UNDER_LOAD_BACKLOG - 2)
    assert legit_initiation(below, 0.0) == "initiation_consumed"

    at = make_pair()
    flood(at.b, UNDER_LOAD_BACKLOG - 1, 0.0)
    assert legit_initiation(at, 0.0) == "cookie_sent"  # the UNDER_LOAD_BACKLOG-th


def test_responses_count_as_backlog() -> None:
    p = make_pair()
    assert flood(p.b, UNDER_LOAD_BACKLOG, 0.0, kind=2)[-1] == "cookie_sent"
    assert legit_initiation(p, 0.0) == "cookie_sent"


def test_load_is_backlog_not_rate(pair: Pair) -> None:
    """Just under the backlog in every wakeup, a hundred wakeups a second: each message
    found the DH work done before it, so none is asked for a cookie."""
    outcomes = [o for w in range(300) for o in flood(pair.b, UNDER_LOAD_BACKLOG - 1, w / 100)]
    assert set(outcomes) == {"bad_static_auth"}
    assert legit_initiation(pair, 3.0) == "initiation_consumed"


def test_load_lasts_a_second_after_the_last_backlog(pair: Pair) -> None:
    flood(pair.b, UNDER_LOAD_BACKLOG, 10.0)
    assert flood(pair.b, 1, 10.0 + UNDER_LOAD_TIME - 0.01) == ["cookie_sent"]
    assert flood(pair.b, 1, 10.0 + UNDER_LOAD_TIME) == ["bad_static_auth"]


def test_load_lasts_as_long_as_the_flood_and_costs_dh_only_at_its_start(pair: Pair) -> None:
    outcomes = [o for w in range(10) for o in flood(pair.b, 2 * UNDER_LOAD_BACKLOG, w * 0.9)]
    assert outcomes.count("bad_static_auth") == UNDER_LOAD_BACKLOG - 1
    assert outcomes.count("cookie_sent") == len(outcomes) - (UNDER_LOAD_BACKLOG - 1)
    assert flood(pair.b, 1, 9 * 0.9 + UNDER_LOAD_TIME - 0.01) == ["cookie_sent"]


def test_a_peer_completes_its_handshake_through_a_flood(pair: Pair) -> None:
    """A wakeup of flood every 0.5 s; the peer starts at 0.25, gets a cookie, retries with
    mac2 when its retransmission is due and completes, all while the flood goes on."""
    events = []
    now = 0.0
    for tick in range(200):
        now = tick * 0.05
        if tick % 10 == 0:
            flood(pair.b, UNDER_LOAD_BACKLOG, now)
        to_b = pair.pa.initiate_handshake(now) if tick == 5 else [d for _, d in pair.a.poll(now)]
        for datagram in to_b:
            result = pair.b.handle_handshake_message(datagram, A_ADDR, now)
            events.append(result.event)
            for reply in result.replies:
                pair.a.handle_handshake_message(reply, B_ADDR, now)
        if "handshake_complete" in pair.pa.events:
            break
    assert events == ["cookie_sent", "initiation_consumed"]
    assert "handshake_complete" in pair.pa.events
    assert 0.25 + REKEY_TIMEOUT <= now < 0.25 + 2 * REKEY_TIMEOUT  # one cookie round trip
    assert flood(pair.b, 1, now) == ["cookie_sent"]  # still under load
