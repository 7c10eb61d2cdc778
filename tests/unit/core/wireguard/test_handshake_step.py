"""The native Noise steps (handshake_steps.c) against their Python compositions: the
responder's (noise.answer_known over _handshake.respond_known and a PeerTable, against
noise.answer_initiation) and the initiator's consume of a response (noise.read_response over
_handshake.consume_response, against read_response_in_python).

Each property gives both the same message, valid or hostile (a flipped bit in any field, a
low-order ephemeral, sealed fields of other lengths, an unknown peer, a peer whose key is
low-order, a psk that differs, wiped keys), and requires the same result or the same
rejection. `make sanitize`
runs this file against builds with AddressSanitizer and UBSan, and with ThreadSanitizer
(test_threads_agree).
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from tests.examples import examples
from tests.unit.core.wireguard.test_handshake_native import LOW_ORDER
from vpn.core.wireguard import crypto
from vpn.core.wireguard import noise as n
from vpn.core.wireguard.crypto import KeyWiped, PrivateKey
from vpn.core.wireguard.messages import Initiation, Response

PROPERTY = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
key32 = st.binary(min_size=32, max_size=32)
FIELDS = ("ephemeral", "encrypted_static", "encrypted_timestamp")


@dataclass
class Case:
    """A responder, the peers it knows by static key, and an initiation to it."""

    responder: n.StaticIdentity
    peers: dict[bytes, n.Handshake]
    msg: Initiation
    ephemeral: bytes  # the responder's new ephemeral's private key
    # The table answer_known looks the peer up in: built from `peers` when the case is
    # worked, unless a test built it earlier (a peer removed or a psk changed since).
    known: n.KnownPeers | None = None


def _case(initiator: bytes, responder: bytes, psk: bytes | None, ephemeral: bytes,
          responder_ephemeral: bytes, timestamp: bytes, index: int) -> Case:
    ia = n.StaticIdentity(PrivateKey(initiator))
    ib = n.StaticIdentity(PrivateKey(responder))
    hs_a = n.Handshake(ia, ib.public, psk)  # random keys are low-order with odds of 2**-250
    msg = n.create_initiation(hs_a, index, timestamp, PrivateKey(ephemeral))
    return Case(ib, {ia.public: n.Handshake(ib, ia.public, psk)}, msg, responder_ephemeral)


def _outcome(answer: Callable[..., n.Answer], case: Case) -> tuple[object, ...]:
    """What one path makes of the case: the Answer's every field, or the rejection's type
    and reason."""
    try:
        got = answer(case.responder, case.msg, case.peers.get, lambda: case.ephemeral)
    except n.HandshakeError as exc:
        return ("rejected", exc.reason)
    except (ValueError, KeyWiped) as exc:
        return ("raised", type(exc))
    read = got.read
    return (read.handshake, read.remote_ephemeral, read.sender_index, read.timestamp,
            read.chaining_key, read.hash, got.psk, got.ephemeral_public,
            got.encrypted_nothing, got.transport_keys, got.hash)


def test_the_native_step_is_the_one_in_use() -> None:
    """Else every property below compares the Python path with itself."""
    assert crypto.NATIVE.native


def _known_path(case: Case) -> Callable[..., n.Answer]:
    known = case.known if case.known is not None else n.KnownPeers(case.peers.values())
    return lambda identity, msg, _lookup, new_ephemeral: n.answer_known(
        identity, msg, known, new_ephemeral)


def _same(case: Case) -> tuple[object, ...]:
    """The native step over a table and the Python path agree."""
    native = _outcome(_known_path(case), case)
    assert native == _outcome(n.answer_initiation, case)
    return native


cases = st.builds(_case, key32, key32, st.one_of(st.none(), key32), key32, key32,
                  st.binary(min_size=12, max_size=12), st.integers(0, 2**32 - 1))


@settings(PROPERTY, max_examples=examples(150))
@given(case=cases)
def test_valid_initiations_get_the_same_answer(case: Case) -> None:
    outcome = _same(case)
    assert outcome[0] is next(iter(case.peers.values()))


@settings(PROPERTY, max_examples=examples(300))
@given(case=cases, field=st.sampled_from(FIELDS), at=st.integers(0, 47), bit=st.integers(0, 7))
def test_a_flipped_bit_is_rejected_alike(case: Case, field: str, at: int, bit: int) -> None:
    value = bytearray(getattr(case.msg, field))
    value[at % len(value)] ^= 1 << bit
    case.msg = dataclasses.replace(case.msg, **{field: bytes(value)})
    assert _same(case)[0] in ("rejected", "raised")


@settings(PROPERTY, max_examples=examples(200))
@given(case=cases, field=st.sampled_from(FIELDS), length=st.integers(0, 80))
def test_fields_of_other_lengths_are_rejected_alike(case: Case, field: str,
                                                    length: int) -> None:
    value = getattr(case.msg, field)
    assume(length != len(value))
    case.msg = dataclasses.replace(case.msg, **{field: (value * 3)[:length]})
    assert _same(case)[0] in ("rejected", "raised")


@settings(PROPERTY, max_examples=examples(50))
@given(case=cases, point=st.sampled_from(LOW_ORDER))
def test_a_low_order_ephemeral_is_rejected_alike(case: Case, point: bytes) -> None:
    case.msg = dataclasses.replace(case.msg, ephemeral=point)
    assert _same(case) == ("rejected", "low_order_ephemeral")


@settings(PROPERTY, max_examples=examples(50))
@given(case=cases)
def test_unknown_and_low_order_peers_are_rejected_alike(case: Case) -> None:
    (public, hs), = case.peers.items()
    case.peers = {}
    assert _same(case) == ("rejected", "unknown_peer")
    hs.precomputed_ss = None  # as for a peer configured with a low-order key
    case.peers = {public: hs}
    assert _same(case) == ("rejected", "low_order_peer_key")


@settings(PROPERTY, max_examples=examples(100))
@given(case=cases, others=st.lists(st.tuples(key32, st.one_of(st.none(), key32)), max_size=40),
       low_order=st.sets(st.integers(0, 39)))
def test_the_table_finds_the_peer_among_others(
        case: Case, others: list[tuple[bytes, bytes | None]], low_order: set[int]) -> None:
    """Random other peers (some with low-order keys: no ss) around the sender: the table
    gives the sender's handshake and psk, as the lookup does."""
    (sender, hs), = case.peers.items()
    for i, (public, psk) in enumerate(others):
        if public != sender and public != case.responder.public:
            other = n.Handshake(case.responder, public, psk)
            if i in low_order:
                other.precomputed_ss = None
            case.peers[public] = other
    outcome = _same(case)
    assert outcome[0] is hs


