"""Keys: byte-compatibility with Debian's `wg`, genkey clamping, and the strict text forms.

The `wg` cases run the real binary; they are skipped, loudly, where it is not installed.
"""

from __future__ import annotations

import base64
import shutil
import subprocess

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vpn.core.keys import (
    KeyFormatError,
    clamp,
    decode_key,
    encode_key,
    from_hex,
    generate_private,
    generate_psk,
    public_from_private,
    to_hex,
)

WG = shutil.which("wg")
needs_wg = pytest.mark.skipif(WG is None, reason="WG COMPATIBILITY NOT TESTED: no `wg` binary")

# RFC 7748 section 6.1: Alice's private scalar and public key.
RFC_PRIVATE = bytes.fromhex("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
RFC_PUBLIC = bytes.fromhex("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a")


def wg(*args: str, stdin: str = "") -> str:
    assert WG is not None
    done = subprocess.run([WG, *args], input=stdin, capture_output=True, text=True, check=True)
    return done.stdout


def is_clamped(private: bytes) -> bool:
    return private[0] & 7 == 0 and private[31] & 128 == 0 and private[31] & 64 == 64


def test_rfc7748_vector() -> None:
    assert public_from_private(RFC_PRIVATE) == RFC_PUBLIC
    # X25519 clamps the scalar itself, so clamping first changes nothing.
    assert public_from_private(clamp(RFC_PRIVATE)) == RFC_PUBLIC


def test_genkey_is_clamped_and_fresh() -> None:
    made = [generate_private() for _ in range(64)]
    assert all(len(k) == 32 and is_clamped(k) for k in made)
    assert len(set(made)) == 64


def test_clamp() -> None:
    assert clamp(b"\xff" * 32) == b"\xf8" + b"\xff" * 30 + b"\x7f"
    assert clamp(bytes(32)) == bytes(31) + b"\x40"
    with pytest.raises(KeyFormatError):
        clamp(bytes(31))


def test_genpsk() -> None:
    made = {generate_psk() for _ in range(64)}
    assert len(made) == 64 and all(len(k) == 32 for k in made)


@needs_wg
def test_wg_pubkey_of_our_genkey() -> None:
    for _ in range(5):
        private = encode_key(generate_private())
        assert wg("pubkey", stdin=private + "\n") == encode_key(
            public_from_private(decode_key(private))
        ) + "\n"


@needs_wg
def test_our_pubkey_of_wg_genkey() -> None:
    for _ in range(5):
        text = wg("genkey")
        assert text.endswith("\n") and len(text) == 45
        private = decode_key(text.strip())
        assert is_clamped(private)  # wg genkey clamps too, so the two generators agree
        assert encode_key(public_from_private(private)) + "\n" == wg("pubkey", stdin=text)


@needs_wg
def test_unclamped_private_keys_agree_with_wg() -> None:
    for private in (b"\xff" * 32, bytes(range(32)), RFC_PRIVATE):
        expected = wg("pubkey", stdin=encode_key(private)).strip()
        assert encode_key(public_from_private(private)) == expected


@needs_wg
def test_wg_genpsk_decodes() -> None:
    assert len(decode_key(wg("genpsk").strip())) == 32


GOOD = encode_key(bytes(range(32)))  # 'AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8='


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("", id="empty"),
        pytest.param(GOOD[:-1], id="no padding"),
        pytest.param(GOOD + "=", id="extra padding"),
        pytest.param(GOOD[:-2] + "=", id="43 chars"),
        pytest.param(" " + GOOD, id="leading space"),
        pytest.param(GOOD + "\n", id="trailing newline"),
        pytest.param(GOOD[:20] + " " + GOOD[21:], id="space inside"),
        pytest.param(GOOD[:20] + "\n" + GOOD[20:], id="newline inside"),
        pytest.param(GOOD[:-2] + "9=", id="non-canonical last digit"),
        pytest.param(encode_key(b"\xfb" * 32).replace("+", "-").replace("/", "_"), id="urlsafe"),
        pytest.param(base64.b64encode(bytes(31)).decode(), id="31 bytes"),
        pytest.param(base64.b64encode(bytes(33)).decode(), id="33 bytes"),
        pytest.param("\uff21" * 43 + "=", id="fullwidth letters"),
    ],
)
def test_decode_rejects(text: str) -> None:
    with pytest.raises(KeyFormatError) as info:
        decode_key(text)
    assert isinstance(info.value, ValueError)
    # The message never repeats the text: it may be a private key with a typo.
    if text.strip():
        assert text.strip()[:12] not in str(info.value)


def test_decode_known() -> None:
    assert decode_key(GOOD) == bytes(range(32))
    assert GOOD == "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="


def test_encode_rejects_wrong_length() -> None:
    with pytest.raises(KeyFormatError):
        encode_key(bytes(16))


@given(st.binary(min_size=32, max_size=32))
def test_base64_round_trip(raw: bytes) -> None:
    text = encode_key(raw)
    assert len(text) == 44 and text.endswith("=")
    assert decode_key(text) == raw


@given(st.text(max_size=50))
def test_decode_accepts_only_canonical(text: str) -> None:
    try:
        raw = decode_key(text)
    except KeyFormatError:
        return
    assert encode_key(raw) == text


@given(st.binary(min_size=32, max_size=32))
def test_hex_round_trip(raw: bytes) -> None:
    text = to_hex(raw)
    assert text == text.lower() and len(text) == 64
    assert from_hex(text) == raw


@pytest.mark.parametrize(
    "text", ["", "ab" * 31, "ab" * 33, "AB" * 32, "0x" + "ab" * 31, "gg" * 32, " " + "ab" * 32]
)
def test_from_hex_rejects(text: str) -> None:
    with pytest.raises(KeyFormatError):
        from_hex(text)
