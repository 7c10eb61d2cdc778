"""The receive screen: WireGuard's cheap checks on each datagram (type, length, reserved
bytes, mac1, a known receiver index), native in _screen.c, run by the native receive
(vpn/io/_udp.c) on what recvmmsg got before any Python runs. The receive knows no protocol:
it takes a Screen's `capsule` and counts the drops by reason in SCREEN_REASONS' order.

The rules are the Python path's own (Device.handle_handshake_message's message_type and
mac1 check, the receiver-index lookup); tests/unit/io/test_udp_screen.py proves them equal.
The module also has the twins of receive_jobs.run_stop and whole_runs (`native_run_stop`,
`native_whole_runs`, None when not built), for the loop thread's cut of each receive into
runs for the workers.
"""

from __future__ import annotations

from vpn.core.drops import Drop
from vpn.core.native import twin

try:
    from vpn.core.wireguard._screen import Screen
    from vpn.core.wireguard._screen import run_stop as native_run_stop
    from vpn.core.wireguard._screen import whole_runs as native_whole_runs
except ImportError as error:  # not built: no screen, the Python path serves
    Screen = None  # type: ignore[assignment,misc]  # only reached when NATIVE says "python"
    native_run_stop = None  # type: ignore[assignment]
    native_whole_runs = None  # type: ignore[assignment]
    NATIVE = twin("receive screen", error)
else:
    NATIVE = twin("receive screen")

# The order of the screen's drop counts (wire.h's screen_drop): the handshake path's six,
# then the data path's.
SCREEN_REASONS = (Drop.TOO_SHORT, Drop.TRANSPORT_TOO_SHORT, Drop.UNKNOWN_TYPE, Drop.BAD_LENGTH,
                  Drop.RESERVED_NONZERO, Drop.BAD_MAC1, Drop.UNKNOWN_RECEIVER_INDEX)

__all__ = ["NATIVE", "SCREEN_REASONS", "Screen", "native_run_stop", "native_whole_runs"]
