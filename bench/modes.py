"""The tunnel modes of `make bench`: which endpoint serves each end (a, b) of a lab pair
(lab/wg_lab.py), and for ours the extra `vpn up` arguments.

The kinds of end: "ours", "ours-offload-off" (`Offload = off`), "debian" (Debian's
wireguard-go on the PATH) and "modern" (the modern wireguard-go binary the bench is given).
A variant is two of ours started with extra `vpn up` arguments, named after them: the
variant "--threads 2" is the mode "ours --threads 2" (`--ours-variant`, or
BENCH_OURS_VARIANTS separated by commas).
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from lab.wg_lab import WgPair


@dataclass(frozen=True)
class Mode:
    name: str
    ends: tuple[str, str]
    label: str  # short, for the table and the chart
    up_args: tuple[str, ...] = ()

    @property
    def modern(self) -> bool:
        return "modern" in self.ends

    @property
    def all_ours(self) -> bool:
        return all(end.startswith("ours") for end in self.ends)


# "ours-wireguard-go": ours on a, Debian's wireguard-go on b, so a->b is ours sending to it
# and b->a it sending to ours (one datagram at a time, no GRO); "ours-modern-wireguard-go"
# the same facing the modern one.
BASE = (
    Mode("ours", ("ours", "ours"), "ours"),
    Mode("modern-wireguard-go", ("modern", "modern"), "modern wg-go"),
    Mode("wireguard-go", ("debian", "debian"), "Debian wg-go"),
    Mode("ours-modern-wireguard-go", ("ours", "modern"), "ours a, modern b"),
    Mode("ours-wireguard-go", ("ours", "debian"), "ours a, Debian b"),
    Mode("ours-offload-off", ("ours-offload-off", "ours-offload-off"), "ours Offload=off"),
)
BY_NAME = {mode.name: mode for mode in BASE}


def variant(args: str) -> Mode:
    """Two of ours started with `vpn up ARGS ...`."""
    split = tuple(shlex.split(args))
    if not split:
        raise ValueError("an ours variant needs at least one `vpn up` argument")
    name = "ours " + shlex.join(split)
    return Mode(name, ("ours", "ours"), name, split)


def label(name: str) -> str:
    """A mode's (or a kind's) short name; a variant's is its own name."""
    mode = BY_NAME.get(name)
    return mode.label if mode else name


def tunnel_modes(modern: bool, variants: Sequence[Mode] = ()) -> list[Mode]:
    """Every base mode (the modern wireguard-go's only when it can run), then the variants."""
    return [m for m in BASE if modern or not m.modern] + list(variants)


def start(pair: WgPair, mode: Mode, modern: Path | None) -> None:
    """Both ends of `pair` as `mode` says; `modern` is the modern wireguard-go's binary."""
    for node, kind in zip((pair.a, pair.b), mode.ends, strict=True):
        if kind == "debian":
            pair.start_wireguard_go(node)
        elif kind == "modern":
            if modern is None:
                raise ValueError(f"mode {mode.name} needs the modern wireguard-go's binary")
            pair.start_wireguard_go(node, binary=modern)
        else:
            pair.start_ours(node, offload=kind != "ours-offload-off", up_args=mode.up_args)
