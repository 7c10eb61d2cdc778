"""pyroute2_lean: IPRoute imports without pyroute2's __init__, and the package still answers
every name afterwards (in a fresh interpreter: this one may have imported pyroute2 already)."""

from __future__ import annotations

import subprocess
import sys

CHECK = """
import sys
from vpn.host.pyroute2_lean import IPRoute, NetlinkError
assert "pyroute2.ndb.main" not in sys.modules, "the package's __init__ ran"
assert IPRoute.__module__ == "pyroute2.iproute.linux" and issubclass(NetlinkError, Exception)
from pyroute2 import NDB, IPRoute as Full
import pyroute2
assert Full is IPRoute and NDB.__module__ == "pyroute2.ndb.main"
print(pyroute2.__version__)
"""


def test_lean_import_then_the_whole_package() -> None:
    done = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True,
                          check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip()[0].isdigit()
