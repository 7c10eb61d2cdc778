"""The data path's knobs (vpn/endpoint/tuning.py): a flag wins over its environment
variable, which wins over the default, and a bad value names where it came from."""

from __future__ import annotations

import pytest

from vpn.endpoint.tuning import DEFAULTS, FLAGS, Tuning


@pytest.fixture(autouse=True)
def _no_knobs_in_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for _, env, _, _ in FLAGS.values():
        monkeypatch.delenv(env, raising=False)


def test_without_flags_or_environment_the_defaults_hold() -> None:
    assert Tuning.from_flags({}) == DEFAULTS == Tuning()


def test_a_flag_wins_over_its_variable_which_wins_over_the_default(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VPN_THREADS", "3")
    monkeypatch.setenv("VPN_SCHED_SLICE", "500")
    tuning = Tuning.from_flags({"--threads": "2", "--busy-poll": None, "--sched-slice": None})
    assert tuning == Tuning(threads=2, busy_poll_us=DEFAULTS.busy_poll_us, slice_us=500)


@pytest.mark.parametrize(("flags", "env", "named"),
                         [({"--sched-slice": "50"}, {}, "--sched-slice: scheduler slice"),
                          ({}, {"VPN_SCHED_SLICE": "soon"}, "VPN_SCHED_SLICE: scheduler slice"),
                          ({"--busy-poll": "-5"}, {"VPN_BUSY_POLL": "50"},
                           "--busy-poll: busy-poll budget"),
                          ({}, {"VPN_THREADS": "many"}, "VPN_THREADS: thread count")])
def test_a_bad_value_names_its_flag_or_variable(flags: dict[str, str], env: dict[str, str],
                                                named: str,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match=named):
        Tuning.from_flags(flags)
