"""The one rule for every C module and its Python reference: which of them runs.

Each module with a C twin imports it once and hands the outcome to `twin`, which decides:
the C module runs when it was built and the environment does not say VPN_FAST_PATH=python
(that forces the reference for the whole process); otherwise the reference runs, with the
reason the start log gives. Every decision is kept in TWINS, which `vpn.io.native`
sums up; each module keeps its own as NATIVE.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Literal

__all__ = ["PYTHON_FORCED", "TWINS", "FastPath", "Twin", "twin"]

PYTHON_FORCED = os.environ.get("VPN_FAST_PATH") == "python"

FastPath = Literal["native", "python"]


@dataclass(frozen=True, slots=True)
class Twin:
    """One module's choice between its C twin and its Python reference."""

    what: str  # what the C module does, as the start log names it
    built: bool  # it imported: tests compare it with the reference even where it does not run
    reason: str  # why the reference runs; "" when the C module does

    @property
    def native(self) -> bool:
        return not self.reason

    @property
    def path(self) -> FastPath:
        return "native" if self.native else "python"


TWINS: list[Twin] = []  # every module's, in the order they were imported


def twin(what: str, missing: ImportError | None = None) -> Twin:
    """The choice for the C module that does `what`: `missing` is the ImportError its import
    raised (not built, or no usable libcrypto), None when it imported."""
    if PYTHON_FORCED:
        why = "VPN_FAST_PATH=python"
    elif missing is not None:
        why = f"native {what} not available ({missing})"
    else:
        why = ""
    choice = Twin(what, missing is None, why)
    TWINS.append(choice)
    return choice
