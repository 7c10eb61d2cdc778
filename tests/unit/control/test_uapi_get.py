"""The get=1 answer built from plain values: byte for byte the text the ipaddress-based
formatter gave (`wg` reads it), in slices that let the event loop run between them."""

from __future__ import annotations

import asyncio
import ipaddress
import itertools
import os
import random
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vpn.control import get_formatter, uapi, uapi_server
from vpn.control.uapi import ChangeSet, DeviceSnapshot, format_get, parse_get
from vpn.core.keys import to_hex
from vpn.core.types import endpoint_text
from vpn.core.wireguard import Device, snapshot
from vpn.core.wireguard.allowedips import networks
from vpn.core.wireguard.snapshot import SlicedSnapshot

# Addresses in ::/80 are where inet_ntop's text and ipaddress's differ (IPv4-embedded forms).
_V6_EDGES = [0, 1, 0xFFFF, 0x1_0000, 0xFFFF_0000_0000, 0xFFFF_0102_0304, 0x0102_0304,
             0x1_0000_0000_0000, 1 << 127, (1 << 128) - 1, 0x2001_0DB8 << 96]


NEW_PEER = bytes(range(32))


def _old_format_get(snapshot: DeviceSnapshot) -> str:
    """The formatter as it was before the answer was sliced: the reference `wg` was tested
    against, kept here to prove the new one writes the same bytes."""
    out: list[str] = []
    if snapshot.private_key is not None:
        out.append(f"private_key={to_hex(snapshot.private_key)}")
    if snapshot.listen_port:
        out.append(f"listen_port={snapshot.listen_port}")
    if snapshot.fwmark:
        out.append(f"fwmark={snapshot.fwmark}")
    for peer in snapshot.peers:
        out.append(f"public_key={to_hex(peer.public_key)}")
        out.append(f"preshared_key={to_hex(peer.preshared_key or bytes(32))}")
        out.append("protocol_version=1")
        if peer.endpoint is not None:
            out.append(f"endpoint={endpoint_text(peer.endpoint)}")
        last = peer.last_handshake or 0.0
        seconds = int(last)
        nanos = min(round((last - seconds) * 1e9), 999_999_999) if seconds else 0
        out.append(f"last_handshake_time_sec={seconds}")
        out.append(f"last_handshake_time_nsec={nanos}")
        out.append(f"tx_bytes={peer.tx_bytes}")
        out.append(f"rx_bytes={peer.rx_bytes}")
        out.append(f"persistent_keepalive_interval={peer.persistent_keepalive}")
        out.extend(f"allowed_ip={network}" for network in networks(peer.allowed_ips))
    out.append("errno=0")
    return "\n".join(out) + "\n\n"


def _busy_device(peers: int, seed: int = 20) -> Device:
    """`peers` peers with every kind of value a get answer has: some with a preshared key,
    IPv4 and IPv6 endpoints or none, handshakes with fractions of a second, keepalives,
    from no prefix to several of each family (those in ::/80 included)."""
    rng = random.Random(seed)
    device = Device(os.urandom(32))
    device.listen_port, device.fwmark = 51820, 0x1234
    for i in range(peers):
        peer = device.add_peer(rng.randbytes(32),
                               preshared_key=rng.randbytes(32) if i % 3 == 0 else None)
        if i % 4 == 1:
            peer.endpoint = (f"198.18.{i >> 8 & 255}.{i & 255}", 1024 + i)
        elif i % 4 == 2:
            peer.endpoint = (f"fd00::{i:x}", 51820)
        if i % 5:
            peer.last_handshake_wall = 1_765_000_000 + i + rng.random()
        peer.tx_bytes, peer.rx_bytes = rng.randrange(1 << 40), rng.randrange(1 << 40)
        peer.timers.set_persistent_keepalive(rng.choice([0, 25, 65535]), 0.0)
        for _ in range(i % 4):
            device.allowed_ips.insert(ipaddress.IPv4Network(
                (rng.getrandbits(32), rng.randrange(33)), strict=False), peer)
        for _ in range(i % 3):
            value = rng.choice(_V6_EDGES) if i % 2 else rng.getrandbits(128)
            device.allowed_ips.insert(ipaddress.IPv6Network(
                (value, rng.randrange(129)), strict=False), peer)
    return device


