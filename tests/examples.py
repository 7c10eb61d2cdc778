"""How many examples a property test that sets its own count runs, by the hypothesis profile
in force (tests/conftest.py loads HYPOTHESIS_PROFILE).

Hypothesis lets a test's own max_examples override the profile, so such a test passes its
count through `examples`: the default profile runs it as written; a smaller profile scales it
down as it scales the default of 100. `make sanitize` (the "sanitize" profile, 20) runs the
native modules' property tests on an instrumented build several times slower than the normal
one, with a fifth of each count; `make test` runs the full counts on the normal build."""

from __future__ import annotations

from hypothesis import settings


def examples(n: int) -> int:
    """n, scaled down by a profile below the default (never below 10)."""
    share = settings.default.max_examples
    return max(10, n * share // 100) if share < 100 else n
