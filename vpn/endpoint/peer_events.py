"""What the endpoint logs of the core's peer events, and the handshakes it counts."""

from __future__ import annotations

import logging

from vpn.core.keys import encode_key
from vpn.core.types import endpoint_text
from vpn.core.wireguard import Peer
from vpn.core.wireguard.peer import PeerEvent

log = logging.getLogger("vpn.endpoint")  # the name people read, as the endpoint's others


class PeerEventLog:
    """`Device.on_peer_event`: news at INFO or WARNING, routine at DEBUG."""

    def __init__(self) -> None:
        self.handshakes_completed = 0
        self._in_session: set[bytes] = set()  # peers whose session's first handshake is logged

    def __call__(self, peer: Peer, event: PeerEvent) -> None:
        key = peer.public_key
        if event is PeerEvent.HANDSHAKE_COMPLETE:
            self.handshakes_completed += 1
            # A session's first handshake is news; its rekeys (every 2 minutes per peer
            # while traffic flows) are not.
            level = logging.DEBUG if key in self._in_session else logging.INFO
            self._in_session.add(key)
            log.log(level, "peer %s: handshake completed (endpoint %s)", encode_key(key),
                    endpoint_text(peer.endpoint) if peer.endpoint else "(none)")
        elif event is PeerEvent.GIVE_UP and peer.endpoint is not None:
            log.warning("peer %s: no handshake response, giving up for now", encode_key(key))
        else:  # giving up without an endpoint: nothing was sent; it is for the peer to call
            if event is PeerEvent.KEYS_ZEROED:
                self._in_session.discard(key)
            log.debug("peer %s: %s", encode_key(key), event)
