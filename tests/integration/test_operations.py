"""What an operator meets: the background log on a host without syslog, `vpn show ... dump`
against `wg show`, `vpn save` of a file outside /etc/wireguard, and wireguard-go's socket
named as such by `vpn down` and `vpn reload`."""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lab.netns import Host, Lab
from lab.wg_lab import ROOT, wg

pytestmark = pytest.mark.netns

LOG_DIR = Path("/var/log/vpn")
SOCKET_DIR = Path("/var/run/wireguard")


def _vpn(host: Host, *args: str, cwd: Path | None = None,
         wrap: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run(host.command([*wrap, sys.executable, "-m", "vpn.cli", *args]),
                          capture_output=True, text=True, env=env, timeout=60, cwd=cwd)


def _config(port: int, *peers: str) -> str:
    return (f"[Interface]\nPrivateKey = {wg('genkey')}\nListenPort = {port}\n"
            f"Address = 198.18.94.1/24\nMTU = 1420\n" + "".join(peers))


def _peer(*lines: str) -> str:
    return "\n[Peer]\nPublicKey = {}\n{}\n".format(wg("pubkey", input=wg("genkey")),
                                                   "\n".join(lines))


def _wait(condition: object, what: str, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"still not {what} after {seconds} s"
        time.sleep(0.05)


def _pids(host: Host) -> list[int]:
    """The processes in the host's namespace: the detached endpoint."""
    listed = subprocess.run(["ip", "netns", "pids", host.ns], capture_output=True, text=True)
    return [int(pid) for pid in listed.stdout.split()]


# /dev/log made unusable in a mount namespace of its own (an empty file over it, which
# refuses connections), for hosts that have one; this one has none at all.
NO_SYSLOG = ("unshare", "-m", "--propagation", "private", "sh", "-c",
             'if [ -e /dev/log ] || [ -L /dev/log ]; then mount --bind /dev/null /dev/log; '
             'fi; exec "$@"', "no-syslog")


def test_in_the_background_without_syslog_the_log_goes_to_a_file(lab: Lab) -> None:
    host = lab.host("a")
    name = f"vl{secrets.token_hex(3)}"
    config = lab.path(f"{name}.conf")
    config.write_text(_config(51994, _peer("AllowedIPs = 198.18.93.0/24")))
    config.chmod(0o600)
    log_file = LOG_DIR / f"{name}.log"
    made_dir = not LOG_DIR.exists()
    try:
        up = _vpn(host, "up", str(config), wrap=NO_SYSLOG)
        assert up.returncode == 0, up.stderr
        # Told before the terminal was released, after the "up" line.
        assert up.stderr.rstrip().endswith(
            f"vpn: {name}: serving in the background; the log goes to {log_file} (there is "
            "no syslog socket at /dev/log)"), up.stderr
        (pid,) = _pids(host)
        # A later line: a SIGHUP reload of a broken file, which only the log reports.
        config.write_text(config.read_text() + "\n[Peer]\nPublicKey = nonsense\n")
        os.kill(pid, signal.SIGHUP)
        _wait(lambda: "reload failed" in log_file.read_text(), "logged")
        line = next(ln for ln in log_file.read_text().splitlines() if "reload failed" in ln)
        assert f" ERROR   vpn.endpoint: interface {name}: reload failed, nothing changed: " \
            f"{config}:" in line and "PublicKey: not a base64" in line
        down = _vpn(host, "down", name)
        assert down.returncode == 0, down.stderr
        _wait(lambda: f"interface {name} down" in log_file.read_text(), "down")
    finally:
        for left in _pids(host):  # the daemon outlives `ip netns del`
            with contextlib.suppress(ProcessLookupError):
                os.kill(left, signal.SIGTERM)
        # It logs to its end: remove the file once it has gone, or it comes back.
        _wait(lambda: not _pids(host), "stopped")
        log_file.unlink(missing_ok=True)
        if made_dir:
            with contextlib.suppress(OSError):
                LOG_DIR.rmdir()


def test_show_dump_is_wg_show_dump_and_save_writes_the_file_it_came_from(lab: Lab) -> None:
    host = lab.host("a")
    name = f"vs{secrets.token_hex(3)}"
    config = lab.path(f"{name}.conf")
    config.write_text(_config(
        51993,
        _peer("AllowedIPs = 198.18.92.0/24, fd00:92::/64", "Endpoint = 198.18.91.2:51000",
              f"PresharedKey = {wg('genpsk')}", "PersistentKeepalive = 90"),
        _peer("AllowedIPs = 198.18.90.7/32")))
    config.chmod(0o600)
    # Started from a relative path in the lab's directory: `vpn save` runs from elsewhere.
    proc = host.start("sh", "-c", 'cd "$1" && shift && exec "$@"', "in-dir", str(config.parent),
                      sys.executable, "-m", "vpn.cli", "up", "--foreground", config.name,
                      env=dict(os.environ, PYTHONPATH=str(ROOT)))
    while host.run("wg", "show", name, "listen-port", check=False).returncode != 0:
        assert proc.popen.poll() is None, proc.output()
    def lines_of(output: str) -> str:  # the socket directory is every netns's
        return "".join(ln for ln in output.splitlines(keepends=True)
                       if ln.startswith(f"{name}\t"))

    # Each pair read until the two agree: the handshake retries to the unreachable endpoint
    # move the transfer counters every few seconds, so one read may fall between them. A
    # difference of form never goes away.
    pairs = {
        "dump": (("show", name, "dump"), lambda out: out),
        "all dump": (("show", "all", "dump"), lines_of),
        "text": (("show", name), lambda out: out),
    }
    for what, (args, pick) in pairs.items():
        deadline = time.monotonic() + 20
        while True:
            ours = _vpn(host, *args)
            theirs = pick(host.run("wg", *args).stdout)
            assert ours.returncode == 0, ours.stderr
            # `vpn show` is `wg show`'s text, then its offload section.
            mine = pick(ours.stdout)[:len(theirs)] if what == "text" else pick(ours.stdout)
            if mine == theirs or time.monotonic() > deadline:
                break
        assert mine == theirs, what
    assert len(theirs.splitlines()) > 8 and "every 1 minute, 30 seconds" in theirs
    assert ours.stdout[len(theirs):].startswith("\noffload:\n")
    assert f"interface: {name}" in _vpn(host, "show", "all").stdout

    added = wg("pubkey", input=wg("genkey"))
    host.run("wg", "set", name, "peer", added, "allowed-ips", "198.18.89.0/24")
    saved = _vpn(host, "save", name, cwd=Path("/"))
    assert saved.returncode == 0, saved.stderr
    assert f"PublicKey = {added}" in config.read_text()
    assert not Path(f"/etc/wireguard/{name}.conf").exists()
    assert proc.stop(timeout=30) == 0


def test_down_and_reload_name_wireguard_go(lab: Lab) -> None:
    host = lab.host("a")
    name = f"vg{secrets.token_hex(3)}"
    go = host.start("wireguard-go", "-f", name)
    lab.leftovers.append(SOCKET_DIR / f"{name}.sock")
    try:
        host.wait_for(f"wg show {name} listen-port", timeout=30)
        down = _vpn(host, "down", name)
        reload = _vpn(host, "reload", name)
    finally:
        go.stop()
    other = ("its management socket is served by another WireGuard implementation (such as "
             "wireguard-go), not by a vpn endpoint")
    assert down.returncode == 1
    assert down.stderr == f"vpn: {name}: {other}; stop it as it was started " \
                          f"(`wg-quick down {name}`, or `ip link del {name}`)\n"
    assert reload.returncode == 1
    assert reload.stderr == f"vpn: {name}: {other}, which cannot reload a file; apply one " \
                            f"with `wg syncconf {name} FILE`\n"


def test_the_log_of_a_run_ended_by_ip_link_del_is_in_order_and_quiet(lab: Lab) -> None:
    host = lab.host("a")
    name = f"vq{secrets.token_hex(3)}"
    config = lab.path(f"{name}.conf")
    config.write_text(_config(51992, _peer("AllowedIPs = 198.18.88.0/24"))
                      .replace("MTU = 1420\n", "MTU = 1420\nPostUp = true\n"))
    config.chmod(0o644)  # in a 0755 directory: wg-quick's "world accessible" warning
    config.parent.chmod(0o755)
    proc = host.start(sys.executable, "-m", "vpn.cli", "up", "--foreground", str(config),
                      env=dict(os.environ, PYTHONPATH=str(ROOT)))
    while f"interface {name} up" not in proc.output():
        assert proc.popen.poll() is None, proc.output()
        time.sleep(0.05)
    host.run("ip", "link", "del", name)  # as wg-quick down does to a userspace interface
    assert proc.popen.wait(timeout=30) == 0
    log = proc.output()
    # "up" after PostUp ran; the one warning is the file's, said once; the teardown of an
    # interface deleted under us (its addresses and routes went with it) warns of nothing.
    assert log.index("PostUp: true") < log.index(f"interface {name} up")
    warnings = [line for line in log.splitlines() if "WARNING" in line]
    assert len(warnings) == 1 and "world accessible" in warnings[0], log
    assert "Warning:" not in warnings[0]
    assert f"interface {name} was deleted: stopping" in log and f"interface {name} down" in log


def _peer_sections(showconf: str) -> set[str]:
    """`wg showconf`'s [Peer] sections, as a set: wireguard-go lists its peers from a map."""
    return {"[Peer]" + section.rstrip("\n") for section in showconf.split("[Peer]")[1:]}


def test_duplicate_peers_are_merged_as_wg_setconf_merges_them(lab: Lab) -> None:
    theirs, ours = lab.host("go"), lab.host("vpn")
    name = f"vm{secrets.token_hex(3)}"
    twice = wg("pubkey", input=wg("genkey"))
    text = (f"[Interface]\nPrivateKey = {wg('genkey')}\nListenPort = 51991\n"
            f"[Peer]\nPublicKey = {twice}\nAllowedIPs = 198.18.87.0/24\n"
            "Endpoint = 198.18.86.9:1000\nPersistentKeepalive = 25\n"
            f"[Peer]\nPublicKey = {wg('pubkey', input=wg('genkey'))}\n"
            "AllowedIPs = 198.18.85.0/24\n"
            f"[Peer]\nPublicKey = {twice}\nAllowedIPs = 198.18.84.0/24\n"
            f"PresharedKey = {wg('genpsk')}\nEndpoint = 198.18.86.10:1000\n")
    config = lab.path(f"{name}.conf")
    config.write_text(text)
    config.chmod(0o600)
    go = theirs.start("wireguard-go", "-f", name)
    lab.leftovers.append(SOCKET_DIR / f"{name}.sock")
    try:
        theirs.wait_for(f"wg show {name} listen-port", timeout=30)
        theirs.run("wg", "setconf", name, str(config))
        expected = theirs.run("wg", "showconf", name).stdout
    finally:
        go.stop()
        theirs.wait_for(f"! test -e {SOCKET_DIR / name}.sock")
    proc = ours.start(sys.executable, "-m", "vpn.cli", "up", "--foreground", str(config),
                      env=dict(os.environ, PYTHONPATH=str(ROOT)))
    while ours.run("wg", "show", name, "listen-port", check=False).returncode != 0:
        assert proc.popen.poll() is None, proc.output()
    got = ours.run("wg", "showconf", name).stdout
    assert proc.stop(timeout=30) == 0
    assert len(_peer_sections(expected)) == 2
    assert _peer_sections(got) == _peer_sections(expected)
    assert f"{config}:13: the same PublicKey as the [Peer] on line 4: merged" in proc.output()
