"""The drop-reason catalogue (vpn/core/drops.py) against everything that names a reason: the
reasons the code counts (an AST scan of the vpn package, so a new free string fails here),
the C side's count orders (wire.h) and reason table (_gso.c), the docs' table, and the
counter outputs, which must read the same whether a key is a member or its plain string."""

from __future__ import annotations

import ast
import json
import re
from collections import Counter
from pathlib import Path

import pytest

from tests.unit.control.test_metrics import counters
from tests.unit.core.test_wire_header import INCLUDE, enums
from vpn.control.metrics import render
from vpn.control.uapi import format_stats
from vpn.core.drops import Drop

ROOT = Path(__file__).resolve().parents[3]
PACKAGE = ROOT / "vpn"
MEMBERS = {member.value for member in Drop}

# Calls whose string arguments are drop reasons, and the exceptions whose first is.
_COUNTING_CALLS = {"_drop", "drop", "count_drop"}
_REASON_ERRORS = {"OffloadError", "MessageError", "HandshakeError", "TransportError"}
_REASON_NAMES = {"reason", "drop_reason"}


def _name(node: ast.expr) -> str:
    """The last name of `a.b.c` or `c`; "" for anything else."""
    if isinstance(node, ast.Attribute):
        return node.attr
    return node.id if isinstance(node, ast.Name) else ""


def _strings(node: ast.expr) -> list[ast.expr]:
    """The expressions a reason position holds: the branches of `a if c else b` too."""
    if isinstance(node, ast.IfExp):
        return _strings(node.body) + _strings(node.orelse)
    return [node]


def _is_drops_get(func: ast.expr) -> bool:
    """`drops.get`, `self.drops.get`."""
    return isinstance(func, ast.Attribute) and func.attr == "get" \
        and _name(func.value).endswith("drops")


def reason_positions(tree: ast.AST) -> list[ast.expr]:
    """Every expression the code uses as a drop reason, by where it stands: an argument of a
    counting call or a reason-carrying exception, the key of a `drops` map, a value given to
    or compared with a `reason`, an element of a `*_REASONS` tuple."""
    found: list[ast.expr] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            callee = _name(node.func)
            if callee in _COUNTING_CALLS:
                found += [a for a in node.args if isinstance(a, ast.Constant | ast.JoinedStr)]
            elif node.args and (callee in _REASON_ERRORS or _is_drops_get(node.func)):
                found += _strings(node.args[0])
        elif isinstance(node, ast.Subscript) and _name(node.value).endswith("drops"):
            found += _strings(node.slice)
        elif isinstance(node, ast.Assign):
            targets = {_name(t) for t in node.targets}
            if targets & _REASON_NAMES:
                found += _strings(node.value)
            elif any(t.endswith("_REASONS") for t in targets) and isinstance(node.value,
                                                                              ast.Tuple):
                found += node.value.elts
        elif isinstance(node, ast.Compare) and _name(node.left) in _REASON_NAMES:
            found += node.comparators
    return found


def scan() -> tuple[set[str], set[str], list[str]]:
    """(literal reasons, Drop members named, reasons built at run time), over vpn/."""
    literals: set[str] = set()
    named: set[str] = set()
    built: list[str] = []
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        for node in reason_positions(tree):
            where = f"{path.relative_to(ROOT)}:{node.lineno}"
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                literals.add(node.value)
            elif isinstance(node, ast.JoinedStr):
                built.append(where)
        named |= {node.attr for node in ast.walk(tree) if isinstance(node, ast.Attribute)
                  and isinstance(node.value, ast.Name) and node.value.id == "Drop"}
    return literals, named, built


LITERALS, NAMED, BUILT = scan()


def c_reasons() -> set[str]:
    """The reasons the C modules name: wire.h's count orders and _gso.c's reason table."""
    out: set[str] = set()
    for enum, members in enums(INCLUDE / "wire.h").items():
        prefix = members[-1].split("_")[0] + "_"
        statuses = enum == "opened_status"  # a packet and a keepalive are not drops
        out |= {m.removeprefix(prefix).lower() for m in members[:-1]
                if not statuses or m not in ("OPENED_PACKET", "OPENED_KEEPALIVE")}
    table = re.search(r"reason_names\[RSN_COUNT\] = \{(.*?)\};",
                      (PACKAGE / "core" / "offload" / "_gso.c").read_text(), re.S)
    assert table is not None
    out |= set(re.findall(r'"([a-z0-9_]+)"', table.group(1)))
    return out


