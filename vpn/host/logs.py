"""Where the log goes, so that no line is lost: the journal (with sd-daemon priorities),
syslog, or a file.

- In the foreground under systemd, stderr is a journal stream (JOURNAL_STREAM names it):
  each line starts with `<N>`, its syslog priority (sd-daemon(3)), and carries no time of
  our own, since the journal stamps every entry already.
- In the foreground elsewhere: stderr, with a timestamp.
- In the background (`vpn up` without --foreground, stderr on /dev/null): syslog when its
  socket answers, else a file (`log_file`), chosen while the terminal is still ours so the
  user can be told where to look.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping
from pathlib import Path

SYSLOG_SOCKET = "/dev/log"
# Without syslog (containers, minimal hosts): /var/log is where logs are looked for, it
# survives a restart of the host or the container (so the reason for a crash is still
# there afterwards, unlike on the /run tmpfs), and the volume is small (lifecycle events;
# rekeys are debug). /run/vpn when /var/log cannot be written (a read-only root).
LOG_DIRS = (Path("/var/log/vpn"), Path("/run/vpn"))
TIMESTAMPED_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
JOURNAL_FORMAT = "%(name)s: %(message)s"
SYSLOG_FORMAT = "vpn[%(process)d]: %(name)s: %(message)s"

# sd-daemon(3): <3> error, <4> warning, <6> info, <7> debug; <2> critical.
_PRIORITIES = ((logging.CRITICAL, 2), (logging.ERROR, 3), (logging.WARNING, 4),
               (logging.INFO, 6))
DEBUG_PRIORITY = 7


def priority(level: int) -> int:
    """The syslog priority of a logging level, as sd-daemon's `<N>` prefix wants it."""
    return next((prio for threshold, prio in _PRIORITIES if level >= threshold),
                DEBUG_PRIORITY)


class JournalFormatter(logging.Formatter):
    """`<N>name: message`; every line of a multi-line record (a traceback) gets the prefix,
    since the journal reads each line of a stream as an entry of its own."""

    def __init__(self) -> None:
        super().__init__(JOURNAL_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        prefix = f"<{priority(record.levelno)}>"
        return "\n".join(prefix + line for line in super().format(record).split("\n"))


def stderr_is_journal(environ: Mapping[str, str] = os.environ, fd: int = 2) -> bool:
    """Whether `fd` is the journal stream systemd gave us: JOURNAL_STREAM is "DEV:INODE" of
    it (a child whose stderr was redirected inherits the variable, not the stream)."""
    device, _, inode = environ.get("JOURNAL_STREAM", "").partition(":")
    if not (device.isdigit() and inode.isdigit()):
        return False
    try:
        info = os.fstat(fd)
    except OSError:
        return False
    return (info.st_dev, info.st_ino) == (int(device), int(inode))


def quiet_pyroute2(record: logging.LogRecord) -> bool:
    """A handler's filter: pyroute2 narrates every netlink message at DEBUG (and sets its
    loggers' levels itself), too much even for -v, so its records below WARNING go."""
    return record.levelno >= logging.WARNING or not record.name.startswith("pyroute2")


def stderr_formatter(environ: Mapping[str, str] = os.environ, fd: int = 2) -> logging.Formatter:
    return JournalFormatter() if stderr_is_journal(environ, fd) else \
        logging.Formatter(TIMESTAMPED_FORMAT)


def _answers(path: str) -> bool:
    """Whether a syslog daemon listens on `path`. Asked here because SysLogHandler does not
    say: since Python 3.11 it swallows a failed connect and then drops every record."""
    for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
        with socket.socket(socket.AF_UNIX, kind | socket.SOCK_CLOEXEC) as probe:
            try:
                probe.connect(path)
            except OSError:
                continue
            return True
    return False


def background_handler(name: str, syslog_socket: str = SYSLOG_SOCKET,
                       log_dirs: tuple[Path, ...] = LOG_DIRS) -> tuple[logging.Handler, str]:
    """The handler for a detached endpoint `name`, and where it writes, for the user:
    syslog if its socket answers, else the first of `log_dirs` that can take NAME.log.
    Raises OSError when none can."""
    # Here, not at the top: a foreground endpoint (systemd's) never needs it (0.5 MB).
    import logging.handlers

    if _answers(syslog_socket):
        syslog = logging.handlers.SysLogHandler(
            syslog_socket, facility=logging.handlers.SysLogHandler.LOG_DAEMON)
        syslog.setFormatter(logging.Formatter(SYSLOG_FORMAT))
        return syslog, f"syslog ({syslog_socket}, facility daemon, tag vpn)"
    error: OSError | None = None
    for directory in log_dirs:
        path = directory / f"{name}.log"
        try:
            directory.mkdir(mode=0o750, parents=True, exist_ok=True)
            # WatchedFileHandler reopens the file when logrotate moves it away.
            handler = logging.handlers.WatchedFileHandler(path, encoding="utf-8")
            os.chmod(path, 0o640)  # peers' keys and addresses: not for every user
        except OSError as err:
            error = err
            continue
        handler.setFormatter(logging.Formatter(TIMESTAMPED_FORMAT))
        return handler, f"{path} (there is no syslog socket at {syslog_socket})"
    assert error is not None
    raise error
