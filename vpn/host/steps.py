"""System changes made one at a time, each recorded with the action that reverses it.

What netsetup, routes and dns build on: a change that fails raises SetupError naming it, and
the changes recorded so far are undone last first.
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

# One logger for the whole host setup, so its lines keep the name they always had.
log = logging.getLogger("vpn.host.netsetup")


class SetupError(RuntimeError):
    """A step of bringing the interface up failed; the message names the step and value."""


def reason(err: BaseException) -> str:
    """An error as a user reads it: the OS's words, or the missing thing's name."""
    if isinstance(err, OSError) and err.strerror:
        return err.strerror
    if isinstance(err, LookupError) and err.args:
        return str(err.args[0])
    return str(err) or type(err).__name__


@dataclass
class Steps:
    """The changes in place, each as the description and action that would undo it."""

    _steps: list[tuple[str, Callable[[], None]]] = field(default_factory=list, init=False)

    @property
    def steps(self) -> list[str]:
        """What is currently in place, as the undo actions that would remove it."""
        return [what for what, _ in self._steps]

    def record(self, undoing: str, undo: Callable[[], None]) -> None:
        self._steps.append((undoing, undo))

    def do(
        self, doing: str, action: Callable[[], None], undoing: str, undo: Callable[[], None]
    ) -> None:
        """Do one system change and remember how to reverse it; SetupError names the step."""
        log.debug("[#] %s", doing)
        try:
            action()
        except (OSError, LookupError) as err:
            raise SetupError(f"{doing}: {reason(err)}") from err
        self.record(undoing, undo)

    def undo(self) -> list[str]:
        """Reverse every step, last first; never raises. Returns what could not be undone."""
        errors = []
        while self._steps:
            undoing, action = self._steps.pop()
            log.debug("[#] %s", undoing)
            try:
                action()
            except Exception as err:
                errors.append(f"{undoing}: {reason(err)}")
        return errors


def unless_gone(remove: Callable[[], None]) -> Callable[[], None]:
    """A removal that counts as done when the thing is already gone.

    Some go by themselves: the kernel drops IPv6 addresses when the link goes down, and
    routes and rules may have been removed by hand or with the device.
    """

    def run() -> None:
        try:
            remove()
        except OSError as err:
            if err.errno not in (errno.EADDRNOTAVAIL, errno.ESRCH, errno.ENOENT, errno.ENODEV):
                raise
        except LookupError:
            pass  # the interface itself is gone, and all it carried with it

    return run
