"""The C modules' shared headers (vpn/core/include/*.h, vpn/core/wireguard/replay.h) against
the Python constants they restate, parsed from the source so that the two cannot drift: the
message types and sizes, the transport header's and the record's layouts, the order the C
modules report drop counts in, the virtio-net and TCP numbers. And that each fact and each
byte, checksum or replay helper is written once: no C file defines them again."""

from __future__ import annotations

import ast
import re
import struct
from pathlib import Path

import pytest

from vpn.core.offload import gro
from vpn.core.packet import headers, virtio
from vpn.core.wireguard import constants, keypair, messages, replay, screen, transport_reference

ROOT = Path(__file__).resolve().parents[3]
INCLUDE = ROOT / "vpn" / "core" / "include"
SHARED = (INCLUDE / "wire.h", INCLUDE / "packet.h")
_DEFINE = re.compile(r"^#define\s+([A-Z][A-Z0-9_]*)\s+([^/\n]+?)\s*(?:/\*.*)?$", re.M)
_ENUM = re.compile(r"\benum\s+(\w+)\s*\{([^}]*)\}", re.S)


def _evaluate(expression: str, known: dict[str, int]) -> int:
    """A #define's value: integer literals (u suffixes dropped), earlier names, + and -."""
    python = re.sub(r"\b(0x[0-9A-Fa-f]+|\d+)u\b", r"\1", expression)
    python = re.sub(r"\b[A-Z][A-Z0-9_]*\b",
                    lambda m: str(known[m.group(0)] if m.group(0) != "UINT64_MAX" else 2**64 - 1),
                    python)
    return _arithmetic(ast.parse(python, mode="eval").body)


def _arithmetic(node: ast.expr) -> int:
    """An integer, or a sum or difference of them: all a header's #define needs."""
    if isinstance(node, ast.Constant) and isinstance(node.value, int):
        return node.value
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add | ast.Sub):
        left, right = _arithmetic(node.left), _arithmetic(node.right)
        return left + right if isinstance(node.op, ast.Add) else left - right
    raise AssertionError(f"cannot evaluate {ast.unparse(node)!r}")


def defines(path: Path) -> dict[str, int]:
    known: dict[str, int] = {}
    for name, expression in _DEFINE.findall(path.read_text()):
        if not name.startswith("VPN_"):  # the include guard
            known[name] = _evaluate(expression, known)
    return known


def enums(path: Path) -> dict[str, list[str]]:
    return {name: [m.strip() for m in body.split(",") if m.strip()]
            for name, body in _ENUM.findall(re.sub(r"/\*.*?\*/", "", path.read_text(), flags=re.S))}


WIRE = defines(INCLUDE / "wire.h")
PACKET = defines(INCLUDE / "packet.h")


# The names of wire.h: those constants.py has, and the layouts checked below.
PROTOCOL_NAMES = (
    "MESSAGE_INITIATION", "MESSAGE_RESPONSE", "MESSAGE_COOKIE_REPLY", "MESSAGE_TRANSPORT",
    "INITIATION_SIZE", "RESPONSE_SIZE", "COOKIE_REPLY_SIZE", "TRANSPORT_HEADER_SIZE",
    "AEAD_TAG_LEN", "TRANSPORT_MIN_SIZE", "PADDING_MULTIPLE", "KEY_LEN", "HASH_LEN", "MAC_LEN",
    "REPLAY_WINDOW", "REJECT_AFTER_MESSAGES",
)
LAYOUT_NAMES = (
    "TRANSPORT_TYPE_AT", "TRANSPORT_RECEIVER_AT", "TRANSPORT_COUNTER_AT", "RECORD_SIZE",
    "RECORD_OFFSET_AT", "RECORD_LENGTH_AT", "RECORD_SLOT_AT", "MAX_SOURCES", "REPLAY_SLOTS",
    "OPENED_SIZE", "OPENED_COUNTER_AT", "OPENED_BYTES_AT", "OPENED_OFFSET_AT",
    "OPENED_LENGTH_AT", "OPENED_STATUS_AT", "OPENED_SLOT_AT",
)


def test_every_fact_of_the_header_is_checked() -> None:
    """The parse found them all (expressions included), and a new #define needs a check."""
    assert WIRE["TRANSPORT_MIN_SIZE"] == 32 and WIRE["REJECT_AFTER_MESSAGES"] == 2**64 - 2**13 - 1
    assert sorted(WIRE) == sorted(PROTOCOL_NAMES + LAYOUT_NAMES)
    assert len(PACKET) == 17