def test_a_table_built_before_a_change_answers_with_what_it_held() -> None:
    """A peer removed from the device or its psk changed after the table was built: the
    answer is made with the table's handshake and psk, which accept_answer then refuses
    (the device drops it as handshake_peer_changed)."""
    case = _case(bytes(range(32)), bytes(range(1, 33)), bytes(32), bytes(range(2, 34)),
                 bytes(range(3, 35)), bytes(12), 7)
    (public, hs), = case.peers.items()
    known = n.KnownPeers(case.peers.values())
    del case.peers[public]
    hs.psk = bytes([1]) * 32
    answer = _known_path(Case(case.responder, {}, case.msg, case.ephemeral, known))(
        case.responder, case.msg, None, lambda: case.ephemeral)
    assert answer.read.handshake is hs and answer.psk == bytes(32)
    with pytest.raises(n.HandshakeError, match="handshake_peer_changed"):
        n.accept_answer(hs, answer, lambda: 1, now=1.0)


@pytest.mark.parametrize("entries", [
    [(bytes(32), None, bytes(32))] * 2,  # a key twice
    [(bytes(31), None, bytes(32))], [(bytes(32), bytes(33), bytes(32))],
    [(bytes(32), None, bytes(16))]], ids=["twice", "short-key", "long-ss", "short-psk"])
