"""`VPN_FAST_PATH=python` forces the Python reference for the whole process. Each module
with a C twin decides once, at import, from PYTHON_FORCED and whether its twin was built;
`vpn.io.native.fast_path` sums the decisions up."""

from __future__ import annotations

import os

PYTHON_FORCED = os.environ.get("VPN_FAST_PATH") == "python"
