"""The `vpn` command where wg-quick users have habits: config names, strip, --version, what
`check` warns about, and `show`/`down`/`reload` of an interface that does not exist."""

from __future__ import annotations

import json
import logging
import os
import re
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from vpn import cli, serving
from vpn.control import config
from vpn.control.config_model import ConfigError
from vpn.core.keys import encode_key, generate_private, public_from_private
from vpn.host import logs

PRIV = generate_private()
PEER = encode_key(public_from_private(generate_private()))
FULL = f"""\
[Interface]
PrivateKey = {encode_key(PRIV)}
ListenPort = 51820
Address = 10.0.0.1/24
DNS = 10.0.0.53, example.internal
MTU = 1420
Table = off
PostUp = true %i
SaveConfig = true
Offload = off

[Peer]
PublicKey = {PEER}
AllowedIPs = 10.0.0.2/32
Endpoint = 198.18.0.1:51820
"""
ABSENT = "vt-no-such-if"  # no endpoint serves a socket by this name


@pytest.fixture(autouse=True)
def keep_log_level() -> Iterator[None]:
    loggers = [logging.getLogger(), logging.getLogger("vpn")]
    levels = [logger.level for logger in loggers]
    yield
    for logger, level in zip(loggers, levels, strict=True):
        logger.setLevel(level)


def write(tmp_path: Path, text: str, name: str = "wg0.conf") -> Path:
    path = tmp_path / name
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    path.chmod(0o600)
    return path


@pytest.mark.parametrize(
    ("arg", "path"),
    [
        ("wg0", "/etc/wireguard/wg0.conf"),  # a bare interface name, as wg-quick
        ("wg0.conf", "wg0.conf"),  # a file here (wg-quick would look for wg0.conf.conf)
        ("./wg0", "./wg0"),
        ("conf/wg0", "conf/wg0"),
        ("much-too-long-name", "much-too-long-name"),  # not a name: a file
    ],
)
def test_config_argument_is_a_file_or_a_name(arg: str, path: str) -> None:
    assert config.config_path(arg) == path


@pytest.mark.parametrize(("arg", "name"),
                         [("wg0", "wg0"), ("/etc/wireguard/wg1.conf", "wg1"), ("x/tun7", "tun7")])
def test_interface_of_a_config_argument(arg: str, name: str) -> None:
    assert config.interface_of(arg) == name


def test_a_too_long_interface_name_is_named() -> None:
    with pytest.raises(ConfigError, match=r"'averyveryverylongname' is not a valid interface "
                                          r"name \(1 to 15 characters, not 21,"):
        config.interface_of("averyveryverylongname")


def test_strip_prints_what_wg_setconf_takes(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["strip", str(write(tmp_path, FULL))]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    keys = [line.split(" = ")[0] for line in out.splitlines() if " = " in line]
    assert keys == ["PrivateKey", "ListenPort", "PublicKey", "AllowedIPs", "Endpoint"]
    assert out.startswith(f"[Interface]\nPrivateKey = {encode_key(PRIV)}\nListenPort = 51820\n")


def test_strip_of_a_bad_file_names_the_line(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, FULL.replace("MTU = 1420", "MTU = 9"))
    assert cli.main(["strip", str(path)]) == 2
    assert capsys.readouterr() == ("", f"{path}:6: MTU: '9' is not an MTU (576 to 65535)\n")


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(["--version"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("vpn ") and out.count("\n") == 1


def test_check_reads_a_file_with_a_bom_and_counts_in_words(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = FULL.replace("DNS = 10.0.0.53, example.internal\n", "")
    assert cli.main(["check", str(write(tmp_path, "\ufeff" + text))]) == 0
    assert capsys.readouterr() == ("wg0: ok, 1 address, 1 peer\n", "")


def test_check_warns_about_host_bits_as_wg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr("vpn.host.dns.shutil.which", lambda name: f"/sbin/{name}")
    path = write(tmp_path, FULL.replace("AllowedIPs = 10.0.0.2/32",
                                        "AllowedIPs = 10.0.0.2/32, 10.9.0.1/24, fd00::1/64"))
    assert cli.main(["check", str(path)]) == 0
    _, err = capsys.readouterr()
    assert err == (f"{path}:14: Warning: AllowedIP has nonzero host part: 10.9.0.1/24\n"
                   f"{path}:14: Warning: AllowedIP has nonzero host part: fd00::1/64\n")
    assert config.load(path)[0].peers[0].allowed_ips[1].compressed == "10.9.0.0/24"


def test_check_warns_when_dns_cannot_be_set(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr("vpn.host.dns.shutil.which", lambda name: None)
    assert cli.main(["check", str(write(tmp_path, FULL))]) == 0
    out, err = capsys.readouterr()
    assert out == "wg0: ok, 1 address, 1 peer\n"
    assert err == ("Warning: DNS = 10.0.0.53, example.internal needs resolvconf (apt-get "
                   "install openresolv), which is not installed: `vpn up` will fail\n")


def test_show_of_an_absent_interface(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["show", ABSENT]) == 1
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and f"{ABSENT}: no such interface" in err
    assert cli.main(["show", ABSENT, "--json"]) == 1
    out, _ = capsys.readouterr()
    assert json.loads(out) == {"interface": ABSENT, "error": err.split(f"{ABSENT}: ")[1][:-1]}


@pytest.mark.parametrize("command", ["down", "reload", "save"])
def test_commands_on_an_absent_interface(command: str, tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    arg = str(write(tmp_path, FULL, f"{ABSENT}.conf")) if command == "save" else ABSENT
    assert cli.main([command, arg]) == 1
    out, err = capsys.readouterr()
    assert out == "" and err == f"vpn: {ABSENT}: no such interface (no endpoint's " \
                                "management socket by that name)\n"


def test_in_the_background_the_log_goes_to_syslog(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", [logging.StreamHandler()])
    syslog = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    with syslog:
        syslog.bind(str(tmp_path / "log"))
        syslog.settimeout(5)
        handler, where = logs.background_handler("wg0", syslog_socket=str(tmp_path / "log"))
        assert where.startswith(f"syslog ({tmp_path / 'log'}")
        serving.log_only_to(handler)
        assert not any(isinstance(h, logging.StreamHandler) for h in root.handlers)
        logging.getLogger("vpn.endpoint").warning("peer gone")
        for handler in root.handlers:
            handler.close()
        # <daemon.warning>, then the line as the journal shows it
        assert syslog.recv(4096) == f"<28>vpn[{os.getpid()}]: vpn.endpoint: peer gone\0".encode()


def test_the_readme_tour_uses_files_that_exist() -> None:
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    tour = readme[readme.index("## A 60-second tour"):readme.index("## The two commands")]
    files = re.findall(r"\bconfig/[\w.-]+\.conf", tour)
    assert files and all((Path(__file__).parents[2] / f).is_file() for f in files)
