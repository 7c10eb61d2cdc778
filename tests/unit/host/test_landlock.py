"""Which paths the running endpoint keeps (landlock.rules_for); the confinement itself is
shown on a running endpoint by tests/integration/test_privileges.py."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from vpn.host import landlock
from vpn.host.landlock import CONFIG_DIR, READ, REMOVE_FILE, WRITE_FILE


def test_rules_keep_code_and_config_and_never_the_root(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "path", ["/", "", *sys.path])  # `python -m` run from /
    real = tmp_path / "real"
    real.mkdir()
    (real / "wg0.conf").write_text("[Interface]\n")
    linked = tmp_path / "etc"
    linked.mkdir()
    (linked / "wg0.conf").symlink_to(real / "wg0.conf")
    rules = dict(landlock.rules_for(str(linked / "wg0.conf"), "/run/wireguard"))
    assert "/" not in rules and "" not in rules
    assert rules[str(linked)] == rules[str(real)] == CONFIG_DIR
    assert rules["/run/wireguard"] == READ | REMOVE_FILE
    assert rules[sys.prefix] == READ and rules["/usr"] == READ
    assert not any(path.startswith(("/root", "/home", "/tmp")) and rights & WRITE_FILE
                   for path, rights in rules.items() if path not in (str(linked), str(real)))
    assert "/etc" not in rules and "/dev" not in rules  # only named files in them


def test_no_config_no_config_rule() -> None:
    rules = dict(landlock.rules_for(None, "/run/wireguard"))
    assert all(rights != CONFIG_DIR for rights in rules.values())
