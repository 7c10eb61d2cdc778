"""The `vpn` command: a thin argparse shell over the library, one function per subcommand.

Key commands match `wg genkey`, `wg pubkey` and `wg genpsk` byte for byte; `check` validates a
config file without touching the system. As for wg-quick, a config argument is a file or a bare
interface name (wg0: /etc/wireguard/wg0.conf). Add a subcommand by adding a `Command` to
`COMMANDS`.
"""

from __future__ import annotations

import argparse
import logging
import os
import stat
import sys
from collections.abc import Callable
from dataclasses import dataclass

from vpn import version
from vpn.control import config
from vpn.core import keys

PROG = "vpn"
EXIT_OK = 0
EXIT_FAILURE = 1  # what `wg` returns for a bad key
EXIT_CONFIG = 2  # a bad config file (also argparse's code for a bad command line)


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


CONFIG_HELP = "the config file (wg-quick format), or an interface name: /etc/wireguard/NAME.conf"


def _add_config_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path", metavar="CONFIG_FILE|INTERFACE", help=CONFIG_HELP)


def _add_check_arguments(parser: argparse.ArgumentParser) -> None:
    _add_config_argument(parser)
    parser.add_argument(
        "--interface", metavar="NAME", help="interface name (default: the file's stem)"
    )


def _add_up_arguments(parser: argparse.ArgumentParser) -> None:
    _add_check_arguments(parser)
    parser.add_argument(
        "-f", "--foreground", action="store_true",
        help="stay in the foreground, logging to stderr, until SIGINT/SIGTERM (systemd, "
        "containers); by default return once the interface is up and log to syslog",
    )
    parser.add_argument(
        "--metrics", metavar="HOST:PORT",
        help="serve Prometheus metrics at http://HOST:PORT/metrics (default: $VPN_METRICS "
        "if set, else off); [::]:PORT or :PORT for every address",
    )
    parser.add_argument(
        "--threads", metavar="N",
        help="seal and send, open and deliver on N worker threads; 0 or 1: on the "
        "event loop's thread "
        "(default: $VPN_THREADS if set, else the measured default)",
    )
    parser.add_argument(
        "--busy-poll", metavar="USEC",
        help="after each wakeup, poll the TUN and the socket for up to USEC microseconds "
        "before sleeping again (the budget adapts under that cap to how soon packets come): "
        "lower latency for a little CPU; 0: off "
        "(default: $VPN_BUSY_POLL if set, else the measured default)",
    )
    parser.add_argument(
        "--sched-slice", metavar="USEC",
        help="ask the kernel's scheduler (Linux 6.12+) for USEC-microsecond slices for the "
        "data path's threads, so a packet's wakeup preempts long-running work on busy "
        "cores; 100..100000, 0: the kernel's default "
        "(default: $VPN_SCHED_SLICE if set, else the measured default)",
    )


def _load(arg: str, interface: str | None = None) -> config.Config | None:
    """A config argument loaded, its warnings printed; None (error printed) when bad."""
    try:
        conf, warnings = config.load(config.config_path(arg), interface)
    except config.ConfigError as error:
        print(error, file=sys.stderr)
        return None
    for warning in warnings:
        print(warning, file=sys.stderr)
    return conf


def cmd_check(args: argparse.Namespace) -> int:
    from vpn.control.show import plural
    from vpn.host import dns, steps

    conf = _load(args.path, args.interface)
    if conf is None:
        return EXIT_CONFIG
    if conf.interface.dns_servers or conf.interface.dns_search:
        try:
            dns.check_resolvconf(conf.interface.dns_servers, conf.interface.dns_search)
        except steps.SetupError as error:
            print(f"Warning: {error}: `vpn up` will fail", file=sys.stderr)
    print(f"{conf.interface_name}: ok, {plural(len(conf.interface.addresses), 'address', 'es')}"
          f", {plural(len(conf.peers), 'peer')}")
    return EXIT_OK


def cmd_strip(args: argparse.Namespace) -> int:
    conf = _load(args.path)
    if conf is None:
        return EXIT_CONFIG
    print(config.strip_text(conf), end="")
    return EXIT_OK


def cmd_up(args: argparse.Namespace) -> int:
    # Imported here: the key and check commands must not need the data path's dependencies.
    from vpn import serving
    from vpn.control.metrics_server import ENV, MetricsAddressError, parse_address
    from vpn.endpoint import Endpoint
    from vpn.endpoint.tuning import Tuning

    try:
        tuning = Tuning.from_flags({"--threads": args.threads, "--busy-poll": args.busy_poll,
                                    "--sched-slice": args.sched_slice})
    except ValueError as error:
        print(f"{PROG}: {error}", file=sys.stderr)
        return EXIT_CONFIG
    metrics_text = args.metrics if args.metrics is not None else os.environ.get(ENV)
    try:
        metrics = parse_address(metrics_text) if metrics_text else None
    except MetricsAddressError as error:
        print(f"{PROG}: {error}", file=sys.stderr)
        return EXIT_CONFIG
    try:
        endpoint = Endpoint.from_config(config.config_path(args.path), interface=args.interface,
                                        metrics=metrics, tuning=tuning)
    except config.ConfigError as error:
        print(error, file=sys.stderr)
        return EXIT_CONFIG
    if args.foreground:
        return serving.run(endpoint, lambda: None)
    return serving.run_detached(endpoint, PROG)


