"""The sliding anti-replay window for transport counters (8128 packets, as the kernel's).

Call `validate` only after the packet authenticated, or a forger could move the window;
`rejects` only reads it, so the receive path asks it first and spares a replay its AEAD.

The window is a ring of 8192 one-byte slots indexed by `counter & 8191` rather than the
kernel's ring of 64-bit words: in Python a byte store is a single operation, whereas a word
needs a shift, an or and a store, and the common case (the next counter in order) becomes
"store a 1, remember the counter". It accepts exactly the same counters: a counter is new
if it is below the limit, no more than REPLAY_WINDOW behind the greatest accepted, and not
seen before. Because the ring has more slots than the window is wide, every slot that a
counter inside the window maps to holds that counter's own state.

The message limit belongs to the window: a counter at or past REJECT_AFTER_MESSAGES is
refused as a replay, before the AEAD, on the Python and the native path alike, whether the
message would authenticate or not. The kernel's counter_validate also tests the limit first,
as the same invalid-counter drop as a replay, and the kernel refuses every message for a
keypair whose greatest counter is the last one before decrypting it; here it spares the AEAD
of a message that can never be accepted.

This is the one Python implementation: Keypair calls it, and the native twin
(_transport.c, over replay.h) is tested equal to it.
"""

from __future__ import annotations

from vpn.core.types import Buffer

from .constants import REJECT_AFTER_MESSAGES, REPLAY_WINDOW

REPLAY_SLOTS = 8192  # a power of two above REPLAY_WINDOW + 1
REPLAY_SLOT_MASK = REPLAY_SLOTS - 1
_ALL_CLEAR = bytes(REPLAY_SLOTS)

assert REPLAY_SLOTS > REPLAY_WINDOW + 1 and not REPLAY_SLOTS & REPLAY_SLOT_MASK


class ReplayWindow:
    """8192 byte slots (1: seen) and the greatest counter accepted so far."""

    __slots__ = ("greatest", "seen")

    def __init__(self) -> None:
        self.seen = bytearray(REPLAY_SLOTS)
        self.greatest = 0  # greatest counter accepted so far

    @classmethod
    def over(cls, seen: Buffer, greatest: int) -> ReplayWindow:
        """A window over the caller's slots, not a copy: what `validate` accepts is marked
        in `seen` itself (the native module's calling convention: slots and greatest in,
        the new greatest out)."""
        window = cls.__new__(cls)
        window.seen = seen  # type: ignore[assignment]
        window.greatest = greatest
        return window

    def reset(self) -> None:
        self.seen[:] = _ALL_CLEAR  # in place: the slots object never changes
        self.greatest = 0

    def rejects(self, counter: int) -> bool:
        """Would `validate` refuse `counter` now? Read-only, so it may be asked before the
        packet authenticated: a replayed message is dropped without its AEAD."""
        greatest = self.greatest
        return counter >= REJECT_AFTER_MESSAGES or (
            counter <= greatest
            and (greatest - counter > REPLAY_WINDOW or self.seen[counter & REPLAY_SLOT_MASK] != 0)
        )

    def validate(self, counter: int, limit: int = REJECT_AFTER_MESSAGES) -> bool:
        """True, and remember it, if `counter` is new and not too old; False otherwise."""
        greatest = self.greatest
        if counter == greatest + 1 and counter < limit:  # the next in order: the common case
            self.seen[counter & REPLAY_SLOT_MASK] = 1
            self.greatest = counter
            return True
        if counter >= limit:
            return False
        if counter > greatest:
            seen = self.seen
            skipped = counter - greatest - 1
            if skipped:
                # Clear the slots of the counters jumped over (they were last used by
                # counters that have now fallen out of the window).
                if skipped >= REPLAY_SLOT_MASK:
                    seen[:] = _ALL_CLEAR
                else:
                    first = (greatest + 1) & REPLAY_SLOT_MASK
                    stop = first + skipped
                    if stop <= REPLAY_SLOTS:
                        seen[first:stop] = _ALL_CLEAR[:skipped]
                    else:
                        seen[first:] = _ALL_CLEAR[: REPLAY_SLOTS - first]
                        seen[: stop - REPLAY_SLOTS] = _ALL_CLEAR[: stop - REPLAY_SLOTS]
            seen[counter & REPLAY_SLOT_MASK] = 1
            self.greatest = counter
            return True
        if greatest - counter > REPLAY_WINDOW:
            return False
        seen = self.seen
        slot = counter & REPLAY_SLOT_MASK
        if seen[slot]:
            return False
        seen[slot] = 1
        return True