def test_the_scan_finds_a_reason_in_each_kind_of_place() -> None:
    source = """
self._drop("a", peer)
_drop(peer, drops, "b", n)
peer.count_drop("c", n)
raise OffloadError("d", "detail")
raise HandshakeError("e" if x else "f")
stats.drops["g"] += 1
drops.get("h", 0)
reason = "i"
if reason != "j": pass
SOME_REASONS = ("k", "l")
raise MessageError(f"m_{x}")
other("not a reason")
"""
    found = reason_positions(ast.parse(source))
    assert sorted(n.value for n in found if isinstance(n, ast.Constant)) == list("abcdefghijkl")
    assert [type(n) for n in found if not isinstance(n, ast.Constant)] == [ast.JoinedStr]


def test_the_scan_sees_the_code() -> None:
    """Not vacuous: the code's reasons are found, as literals or as members named."""
    assert {"TUN_NOT_IP", "TRUNCATED_IP", "BAD_MAC1", "STALE_TIMESTAMP"} <= NAMED
    assert len(LITERALS | {Drop[n].value for n in NAMED if n in Drop.__members__}) >= 50


def test_every_reason_the_code_counts_is_a_member() -> None:
    assert not LITERALS - MEMBERS, sorted(LITERALS - MEMBERS)
    assert not {n for n in NAMED if n not in Drop.__members__}


def test_no_reason_is_built_at_run_time() -> None:
    assert BUILT == [], "a reason is an f-string; give it a fixed member"


def test_every_member_is_counted_somewhere() -> None:
    """No dead member: each is a literal, a `Drop.X`, or one the C modules report."""
    used = LITERALS | {Drop[n].value for n in NAMED} | c_reasons()
    assert not MEMBERS - used, sorted(MEMBERS - used)


def test_the_c_modules_report_members() -> None:
    assert not c_reasons() - MEMBERS, sorted(c_reasons() - MEMBERS)


def test_each_member_is_its_string_with_a_meaning() -> None:
    for member in Drop:
        assert member == member.value == str(member) == f"{member}"
        assert member.name == member.value.upper()
        assert member.meaning and "\n" not in member.meaning


def docs_reasons() -> list[str]:
    """The reasons the tables of docs/operations.md's "Drop reasons" list, in order."""
    text = (ROOT / "docs" / "operations.md").read_text()
    section = text.split("### Drop reasons", 1)[1].split("\n## ", 1)[0]
    out: list[str] = []
    for line in section.splitlines():
        if line.startswith("| `"):
            out += re.findall(r"`([^`]+)`", line.split("|")[1])
    return out


def test_the_docs_table_lists_exactly_the_members() -> None:
    listed = docs_reasons()
    assert len(listed) == len(set(listed)), "a reason listed twice"
    assert set(listed) == MEMBERS


def _plain(counts: dict[Drop, int]) -> dict[str, int]:
    return {str.__str__(k): v for k, v in counts.items()}


@pytest.mark.parametrize("openmetrics", [False, True])
def test_members_as_keys_render_byte_identical(openmetrics: bool) -> None:
    """Counter maps keyed by members (as the code now counts) against the same maps keyed
    by plain strings: the metrics, the get=vpn-stats lines and the JSON are the same bytes."""
    drops = Counter({Drop.NO_PEER_FOR_DESTINATION: 9, Drop.REPLAY: 4, Drop.TUN_WRITE_FULL: 2})
    protocol = {Drop.BAD_MAC1: 2, Drop.COOKIE_SENT: 1}
    typed = counters(drops=drops, protocol_drops=protocol)
    plain = counters(drops=_plain(drops), protocol_drops=_plain(protocol))
    assert all(type(k) is str for k in plain.drops)
    assert render(typed, openmetrics=openmetrics) == render(plain, openmetrics=openmetrics)
    assert format_stats(typed.to_stats()) == format_stats(plain.to_stats())
    assert json.dumps(typed.to_stats()) == json.dumps(plain.to_stats())
