"""`wg show IFACE transfer`: every WireGuard message to and from a peer counts, as in the
kernel (socket.c counts each datagram sent to the peer, receive.c each consumed initiation
and response and each transport message) and in wireguard-go. Cookie replies count on
neither side (they are sent as replies to a source, not to a peer, and consumed before the
receive counter), and neither does a handshake message the device did not consume."""

from __future__ import annotations

from tests.unit.core.wireguard.helpers import A_ADDR, B_ADDR, Pair, ipv4_packet, receive_one
from vpn.core.wireguard.constants import KEEPALIVE_TIMEOUT

INITIATION, RESPONSE, COOKIE_REPLY, KEEPALIVE = 148, 92, 64, 32
PING = ipv4_packet("198.18.0.1", "198.18.0.2", bytes(64))  # 84 bytes, as `ping` sends
PONG = ipv4_packet("198.18.0.2", "198.18.0.1", bytes(64))
PING_MESSAGE = 16 + 96 + 16  # header, the 84 bytes padded to 16, tag


def test_the_issue_example_ten_pings_after_a_handshake(pair: Pair) -> None:
    assert len(PING) == 84
    (init,) = pair.pa.send(PING, 0.0)  # staged, an initiation goes instead
    assert len(init) == INITIATION
    answer = pair.b.handle_handshake_message(init, A_ADDR, 0.0)
    (response,) = answer.replies
    assert len(response) == RESPONSE
    (first,) = pair.a.handle_handshake_message(response, B_ADDR, 0.0).replies  # the ping
    wire = first
    for i in range(10):
        now = float(i)
        if i:
            (wire,) = pair.pa.send(PING, now)
        assert len(wire) == PING_MESSAGE
        assert receive_one(pair.b, wire, A_ADDR, now).drop_reason is None
        (back,) = pair.pb.send(PONG, now)
        assert receive_one(pair.a, back, B_ADDR, now).drop_reason is None
    assert (pair.pa.rx_bytes, pair.pa.tx_bytes) == (1372, 1428)
    assert (pair.pb.rx_bytes, pair.pb.tx_bytes) == (1428, 1372)
    # The last pong is not answered: a's passive keepalive goes KEEPALIVE_TIMEOUT later.
    (keepalive,) = [d for _, d in pair.a.poll(9.0 + KEEPALIVE_TIMEOUT + 1.0)]
    assert len(keepalive) == KEEPALIVE
    assert receive_one(pair.b, keepalive, A_ADDR, 20.0).drop_reason is None
    assert pair.pa.tx_bytes == 1460 and pair.pb.rx_bytes == 1460


def test_cookie_replies_and_unconsumed_messages_count_nowhere(pair: Pair) -> None:
    (init,) = pair.pa.initiate_handshake(0.0)
    refused = pair.b.handle_handshake_message(init, A_ADDR, 0.0, under_load=True)
    (cookie,) = refused.replies
    assert len(cookie) == COOKIE_REPLY
    assert (pair.pb.rx_bytes, pair.pb.tx_bytes) == (0, 0)
    assert pair.a.handle_handshake_message(cookie, B_ADDR, 0.0).event == "cookie_consumed"
    assert (pair.pa.rx_bytes, pair.pa.tx_bytes) == (0, INITIATION)
    # The same initiation again later is a replay: dropped, not counted.
    assert pair.b.handle_handshake_message(init, A_ADDR, 1.0).event == "initiation_consumed"
    assert pair.b.handle_handshake_message(init, A_ADDR, 2.0).drop_reason == "stale_timestamp"
    assert (pair.pb.rx_bytes, pair.pb.tx_bytes) == (INITIATION, RESPONSE)
