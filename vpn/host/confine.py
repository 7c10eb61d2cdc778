"""After setup, the endpoint (the process that parses what the network sends) keeps only the
capabilities it still uses: CAP_NET_ADMIN (routes, rules, links, SO_MARK, nft/iptables at
teardown) and CAP_NET_BIND_SERVICE when its port is under 1024. It stays uid 0, so what it
owns (its config for reload and SaveConfig, its socket in /var/run/wireguard) stays
writable; what needs root's other capabilities goes through the privileged helper
(helper.py). VPN_KEEP_PRIVILEGES=1 skips all of it, for a feature that needs more at run
time (moving a running endpoint to a port under 1024 with `wg set listen-port`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

from vpn.host import capabilities, landlock
from vpn.host.capabilities import CAP_NET_ADMIN, CAP_NET_BIND_SERVICE
from vpn.host.dns import resolvconf_interface
from vpn.host.helper import Helper, Policy

log = logging.getLogger("vpn.host.netsetup")  # the host setup's one logger (see steps.py)

KEEP_ENV = "VPN_KEEP_PRIVILEGES"

__all__ = ["KEEP_ENV", "confine", "kept_capabilities"]


def kept_capabilities(port: int | None) -> list[int]:
    """CAP_NET_ADMIN; CAP_NET_BIND_SERVICE too for a port under 1024, or one not known yet
    (wg-quick sets it over the management socket after we start)."""
    if port is None or 0 < port < 1024:
        return [CAP_NET_ADMIN, CAP_NET_BIND_SERVICE]
    return [CAP_NET_ADMIN]


def confine(ifname: str, *, port: int | None, down_hooks: Sequence[str], dns: bool,
            config: str | None, socket_dir: str) -> Helper | None:
    """Start the helper for the teardown's root commands (when there are any), drop every
    other capability, then confine the filesystem with Landlock where the kernel has it.
    Returns the helper, for close() after the teardown. A kernel or container that refuses
    a step leaves what it would have taken, with a warning."""
    if os.environ.get(KEEP_ENV) == "1":
        log.info("%s=1: keeping every privilege", KEEP_ENV)
        return None
    keep = kept_capabilities(port)
    if not capabilities.status()["CapEff"] & ~sum(1 << cap for cap in keep):
        return None  # nothing more than what we keep: not root, nothing to drop
    hooks = tuple(command.replace("%i", ifname) for command in down_hooks)
    names = (resolvconf_interface(ifname),) if dns else ()
    helper = Helper.start(Policy(hooks, names)) if hooks or names else None
    try:
        capabilities.keep_only(keep)
    except OSError as err:
        log.warning("%s: could not drop privileges (%s); running with them", ifname, err)
        return helper
    log.debug("%s: dropped every capability but %s (%s=1 keeps them all)", ifname,
              "CAP_NET_ADMIN and CAP_NET_BIND_SERVICE" if len(keep) == 2 else "CAP_NET_ADMIN",
              KEEP_ENV)
    if not landlock.available():
        log.debug("%s: no Landlock in this kernel: the filesystem is not confined", ifname)
        return helper
    try:
        landlock.restrict(landlock.rules_for(config, socket_dir))
    except OSError as err:
        log.warning("%s: could not confine the filesystem with Landlock (%s)", ifname, err)
    return helper
