"""The WireGuard protocol, sans-I/O: messages, Noise handshake, cookies, keypairs and timers.

Bytes and a monotonic `now` go in; bytes and actions come out. The asyncio shell does the I/O.
"""

from .allowedips import AllowedIPs
from .device import Device, HandshakeJob, HandshakeResult
from .keypair import Keypair, TransportError, padded_length
from .messages import MessageError
from .peer import Peer
from .receive import ReceiveCounts, Received

__all__ = [
    "AllowedIPs",
    "Device",
    "HandshakeJob",
    "HandshakeResult",
    "Keypair",
    "MessageError",
    "Peer",
    "ReceiveCounts",
    "Received",
    "TransportError",
    "padded_length",
]
