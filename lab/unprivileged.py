"""Run a child process without privileges, wherever the checkout lies.

The child keeps uid 0 and loses its capabilities instead of becoming another user: another
user cannot import the project, nor even start a virtualenv's python, when the checkout lies
under a directory only its owner may enter (`mktemp -d` makes such directories, and CI runners
clone into them).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# uid 0 regains at execve every capability left in the bounding set, so that set is emptied
# too. CAP_DAC_READ_SEARCH stays so that a checkout owned by another user remains readable;
# it grants no network privilege.
DROP_CAPABILITIES = (
    "setpriv", "--inh-caps=-all", "--ambient-caps=-all",
    "--bounding-set=-all,+dac_read_search", "--",
)


def run_python(code: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """`code` run by this interpreter, importing this checkout, without network capabilities."""
    if os.geteuid() != 0:
        pytest.skip("INTEGRATION TEST NOT RUN: needs root to drop capabilities")
    return subprocess.run(
        [*DROP_CAPABILITIES, sys.executable, "-c", code],
        capture_output=True, text=True, timeout=timeout,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
    )
