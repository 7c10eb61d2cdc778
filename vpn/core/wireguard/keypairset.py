"""A peer's three keypairs (previous, current, next), rotated as the kernel's noise.c does."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from .keypair import Keypair

__all__ = ["KeypairSet"]


class KeypairSet:
    """A peer's previous, current and next keypairs, rotated by the kernel's rules."""

    __slots__ = ("_on_drop", "current", "next", "previous")

    def __init__(self, on_drop: Callable[[Keypair], None] | None = None) -> None:
        self.previous: Keypair | None = None
        self.current: Keypair | None = None
        self.next: Keypair | None = None
        self._on_drop = on_drop

    def __repr__(self) -> str:
        return f"KeypairSet(previous={self.previous}, current={self.current}, next={self.next})"

    def _drop(self, kp: Keypair | None) -> None:
        if kp is not None:
            kp.zero()
            if self._on_drop is not None:
                self._on_drop(kp)

    def add(self, new: Keypair) -> None:
        """Install a just-derived keypair.

        The initiator has seen the response, so its keypair is usable at once. The responder
        must wait for the initiator's first data packet, so its keypair waits in `next`.
        """
        if new.is_initiator:
            if self.next is not None:
                # An unconfirmed responder keypair becomes previous so late packets still
                # decrypt; the current one goes.
                old_prev, self.previous = self.previous, self.next
                self.next = None
                self._drop(self.current)
            else:
                old_prev, self.previous = self.previous, self.current
            self._drop(old_prev)
            self.current = new
        else:
            old_next, self.next = self.next, new
            self._drop(old_next)
            old_prev, self.previous = self.previous, None
            self._drop(old_prev)

    def received_with(self, kp: Keypair) -> bool:
        """Note an authenticated packet on `kp`; True if that confirmed the next keypair."""
        if kp is not self.next:
            return False
        old_prev = self.previous
        self.previous, self.current, self.next = self.current, kp, None
        self._drop(old_prev)
        return True

    def clear(self) -> None:
        for kp in (self.previous, self.current, self.next):
            self._drop(kp)
        self.previous = self.current = self.next = None

    def __iter__(self) -> Iterator[Keypair]:
        return iter([kp for kp in (self.previous, self.current, self.next) if kp is not None])
