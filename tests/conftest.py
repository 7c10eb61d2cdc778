"""Shared fixtures: the network lab for integration tests."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from hypothesis import settings

from lab.netns import Lab, lab_unavailable_reason

# `make fuzz` runs the property tests with HYPOTHESIS_PROFILE=fuzz: many more examples.
settings.register_profile("fuzz", max_examples=20_000, deadline=None)
# `make sanitize` runs the native modules' property tests on an ASan/UBSan build with
# HYPOTHESIS_PROFILE=sanitize: a fifth of the examples (tests/examples.py scales the tests'
# own counts alike); `make test` runs them all on the normal build.
settings.register_profile("sanitize", max_examples=20, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


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