def test_a_bad_table_entry_raises_value_error(entries: list[tuple[bytes, bytes | None,
                                                                  bytes]]) -> None:
    with pytest.raises(ValueError):
        crypto.known_peers_table(entries)


def test_a_table_entry_not_a_tuple_raises_type_error() -> None:
    with pytest.raises(TypeError):
        crypto.known_peers_table([[bytes(32), None, bytes(32)]])  # type: ignore[list-item]


def test_a_wiped_static_key_raises_key_wiped_alike() -> None:
    case = _case(bytes(range(32)), bytes(range(1, 33)), None, bytes(range(2, 34)),
                 bytes(range(3, 35)), bytes(12), 7)
    case.responder.private.wipe()
    assert _same(case) == ("raised", KeyWiped)


@pytest.mark.parametrize("drawn", [True, False], ids=["drawn-by-openssl", "given"])
def test_the_initiator_accepts_the_native_response(drawn: bool) -> None:
    """The native answer, accepted and sent, completes the initiator's handshake with
    mirrored transport keys, its ephemeral drawn by OpenSSL (a new one each time) or
    given."""
    ia, ib = (n.StaticIdentity(PrivateKey.generate()) for _ in range(2))
    hs_a, hs_b = n.Handshake(ia, ib.public), n.Handshake(ib, ia.public)
    msg = n.create_initiation(hs_a, 11, crypto.tai64n(1.7e9), PrivateKey.generate())
    ephemeral = None if drawn else (lambda: bytes(range(32)))
    known = n.KnownPeers([hs_b])
    answers = [n.answer_known(ib, msg, known, ephemeral) for _ in range(2)]
    assert (answers[0].ephemeral_public != answers[1].ephemeral_public) == drawn
    response = n.accept_answer(hs_b, answers[0], lambda: 22, now=1.0)
    n.consume_response(response, hs_a)
    ka, kb = n.derive_session(hs_a), n.derive_session(hs_b)
    assert (ka.send_key, ka.recv_key) == (kb.recv_key, kb.send_key)


def test_threads_agree() -> None:
    """Two threads answering initiations (over one shared PeerTable) and reading responses
    at once, with one static key for each role (each step holds its own reference to it),
    get what one thread does."""
    cases = [_case(bytes([i]) * 32, bytes(range(32)), None, bytes([i + 1]) * 32,
                   bytes([i + 2]) * 32, bytes(12), i) for i in range(2, 22)]
    responder = cases[0].responder
    for case in cases:
        case.responder = responder
    reads = [_response_case(bytes(range(32)), bytes([i]) * 32, None, None,
                            bytes([i + 1]) * 32, bytes([i + 2]) * 32) for i in range(2, 22)]

    known_path = _known_path(Case(responder, {}, cases[0].msg, b"", n.KnownPeers(
        hs for case in cases for hs in case.peers.values())))

    def outcomes() -> list[tuple[object, ...]]:
        return ([_outcome(known_path, case) for case in cases]
                + [_read(n.read_response, case) for case in reads])

    expected = outcomes()
    results: list[list[tuple[object, ...]]] = [[], []]
    threads = [threading.Thread(target=lambda r=r: r.extend(outcomes())) for r in results]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [expected, expected]



def test_tables_swapped_while_threads_answer() -> None:
    """Threads answer over whichever table is current while the main thread swaps in new
    ones and drops the old: a step in flight keeps its table alive (ASan and TSan check)."""
    cases = [_case(bytes([i]) * 32, bytes(range(32)), bytes([i]) * 32, bytes([i + 1]) * 32,
                   bytes([i + 2]) * 32, bytes(12), i) for i in range(2, 12)]
    responder = cases[0].responder
    peers = {k: hs for case in cases for k, hs in case.peers.items()}
    current = [n.KnownPeers(peers.values())]
    expected = [_outcome(_known_path(Case(responder, {}, c.msg, b"", current[0])), c)
                for c in cases]
    results: list[list[tuple[object, ...]]] = [[], []]

    def work(out: list[tuple[object, ...]]) -> None:
        for _ in range(5):
            out.append(tuple(_outcome(_known_path(Case(responder, {}, c.msg, b"", current[0])),
                                      c) for c in cases))

    threads = [threading.Thread(target=work, args=(r,)) for r in results]
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):
        current[0] = n.KnownPeers(peers.values())  # the old one freed once no step holds it
    for t in threads:
        t.join()
    assert results == [[tuple(expected)] * 5] * 2


