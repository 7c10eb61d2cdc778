"""`vpn-userspace [-f|--foreground] IFACE`: the endpoint as wg-quick runs a userspace
WireGuard (`WG_QUICK_USERSPACE_IMPLEMENTATION=vpn-userspace`), with wireguard-go's interface.

It creates the TUN (with the offloads) and the management socket and goes to the
background once both exist; the key, peers, addresses, MTU and routes then come from
wg-quick (`wg setconf`, `ip`). It stops on SIGTERM or SIGINT, or when its interface is
deleted (`wg-quick down`), and removes its socket.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable

from vpn import version
from vpn.control.config_model import ConfigError
from vpn.host.background import run_in_background

PROG = "vpn-userspace"
EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
USAGE = f"Usage: {PROG} [-f/--foreground] INTERFACE-NAME\n       {PROG} --version"
# LOG_LEVEL as wireguard-go reads it; unset or anything else means "error", as there.
LOG_LEVELS: dict[str, int | None] = {
    "verbose": logging.DEBUG, "debug": logging.DEBUG, "error": logging.ERROR, "silent": None,
}

log = logging.getLogger("vpn.userspace")


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args == ["--version"]:  # as wireguard-go: alone, and printed on stdout
        print(f"{PROG} {version()}")
        return EXIT_OK
    foreground = bool(args) and args[0] in ("-f", "--foreground")
    names = args[1:] if foreground else args
    if len(names) != 1 or names[0].startswith("-"):
        print(USAGE, file=sys.stderr)
        return EXIT_USAGE
    name = names[0]
    foreground = foreground or os.environ.get("WG_PROCESS_FOREGROUND") == "1"
    level_name = os.environ.get("LOG_LEVEL", "")
    level = LOG_LEVELS.get(level_name, logging.ERROR)
    from vpn.control.metrics_server import ENV, MetricsAddressError, parse_address

    try:  # config files stay wg-quick's: the metrics address comes from the environment
        metrics = parse_address(os.environ[ENV]) if os.environ.get(ENV) else None
    except MetricsAddressError as error:
        print(f"{PROG}: {ENV}: {error}", file=sys.stderr)
        return EXIT_USAGE

    from vpn.endpoint.tuning import Tuning

    try:  # the data path's knobs, likewise
        tuning = Tuning.from_flags({})
    except ValueError as error:
        print(f"{PROG}: {error}", file=sys.stderr)
        return EXIT_USAGE

    def serve(ready: Callable[[], None]) -> int:
        # Imported here, in the child: the parent stays small, and a process should not fork
        # after importing libraries that may start threads.
        from vpn import serving
        from vpn.endpoint import Endpoint

        try:
            endpoint = Endpoint.userspace(name, metrics=metrics, tuning=tuning)
        except ConfigError as error:
            print(f"{PROG}: {error.reason}", file=sys.stderr)
            return EXIT_FAILURE
        setup_logging(name, level)
        log.debug("Starting %s version %s", PROG, version())
        code = serving.run(endpoint, ready)
        log.debug("Shutting down")
        return code

    if foreground:
        return serve(lambda: None)
    # As wireguard-go: the log stays on the caller's terminal only if LOG_LEVEL asked for it.
    keep_output = bool(level_name) and level is not None
    code = run_in_background(serve, keep_output=keep_output)
    if code != EXIT_OK:
        print(f"{PROG}: {name}: the interface did not come up (the reason is above)",
              file=sys.stderr)
    return code


def setup_logging(name: str, level: int | None) -> None:
    """wireguard-go's layout (`DEBUG: (wg0) 2026/12/02 05:00:00 message`), on stdout as
    there; level None is LOG_LEVEL=silent."""
    from vpn.host.logs import quiet_pyroute2

    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter(f"%(levelname)s: ({name}) %(asctime)s %(message)s",
                                           datefmt="%Y/%m/%d %H:%M:%S"))
    handler.addFilter(quiet_pyroute2)
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.CRITICAL + 1 if level is None else level)


if __name__ == "__main__":
    sys.exit(main())

