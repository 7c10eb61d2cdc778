"""Deadlines against the scan it replaced: no timer is ever missed or run late, stale entries
stay bounded, and a device's wakeup looks only at the peers that are due."""

from __future__ import annotations

import os

from hypothesis import given, settings
from hypothesis import strategies as st

from vpn.core.wireguard.deadlines import Deadlines
from vpn.core.wireguard.device import Device

KEYS = 6

# (key, what happens): arm at a deadline (as Timers._arm reports it), clear it silently (as
# Timers does on a packet), or a wakeup at a time.
operations = st.lists(
    st.one_of(
        st.tuples(st.just("arm"), st.integers(0, KEYS - 1), st.floats(0, 100)),
        st.tuples(st.just("clear"), st.integers(0, KEYS - 1), st.just(0.0)),
        st.tuples(st.just("wake"), st.just(0), st.floats(0, 10)),
    ),
    max_size=80,
)


@settings(max_examples=300, deadline=None)
@given(operations)
def test_every_due_key_runs_and_the_sleep_never_passes_a_deadline(ops: list) -> None:
    deadlines: Deadlines[int] = Deadlines()
    actual: dict[int, float | None] = dict.fromkeys(range(KEYS))  # the model: one timer each
    now = 0.0
    for kind, key, value in ops:
        if kind == "arm":
            actual[key] = now + value
            deadlines.schedule(key, now + value)
        elif kind == "clear":
            actual[key] = None
        else:
            now += value
            due = deadlines.due(now)
            expired = {k for k, d in actual.items() if d is not None and d <= now}
            assert expired <= set(due)  # stale keys may come too, never a due one missed
            for k in due:  # the device's loop: run what expired, schedule what is next
                if k in expired:
                    actual[k] = None
                if actual[k] is not None:
                    deadlines.schedule(k, actual[k])
        armed = [d for d in actual.values() if d is not None]
        assert deadlines.earliest() <= min(armed, default=float("inf"))
        assert len(deadlines._heap) <= 2 * KEYS + 64 + 1


def test_forgotten_keys_never_come_due() -> None:
    deadlines: Deadlines[str] = Deadlines()
    deadlines.schedule("gone", 1.0)
    deadlines.schedule("kept", 2.0)
    deadlines.forget("gone")
    assert deadlines.earliest() == 2.0
    assert deadlines.due(5.0) == ["kept"]
    assert deadlines.earliest() == float("inf") and len(deadlines) == 0


def test_a_wakeup_runs_the_due_peer_and_sleeps_until_the_next_deadline() -> None:
    device = Device(os.urandom(32))
    idle = [device.add_peer(os.urandom(32)) for _ in range(50)]
    for peer in idle:
        peer.timers.set_persistent_keepalive(25.0, 0.0)
    due = device.add_peer(os.urandom(32), endpoint=("198.18.0.1", 51820))
    due.timers.set_persistent_keepalive(1.0, 0.0)
    assert device.wake_at == 1.0
    sent = device.poll(1.0)
    assert sent and {peer for peer, _ in sent} == {due}
    assert device.wake_at == due.next_deadline() < 25.0
    assert [p.timers.persistent_at for p in idle] == [25.0] * 50
