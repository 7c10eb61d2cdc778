"""Codecs for WireGuard's four UDP messages: initiation, response, cookie reply, transport.

Parsing is strict; anything malformed raises MessageError whose `reason` is a drop-counter key.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from vpn.core.drops import Drop
from vpn.core.types import Buffer

from .constants import (
    COOKIE_REPLY_SIZE,
    INITIATION_SIZE,
    MESSAGE_COOKIE_REPLY,
    MESSAGE_INITIATION,
    MESSAGE_RESPONSE,
    MESSAGE_TRANSPORT,
    RESPONSE_SIZE,
    TRANSPORT_HEADER_SIZE,
    TRANSPORT_MIN_SIZE,
)

# Offsets of the two MACs: each covers every byte of the message before it.
INITIATION_MAC1_OFFSET = 116
INITIATION_MAC2_OFFSET = 132
RESPONSE_MAC1_OFFSET = 60
RESPONSE_MAC2_OFFSET = 76

_INITIATION = struct.Struct("<II32s48s28s16s16s")
_RESPONSE = struct.Struct("<III32s16s16s16s")
_COOKIE_REPLY = struct.Struct("<II24s32s")
TRANSPORT_HEADER = struct.Struct("<IIQ")
_U32 = struct.Struct("<I")

_SIZES = {
    MESSAGE_INITIATION: INITIATION_SIZE,
    MESSAGE_RESPONSE: RESPONSE_SIZE,
    MESSAGE_COOKIE_REPLY: COOKIE_REPLY_SIZE,
}


class MessageError(Exception):
    """A message that must be dropped; `reason` is a stable snake_case counter key."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Initiation:
    sender_index: int
    ephemeral: bytes  # 32
    encrypted_static: bytes  # 32 + 16
    encrypted_timestamp: bytes  # 12 + 16
    mac1: bytes = bytes(16)
    mac2: bytes = bytes(16)

    def pack(self) -> bytes:
        return _INITIATION.pack(
            MESSAGE_INITIATION,
            self.sender_index,
            self.ephemeral,
            self.encrypted_static,
            self.encrypted_timestamp,
            self.mac1,
            self.mac2,
        )


@dataclass(frozen=True, slots=True)
class Response:
    sender_index: int
    receiver_index: int
    ephemeral: bytes  # 32
    encrypted_nothing: bytes  # 0 + 16
    mac1: bytes = bytes(16)
    mac2: bytes = bytes(16)

    def pack(self) -> bytes:
        return _RESPONSE.pack(
            MESSAGE_RESPONSE,
            self.sender_index,
            self.receiver_index,
            self.ephemeral,
            self.encrypted_nothing,
            self.mac1,
            self.mac2,
        )


@dataclass(frozen=True, slots=True)
class CookieReply:
    receiver_index: int
    nonce: bytes  # 24
    encrypted_cookie: bytes  # 16 + 16

    def pack(self) -> bytes:
        return _COOKIE_REPLY.pack(
            MESSAGE_COOKIE_REPLY, self.receiver_index, self.nonce, self.encrypted_cookie
        )


@dataclass(frozen=True, slots=True)
class TransportHeader:
    receiver_index: int
    counter: int


Message = Initiation | Response | CookieReply | TransportHeader


def message_type(data: Buffer) -> int:
    """The type of a datagram after checking its length and reserved bytes."""
    if len(data) < 4:
        raise MessageError(Drop.TOO_SHORT, f"{len(data)} bytes")
    word: int = _U32.unpack_from(data)[0]
    kind = word & 0xFF
    if kind == MESSAGE_TRANSPORT:
        if len(data) < TRANSPORT_MIN_SIZE:
            raise MessageError(Drop.TRANSPORT_TOO_SHORT, f"{len(data)} bytes")
    else:
        expected = _SIZES.get(kind)
        if expected is None:
            raise MessageError(Drop.UNKNOWN_TYPE, f"type byte {kind}")
        if len(data) != expected:
            raise MessageError(Drop.BAD_LENGTH, f"type {kind}: {len(data)} bytes, want {expected}")
    if word >> 8:
        raise MessageError(Drop.RESERVED_NONZERO)
    return kind


def parse(data: Buffer) -> Message:
    """Decode any WireGuard datagram (transport: the header only)."""
    kind = message_type(data)
    if kind == MESSAGE_TRANSPORT:
        return parse_transport_header(data)
    if kind == MESSAGE_INITIATION:
        return parse_initiation(data)
    if kind == MESSAGE_RESPONSE:
        return parse_response(data)
    return parse_cookie_reply(data)


def _expect(data: Buffer, kind: int) -> None:
    if message_type(data) != kind:
        raise MessageError(Drop.WRONG_TYPE, f"expected type {kind}")


def parse_initiation(data: Buffer) -> Initiation:
    _expect(data, MESSAGE_INITIATION)
    _, sender, eph, static, ts, mac1, mac2 = _INITIATION.unpack(data)
    return Initiation(sender, eph, static, ts, mac1, mac2)


def parse_response(data: Buffer) -> Response:
    _expect(data, MESSAGE_RESPONSE)
    _, sender, receiver, eph, nothing, mac1, mac2 = _RESPONSE.unpack(data)
    return Response(sender, receiver, eph, nothing, mac1, mac2)


def parse_cookie_reply(data: Buffer) -> CookieReply:
    _expect(data, MESSAGE_COOKIE_REPLY)
    _, receiver, nonce, cookie = _COOKIE_REPLY.unpack(data)
    return CookieReply(receiver, nonce, cookie)


def parse_transport_header(data: Buffer) -> TransportHeader:
    if len(data) < TRANSPORT_MIN_SIZE:
        raise MessageError(Drop.TRANSPORT_TOO_SHORT, f"{len(data)} bytes")
    kind, receiver, counter = TRANSPORT_HEADER.unpack_from(data)
    if kind != MESSAGE_TRANSPORT:
        raise MessageError(Drop.RESERVED_NONZERO if kind & 0xFF == MESSAGE_TRANSPORT
                           else Drop.WRONG_TYPE)
    return TransportHeader(receiver, counter)


def pack_transport_header(receiver_index: int, counter: int) -> bytes:
    return TRANSPORT_HEADER.pack(MESSAGE_TRANSPORT, receiver_index, counter)


__all__ = [
    "INITIATION_MAC1_OFFSET",
    "INITIATION_MAC2_OFFSET",
    "RESPONSE_MAC1_OFFSET",
    "RESPONSE_MAC2_OFFSET",
    "TRANSPORT_HEADER",
    "TRANSPORT_HEADER_SIZE",
    "CookieReply",
    "Initiation",
    "Message",
    "MessageError",
    "Response",
    "TransportHeader",
    "message_type",
    "pack_transport_header",
    "parse",
    "parse_cookie_reply",
    "parse_initiation",
    "parse_response",
    "parse_transport_header",
]
