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

from vpn import config, keys

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


async def _serve(endpoint: Endpoint) -> int:
    """Run until SIGINT or SIGTERM, then take everything down again."""
    from vpn.endpoint import StartError

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await endpoint.start()
    except StartError as error:
        logging.getLogger("vpn").error("cannot bring %s up: %s", endpoint.name, error)
        return EXIT_FAILURE
    try:
        await stop.wait()
    finally:
        await endpoint.stop()
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
