"""The endpoint: one WireGuard interface, as an asyncio API (`Endpoint`), in two layers.

- lifecycle: `lifecycle.py` (`Endpoint`: start, stop, release) over `interface.py` (the TUN,
  the host setup, PostUp and PostDown, the link events);
- runtime and management, which run on what the lifecycle started and never start or stop
  it: `runtime.py` (the data path on the loop, the counters) over `timers.py` and
  `peer_events.py`; `management.py` (the `wg` protocol's handler, reload, `apply`,
  SaveConfig);
- shared by both: `errors.py`, `loading.py` (a config file loaded and its Endpoints resolved).

The process around an endpoint (signals, systemd, confinement) is `vpn.serving`'s.
"""

from vpn.endpoint.errors import EndpointError, StartError
from vpn.endpoint.lifecycle import Endpoint, ignore_sighup

__all__ = ["Endpoint", "EndpointError", "StartError", "ignore_sighup"]
