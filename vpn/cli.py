"""The `vpn` command: a thin argparse shell over the library, one function per subcommand.

Key commands match `wg genkey`, `wg pubkey` and `wg genpsk` byte for byte; `check` validates a
config file without touching the system. Add a subcommand by adding a `Command` to `COMMANDS`.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import stat
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from vpn.control import config
from vpn.core import keys

if TYPE_CHECKING:
    from vpn.endpoint import Endpoint

PROG = "vpn"
EXIT_OK = 0
EXIT_FAILURE = 1  # what `wg` returns for a bad key
EXIT_CONFIG = 2  # a bad config file (also argparse's code for a bad command line)

LOG_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


@dataclass(frozen=True)
class Command:
    """A subcommand: its name, one line of help, its arguments and the function that runs it."""

    name: str
    help: str
    run: Callable[[argparse.Namespace], int]
    add_arguments: Callable[[argparse.ArgumentParser], None] | None = None


def _warn_if_world_accessible_output() -> None:
    # `wg genkey` and `wg genpsk` warn when stdout is a regular file others may read.
    try:
        mode = os.fstat(sys.stdout.fileno()).st_mode
    except (OSError, ValueError, AttributeError):
        return  # not a real file descriptor (a test's capture, a closed stream)
    if stat.S_ISREG(mode) and mode & stat.S_IRWXO:
        print(
            "Warning: writing to world accessible file.\n"
            "Consider setting the umask to 077 and trying again.",
            file=sys.stderr,
        )


def cmd_genkey(args: argparse.Namespace) -> int:
    _warn_if_world_accessible_output()
    print(keys.encode_key(keys.generate_private()))
    return EXIT_OK


def cmd_genpsk(args: argparse.Namespace) -> int:
    _warn_if_world_accessible_output()
    print(keys.encode_key(keys.generate_psk()))
    return EXIT_OK


def _read_stdin_bytes() -> bytes:
    stream = getattr(sys.stdin, "buffer", None)  # absent when a test swaps in a StringIO
    return stream.read() if stream is not None else sys.stdin.read().encode()


def cmd_pubkey(args: argparse.Namespace) -> int:
    # `wg pubkey`'s order of checks, so the same input gets the same message: the first 44
    # bytes are the key, anything after them must be whitespace, then the key must decode.
    data = _read_stdin_bytes()
    key_bytes, rest = data[:44], data[44:]
    if len(key_bytes) < 44:
        print(f"{PROG}: Key is not the correct length or format", file=sys.stderr)
        return EXIT_FAILURE
    if rest and not rest.isspace():
        print(f"{PROG}: Trailing characters found after key", file=sys.stderr)
        return EXIT_FAILURE
    try:
        private = keys.decode_key(key_bytes.decode("ascii"))
    except (UnicodeDecodeError, keys.KeyFormatError):
        print(f"{PROG}: Key is not the correct length or format", file=sys.stderr)
        return EXIT_FAILURE
    print(keys.encode_key(keys.public_from_private(private)))
    return EXIT_OK


def _add_check_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path", help="the config file, wg-quick format")
    parser.add_argument(
        "--interface", metavar="NAME", help="interface name (default: the file's stem)"
    )


def cmd_check(args: argparse.Namespace) -> int:
    try:
        conf, warnings = config.load(args.path, args.interface)
    except config.ConfigError as error:
        print(error, file=sys.stderr)
        return EXIT_CONFIG
    for warning in warnings:
        print(warning, file=sys.stderr)
    addresses, peers = len(conf.interface.addresses), len(conf.peers)
    print(
        f"{conf.interface_name}: ok, {addresses} address{'es' * (addresses != 1)}, "
        f"{peers} peer{'s' * (peers != 1)}"
    )
    return EXIT_OK


def cmd_up(args: argparse.Namespace) -> int:
    # Imported here: the key and check commands must not need the data path's dependencies.
    import uvloop

    from vpn.endpoint import Endpoint

    try:
        endpoint = Endpoint.from_config(args.path, interface=args.interface)
    except config.ConfigError as error:
        print(error, file=sys.stderr)
        return EXIT_CONFIG
    return uvloop.run(_serve(endpoint))


async def _serve(endpoint: Endpoint, on_ready: Callable[[], None] | None = None) -> int:
    """Run until SIGINT or SIGTERM, then take everything down again. `on_ready` runs once
    the interface is up and serving (vpn-userspace goes to the background then)."""
    from vpn.endpoint import StartError, ignore_sighup

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    # Until the endpoint takes SIGHUP over (reload), its default would kill us mid-start.
    loop.add_signal_handler(signal.SIGHUP, ignore_sighup)
    try:
        await endpoint.start()
    except StartError as error:
        logging.getLogger("vpn").error("cannot bring %s up: %s", endpoint.name, error)
        return EXIT_FAILURE
    try:
        if on_ready is not None:
            on_ready()
        await stop.wait()
    finally:
        await endpoint.stop()
    return EXIT_OK


def _add_show_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("interface", nargs="?", help="interface name (default: every one)")
    parser.add_argument("--json", action="store_true", help="print JSON (documented keys)")


def cmd_show(args: argparse.Namespace) -> int:
    """`wg show` plus the offload counters, read over the management socket."""
    import json
    import time

    from vpn.control import show, uapi, uapi_server

    names = [args.interface] if args.interface else uapi_server.interfaces()
    views, status = [], EXIT_OK
    for name in names:
        try:
            answers = uapi_server.request(
                name, f"{uapi.OP_GET}\n\n{uapi.OP_STATS}\n\n"
            )
            snapshot = uapi.parse_get(answers[0] if answers else [])
        except (OSError, uapi.UapiError, ValueError) as error:
            if isinstance(error, ConnectionRefusedError) and not args.interface:
                # Listing all: a socket nobody serves is what a killed endpoint leaves
                # behind (the next start with that name replaces it), not an interface.
                print(f"{PROG}: {name}: stale management socket (no endpoint serves it), "
                      "skipped", file=sys.stderr)
                continue
            print(f"{PROG}: {name}: cannot read the interface: {error}", file=sys.stderr)
            status = EXIT_FAILURE
            continue
        try:
            # wireguard-go closes the connection on our stats request: show it without them.
            stats = uapi.parse_stats(answers[1]) if len(answers) > 1 else None
        except (uapi.UapiError, ValueError):
            stats = None
        views.append(show.show_view(name, snapshot, stats))
    if args.json:
        print(json.dumps(views[0] if args.interface and views else views, indent=2))
    else:
        print("\n\n".join(show.show_text(view, time.time()) for view in views))
    return status


def _add_down_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("interface", help="interface name")


def cmd_down(args: argparse.Namespace) -> int:
    """Ask a running endpoint to stop (set=vpn-down), then wait until its socket is gone."""
    import time

    from vpn.control import uapi, uapi_server

    try:
        path = uapi_server.socket_path(args.interface)
        answers = uapi_server.request(args.interface, f"{uapi.OP_DOWN}\n\n")
    except OSError as error:
        print(f"{PROG}: {args.interface}: cannot reach the endpoint: {error}", file=sys.stderr)
        return EXIT_FAILURE
    if not answers or answers[0] != ["errno=0"]:
        print(f"{PROG}: {args.interface}: the endpoint refused to stop: {answers}",
              file=sys.stderr)
        return EXIT_FAILURE
    # The endpoint removes its socket last-but-one, after the interface and routes.
    deadline = time.monotonic() + 15
    while path.exists():
        if time.monotonic() > deadline:
            print(f"{PROG}: {args.interface}: still running after 15 s", file=sys.stderr)
            return EXIT_FAILURE
        time.sleep(0.05)
    return EXIT_OK


def cmd_reload(args: argparse.Namespace) -> int:
    """Ask a running endpoint to re-read its config file (as SIGHUP does), and wait for it."""
    from vpn.control import uapi, uapi_server

    try:
        answers = uapi_server.request(args.interface, f"{uapi.OP_RELOAD}\n\n", timeout=30)
    except OSError as error:
        print(f"{PROG}: {args.interface}: cannot reach the endpoint: {error}", file=sys.stderr)
        return EXIT_FAILURE
    if not answers or answers[0] != ["errno=0"]:
        said = answers[0][-1] if answers else "no answer"
        print(f"{PROG}: {args.interface}: reload refused ({said}); the endpoint's log says why, "
              "nothing was changed", file=sys.stderr)
        return EXIT_FAILURE
    return EXIT_OK


COMMANDS: tuple[Command, ...] = (
    Command("genkey", "print a new private key (base64), as `wg genkey`", cmd_genkey),
    Command("pubkey", "read a private key on stdin, print its public key", cmd_pubkey),
    Command("genpsk", "print a new preshared key (base64), as `wg genpsk`", cmd_genpsk),
    Command(
        "check",
        "validate a config file without touching the system",
        cmd_check,
        _add_check_arguments,
    ),
    Command(
        "up",
        "bring an interface up from a config file and serve it until SIGINT/SIGTERM",
        cmd_up,
        _add_check_arguments,
    ),
    Command(
        "show",
        "show interfaces as `wg show` does, plus the offload counters",
        cmd_show,
        _add_show_arguments,
    ),
    Command("down", "stop a running endpoint through its socket", cmd_down, _add_down_arguments),
    Command(
        "reload",
        "re-read a running endpoint's config file and apply the difference (as SIGHUP)",
        cmd_reload,
        _add_down_arguments,
    ),
)


def build_parser() -> argparse.ArgumentParser:
    # -v is accepted before and after the subcommand; SUPPRESS keeps the subparser's default
    # from overwriting a -v given before it.
    verbose = argparse.ArgumentParser(add_help=False)
    verbose.add_argument(
        "-v", "--verbose", action="count", default=argparse.SUPPRESS, help="debug logging"
    )
    parser = argparse.ArgumentParser(
        prog=PROG, description="A WireGuard-compatible VPN endpoint with TUN offloads."
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in COMMANDS:
        sub_parser = sub.add_parser(
            command.name, help=command.help, description=command.help, parents=[verbose]
        )
        if command.add_arguments is not None:
            command.add_arguments(sub_parser)
        sub_parser.set_defaults(run=command.run)
    return parser


def setup_logging(verbosity: int) -> None:
    logging.basicConfig(format=LOG_FORMAT, stream=sys.stderr)
    # Set the level apart: basicConfig does nothing at all when a host program (or pytest)
    # already installed handlers, and -v must still take effect.
    logging.getLogger().setLevel(logging.DEBUG if verbosity else logging.INFO)
    # pyroute2 narrates every netlink message at DEBUG (and sets its loggers' levels itself):
    # too much even for -v, so its records below WARNING are filtered at the handler.
    for handler in logging.getLogger().handlers:
        handler.addFilter(_quiet_pyroute2)


def _quiet_pyroute2(record: logging.LogRecord) -> bool:
    return record.levelno >= logging.WARNING or not record.name.startswith("pyroute2")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    run: Callable[[argparse.Namespace], int] = args.run
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