def test_a_get_of_2000_peers_is_the_old_answer_byte_for_byte() -> None:
    snapshot = _busy_device(2000).snapshot()
    expected = _old_format_get(snapshot)
    assert format_get(snapshot) == expected
    for per_slice in (1, 7, 64, 5000):
        assert _in_slices(snapshot, per_slice, uapi.PeerTexts()) == expected


def test_a_get_answer_reads_back_as_the_snapshot() -> None:
    snapshot = _busy_device(300).snapshot()
    back = parse_get(format_get(snapshot).rstrip("\n").split("\n"))
    assert (back.private_key, back.listen_port, back.fwmark) == (
        snapshot.private_key, snapshot.listen_port, snapshot.fwmark)
    for got, sent in zip(back.peers, snapshot.peers, strict=True):
        assert got._replace(last_handshake=None) == sent._replace(
            last_handshake=None, allowed_ips=tuple(sorted(sent.allowed_ips)))
        assert abs((got.last_handshake or 0) - (sent.last_handshake or 0)) < 1e-6


@given(st.one_of(
    st.tuples(st.just(4), st.integers(0, 32), st.integers(0, (1 << 32) - 1)),
    st.tuples(st.just(6), st.integers(0, 128), st.integers(0, (1 << 128) - 1)),
    st.tuples(st.just(6), st.integers(0, 128), st.integers(0, (1 << 80) - 1)),
    st.tuples(st.just(6), st.integers(0, 128), st.sampled_from(_V6_EDGES)),
))
def test_prefix_text_is_ipaddress_text(prefix: tuple[int, int, int]) -> None:
    version, length, value = prefix
    network_class = ipaddress.IPv4Network if version == 4 else ipaddress.IPv6Network
    network = network_class((value, length), strict=False)
    key = (version, length, int(network.network_address))
    assert uapi.prefix_text(key) == str(network)
    assert uapi.parse_prefix(str(network)) == key


def test_parse_prefix_refuses_what_ip_network_refuses() -> None:
    for text in ("10.0.0.1/24", "10.0.0.0/33", "10.0.0/8", "fd00::1/64", "fd00::/129",
                 "fd00::", "x/1", "10.0.0.0/+8", "10.0.0.0/", "/8"):
        try:
            uapi.parse_prefix(text)
        except ValueError:
            continue
        raise AssertionError(f"{text} was accepted")


class _Device:
    """A UapiHandler serving a device's snapshot."""

    def __init__(self, device: Device) -> None:
        self.device = device

    def uapi_get(self) -> SlicedSnapshot:
        return SlicedSnapshot(self.device)

    def uapi_set(self, changes: ChangeSet) -> None:
        self.device.apply(changes, 0.0)

    def uapi_stats(self) -> dict[str, object]:
        return {}

    def uapi_down(self) -> None:
        raise AssertionError("not asked")

    async def uapi_reload(self) -> None:
        raise AssertionError("not asked")


