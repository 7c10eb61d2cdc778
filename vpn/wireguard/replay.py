"""The sliding anti-replay window for transport counters (8128 packets, as the kernel's).

Call `validate` only after the packet authenticated, or a forger could move the window.
"""

from __future__ import annotations

from .constants import REJECT_AFTER_MESSAGES, REPLAY_RING_WORDS, REPLAY_WINDOW

_WORD_SHIFT = 6  # 64-bit words
_BIT_MASK = 63
_RING_MASK = REPLAY_RING_WORDS - 1


class ReplayWindow:
    """A ring of 128 64-bit words; the newest word is slack so the window stays 8128 wide."""

    __slots__ = ("_ring", "greatest")

    def __init__(self) -> None:
        self._ring = [0] * REPLAY_RING_WORDS
        self.greatest = 0  # greatest counter accepted so far

    def reset(self) -> None:
        self._ring = [0] * REPLAY_RING_WORDS
        self.greatest = 0

    def validate(self, counter: int, limit: int = REJECT_AFTER_MESSAGES) -> bool:
        """True, and remember it, if `counter` is new and not too old; False otherwise."""
        if counter >= limit:
            return False
        ring = self._ring
        block = counter >> _WORD_SHIFT
        greatest = self.greatest
        if counter > greatest:
            # Advance: clear the words the window slides over (at most the whole ring).
            current = greatest >> _WORD_SHIFT
            steps = min(block - current, REPLAY_RING_WORDS)
            for i in range(current + 1, current + steps + 1):
                ring[i & _RING_MASK] = 0
            self.greatest = counter
        elif greatest - counter > REPLAY_WINDOW:
            return False
        block &= _RING_MASK
        bit = 1 << (counter & _BIT_MASK)
        word = ring[block]
        if word & bit:
            return False
        ring[block] = word | bit
        return True
