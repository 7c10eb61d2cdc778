"""Device.screen: the core hands the io layer the receive screen, remade only when what it
screens with changes (a keypair index, the private key), so the pump knows no WireGuard."""

from __future__ import annotations

import os

from tests.unit.core.wireguard.helpers import make_pair
from vpn.core.wireguard import Device, screen
from vpn.core.wireguard.changes import ChangeSet


def test_no_screen_without_a_private_key() -> None:
    assert Device(None).screen() is None


def test_the_screen_is_kept_until_its_indexes_or_key_change() -> None:
    pair = make_pair()
    b = pair.b
    first = b.screen()
    if not screen.NATIVE.native:  # VPN_FAST_PATH=python, or _screen.c not built
        assert first is None
        return
    assert first is not None and b.screen() is first
    pair.handshake(0.0)  # a keypair on b: a new receiver index to screen for
    second = b.screen()
    assert second is not first and b.screen() is second
    b.apply(ChangeSet(private_key=os.urandom(32)), 0.0)  # a new mac1 key
    third = b.screen()
    assert third is not second and b.screen() is third
    b.apply(ChangeSet(private_key=bytes(32)), 0.0)  # the key removed: nothing to screen with
    assert b.screen() is None
