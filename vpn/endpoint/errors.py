"""What the endpoint raises for a reason a user can fix."""

from __future__ import annotations

from vpn.control.uapi_server import UapiServerError
from vpn.host.steps import SetupError
from vpn.io.tun import TunError


class EndpointError(RuntimeError):
    """The endpoint could not start or do what was asked; nothing half-done is left."""


# Everything start() may raise for a reason a user can fix; the message says which.
StartError = (EndpointError, TunError, SetupError, UapiServerError, OSError)
