"""Shared fixtures: the network lab for integration tests."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, settings

from lab.netns import Lab, lab_unavailable_reason

# No clock in any profile: on a loaded 2-core machine one example can take longer than
# hypothesis' default 200 ms deadline, or its data longer than the too_slow check allows,
# and a property test asserts outcomes, never times.
UNTIMED = {"deadline": None, "suppress_health_check": [HealthCheck.too_slow]}
settings.register_profile("untimed", **UNTIMED)
# `make fuzz` runs the property tests with HYPOTHESIS_PROFILE=fuzz: many more examples.
settings.register_profile("fuzz", max_examples=20_000, **UNTIMED)
# `make sanitize` runs the native modules' property tests on an ASan/UBSan build with
# HYPOTHESIS_PROFILE=sanitize: a fifth of the examples (tests/examples.py scales the tests'
# own counts alike); `make test` runs them all on the normal build.
settings.register_profile("sanitize", max_examples=20, **UNTIMED)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "untimed"))


@pytest.fixture
def lab() -> Iterator[Lab]:
    reason = lab_unavailable_reason()
    if reason:
        # In CI the lab must run: a skip there would count a missing proof as a pass.
        if os.environ.get("CI"):
            pytest.fail(f"integration test cannot run in CI: {reason}")
        pytest.skip(f"INTEGRATION TEST NOT RUN: {reason}")
    with Lab() as built:
        yield built
