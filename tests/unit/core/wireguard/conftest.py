"""Fixtures for the WireGuard unit tests."""

from __future__ import annotations

import pytest

from tests.unit.core.wireguard.helpers import Pair, make_pair


@pytest.fixture
def pair() -> Pair:
    return make_pair()
