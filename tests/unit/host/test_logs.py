"""Where the log goes: `<N>` priorities for the journal, syslog or a file in the background."""

from __future__ import annotations

import logging
import os
import socket
from pathlib import Path

import pytest

from vpn.host import logs


def _record(level: int, message: str) -> logging.LogRecord:
    return logging.LogRecord("vpn.endpoint", level, __file__, 1, message, None, None)


@pytest.mark.parametrize(("level", "prefix"), [
    (logging.CRITICAL, "<2>"), (logging.ERROR, "<3>"), (logging.WARNING, "<4>"),
    (logging.INFO, "<6>"), (logging.DEBUG, "<7>"),
])
def test_journal_lines_carry_the_sd_daemon_priority_and_no_time(level: int,
                                                                prefix: str) -> None:
    line = logs.JournalFormatter().format(_record(level, "interface wg0 up"))
    assert line == f"{prefix}vpn.endpoint: interface wg0 up"


def test_every_line_of_a_multi_line_record_gets_the_prefix() -> None:
    text = logs.JournalFormatter().format(_record(logging.ERROR, "one\ntwo"))
    assert text.split("\n") == ["<3>vpn.endpoint: one", "<3>two"]


def test_stderr_is_the_journal_only_when_journal_stream_names_it(tmp_path: Path) -> None:
    with open(tmp_path / "stream", "w") as stream, open(tmp_path / "other", "w") as other:
        info = os.fstat(stream.fileno())
        env = {"JOURNAL_STREAM": f"{info.st_dev}:{info.st_ino}"}
        assert logs.stderr_is_journal(env, stream.fileno())
        # A child whose stderr was redirected inherits the variable, not the stream.
        assert not logs.stderr_is_journal(env, other.fileno())
        assert not logs.stderr_is_journal({}, stream.fileno())
        assert not logs.stderr_is_journal({"JOURNAL_STREAM": "garbage"}, stream.fileno())
        assert isinstance(logs.stderr_formatter(env, stream.fileno()), logs.JournalFormatter)
        assert not isinstance(logs.stderr_formatter({}, stream.fileno()),
                              logs.JournalFormatter)


def test_without_syslog_the_background_log_goes_to_a_file(tmp_path: Path) -> None:
    blocked = tmp_path / "a-file"
    blocked.write_text("")  # a directory cannot be made under a regular file
    handler, where = logs.background_handler(
        "wg0", syslog_socket=str(tmp_path / "no-such-socket"),
        log_dirs=(blocked / "vpn", tmp_path / "run-vpn"))
    path = tmp_path / "run-vpn" / "wg0.log"
    assert where == f"{path} (there is no syslog socket at {tmp_path / 'no-such-socket'})"
    logger = logging.getLogger("vpn.test_logs")
    logger.addHandler(handler)
    try:
        logger.error("interface wg0: reload failed, nothing changed: bad line")
    finally:
        logger.removeHandler(handler)
        handler.close()
    assert path.stat().st_mode & 0o777 == 0o640
    line = path.read_text()
    assert line.endswith(" ERROR   vpn.test_logs: interface wg0: reload failed, nothing "
                         "changed: bad line\n")


def test_nowhere_to_write_is_an_error_the_caller_reports(tmp_path: Path) -> None:
    blocked = tmp_path / "a-file"
    blocked.write_text("")
    with pytest.raises(OSError):
        logs.background_handler("wg0", syslog_socket=str(tmp_path / "none"),
                                log_dirs=(blocked / "vpn",))


def test_a_syslog_socket_that_answers_is_preferred(tmp_path: Path) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as syslog:
        syslog.bind(str(tmp_path / "log"))
        handler, where = logs.background_handler("wg0", syslog_socket=str(tmp_path / "log"),
                                                 log_dirs=(tmp_path / "unused",))
        handler.close()
    assert where.startswith("syslog (") and not (tmp_path / "unused").exists()
