"""wg-quick's PreUp, PostUp, PreDown and PostDown hooks: bash commands, `%i` the interface."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from vpn.host import helper
from vpn.host.steps import SetupError, reason

log = logging.getLogger("vpn.host.netsetup")  # the host setup's one logger (see steps.py)


def run_hook(stage: str, command: str, ifname: str) -> None:
    """Run one PreUp/PostUp/PreDown/PostDown command with bash, `%i` as the interface.

    Output goes where ours goes, as with wg-quick: capturing it would also make us wait
    for any background process the hook starts, which keeps the pipe open. Once the
    endpoint has dropped its privileges, the privileged helper runs it, as root.
    """
    command = command.replace("%i", ifname)
    log.info("%s: %s", stage, command)
    try:
        proc = helper.run(["bash", "-c", command])
    except OSError as err:
        raise SetupError(f"{stage} hook `{command}`: {reason(err)}") from err
    if proc.returncode != 0:
        raise SetupError(f"{stage} hook `{command}` failed with exit status {proc.returncode}")


def run_hooks_reporting(stage: str, commands: Sequence[str], ifname: str) -> list[str]:
    """Run hooks whose failure must not stop a teardown; return the failures as text."""
    errors = []
    for command in commands:
        try:
            run_hook(stage, command, ifname)
        except SetupError as err:
            errors.append(str(err))
    return errors