@pytest.mark.parametrize("name", PROTOCOL_NAMES)
def test_the_protocol_numbers_are_constants_py(name: str) -> None:
    assert WIRE[name] == getattr(constants, name)


def _offsets(layout: struct.Struct) -> list[int]:
    """The byte offset of each field of a struct of plain integer fields."""
    order, fields = layout.format[0], layout.format[1:]
    return [struct.calcsize(order + fields[:i]) for i in range(len(fields))]


def test_the_transport_header_is_messages_py() -> None:
    layout = messages.TRANSPORT_HEADER
    assert layout.format == "<IIQ" and layout.size == WIRE["TRANSPORT_HEADER_SIZE"]
    assert _offsets(layout) == [WIRE["TRANSPORT_TYPE_AT"], WIRE["TRANSPORT_RECEIVER_AT"],
                                WIRE["TRANSPORT_COUNTER_AT"]]


def test_the_record_is_keypair_record() -> None:
    # receive_run writes it (keypair.py, _transport.c), the coalescer reads it (gro.py, _gro.c)
    assert keypair.RECORD.format == gro.RECORD.format == "<III"
    assert keypair.RECORD.size == WIRE["RECORD_SIZE"]
    assert _offsets(keypair.RECORD) == [WIRE["RECORD_OFFSET_AT"], WIRE["RECORD_LENGTH_AT"],
                                        WIRE["RECORD_SLOT_AT"]]
    assert WIRE["MAX_SOURCES"] == keypair.MAX_SOURCES
    assert WIRE["REPLAY_SLOTS"] == replay.REPLAY_SLOTS


def test_the_opened_entry_is_keypair_opened() -> None:
    # open_run writes it, accept_run reads it (keypair.py, transport_open.c)
    assert keypair.OPENED.format == "<QIIIII" and keypair.OPENED.size == WIRE["OPENED_SIZE"]
    assert _offsets(keypair.OPENED) == [WIRE[f"OPENED_{name}_AT"] for name in (
        "COUNTER", "BYTES", "OFFSET", "LENGTH", "STATUS", "SLOT")]


@pytest.mark.parametrize(("enum", "prefix", "reasons", "total"), [
    ("open_drop", "OPEN_", transport_reference.BATCH_DROP_REASONS, "REASONS"),
    ("run_drop", "RUN_", transport_reference.RUN_DROP_REASONS, "REASONS"),
    ("screen_drop", "SCREEN_", screen.SCREEN_REASONS, "REASONS"),
    ("opened_status", "OPENED_", keypair.OPENED_STATUS, "STATUSES"),
])
def test_the_drop_reasons_come_in_the_python_order(enum: str, prefix: str,
                                                   reasons: tuple[str, ...], total: str) -> None:
    *members, count = enums(INCLUDE / "wire.h")[enum]
    assert count == f"{prefix}{total}"
    assert all(m.startswith(prefix) and "=" not in m for m in members)
    assert tuple(m.removeprefix(prefix).lower() for m in members) == reasons


@pytest.mark.parametrize("name", sorted(PACKET))
def test_the_packet_numbers_are_virtio_and_headers_py(name: str) -> None:
    source = virtio if hasattr(virtio, name) else headers
    assert PACKET[name] == getattr(source, name)


def _c_sources() -> list[Path]:
    return sorted(p for p in (ROOT / "vpn").rglob("*") if p.suffix in (".c", ".h"))


# Defined once, in the header named: a second copy elsewhere fails.
HELPERS = {
    "bytes.h": ("load32", "load64", "store16", "store32", "store64", "be16", "be32", "put16"),
    "checksum.h": ("word_sum", "sum_be", "fold", "csum_finish", "ipv4_checksum", "pseudo_sum"),
    "replay.h": ("replay_validate", "replay_rejects"),
}


@pytest.mark.parametrize("path", _c_sources(), ids=lambda p: str(p.relative_to(ROOT)))
def test_each_fact_and_helper_is_written_once(path: Path) -> None:
    text = path.read_text()
    if path not in SHARED:
        shared = set(WIRE) | set(PACKET)
        again = {name for name, _ in _DEFINE.findall(text) if name in shared}
        assert not again, f"{path.name} defines {sorted(again)} again (wire.h, packet.h)"
    for header, helpers in HELPERS.items():
        if path.name != header:
            copies = [h for h in helpers
                      if re.search(rf"^(?:static |inline |const )*\w+ \**{h}\(", text, re.M)]
            assert not copies, f"{path.name} defines {copies} again ({header})"
