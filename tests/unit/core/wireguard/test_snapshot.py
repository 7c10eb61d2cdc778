"""A snapshot taken in slices (what a `wg show` of many peers is served from): the same
rows as one taken at once while the configuration stands still, and one configuration's
rows, never a mix, when a change lands between two slices."""

from __future__ import annotations

import ipaddress
import os
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vpn.core.wireguard import Device
from vpn.core.wireguard.changes import ChangeSet, DeviceSnapshot, PeerChange
from vpn.core.wireguard.snapshot import MAX_RESTARTS, SlicedSnapshot


def _device(peers: int, seed: int) -> Device:
    rng = random.Random(seed)
    device = Device(rng.randbytes(32))
    device.listen_port = 51820
    for i in range(peers):
        peer = device.add_peer(rng.randbytes(32),
                               preshared_key=rng.randbytes(32) if i % 2 else None)
        peer.endpoint = (f"198.18.0.{i % 250 + 1}", 1024 + i) if i % 3 else None
        peer.tx_bytes, peer.rx_bytes = rng.randrange(1 << 40), rng.randrange(1 << 40)
        for _ in range(rng.randrange(4)):
            device.allowed_ips.insert(ipaddress.IPv4Network(
                (rng.getrandbits(32), rng.randrange(33)), strict=False), peer)
    return device


def _take(taking: SlicedSnapshot, between: list | None = None) -> tuple[DeviceSnapshot, int]:
    """Step `taking` to its end, calling each of `between` (if any) after a step; the
    snapshot and how many steps it took."""
    steps = 0
    while (snapshot := taking.step()) is None:
        if between:
            between.pop(0)()
        steps += 1
    return snapshot, steps + 1


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 300), st.integers(1, 400), st.integers(0, 1 << 30))
def test_sliced_is_the_one_pass_snapshot_while_nothing_changes(
        peers: int, per_slice: int, seed: int) -> None:
    device = _device(peers, seed)
    snapshot, steps = _take(SlicedSnapshot(device, per_slice))
    assert snapshot == device.snapshot()
    assert steps == max(1, -(-peers // per_slice))


def test_a_change_between_slices_starts_it_over_on_the_new_configuration() -> None:
    """A set that removes a peer already read, re-routes one not yet read and changes the
    port lands after the first slice: the snapshot is wholly the configuration after it."""
    device = _device(100, seed=7)
    keys = list(device.peers)
    before = device.snapshot()
    change = ChangeSet(listen_port=4242, peers=[
        PeerChange(keys[0], remove=True),
        PeerChange(keys[-1], replace_allowed_ips=True,
                   allowed_ips=[ipaddress.ip_network("198.19.0.0/16")]),
    ])

    def set_lands() -> None:
        device.apply(change, 0.0)
        device.listen_port = 4242  # as the shell does, in the same call

    taking = SlicedSnapshot(device, 10)
    snapshot, _ = _take(taking, [set_lands])
    after = device.snapshot()
    assert snapshot == after != before
    assert taking.restarts == 1


def test_live_values_moving_between_slices_do_not_start_it_over() -> None:
    device = _device(50, seed=8)
    peers = list(device.peers.values())

    def traffic() -> None:
        peers[-1].rx_bytes += 1000
        peers[0].endpoint = ("198.18.9.9", 9999)  # roaming: the peer's, not the config's

    taking = SlicedSnapshot(device, 10)
    snapshot, _ = _take(taking, [traffic])
    assert taking.restarts == 0
    assert snapshot.rows[-1][5] == peers[-1].rx_bytes  # read when its slice was
    assert snapshot.rows[0][2] != ("198.18.9.9", 9999)  # read before it moved


def test_changes_at_every_slice_cannot_starve_it() -> None:
    """After MAX_RESTARTS the rest is read in one go, still one configuration's."""
    device = _device(100, seed=9)
    rng = random.Random(1009)  # not the device's seed: new keys

    def new_peer() -> None:
        device.apply(ChangeSet(peers=[PeerChange(rng.randbytes(32))]), 0.0)

    taking = SlicedSnapshot(device, 10)
    snapshot, steps = _take(taking, [new_peer] * 50)
    assert taking.restarts == MAX_RESTARTS
    assert snapshot == device.snapshot() and len(snapshot.rows) == 100 + MAX_RESTARTS
    assert steps == MAX_RESTARTS + 1


def test_every_configuration_change_moves_the_generation() -> None:
    device = Device(os.urandom(32))
    seen = [device.generation]

    def moved() -> bool:
        seen.append(device.generation)
        return seen[-1] != seen[-2]

    key = os.urandom(32)
    device.add_peer(key)
    assert moved()
    device.apply(ChangeSet(peers=[PeerChange(key, persistent_keepalive=25)]), 0.0)
    assert moved()
    device.apply(ChangeSet(private_key=os.urandom(32)), 0.0)
    assert moved()
    device.remove_peer(key)
    assert moved()


def test_a_slice_has_at_least_one_peer() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        SlicedSnapshot(Device(None), 0)
