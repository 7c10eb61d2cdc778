"""The `vpn` command: key commands against `wg`'s output and messages, and `vpn check`.

Most cases call main() in-process; one pipes the installed script into the real `wg pubkey`.
"""

from __future__ import annotations

import io
import logging
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from vpn import cli
from vpn.core.keys import decode_key, encode_key, generate_private, public_from_private

WG = shutil.which("wg")
needs_wg = pytest.mark.skipif(WG is None, reason="WG COMPATIBILITY NOT TESTED: no `wg` binary")
VENV_VPN = Path(sys.executable).parent / "vpn"

PRIV = generate_private()
PUB = public_from_private(PRIV)


@pytest.fixture(autouse=True)
def keep_log_level() -> Iterator[None]:
    loggers = [logging.getLogger(), logging.getLogger("vpn")]
    levels = [logger.level for logger in loggers]
    yield
    for logger, level in zip(loggers, levels, strict=True):
        logger.setLevel(level)


def feed(monkeypatch: pytest.MonkeyPatch, data: bytes) -> None:
    stdin = io.TextIOWrapper(io.BytesIO(data), encoding="ascii", errors="strict")
    monkeypatch.setattr(sys, "stdin", stdin)


@pytest.mark.parametrize("command", ["genkey", "genpsk"])
def test_generate(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main([command]) == 0
    out, err = capsys.readouterr()
    assert out.endswith("\n") and len(out) == 45 and err == ""
    raw = decode_key(out[:-1])
    if command == "genkey":
        assert raw[0] & 7 == 0 and raw[31] & 0xC0 == 0x40


def test_pubkey(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    feed(monkeypatch, encode_key(PRIV).encode() + b"\n")
    assert cli.main(["pubkey"]) == 0
    assert capsys.readouterr() == (encode_key(PUB) + "\n", "")


def test_pubkey_from_text_stream(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO(encode_key(PRIV)))  # no .buffer
    assert cli.main(["pubkey"]) == 0
    assert capsys.readouterr().out == encode_key(PUB) + "\n"


KEY = encode_key(PRIV).encode()
PUBKEY_INPUTS = [
    pytest.param(KEY, 0, "", id="bare"),
    pytest.param(KEY + b"\n\n \t", 0, "", id="trailing whitespace"),
    pytest.param(b"", 1, "Key is not the correct length or format", id="empty"),
    pytest.param(b"bad\n", 1, "Key is not the correct length or format", id="short"),
    pytest.param(KEY[:43], 1, "Key is not the correct length or format", id="no padding"),
    pytest.param(KEY + b"x", 1, "Trailing characters found after key", id="trailing junk"),
    pytest.param(b" " + KEY, 1, "Trailing characters found after key", id="leading space"),
    pytest.param(KEY[:43] + b"!", 1, "Key is not the correct length or format", id="bad char"),
    pytest.param(b"\xff" * 44, 1, "Key is not the correct length or format", id="not ascii"),
]


@pytest.mark.parametrize(("data", "code", "message"), PUBKEY_INPUTS)
def test_pubkey_inputs(
    data: bytes,
    code: int,
    message: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    feed(monkeypatch, data)
    assert cli.main(["pubkey"]) == code
    out, err = capsys.readouterr()
    if code == 0:
        assert (out, err) == (encode_key(PUB) + "\n", "")
    else:
        assert (out, err) == ("", f"vpn: {message}\n")
        assert KEY.decode()[:20] not in err


@needs_wg
@pytest.mark.parametrize(("data", "code", "message"), PUBKEY_INPUTS)
def test_pubkey_matches_wg(data: bytes, code: int, message: str) -> None:
    assert WG is not None
    ours = subprocess.run(
        [sys.executable, "-m", "vpn.cli", "pubkey"], input=data, capture_output=True, check=False
    )
    # wg names itself by argv[0] in its messages.
    theirs = subprocess.run(
        ["wg", "pubkey"], executable=WG, input=data, capture_output=True, check=False
    )
    assert (ours.returncode, ours.stdout) == (theirs.returncode, theirs.stdout) == (
        code,
        (encode_key(PUB) + "\n").encode() if code == 0 else b"",
    )
    assert ours.stderr.replace(b"vpn:", b"wg:") == theirs.stderr


@needs_wg
def test_installed_genkey_into_wg_pubkey() -> None:
    assert WG is not None
    vpn = [str(VENV_VPN)] if VENV_VPN.exists() else [sys.executable, "-m", "vpn.cli"]
    private = subprocess.run([*vpn, "genkey"], capture_output=True, text=True, check=True).stdout
    public = subprocess.run([WG, "pubkey"], input=private, capture_output=True, text=True,
                            check=True).stdout
    ours = subprocess.run([*vpn, "pubkey"], input=private, capture_output=True, text=True,
                          check=True).stdout
    assert public == ours == encode_key(public_from_private(decode_key(private.strip()))) + "\n"


def test_genkey_warns_about_world_readable_output(tmp_path: Path) -> None:
    out = tmp_path / "key"
    for mode, warned in ((0o644, True), (0o640, False)):
        out.touch()
        out.chmod(mode)
        with out.open("w") as stdout:
            done = subprocess.run(
                [sys.executable, "-m", "vpn.cli", "genkey"],
                stdout=stdout,
                stderr=subprocess.PIPE,
                text=True,
                check=True,
            )
        assert ("Warning: writing to world accessible file." in done.stderr) is warned
        assert len(decode_key(out.read_text().strip())) == 32


GOOD = f"""\
[Interface]
PrivateKey = {encode_key(PRIV)}
Address = 10.0.0.1/24, fd00::1/64

[Peer]
PublicKey = {encode_key(public_from_private(generate_private()))}
AllowedIPs = 10.0.0.2/32
"""


def write(directory: Path, name: str, text: str, mode: int = 0o600) -> Path:
    path = directory / name
    path.write_text(text)
    path.chmod(mode)
    return path


def test_check_ok(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, "wg0.conf", GOOD)
    assert cli.main(["check", str(path)]) == 0
    assert capsys.readouterr() == ("wg0: ok, 2 addresses, 1 peer\n", "")


def test_check_interface_override(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, "a-name-that-is-too-long.conf", GOOD)
    assert cli.main(["check", str(path), "--interface", "tun7"]) == 0
    assert capsys.readouterr().out.startswith("tun7: ok")


def test_check_warns(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    tmp_path.chmod(0o755)
    path = write(tmp_path, "wg0.conf", GOOD, 0o644)
    assert cli.main(["check", str(path)]) == 0
    out, err = capsys.readouterr()
    assert out == "wg0: ok, 2 addresses, 1 peer\n"
    assert err == f"Warning: `{os.path.realpath(path)}' is world accessible\n"


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("wg0.conf", GOOD + "AllowedIPs = 10.0.0.0/33\n",
         "{path}:8: AllowedIPs: '10.0.0.0/33' is not a valid network"),
        ("wg0.conf", GOOD.replace("PrivateKey", "PrivateKey = x\nPrivateKey"),
         "{path}:2: PrivateKey: not a base64-encoded 32-byte key"),
        ("much-too-long-name.conf", GOOD,
         "{path}: 'much-too-long-name' is not a valid interface name"),
        ("wg0.conf", None, "{path}: cannot read: No such file or directory"),
    ],
)
def test_check_bad(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str, text: str | None, message: str
) -> None:
    path = tmp_path / name if text is None else write(tmp_path, name, text)
    assert cli.main(["check", str(path)]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith(message.format(path=path)) and err.count("\n") == 1
    assert encode_key(PRIV) not in err


@pytest.mark.parametrize(
    ("argv", "level"),
    [
        (["genpsk"], logging.INFO),
        (["-v", "genpsk"], logging.DEBUG),
        (["genpsk", "--verbose"], logging.DEBUG),
    ],
)
def test_verbose(argv: list[str], level: int, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(argv) == 0
    assert logging.getLogger("vpn.endpoint").getEffectiveLevel() == level
    # -v is the endpoint's own debug lines, not asyncio's "Using selector: EpollSelector".
    assert not logging.getLogger("asyncio").isEnabledFor(logging.DEBUG)


def test_usage_errors(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in ([], ["nosuch"], ["check"]):
        with pytest.raises(SystemExit) as info:
            cli.main(argv)
        assert info.value.code == 2
    assert "usage: vpn" in capsys.readouterr().err


def test_every_command_is_registered() -> None:
    parser = cli.build_parser()
    help_text = parser.format_help()
    for command in cli.COMMANDS:
        assert command.name in help_text


@pytest.mark.parametrize(("flag", "env", "named"),
                         [(["--threads", "x"], None, "--threads: thread count"),
                          ([], ("VPN_THREADS", "99"), "VPN_THREADS: thread count"),
                          (["--busy-poll", "-5"], ("VPN_BUSY_POLL", "50"),
                           "--busy-poll: busy-poll budget"),
                          ([], ("VPN_BUSY_POLL", "99999"), "VPN_BUSY_POLL: busy-poll budget"),
                          (["--sched-slice", "50"], None, "--sched-slice: scheduler slice"),
                          ([], ("VPN_SCHED_SLICE", "soon"), "VPN_SCHED_SLICE: scheduler slice")])
def test_up_refuses_a_bad_data_path_knob(flag: list[str], env: tuple[str, str] | None,
                                         named: str, tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    """Before anything is set up: the flag or, without it, its environment variable."""
    if env is not None:
        monkeypatch.setenv(*env)
    assert cli.main(["up", *flag, str(tmp_path / "wg0.conf")]) == 2
    assert named in capsys.readouterr().err


def test_thread_counts_parse() -> None:
    from vpn.endpoint.tuning import parse_threads
    from vpn.io.sendworkers import MAX_THREADS

    assert [parse_threads(t) for t in ("0", " 2 ", str(MAX_THREADS))] == [0, 2, MAX_THREADS]