def test_the_server_takes_the_snapshot_in_slices_and_formats_it_off_the_loop(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A get of 2,000 peers: the whole answer arrives as format_get writes it from the
    snapshot, a task of the same loop (the data path's stand-in) got turns between every
    two slices of the snapshot, each slice's text was formatted on one other thread at a
    higher nice value, and a set sent after it is served."""
    device = _busy_device(2000)
    expected = format_get(device.snapshot())
    turns = 0
    turns_at_step: list[int] = []
    formatted_on: list[tuple[int, int]] = []  # (thread, its nice value)
    real_peers, real_step = uapi.format_peers, SlicedSnapshot.step

    def watched_peers(*args: Any) -> str:
        nice = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
        formatted_on.append((threading.get_ident(), nice))
        return real_peers(*args)

    def watched_step(taking: SlicedSnapshot) -> DeviceSnapshot | None:
        turns_at_step.append(turns)
        return real_step(taking)

    monkeypatch.setattr(uapi, "format_peers", watched_peers)
    monkeypatch.setattr(SlicedSnapshot, "step", watched_step)

    async def serve() -> tuple[list[list[str]], list[list[str]]]:
        server = uapi_server.UapiServer("t", _Device(device), directory=tmp_path)
        server.bind()
        await server.start()
        done = asyncio.Event()

        async def data_path() -> None:
            nonlocal turns
            while not done.is_set():
                turns += 1
                await asyncio.sleep(0)

        ticker = asyncio.create_task(data_path())
        try:
            answer = await asyncio.to_thread(uapi_server.request, "t", "get=1\n\n",
                                             directory=tmp_path, timeout=60)
            changed = await asyncio.to_thread(
                uapi_server.request, "t", f"set=1\npublic_key={NEW_PEER.hex()}\n\n",
                directory=tmp_path)
        finally:
            done.set()
            await ticker
            server.close()
        return answer, changed

    answer, changed = asyncio.run(serve())
    assert "\n".join(answer[0]) + "\n\n" == expected
    assert changed == [["errno=0"]] and NEW_PEER in device.peers
    steps = -(-2000 // snapshot.PEERS_PER_SLICE)
    assert len(turns_at_step) == steps
    assert all(b > a for a, b in itertools.pairwise(turns_at_step))
    assert len(formatted_on) == steps and len(set(formatted_on)) == 1
    [(thread, nice)] = set(formatted_on)
    assert thread != threading.get_ident() and nice >= get_formatter.NICE


def _served(device: Device, texts: uapi.PeerTexts, per_snapshot: int, per_slice: int) -> str:
    """A get answer as the server builds it: the snapshot in slices, the text in slices
    with the static lines kept in `texts`."""
    taking = SlicedSnapshot(device, per_snapshot)
    while (snapshot := taking.step()) is None:
        pass
    return _in_slices(snapshot, per_slice, texts)


def _in_slices(snapshot: DeviceSnapshot, per_slice: int, texts: uapi.PeerTexts) -> str:
    """The answer as the formatter thread writes it: the head, each slice's peers, the
    end, with the static lines taken from and then kept in `texts`."""
    fresh: dict[bytes, uapi.PeerTextLines] = {}
    rows = snapshot.rows
    pieces = [uapi.format_peers(rows[start:start + per_slice], texts.kept, fresh)
              for start in range(0, len(rows), per_slice)]
    texts.kept = fresh
    return uapi.format_head(snapshot) + "".join(pieces) + uapi.ANSWER_END


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 200), st.integers(0, 1 << 30), st.integers(1, 300), st.integers(1, 300))
def test_a_sliced_get_is_the_unsliced_answer_byte_for_byte(
        peers: int, seed: int, per_snapshot: int, per_slice: int) -> None:
    """Over random peer sets: the answer from slices and kept lines is the reference
    formatter's, on a first get, a second (every static line kept) and one after changes
    to the keepalives, allowed IPs and preshared keys of some peers and the removal of
    others (the kept lines of those must not show)."""
    device = _busy_device(peers, seed)
    texts = uapi.PeerTexts()
    for _ in range(2):
        assert _served(device, texts, per_snapshot, per_slice) == _old_format_get(
            device.snapshot())
    rng = random.Random(seed)
    changes = ChangeSet()
    for key in rng.sample(sorted(device.peers), min(peers, 12)):
        changes.peers.append(uapi.PeerChange(
            key, remove=rng.random() < 0.3, persistent_keepalive=rng.choice([None, 0, 7]),
            preshared_key=rng.choice([None, bytes(32), rng.randbytes(32)]),
            replace_allowed_ips=rng.random() < 0.5,
            allowed_ips=[ipaddress.ip_network(f"198.19.{rng.randrange(256)}.0/24")]))
    device.apply(changes, 0.0)
    assert _served(device, texts, per_snapshot, per_slice) == _old_format_get(device.snapshot())
    assert set(texts.kept) == set(device.peers)


class _SetDuringGet(_Device):
    """A handler whose get holds after its first slice until a set has been served over
    another connection: that set lands between two slices of the get's snapshot."""

    def __init__(self, device: Device) -> None:
        super().__init__(device)
        self.first_slice_taken = threading.Event()
        self.set_applied = False
        self.taking: SlicedSnapshot | None = None

    def uapi_get(self) -> uapi_server.SnapshotInSlices:
        self.taking = taking = SlicedSnapshot(self.device, 50)
        handler = self

        class Held:
            @property
            def current(self) -> DeviceSnapshot:
                return taking.current

            def step(self) -> DeviceSnapshot | None:
                if handler.first_slice_taken.is_set() and not handler.set_applied:
                    return None  # the loop turns and serves the set meanwhile
                handler.first_slice_taken.set()
                return taking.step()

        return Held()

    def uapi_set(self, changes: ChangeSet) -> None:
        super().uapi_set(changes)
        self.set_applied = True


def test_a_set_that_lands_during_a_get_is_wholly_in_its_answer_or_wholly_not(
        tmp_path: Path) -> None:
    """The set removes the first peer (already read when it lands) and adds one: the
    answer is the configuration after it, byte for byte, not a mix of the two."""
    device = _busy_device(400)
    before = format_get(device.snapshot())
    handler = _SetDuringGet(device)
    first = next(iter(device.peers))
    change = f"set=1\npublic_key={first.hex()}\nremove=true\npublic_key={NEW_PEER.hex()}\n\n"

    async def serve() -> tuple[list[list[str]], list[list[str]]]:
        server = uapi_server.UapiServer("t", handler, directory=tmp_path)
        server.bind()
        await server.start()

        def set_once_the_get_started() -> list[list[str]]:
            assert handler.first_slice_taken.wait(60)
            return uapi_server.request("t", change, directory=tmp_path, timeout=60)

        try:
            return await asyncio.gather(
                asyncio.to_thread(uapi_server.request, "t", "get=1\n\n", directory=tmp_path,
                                  timeout=60),
                asyncio.to_thread(set_once_the_get_started))
        finally:
            server.close()

    answer, changed = asyncio.run(serve())
    assert changed == [["errno=0"]]
    assert handler.taking is not None and handler.taking.restarts == 1
    after = format_get(device.snapshot())
    assert after != before and first not in device.peers and NEW_PEER in device.peers
    assert "\n".join(answer[0]) + "\n\n" == after


def _serving(handler: _Device, tmp_path: Path) -> uapi_server.UapiServer:
    server = uapi_server.UapiServer("t", handler, directory=tmp_path)
    server.bind()
    return server


def test_a_get_formatted_off_the_loop_shows_one_configuration_while_sets_land(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The loop applies a set on every turn, and the thread formats no slice before a set
    has landed since it began: the snapshot starts over until it is read in one go, and
    its last slice is formatted while the device changes again. The answer is still the
    reference formatting of one configuration the device had, not the last."""
    device = _busy_device(600)
    handler = _Device(device)
    states = [_old_format_get(device.snapshot())]
    landed = threading.Event()
    real_peers = uapi.format_peers

    def held_peers(*args: Any) -> str:
        landed.clear()
        assert landed.wait(60)
        return real_peers(*args)

    monkeypatch.setattr(uapi, "format_peers", held_peers)
    keys = sorted(device.peers)

    async def serve() -> list[list[str]]:
        server = _serving(handler, tmp_path)
        await server.start()
        done = asyncio.Event()

        async def sets() -> None:
            for n in itertools.count():
                if done.is_set():
                    return
                handler.uapi_set(ChangeSet(peers=[
                    uapi.PeerChange(NEW_PEER, remove=n % 2 == 1),
                    uapi.PeerChange(keys[n % len(keys)], persistent_keepalive=n % 1000,
                                    replace_allowed_ips=True, allowed_ips=[
                                        ipaddress.ip_network(f"198.19.{n % 256}.0/24")])]))
                states.append(_old_format_get(device.snapshot()))
                landed.set()
                await asyncio.sleep(0)

        churn = asyncio.create_task(sets())
        try:
            return await asyncio.to_thread(uapi_server.request, "t", "get=1\n\n",
                                           directory=tmp_path, timeout=60)
        finally:
            done.set()
            await churn
            server.close()

    [answer] = asyncio.run(serve())
    assert "\n".join(answer) + "\n\n" in states[:-1]


def test_a_formatter_that_fails_answers_eio_and_leaves_nothing_behind(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """A bug in the second slice's text: the client hears errno=-5 and nothing of the
    text, and the next get on the same connection is the whole answer."""
    device = _busy_device(600)
    expected = format_get(device.snapshot())
    real_peers = uapi.format_peers
    calls = itertools.count()

    def failing_peers(*args: Any) -> str:
        if next(calls) == 1:
            raise RuntimeError("formatter bug")
        return real_peers(*args)

    monkeypatch.setattr(uapi, "format_peers", failing_peers)

    async def serve() -> list[list[str]]:
        server = _serving(_Device(device), tmp_path)
        await server.start()
        try:
            return await asyncio.to_thread(uapi_server.request, "t", "get=1\n\nget=1\n\n",
                                           directory=tmp_path, timeout=60)
        finally:
            server.close()

    failed, whole = asyncio.run(serve())
    assert failed == ["errno=-5"]
    assert "\n".join(whole) + "\n\n" == expected
    assert "formatter bug" in caplog.text


def test_closing_with_a_get_being_formatted_leaves_no_thread(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """close() while the text of a get is being formatted (slowly: 50 ms a slice) ends
    the thread; the client gets no answer, not a part of one."""
    device = _busy_device(2000)
    started = threading.Event()
    real_peers = uapi.format_peers

    def slow_peers(*args: Any) -> str:
        started.set()
        time.sleep(0.05)
        return real_peers(*args)

    monkeypatch.setattr(uapi, "format_peers", slow_peers)

    async def serve() -> list[list[str]]:
        server = _serving(_Device(device), tmp_path)
        await server.start()
        asking = asyncio.create_task(asyncio.to_thread(
            uapi_server.request, "t", "get=1\n\n", directory=tmp_path, timeout=60))
        try:
            assert await asyncio.to_thread(started.wait, 60)
        finally:
            server.close()
        return await asking

    assert asyncio.run(serve()) == []
    assert not [thread for thread in threading.enumerate()
                if thread.name.startswith(get_formatter.THREAD_NAME)]


def test_gets_asked_at_once_on_several_connections_are_each_answered_whole(
        tmp_path: Path) -> None:
    """The formatter answers one get at a time; the others' slices wait for their turn."""
    device = _busy_device(1000)
    expected = format_get(device.snapshot())

    async def serve() -> list[list[list[str]]]:
        server = _serving(_Device(device), tmp_path)
        await server.start()
        try:
            return await asyncio.gather(*[
                asyncio.to_thread(uapi_server.request, "t", "get=1\n\n", directory=tmp_path,
                                  timeout=60) for _ in range(4)])
        finally:
            server.close()

    for [answer] in asyncio.run(serve()):
        assert "\n".join(answer) + "\n\n" == expected
