"""pyroute2's IPRoute and NetlinkError without the rest of pyroute2.

`import pyroute2.anything` first runs the package's __init__, which imports every protocol
pyroute2 speaks (NDB over sqlite3, IPDB, conntrack, nl80211, plan9, ...): about 200 modules
and 6 MB of an endpoint's resident memory for classes it never uses. Here the package is
registered bare (its __path__, its __init__ not run), so the two modules the endpoint uses
import alone. The bare package still answers everything: a submodule is imported on first
access, and any other name (`from pyroute2 import NDB` elsewhere in the process) runs the
real __init__ into it first. When pyroute2 was imported before, it is used as it is.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys

PACKAGE = "pyroute2"


def _register_bare_package() -> None:
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or spec.loader is None or spec.submodule_search_locations is None:
        raise ImportError(f"{PACKAGE} is not installed")
    package = importlib.util.module_from_spec(spec)
    loader = spec.loader

    def complete(name: str) -> object:
        # A submodule, as `from pyroute2 import config` inside pyroute2 asks for it.
        if importlib.util.find_spec(f"{PACKAGE}.{name}") is not None:
            return importlib.import_module(f"{PACKAGE}.{name}")
        # Anything else lives in the real __init__: run it once, into this same module.
        del package.__dict__["__getattr__"]
        loader.exec_module(package)
        return getattr(package, name)

    package.__dict__["__getattr__"] = complete
    sys.modules[PACKAGE] = package


if PACKAGE not in sys.modules:
    _register_bare_package()

from pyroute2.iproute.linux import IPRoute  # noqa: E402  (after the bare package is in place)
from pyroute2.netlink.exceptions import NetlinkError  # noqa: E402

__all__ = ["IPRoute", "NetlinkError"]
