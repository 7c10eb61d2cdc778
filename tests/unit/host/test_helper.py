"""The privileged helper: what its policy allows, and a real helper process answering,
refusing, surviving SIGTERM and exiting when our end closes."""

from __future__ import annotations

import os
import signal

import pytest

from vpn.host import helper
from vpn.host.capabilities import CAP_NET_ADMIN, CAP_NET_BIND_SERVICE
from vpn.host.confine import kept_capabilities
from vpn.host.helper import Helper, Policy

POLICY = Policy(hooks=("echo down wg0",), resolvconf_names=("tun.wg0",))


@pytest.mark.parametrize(("argv", "allowed"), [
    (["bash", "-c", "echo down wg0"], True),
    (["bash", "-c", "echo down wg0; id"], False),
    (["sh", "-c", "echo down wg0"], False),
    (["bash", "-c", "echo down wg0", "extra"], False),
    (["resolvconf", "-d", "tun.wg0", "-f"], True),
    (["resolvconf", "-d", "tun.wg1", "-f"], False),
    (["resolvconf", "-a", "tun.wg0", "-f"], False),
    ([], False),
])
def test_policy(argv: list[str], allowed: bool) -> None:
    assert POLICY.allows(argv) is allowed


def test_kept_capabilities() -> None:
    assert kept_capabilities(51820) == [CAP_NET_ADMIN]
    assert kept_capabilities(53) == [CAP_NET_ADMIN, CAP_NET_BIND_SERVICE]
    assert kept_capabilities(None) == [CAP_NET_ADMIN, CAP_NET_BIND_SERVICE]


def test_a_helper_runs_what_it_may_and_nothing_else() -> None:
    started = Helper.start(POLICY)
    try:
        done = helper.run(["bash", "-c", "echo down wg0"], capture=True)
        assert (done.returncode, done.stdout) == (0, "down wg0\n")
        with pytest.raises(OSError, match="not allowed"):
            helper.run(["bash", "-c", "id"], capture=True)
        # A stop signal to the whole group must not take it away before the teardown.
        os.kill(started.proc.pid, signal.SIGTERM)
        assert helper.run(["bash", "-c", "echo down wg0"], capture=True).stdout == "down wg0\n"
    finally:
        started.close()
    assert started.proc.returncode == 0
    # Without a helper, commands run here again.
    assert helper.run(["bash", "-c", "echo here"], capture=True).stdout == "here\n"