@dataclass
class ResponseCase:
    """A response to an initiation, and what the initiator reads it against."""

    msg: Response
    inputs: n.ResponseInputs


def _response_case(initiator: bytes, responder: bytes, psk: bytes | None,
                   responder_psk: bytes | None, ephemeral: bytes,
                   responder_ephemeral: bytes) -> ResponseCase:
    ia = n.StaticIdentity(PrivateKey(initiator))
    ib = n.StaticIdentity(PrivateKey(responder))
    hs_a = n.Handshake(ia, ib.public, psk)
    hs_b = n.Handshake(ib, ia.public, responder_psk)
    msg = n.create_initiation(hs_a, 11, crypto.tai64n(1.7e9), PrivateKey(ephemeral))
    n.consume_initiation(ib, msg, {ia.public: hs_b}.get, now=1.0)
    response = n.create_response(hs_b, 22, PrivateKey(responder_ephemeral))
    return ResponseCase(response, n.response_inputs(hs_a))


def _read(read: Callable[..., n.ResponseRead], case: ResponseCase) -> tuple[object, ...]:
    try:
        got = read(case.msg, case.inputs)
    except n.HandshakeError as exc:
        return ("rejected", exc.reason)
    except (ValueError, KeyWiped) as exc:
        return ("raised", type(exc))
    return (got.inputs, got.remote_ephemeral, got.sender_index, got.transport_keys, got.hash)


def _same_read(case: ResponseCase) -> tuple[object, ...]:
    native = _read(n.read_response, case)
    assert native == _read(n.read_response_in_python, case)
    return native


psks = st.one_of(st.none(), key32)
response_cases = st.builds(_response_case, key32, key32, psks, psks, key32, key32)


@settings(PROPERTY, max_examples=examples(150))
@given(case=response_cases)
def test_responses_are_read_alike(case: ResponseCase) -> None:
    """Valid, or sealed under another psk (then bad_response_auth on both paths)."""
    outcome = _same_read(case)
    assert outcome[0] is case.inputs or outcome == ("rejected", "bad_response_auth")


@settings(PROPERTY, max_examples=examples(200))
@given(case=response_cases, field=st.sampled_from(["ephemeral", "encrypted_nothing"]),
       at=st.integers(0, 31), bit=st.integers(0, 7), length=st.integers(0, 40),
       point=st.sampled_from(LOW_ORDER), how=st.sampled_from(["flip", "length", "low"]))
def test_hostile_responses_are_rejected_alike(case: ResponseCase, field: str, at: int,
                                              bit: int, length: int, point: bytes,
                                              how: str) -> None:
    value = getattr(case.msg, field)
    if how == "flip":
        changed = bytearray(value)
        changed[at % len(changed)] ^= 1 << bit
        value = bytes(changed)
    elif how == "length":
        assume(length != len(value))
        value = (value * 3)[:length]
    else:
        field, value = "ephemeral", point
    case.msg = dataclasses.replace(case.msg, **{field: value})
    assert _same_read(case)[0] in ("rejected", "raised")


@pytest.mark.parametrize("key", ["ephemeral", "static"])
def test_a_wiped_key_raises_key_wiped_alike(key: str) -> None:
    case = _response_case(bytes(range(32)), bytes(range(1, 33)), None, None,
                          bytes(range(2, 34)), bytes(range(3, 35)))
    (case.inputs.ephemeral if key == "ephemeral" else case.inputs.identity.private).wipe()
    assert _same_read(case) == ("raised", KeyWiped)
