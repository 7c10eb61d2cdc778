"""Returning to the shell once a service is ready, as `wg-quick up` does: fork, and let the
parent wait on a pipe until the child says it serves, or exits first with its status."""

from __future__ import annotations

import os
import signal
import sys
import traceback
from collections.abc import Callable

_READY = b"R"


def run_in_background(serve: Callable[[Callable[[], None]], int], *,
                      keep_output: bool = False) -> int:
    """Run `serve(ready)` in a child process. In the parent, return 0 as soon as the child
    calls `ready()`, or the child's exit status when it ends before that (its own stderr,
    still the caller's, says why). `ready()` detaches the child: a new session, and (unless
    `keep_output`) stdin, stdout and stderr on /dev/null, so a caller capturing them sees
    them close."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns
        os.close(read_end)
        status = 1
        try:
            status = serve(lambda: _ready(write_end, keep_output))
        except BaseException:  # a bug: say it, as the foreground run would
            traceback.print_exc()
        finally:
            for stream in (sys.stdout, sys.stderr):
                stream.flush()
            os._exit(status)
    os.close(write_end)
    try:
        with os.fdopen(read_end, "rb") as pipe:
            if pipe.read(1) == _READY:
                return 0
        _, wait_status = os.waitpid(pid, 0)
    except KeyboardInterrupt:  # Ctrl-C reached the child too (same process group): it stops
        _, wait_status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(wait_status)
    if code < 0:
        print(f"vpn: the endpoint was killed by {signal.Signals(-code).name} before it was up",
              file=sys.stderr)
        return 128 - code
    return code


def _ready(write_end: int, keep_output: bool) -> None:
    os.setsid()  # the shell's terminal and its hangups are no longer ours
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    if not keep_output:
        null = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(null, fd)
        os.close(null)
    os.write(write_end, _READY)
    os.close(write_end)
