"""Every reason the endpoint counts a drop under: one catalogue, each with what it means.

A member is its own string (StrEnum), so counter keys, `vpn show`, the metrics' `reason`
label and the get=vpn-stats lines read exactly as the plain strings did. The C modules
report counts in the order of wire.h's enums, whose names are members too; the docs table
(docs/operations.md, "Drop reasons") lists exactly these. tests/unit/core/test_drops.py
holds the code, the C enums, the docs and the counters to this list.
"""

from __future__ import annotations

from enum import StrEnum

__all__ = ["Drop"]


class Drop(StrEnum):
    """A drop reason: the counter key, with a one-line `meaning`."""

    meaning: str

    def __new__(cls, value: str, meaning: str) -> Drop:
        member = str.__new__(cls, value)
        member._value_ = value
        member.meaning = meaning
        return member

    # From the TUN, towards a peer (Device.route and Device.seal, send.py).
    TUN_NOT_IP = "tun_not_ip", "the TUN gave something that is neither IPv4 nor IPv6"
    NO_PEER_FOR_DESTINATION = ("no_peer_for_destination",
                               "no peer's AllowedIPs covers the destination")
    PEER_WITHOUT_ENDPOINT = "peer_without_endpoint", "the peer has no known endpoint"
    STAGED_QUEUE_FULL = "staged_queue_full", "too many packets wait for a handshake"
    KEYPAIR_EXHAUSTED = ("keypair_exhausted",
                         "a session sent its last message: the rest waits for the next "
                         "(counted only when a worker finds its session ended mid-batch)")

    # A virtio-net header the split cannot act on (virtio.py, _gso.c).
    SHORT_VNET_HEADER = "short_vnet_header", "a TUN read shorter than a virtio-net header"
    BAD_FLAGS = "bad_flags", "unknown virtio-net flag bits"
    BAD_GSO_TYPE = "bad_gso_type", "unknown GSO type, or ECN on one that is not TCP"
    UNSUPPORTED_GSO_TYPE = "unsupported_gso_type", "UFO (GSO_UDP), never negotiated"
    CSUM_OUT_OF_BOUNDS = "csum_out_of_bounds", "the checksum position is outside the packet"
    HDR_LEN_TOO_BIG = "hdr_len_too_big", "hdr_len beyond the packet"
    BAD_GSO_SIZE = "bad_gso_size", "gso_size 0 or 0xFFFF on a GSO packet"
    BAD_CSUM_OFFSET = "bad_csum_offset", "a checksum offset that is not TCP's or UDP's"
    MISSING_NEEDS_CSUM = "missing_needs_csum", "UDP GSO without NEEDS_CSUM"

    # A super-packet whose headers do not match its GSO type (headers.py, gso.py, _gso.c).
    TRUNCATED_IP = "truncated_ip", "the IP packet is shorter than its header or length says"
    BAD_IP_HEADER_LEN = "bad_ip_header_len", "an IPv4 IHL under 20 bytes"
    BAD_IP_LENGTH = "bad_ip_length", "an IP length under the header, or an IPv6 jumbogram"
    BAD_IP_VERSION = "bad_ip_version", "an IP version that is neither 4 nor 6"
    IP_FRAGMENT = "ip_fragment", "an IPv4 fragment"
    IP_VERSION_MISMATCH = "ip_version_mismatch", "the IP version is not the GSO type's"
    IPV6_EXTENSION_HEADER = "ipv6_extension_header", "an IPv6 extension header before L4"
    NOT_TCP = "not_tcp", "TCP GSO on a packet that is not TCP"
    NOT_UDP = "not_udp", "UDP GSO on a packet that is not UDP"
    TRUNCATED_TCP = "truncated_tcp", "the packet is too short for its TCP header"
    BAD_TCP_OFFSET = "bad_tcp_offset", "a TCP data offset under 20 bytes"
    TRUNCATED_UDP = "truncated_udp", "the packet is too short for a UDP header"

    # From a peer, towards the TUN (receive.py, keypair.py, the TUN's writes).
    UNKNOWN_RECEIVER_INDEX = ("unknown_receiver_index",
                              "a transport message or cookie reply for no session of ours")
    KEYPAIR_EXPIRED = ("keypair_expired",
                       "the session is too old, erased, or reached its message limit")
    BAD_AUTH = "bad_auth", "a transport message that does not authenticate"
    REPLAY = "replay", "a counter already seen, or older than the replay window"
    TRANSPORT_TOO_SHORT = "transport_too_short", "a transport message under 32 bytes"
    WRONG_KEYPAIR = "wrong_keypair", "a transport message handed to another session (a guard)"
    INNER_NOT_IP = "inner_not_ip", "the decrypted packet is neither IPv4 nor IPv6"
    DISHONEST_PACKET_SIZE = ("dishonest_packet_size",
                             "the decrypted packet's IP length lies about its size")
    SOURCE_NOT_ALLOWED = ("source_not_allowed",
                          "the inner source is not in the sending peer's AllowedIPs")
    TUN_WRITE_FULL = "tun_write_full", "the TUN write would block"
    TUN_WRITE_ERROR = ("tun_write_error",
                       "the kernel refused a TUN write (its errno is logged, once each)")
    GRO_WRITE_REFUSED = ("gro_write_refused",
                         "the kernel refused a coalesced frame: written one by one, not lost")
    INTERNAL_ERROR = "internal_error", "a batch failed in a way no reason foresaw (a bug)"

    # Handshake messages (Device.handle_handshake_message, noise.py, cookie.py, messages.py).
    TOO_SHORT = "too_short", "a datagram under 4 bytes"
    UNKNOWN_TYPE = "unknown_type", "not one of WireGuard's four message types"
    BAD_LENGTH = "bad_length", "a handshake message of the wrong size"
    RESERVED_NONZERO = "reserved_nonzero", "the reserved bytes after the type are not zero"
    WRONG_TYPE = "wrong_type", "a message parsed as another type (a guard)"
    NO_PRIVATE_KEY = "no_private_key", "the interface has no private key: nobody can reach us"
    BAD_MAC1 = "bad_mac1", "MAC1 is wrong: the sender has our public key wrong"
    RATELIMITED = "ratelimited", "under load, a source sent too many handshake messages"
    HANDSHAKE_QUEUE_FULL = ("handshake_queue_full",
                            "the queue of handshakes waiting for their DH work is full: shed")
    HANDSHAKE_PEER_CHANGED = ("handshake_peer_changed",
                              "the peer or a key changed while the worker did its DH work")
    UNKNOWN_PEER = "unknown_peer", "a valid initiation from a key that is not our peer's"
    BAD_STATIC_AUTH = "bad_static_auth", "an initiation whose static key fails to decrypt"
    BAD_TIMESTAMP_AUTH = "bad_timestamp_auth", "an initiation whose timestamp fails to decrypt"
    BAD_RESPONSE_AUTH = "bad_response_auth", "a response that fails to decrypt"
    STALE_TIMESTAMP = "stale_timestamp", "an initiation no newer than that peer's last"
    INITIATION_FLOOD = "initiation_flood", "more than 50 initiations a second from one peer"
    UNEXPECTED_RESPONSE = "unexpected_response", "a response to no initiation in flight"
    LOW_ORDER_PEER_KEY = "low_order_peer_key", "a peer key that makes the secret trivial"
    LOW_ORDER_EPHEMERAL = "low_order_ephemeral", "an ephemeral that makes the secret trivial"
    UNEXPECTED_COOKIE_REPLY = "unexpected_cookie_reply", "a cookie reply we did not ask for"
    BAD_COOKIE_AUTH = "bad_cookie_auth", "a cookie reply that fails to decrypt"
    NOT_HANDSHAKE = "not_handshake", "a transport message on the handshake path (a guard)"
    NO_INITIATION_CONSUMED = ("no_initiation_consumed",
                              "a response's initiation state is gone (a guard)")
    HANDSHAKE_INCOMPLETE = "handshake_incomplete", "keys derived before the end (a guard)"
    COOKIE_SENT = ("cookie_sent",
                   "not a drop: under load, a cookie reply was sent instead of an answer")