def _add_show_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("interface", nargs="?", metavar="INTERFACE|all",
                        help="interface name, or all (the default: every one)")
    parser.add_argument("field", nargs="?", choices=["dump"],
                        help="dump: `wg show ... dump`'s tab-separated lines, keys included")
    parser.add_argument("--json", action="store_true", help="print JSON (documented keys)")


def cmd_show(args: argparse.Namespace) -> int:
    """`wg show` plus the offload counters, read over the management socket."""
    import json
    import time

    from vpn.control import show, uapi, uapi_server

    one = args.interface not in (None, "all")  # as `wg show`: "all" is every interface
    names = [args.interface] if one else uapi_server.interfaces()
    views, dumps, status, problem = [], [], EXIT_OK, ""
    for name in names:
        try:
            answers = uapi_server.request(
                name, f"{uapi.OP_GET}\n\n{uapi.OP_STATS}\n\n"
            )
            snapshot = uapi.parse_get(answers[0] if answers else [])
        except (OSError, uapi.UapiError, ValueError) as error:
            if isinstance(error, ConnectionRefusedError) and not one:
                # Listing all: a socket nobody serves is what a killed endpoint leaves
                # behind (the next start with that name replaces it), not an interface.
                print(f"{PROG}: {name}: stale management socket (no endpoint serves it), "
                      "skipped", file=sys.stderr)
                continue
            problem = _unreachable(error)
            print(f"{PROG}: {name}: {problem}", file=sys.stderr)
            status = EXIT_FAILURE
            continue
        if args.field == "dump":
            dumps += show.dump_lines(name, snapshot, with_interface=not one)
            continue
        try:
            # wireguard-go closes the connection on our stats request: show it without them.
            stats = uapi.parse_stats(answers[1]) if len(answers) > 1 else None
        except (uapi.UapiError, ValueError):
            stats = None
        views.append(show.show_view(name, snapshot, stats))
    if args.field == "dump":
        if dumps:
            print("\n".join(dumps))
        return status
    if one and not views:  # the one interface asked for: its error, not []
        if args.json:
            print(json.dumps({"interface": args.interface, "error": problem}, indent=2))
        return status
    if args.json:
        print(json.dumps(views[0] if one else views, indent=2))
    elif views:
        print("\n\n".join(show.show_text(view, time.time()) for view in views))
    return status


def _unreachable(error: Exception) -> str:
    if isinstance(error, FileNotFoundError):
        return "no such interface (no endpoint's management socket by that name)"
    return f"cannot reach the endpoint: {error}"


def _not_ours(name: str) -> str:
    """Why a socket closed on our own request without an answer: another userspace
    WireGuard (wireguard-go, boringtun) serves it, which ends the connection on an operation
    it does not know; one that answers get=1 says so."""
    from vpn.control import uapi, uapi_server

    try:
        answers = uapi_server.request(name, f"{uapi.OP_GET}\n\n")
        uapi.parse_get(answers[0] if answers else [])
    except (OSError, uapi.UapiError, ValueError):
        return "no answer on its management socket (not a vpn endpoint?)"
    return ("its management socket is served by another WireGuard implementation (such as "
            "wireguard-go), not by a vpn endpoint")


def _add_down_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("interface", metavar="CONFIG_FILE|INTERFACE",
                        help="the interface, or its config file (the interface is its stem)")


def _interface(args: argparse.Namespace) -> str | None:
    """The interface named by a CONFIG_FILE|INTERFACE argument; None (error printed)."""
    try:
        return config.interface_of(args.interface)
    except config.ConfigError as error:
        print(error, file=sys.stderr)
        return None


def cmd_down(args: argparse.Namespace) -> int:
    """Ask a running endpoint to stop (set=vpn-down), then wait until its socket is gone."""
    import time

    from vpn.control import uapi, uapi_server

    name = _interface(args)
    if name is None:
        return EXIT_CONFIG
    try:
        path = uapi_server.socket_path(name)
        answers = uapi_server.request(name, f"{uapi.OP_DOWN}\n\n")
    except OSError as error:
        print(f"{PROG}: {name}: {_unreachable(error)}", file=sys.stderr)
        return EXIT_FAILURE
    if not answers:
        print(f"{PROG}: {name}: {_not_ours(name)}; stop it as it was started "
              f"(`wg-quick down {name}`, or `ip link del {name}`)", file=sys.stderr)
        return EXIT_FAILURE
    if answers[0] != ["errno=0"]:
        print(f"{PROG}: {name}: the endpoint refused to stop: {answers[0][-1]}",
              file=sys.stderr)
        return EXIT_FAILURE
    # The endpoint removes its socket last-but-one, after the interface and routes.
    deadline = time.monotonic() + 15
    while path.exists():
        if time.monotonic() > deadline:
            print(f"{PROG}: {name}: still running after 15 s", file=sys.stderr)
            return EXIT_FAILURE
        time.sleep(0.05)
    return EXIT_OK


