"""MAC1 on every handshake message, cookie replies under load, MAC2, secret rotation."""

from __future__ import annotations

from tests.unit.core.wireguard.helpers import A_ADDR, B_ADDR, Pair, make_pair
from vpn.core.wireguard.constants import COOKIE_REFRESH_TIME
from vpn.core.wireguard.cookie import CookieChecker
from vpn.core.wireguard.messages import parse_cookie_reply


def test_mac1_is_checked_on_initiation_and_response(pair: Pair) -> None:
    (init,) = pair.pa.initiate_handshake(0.0)
    for i in (116, 131, 0 + 20):  # inside mac1, and inside the covered body
        bad = bytearray(init)
        bad[i] ^= 1
        assert pair.b.handle_handshake_message(bytes(bad), A_ADDR, 0.0).drop_reason == "bad_mac1"
    r = pair.b.handle_handshake_message(init, A_ADDR, 0.0)
    bad = bytearray(r.replies[0])
    bad[60] ^= 1
    assert pair.a.handle_handshake_message(bytes(bad), B_ADDR, 0.0).drop_reason == "bad_mac1"
    assert pair.b.drops["bad_mac1"] == 3


def test_under_load_a_cookie_is_required_then_accepted() -> None:
    p = make_pair()
    (init,) = p.pa.initiate_handshake(0.0)
    r = p.b.handle_handshake_message(init, A_ADDR, 0.0, under_load=True)
    assert r.event == "cookie_sent" and len(r.replies[0]) == 64
    reply = parse_cookie_reply(r.replies[0])
    assert reply.receiver_index == int.from_bytes(init[4:8], "little")
    assert p.pb.handshake.state.name == "ZEROED"  # nothing was processed

    c = p.a.handle_handshake_message(r.replies[0], B_ADDR, 0.1)
    assert c.event == "cookie_consumed" and c.peer is p.pa
    # The same reply again: its mac1 was used up.
    again = p.a.handle_handshake_message(r.replies[0], B_ADDR, 0.1)
    assert again.drop_reason == "unexpected_cookie_reply"

    (retry,) = p.pa.initiate_handshake(6.0)
    assert retry[132:] != bytes(16)  # mac2 present
    ok = p.b.handle_handshake_message(retry, A_ADDR, 6.0, under_load=True)
    assert ok.event == "initiation_consumed", ok.drop_reason
    # The cookie is bound to the source address: another source needs its own.
    (third,) = p.pa.initiate_handshake(12.0)
    other = p.b.handle_handshake_message(third, ("198.18.9.9", 1), 12.0, under_load=True)
    assert other.event == "cookie_sent"


def test_cookie_expires_after_refresh_time() -> None:
    p = make_pair()
    (init,) = p.pa.initiate_handshake(0.0)
    r = p.b.handle_handshake_message(init, A_ADDR, 0.0, under_load=True)
    p.a.handle_handshake_message(r.replies[0], B_ADDR, 0.0)
    (fresh,) = p.pa.initiate_handshake(COOKIE_REFRESH_TIME - 1)
    assert fresh[132:] != bytes(16)
    (stale,) = p.pa.initiate_handshake(COOKIE_REFRESH_TIME + 10)
    assert stale[132:] == bytes(16)


def test_forged_cookie_reply_is_dropped() -> None:
    p = make_pair()
    (init,) = p.pa.initiate_handshake(0.0)
    r = p.b.handle_handshake_message(init, A_ADDR, 0.0, under_load=True)
    bad = bytearray(r.replies[0])
    bad[40] ^= 1
    assert p.a.handle_handshake_message(bytes(bad), B_ADDR, 0.0).drop_reason == "bad_cookie_auth"
    unknown = bytearray(r.replies[0])
    unknown[4:8] = b"\xee\xee\xee\xee"
    res = p.a.handle_handshake_message(bytes(unknown), B_ADDR, 0.0)
    assert res.drop_reason == "unknown_receiver_index"


def test_secret_rotates_every_two_minutes() -> None:
    p = make_pair()
    (init,) = p.pa.initiate_handshake(0.0)
    seen = []
    rng_calls = iter(range(1, 100))
    checker = CookieChecker(p.b.public_key, random=lambda n: bytes([next(rng_calls)]) * n)
    for now in (0.0, 60.0, COOKIE_REFRESH_TIME + 1, COOKIE_REFRESH_TIME + 2):
        seen.append(checker._cookie(A_ADDR, now))
    assert seen[0] == seen[1] and seen[1] != seen[2] and seen[2] == seen[3]
    assert checker.valid_mac1(init)
    assert checker.reply_unless_mac2(init, 0, A_ADDR, 0.0) is not None


def test_ratelimited_under_load_even_with_valid_cookie() -> None:
    p = make_pair()
    (init,) = p.pa.initiate_handshake(0.0)
    r = p.b.handle_handshake_message(init, A_ADDR, 0.0, under_load=True)
    p.a.handle_handshake_message(r.replies[0], B_ADDR, 0.0)
    results = []
    for _i in range(8):
        p.pa.last_sent_handshake = float("-inf")  # let the initiator send back to back
        p.wall.t += 1
        (msg,) = p.pa.initiate_handshake(1.0)
        results.append(p.b.handle_handshake_message(msg, A_ADDR, 1.0, under_load=True))
    reasons = [x.drop_reason for x in results]
    assert reasons.count("ratelimited") == 3  # a burst of 5 from one source
