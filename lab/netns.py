"""A network lab of `ip netns` hosts joined by veth links, for tests, the demo and the bench.

Everything a Lab makes (namespaces, links, processes, captures) is torn down when it
closes, also on failure or Ctrl-C; namespaces left by a crashed run are swept at the next.
"""

from __future__ import annotations

import contextlib
import ctypes
import itertools
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

PREFIX = "vt"
_NAME = re.compile(rf"^{PREFIX}(\d+)x[0-9a-f]+-")


class LabUnavailable(RuntimeError):
    """This machine cannot build network namespaces (not root, no ip, no /dev/net/tun)."""


def lab_unavailable_reason() -> str | None:
    """Why a Lab cannot run here, or None when it can."""
    if os.geteuid() != 0:
        return "needs root (ip netns, veth, /dev/net/tun)"
    if shutil.which("ip") is None:
        return "needs iproute2's `ip`"
    if not os.path.exists("/dev/net/tun"):
        return "needs /dev/net/tun"
    return None


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check)


def sweep_stale_namespaces() -> list[str]:
    """Delete namespaces made by Labs whose process is gone (a crashed or killed run)."""
    removed = []
    for line in _ip("netns", "list", check=False).stdout.splitlines():
        name = line.split()[0] if line.strip() else ""
        m = _NAME.match(name)
        if m and not Path(f"/proc/{m.group(1)}").exists():
            _ip("netns", "del", name, check=False)
            removed.append(name)
    return removed