def cmd_reload(args: argparse.Namespace) -> int:
    """Ask a running endpoint to re-read its config file (as SIGHUP does), and wait for it."""
    from vpn.control import uapi, uapi_server

    name = _interface(args)
    if name is None:
        return EXIT_CONFIG
    try:
        answers = uapi_server.request(name, f"{uapi.OP_RELOAD}\n\n", timeout=30)
    except OSError as error:
        print(f"{PROG}: {name}: {_unreachable(error)}", file=sys.stderr)
        return EXIT_FAILURE
    if not answers:
        print(f"{PROG}: {name}: {_not_ours(name)}, which cannot reload a file; apply one "
              f"with `wg syncconf {name} FILE`", file=sys.stderr)
        return EXIT_FAILURE
    if answers[0] != ["errno=0"]:
        lines = answers[0]
        # The endpoint's reason (the file:line:key of a bad file), else its errno.
        said = next((ln[len("error="):] for ln in lines if ln.startswith("error=")), lines[-1])
        print(f"{PROG}: {name}: reload refused, nothing was changed: {said}", file=sys.stderr)
        return EXIT_FAILURE
    return EXIT_OK


def cmd_save(args: argparse.Namespace) -> int:
    """As `wg-quick save`: the running key, port, mark and peers (endpoints as last seen)
    written into the config file; the file's own wg-quick keys stay as they are. A bare
    interface name means the file that interface was started from (as `vpn reload`)."""
    from pathlib import Path

    from vpn.control import running, uapi, uapi_server

    name = _interface(args)
    if name is None:
        return EXIT_CONFIG
    try:
        answers = uapi_server.request(name, f"{uapi.OP_GET}\n\n{uapi.OP_STATS}\n\n")
        snapshot = uapi.parse_get(answers[0] if answers else [])
        stats = uapi.parse_stats(answers[1]) if len(answers) > 1 else {}
    except (OSError, uapi.UapiError, ValueError) as error:
        print(f"{PROG}: {name}: {_unreachable(error)}", file=sys.stderr)
        return EXIT_FAILURE
    started_from = stats.get("config_path")
    if config.is_bare(args.interface) and isinstance(started_from, str):
        conf = _load(started_from, name)
    else:
        conf = _load(args.interface)
    if conf is None:
        return EXIT_CONFIG
    saved = running.running_config(conf, snapshot, record_port=True)
    try:
        running.write_atomically(Path(conf.path), config.to_text(saved))
    except OSError as error:
        print(f"{PROG}: cannot write {conf.path}: {error.strerror}", file=sys.stderr)
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
        "strip",
        "print the config without wg-quick's keys, as `wg setconf` takes it (wg-quick strip)",
        cmd_strip,
        _add_config_argument,
    ),
    Command(
        "up",
        "bring an interface up from a config file, as `wg-quick up`; serve it until "
        "`vpn down`, SIGINT or SIGTERM",
        cmd_up,
        _add_up_arguments,
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
    Command(
        "save",
        "write the running configuration into the config file (wg-quick save)",
        cmd_save,
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
    parser.add_argument("--version", action=_VersionAction, help="show the version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in COMMANDS:
        sub_parser = sub.add_parser(
            command.name, help=command.help, description=command.help, parents=[verbose]
        )
        if command.add_arguments is not None:
            command.add_arguments(sub_parser)
        sub_parser.set_defaults(run=command.run)
    return parser


class _VersionAction(argparse.Action):
    """--version, looked up only when asked for (vpn.version)."""

    def __init__(self, option_strings: list[str], dest: str = argparse.SUPPRESS,
                 default: str = argparse.SUPPRESS, help: str | None = None) -> None:
        super().__init__(option_strings, dest, nargs=0, default=default, help=help)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: object, option_string: str | None = None) -> None:
        print(f"{PROG} {version()}")
        parser.exit()


def setup_logging(verbosity: int) -> None:
    from vpn.host import logs

    # Under systemd, `<N>` priorities and the journal's own timestamps; else a timestamp.
    stderr = logging.StreamHandler(sys.stderr)
    stderr.setFormatter(logs.stderr_formatter())
    logging.basicConfig(handlers=[stderr])
    # Set the levels apart: basicConfig does nothing at all when a host program (or pytest)
    # already installed handlers, and -v must still take effect. -v is our own debug lines:
    # the libraries' (asyncio's "Using selector", ...) stay at INFO.
    logging.getLogger().setLevel(logging.INFO)
    logging.getLogger(PROG).setLevel(logging.DEBUG if verbosity else logging.INFO)
    # pyroute2's records below WARNING are filtered at the handler (too much even for -v).
    for handler in logging.getLogger().handlers:
        handler.addFilter(logs.quiet_pyroute2)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    run: Callable[[argparse.Namespace], int] = args.run
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
