"""An endpoint served as a process, for `vpn up` and `vpn-userspace` alike: until SIGINT or
SIGTERM, with systemd told READY=1 and STOPPING=1 (and its watchdog fed), the privileges
the running endpoint does not use dropped once it is up, and in the background the log
moved off the terminal."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

import uvloop

from vpn.endpoint import Endpoint, StartError, ignore_sighup
from vpn.host import logs, notify
from vpn.host.background import run_in_background
from vpn.host.memory import keep_heap_headroom, release_setup_memory

if TYPE_CHECKING:
    from vpn.host.helper import Helper

EXIT_OK = 0
EXIT_FAILURE = 1


def run(endpoint: Endpoint, ready: Callable[[], None]) -> int:
    """`serve` on a uvloop event loop of its own; the exit status."""
    return uvloop.run(serve(endpoint, ready))


async def serve(endpoint: Endpoint, ready: Callable[[], None]) -> int:
    """Run until SIGINT or SIGTERM, then take everything down again; `ready()` once the
    interface is up and serving (systemd hears READY=1 then, STOPPING=1 at teardown)."""
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
    release_setup_memory()
    keep_heap_headroom()
    helper: Helper | None = None
    watchdog: notify.Watchdog | None = None
    try:  # from here on, whatever fails, the teardown below runs
        helper = confine(endpoint)
        watchdog = notify.Watchdog.from_environ(endpoint.serving)
        notify.notify(notify.READY)
        ready()
        if watchdog is not None:  # systemd's WatchdogSec: it starts counting at READY=1
            watchdog.start()
        await stop.wait()
    finally:
        if watchdog is not None:
            watchdog.stop()
        notify.notify(notify.STOPPING)
        await endpoint.stop()
        if helper is not None:
            helper.close()
    return EXIT_OK


def confine(endpoint: Endpoint) -> Helper | None:
    """Drop the capabilities the running endpoint does not use (vpn/host/confine.py)."""
    from vpn.host.confine import confine as confine_process

    iface = endpoint.config.interface
    socket_dir = str(endpoint.socket_dir)
    if not endpoint.host_setup:  # wg-quick drives us: it sets the port, and runs the rest
        return confine_process(endpoint.name, port=None, down_hooks=(), dns=False,
                               config=None, socket_dir=socket_dir)
    port = endpoint.runtime.device.listen_port if endpoint.runtime is not None else 0
    return confine_process(endpoint.name, port=port,
                           down_hooks=(*iface.pre_down, *iface.post_down),
                           dns=bool(iface.dns_servers or iface.dns_search),
                           config=endpoint.config.path or None, socket_dir=socket_dir)


def run_detached(endpoint: Endpoint, prog: str) -> int:
    """`run` in a child that detaches once the interface is up (`vpn up` without
    --foreground); the parent returns then, with 0, or with the child's failure."""

    def serve_in_child(ready: Callable[[], None]) -> int:
        # Opened before the endpoint confines itself (Landlock), which may make the
        # log file's directory; the user is told where once the interface is up.
        handler, where = background_log(endpoint.name, prog)

        def detached() -> None:
            print(where, file=sys.stderr)  # while stderr is still the user's
            ready()
            log_only_to(handler)

        return run(endpoint, detached)

    return run_in_background(serve_in_child)


def background_log(name: str, prog: str) -> tuple[logging.Handler | None, str]:
    """Where the log of a detached endpoint goes (syslog, else a file), and what to tell
    the user of it."""
    try:
        handler, where = logs.background_handler(name)
    except OSError as error:
        return None, (f"{prog}: {name}: warning: the log is lost from now on: no syslog "
                      f"socket at {logs.SYSLOG_SOCKET}, and no log file ({error.filename}: "
                      f"{error.strerror}); run with --foreground to keep it")
    return handler, f"{prog}: {name}: serving in the background; the log goes to {where}"


def log_only_to(handler: logging.Handler | None) -> None:
    """In the background stderr is /dev/null: the log goes to `handler` instead."""
    root = logging.getLogger()
    for stream in [h for h in root.handlers if isinstance(h, logging.StreamHandler)]:
        root.removeHandler(stream)
    if handler is not None:
        handler.addFilter(logs.quiet_pyroute2)
        root.addHandler(handler)
