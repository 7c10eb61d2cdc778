"""The privileged helper: the one process that keeps root's capabilities once the endpoint
has dropped its own (vpn/host/confine.py), so that what wg-quick runs as root at teardown
still runs as root: the PreDown/PostDown hooks and resolvconf.

It is a fresh interpreter (`python -m vpn.host.helper FD`), started before the drop, that
reads nothing from the network and runs only what its first message allowed: the hooks of
the config, word for word, and `resolvconf -d` for the interface's record. Everything else
(routes, links, nft and iptables, which need only CAP_NET_ADMIN) the endpoint does itself.
Requests and answers are JSON lines over a socketpair; the helper ignores SIGINT and
SIGTERM (a terminal's ^C or systemd's stop reach the whole group, and the endpoint still
needs it to tear down) and exits when the endpoint's end closes, however the endpoint ends.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Helper", "Policy", "run"]

_active: Helper | None = None


@dataclass(frozen=True)
class Policy:
    """What the helper may run: these hook commands with bash, resolvconf -d for these."""

    hooks: tuple[str, ...]
    resolvconf_names: tuple[str, ...]

    def allows(self, argv: Sequence[str]) -> bool:
        if len(argv) == 3 and argv[0] == "bash" and argv[1] == "-c":
            return argv[2] in self.hooks
        return (len(argv) == 4 and argv[0] == "resolvconf" and argv[1] == "-d"
                and argv[2] in self.resolvconf_names and argv[3] == "-f")


def run(argv: Sequence[str], *, input: str | None = None,
        capture: bool = False) -> subprocess.CompletedProcess[str]:
    """subprocess.run(argv) with text I/O: through the helper once one is in use, here
    otherwise. Without `capture`, output goes where ours goes. Raises OSError."""
    if _active is not None:
        return _active.run(argv, input=input, capture=capture)
    return subprocess.run(list(argv), input=input, capture_output=capture, text=True,
                          stdin=subprocess.DEVNULL if input is None else None, check=False)


class Helper:
    """The endpoint's side: start() spawns the helper, run() asks it, close() ends it."""

    def __init__(self, sock: socket.socket, proc: subprocess.Popen[bytes]) -> None:
        self._sock = sock
        self._file = sock.makefile("rwb")
        self._lock = threading.Lock()
        self.proc = proc

    @classmethod
    def start(cls, policy: Policy) -> Helper:
        """Spawn the helper with `policy`; from now on run() goes through it."""
        global _active
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        # The directory holding the vpn package, so the child imports this same code.
        root = str(Path(__file__).resolve().parents[2])
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(
            p for p in (root, os.environ.get("PYTHONPATH", "")) if p))
        with theirs:
            proc = subprocess.Popen(
                [sys.executable, "-m", "vpn.host.helper", str(theirs.fileno())],
                pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL, env=env)
        helper = cls(ours, proc)
        helper._send({"hooks": list(policy.hooks),
                      "resolvconf_names": list(policy.resolvconf_names)})
        _active = helper
        return helper

    def run(self, argv: Sequence[str], *, input: str | None = None,
            capture: bool = False) -> subprocess.CompletedProcess[str]:
        with self._lock:
            self._send({"argv": list(argv), "input": input, "capture": capture})
            line = self._file.readline()
        if not line:
            raise OSError(0, "the privileged helper is gone")
        answer = json.loads(line)
        if "error" in answer:
            raise OSError(answer.get("errno", 0), answer["error"])
        return subprocess.CompletedProcess(list(argv), answer["returncode"],
                                           answer["stdout"], answer["stderr"])

    def close(self) -> None:
        """End the helper (it exits when our end closes) and wait for it."""
        global _active
        if _active is self:
            _active = None
        self._file.close()
        self._sock.close()
        self.proc.wait()

    def _send(self, message: dict[str, object]) -> None:
        self._file.write(json.dumps(message).encode() + b"\n")
        self._file.flush()


def _answer(policy: Policy, request: dict[str, object]) -> dict[str, object]:
    argv = request.get("argv")
    if not isinstance(argv, list) or not all(isinstance(a, str) for a in argv):
        return {"error": "malformed request"}
    if not policy.allows(argv):
        return {"error": f"not allowed: {argv[:1]}", "errno": 1}
    stdin = request.get("input")
    capture = bool(request.get("capture"))
    try:
        proc = subprocess.run(argv, input=stdin if isinstance(stdin, str) else None,
                              capture_output=capture, text=True, check=False,
                              stdin=subprocess.DEVNULL if not isinstance(stdin, str) else None)
    except OSError as err:
        return {"error": err.strerror or str(err), "errno": err.errno or 0}
    return {"returncode": proc.returncode, "stdout": proc.stdout or "",
            "stderr": proc.stderr or ""}


def serve(fd: int) -> None:
    """The helper's loop: the policy first, then one answer per request, until EOF."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    with socket.socket(fileno=fd) as sock, sock.makefile("rwb") as file:
        first = file.readline()
        if not first:
            return
        spec = json.loads(first)
        policy = Policy(tuple(spec["hooks"]), tuple(spec["resolvconf_names"]))
        for line in file:
            try:
                request = json.loads(line)
            except ValueError:
                answer: dict[str, object] = {"error": "malformed request"}
            else:
                answer = (_answer(policy, request) if isinstance(request, dict)
                          else {"error": "malformed request"})
            file.write(json.dumps(answer).encode() + b"\n")
            file.flush()


if __name__ == "__main__":
    serve(int(sys.argv[1]))
