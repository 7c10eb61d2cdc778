"""The per-peer timer state machine of WireGuard (retransmit, keepalive, rekey, key zeroing).

Events come in with `now`; `poll(now)` returns the actions whose deadlines passed.
"""

from __future__ import annotations

import enum
import random
from collections.abc import Callable

from .constants import (
    KEEPALIVE_TIMEOUT,
    MAX_TIMER_HANDSHAKES,
    REJECT_AFTER_TIME,
    REKEY_TIMEOUT,
    REKEY_TIMEOUT_JITTER_MAX,
)


class TimerAction(enum.Enum):
    SEND_HANDSHAKE_RETRY = "send_handshake_retry"  # retransmission, counts an attempt
    SEND_HANDSHAKE = "send_handshake"  # data went unanswered: a fresh handshake
    SEND_KEEPALIVE = "send_keepalive"  # passive keepalive after received data
    SEND_PERSISTENT_KEEPALIVE = "send_persistent_keepalive"
    GIVE_UP = "give_up"  # REKEY_ATTEMPT_TIME passed: drop queued packets
    ZERO_KEYS = "zero_keys"  # 3 x REJECT_AFTER_TIME without a new session


_DEADLINES = ("retransmit_at", "keepalive_at", "new_handshake_at", "zero_keys_at", "persistent_at")


class Timers:
    """Five deadlines (None when not armed) plus the counters the kernel keeps beside them."""

    __slots__ = (
        *_DEADLINES,
        "_jitter",
        "_on_arm",
        "handshake_attempts",
        "need_another_keepalive",
        "persistent_interval",
        "sent_lastminute_handshake",
    )

    def __init__(
        self,
        persistent_keepalive: float = 0.0,
        jitter: Callable[[], float] = random.random,
        on_arm: Callable[[float], None] | None = None,
    ) -> None:
        self.retransmit_at: float | None = None
        self.keepalive_at: float | None = None
        self.new_handshake_at: float | None = None
        self.zero_keys_at: float | None = None
        self.persistent_at: float | None = None
        self.handshake_attempts = 0
        self.need_another_keepalive = False
        self.sent_lastminute_handshake = False
        self.persistent_interval = persistent_keepalive
        self._jitter = jitter  # returns [0, 1); scaled to at most 333 ms
        # Told every deadline armed, so a shell can sleep until the earliest one.
        self._on_arm = on_arm

    def __repr__(self) -> str:
        armed = {n: getattr(self, n) for n in _DEADLINES if getattr(self, n) is not None}
        return f"Timers({armed}, attempts={self.handshake_attempts})"

    def _jittered(self, base: float) -> float:
        return base + self._jitter() * REKEY_TIMEOUT_JITTER_MAX

    def _arm(self, deadline: float) -> float:
        if self._on_arm is not None:
            self._on_arm(deadline)
        return deadline

    # -- events (the kernel's wg_timers_* hooks) -------------------------------------------

    def data_sent(self, now: float) -> None:
        """A data packet (not a keepalive) went out: expect something back in time."""
        if self.new_handshake_at is None:
            unanswered = KEEPALIVE_TIMEOUT + REKEY_TIMEOUT
            self.new_handshake_at = self._arm(now + self._jittered(unanswered))

    def data_received(self, now: float) -> None:
        """A data packet arrived: answer with a keepalive if we send nothing else."""
        if self.keepalive_at is None:
            self.keepalive_at = self._arm(now + KEEPALIVE_TIMEOUT)
        else:
            self.need_another_keepalive = True

    def any_authenticated_packet_sent(self, now: float) -> None:
        self.keepalive_at = None

    def any_authenticated_packet_received(self, now: float) -> None:
        self.new_handshake_at = None

    def any_authenticated_packet_traversal(self, now: float) -> None:
        if self.persistent_interval:
            self.persistent_at = self._arm(now + self.persistent_interval)

    def handshake_initiated(self, now: float) -> None:
        self.retransmit_at = self._arm(now + self._jittered(REKEY_TIMEOUT))

    def handshake_complete(self, now: float) -> None:
        self.retransmit_at = None
        self.handshake_attempts = 0
        self.sent_lastminute_handshake = False

    def session_derived(self, now: float) -> None:
        self.zero_keys_at = self._arm(now + 3 * REJECT_AFTER_TIME)

    @property
    def out_of_attempts(self) -> bool:
        """Every retransmission is spent: the next expiry gives up (or did), until a
        handshake completes or is asked for anew."""
        return self.handshake_attempts > MAX_TIMER_HANDSHAKES

    def new_handshake_requested(self) -> None:
        """A handshake not caused by a retransmission starts a fresh count of attempts."""
        self.handshake_attempts = 0

    def keepalive_timer_sent(self, now: float) -> None:
        """After a timer keepalive was sent: re-arm if more data arrived meanwhile."""
        if self.need_another_keepalive:
            self.need_another_keepalive = False
            self.keepalive_at = self._arm(now + KEEPALIVE_TIMEOUT)

    def set_persistent_keepalive(self, interval: float, now: float) -> None:
        self.persistent_interval = interval
        self.persistent_at = self._arm(now + interval) if interval else None

    def stop(self) -> None:
        for name in _DEADLINES:
            setattr(self, name, None)

    # -- expiry ----------------------------------------------------------------------------

    def next_deadline(self) -> float | None:
        armed = [d for d in (getattr(self, n) for n in _DEADLINES) if d is not None]
        return min(armed) if armed else None

    def poll(self, now: float) -> list[TimerAction]:
        """Disarm every deadline at or before `now` and say what each one asks for."""
        actions: list[TimerAction] = []
        if self.retransmit_at is not None and self.retransmit_at <= now:
            self.retransmit_at = None
            if self.out_of_attempts:
                self.keepalive_at = None
                actions.append(TimerAction.GIVE_UP)
                if self.zero_keys_at is None:
                    self.zero_keys_at = self._arm(now + 3 * REJECT_AFTER_TIME)
            else:
                self.handshake_attempts += 1
                actions.append(TimerAction.SEND_HANDSHAKE_RETRY)
        if self.keepalive_at is not None and self.keepalive_at <= now:
            self.keepalive_at = None
            actions.append(TimerAction.SEND_KEEPALIVE)
        if self.new_handshake_at is not None and self.new_handshake_at <= now:
            self.new_handshake_at = None
            actions.append(TimerAction.SEND_HANDSHAKE)
        if self.zero_keys_at is not None and self.zero_keys_at <= now:
            self.zero_keys_at = None
            actions.append(TimerAction.ZERO_KEYS)
        if self.persistent_at is not None and self.persistent_at <= now:
            self.persistent_at = None
            if self.persistent_interval:
                actions.append(TimerAction.SEND_PERSISTENT_KEEPALIVE)
        return actions