@dataclass
class Process:
    """A background process in a host, stopped by its pid when the lab closes."""

    popen: subprocess.Popen[bytes]
    log: Path
    args: Sequence[str]

    @property
    def pid(self) -> int:
        return self.popen.pid

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self, timeout: float = 5.0) -> int:
        """SIGTERM, then SIGKILL after `timeout`; returns the exit status."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        return self.popen.returncode


@dataclass
class Host:
    """One network namespace."""

    lab: Lab
    name: str
    ns: str

    def command(self, args: Sequence[str]) -> list[str]:
        return ["ip", "netns", "exec", self.ns, *args]

    def run(
        self, *args: str, check: bool = True, timeout: float = 120, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            self.command(args), capture_output=True, text=True, timeout=timeout, input=input
        )
        if check and proc.returncode != 0:
            raise RuntimeError(
                f"[{self.name}] {' '.join(args)} exited {proc.returncode}: "
                f"{proc.stderr.strip() or proc.stdout.strip()}"
            )
        return proc

    def sh(self, script: str, *, check: bool = True, timeout: float = 120,
           input: str | None = None) -> subprocess.CompletedProcess[str]:
        return self.run("sh", "-c", script, check=check, timeout=timeout, input=input)

    def start(self, *args: str, env: dict[str, str] | None = None) -> Process:
        return self.lab.spawn(self.command(args), label=self.name, env=env)

    def sysctl(self, key: str, value: str | int) -> None:
        self.run("sysctl", "-q", "-w", f"{key}={value}")

    def wait_for(self, script: str, timeout: float = 10.0) -> None:
        """Poll a shell condition inside the host until it succeeds."""
        deadline = time.monotonic() + timeout
        while True:
            if self.sh(script, check=False).returncode == 0:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"[{self.name}] still false after {timeout}s: {script}")
            time.sleep(0.05)

    def capture(
        self, iface: str, bpf: str = "", snaplen: int = 128, inbound_only: bool = False
    ) -> Capture:
        """Start tcpdump on `iface`; Capture.stop() returns tcpdump's verbose decode.

        inbound_only: this host's own outgoing packets show "incorrect" checksums that
        offload fills in later, so judge checksums only on what arrives.
        """
        pcap = self.lab.path(f"{self.name}-{iface}-{next(self.lab.serial)}.pcap")
        args = ["tcpdump", "-i", iface, "-n", "-U", "--immediate-mode", "-s", str(snaplen),
                "-w", str(pcap)]
        if inbound_only:
            args += ["-Q", "in"]
        proc = self.start(*args, *([bpf] if bpf else []))
        # tcpdump says "listening on" once the capture is open; packets before it are lost.
        deadline = time.monotonic() + 10
        while "listening on" not in proc.output():
            if proc.popen.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"tcpdump did not start: {proc.output()}")
            time.sleep(0.02)
        return Capture(self, proc, pcap)

    def iperf3(
        self, server: Host, address: str, *, seconds: float = 3, reverse: bool = False,
        extra: Sequence[str] = (),
    ) -> dict:
        """Run an iperf3 client here against a one-shot server in `server`; returns JSON."""
        port = str(5201 + secrets.randbelow(1000))
        srv = server.start("iperf3", "-s", "-1", "-p", port)
        server.wait_for(f"ss -ltn | grep -q ':{port} '")
        args = ["iperf3", "-c", address, "-p", port, "-t", str(seconds), "-J", *extra]
        if reverse:
            args.append("-R")
        try:
            out = self.run(*args, timeout=seconds + 60, check=False)
        finally:
            srv.stop()
        result = json.loads(out.stdout) if out.stdout.strip() else {}
        if out.returncode != 0 or "error" in result:
            raise RuntimeError(f"iperf3 failed: {result.get('error') or out.stderr}")
        return result


def iperf3_gbps(result: dict) -> float:
    return result["end"]["sum_received"]["bits_per_second"] / 1e9


@dataclass
class Capture:
    host: Host
    proc: Process
    pcap: Path

    def stop(self) -> str:
        time.sleep(0.2)  # let -U flush what is in flight
        self.proc.stop()
        out = subprocess.run(
            ["tcpdump", "-r", str(self.pcap), "-n", "-vv"], capture_output=True, text=True
        )
        return out.stdout


@dataclass
class Lab:
    """A set of hosts; use as a context manager so teardown always happens."""

    hosts: dict[str, Host] = field(default_factory=dict)
    processes: list[Process] = field(default_factory=list)
    # Files outside the workdir that the lab's processes may leave behind when killed (the
    # UAPI sockets of endpoints stopped with SIGKILL): removed at teardown.
    leftovers: list[Path] = field(default_factory=list)
    tag: str = ""
    workdir: Path | None = None
    # Numbers the files of spawned processes and captures. A counter, not
    # len(processes): tests spawn from several threads at once (two transfer servers given
    # one log file once let a sender connect on the other's "listening", and be refused).
    serial: Iterator[int] = field(default_factory=itertools.count, repr=False)

    def __post_init__(self) -> None:
        reason = lab_unavailable_reason()
        if reason:
            raise LabUnavailable(reason)
        sweep_stale_namespaces()
        self.tag = f"{PREFIX}{os.getpid()}x{secrets.token_hex(2)}"
        self.workdir = Path(tempfile.mkdtemp(prefix=f"{self.tag}-"))

    def path(self, name: str) -> Path:
        assert self.workdir is not None
        return self.workdir / name

    def host(self, name: str, *, forwarding: bool = False) -> Host:
        ns = f"{self.tag}-{name}"
        _ip("netns", "add", ns)
        host = Host(self, name, ns)
        self.hosts[name] = host
        host.run("ip", "link", "set", "lo", "up")
        if forwarding:
            host.sysctl("net.ipv4.ip_forward", 1)
            host.sysctl("net.ipv6.conf.all.forwarding", 1)
        return host

    def link(
        self,
        a: Host,
        b: Host,
        *,
        a_addrs: Sequence[str] = (),
        b_addrs: Sequence[str] = (),
        mtu: int = 1500,
        a_name: str | None = None,
        b_name: str | None = None,
    ) -> tuple[str, str]:
        """A veth pair between two hosts, up, with addresses (CIDR) on each end."""
        a_if = a_name or f"to-{b.name}"[:15]
        b_if = b_name or f"to-{a.name}"[:15]
        _ip("-n", a.ns, "link", "add", a_if, "mtu", str(mtu), "type", "veth",
            "peer", "name", b_if, "netns", b.ns, "mtu", str(mtu))
        for host, ifname, addrs in ((a, a_if, a_addrs), (b, b_if, b_addrs)):
            for addr in addrs:
                # nodad: IPv6 duplicate address detection would delay the address by seconds.
                extra = ["nodad"] if ":" in addr else []
                host.run("ip", "addr", "add", addr, "dev", ifname, *extra)
            host.run("ip", "link", "set", ifname, "up")
        return a_if, b_if

    def spawn(
        self, args: Sequence[str], *, label: str = "root", env: dict[str, str] | None = None
    ) -> Process:
        """Start a background process (in the root namespace unless `args` enter one)."""
        program = Path(args[4] if args[:3] == ["ip", "netns", "exec"] else args[0]).name
        log = self.path(f"{label}-{program}-{next(self.serial)}.log")
        with open(log, "wb") as out:
            popen = subprocess.Popen(
                list(args), stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env=env,
            )
        proc = Process(popen, log, args)
        self.processes.append(proc)
        return proc

    def close(self) -> None:
        for proc in reversed(self.processes):
            with contextlib.suppress(Exception):
                proc.stop()
        self.processes.clear()
        for host in self.hosts.values():
            _ip("netns", "del", host.ns, check=False)
        self.hosts.clear()
        for path in self.leftovers:
            path.unlink(missing_ok=True)
        self.leftovers.clear()
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None

    def __enter__(self) -> Lab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# Entering a named namespace for the duration of a block: sockets and TUN devices belong to
# the namespace they were created in and keep working after the process leaves it, which is
# how one process serves devices in several.
CLONE_NEWNET = 0x40000000
NETNS_RUN_DIR = "/var/run/netns"

_libc = ctypes.CDLL(None, use_errno=True)


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


@contextmanager
def inside(name: str | None) -> Iterator[None]:
    """Run the block in network namespace `name` (None: stay where we are)."""
    if name is None:
        yield
        return
    own = os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        try:
            target = os.open(os.path.join(NETNS_RUN_DIR, name), os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise FileNotFoundError(f"no network namespace named {name!r}") from None
        try:
            _setns(target)
        finally:
            os.close(target)
        try:
            yield
        finally:
            _setns(own)
    finally:
        os.close(own)
