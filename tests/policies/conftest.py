"""Shared fixtures for the policies tests: a decision-context factory and policy builders."""

from __future__ import annotations

import pytest
from policy_helpers import WALL, act, make_ctx, policy_from  # noqa: F401  (shared with the test modules)

from policies import PolicyEngine, load_policy


@pytest.fixture()
def engine() -> PolicyEngine:
    return PolicyEngine(load_policy())
