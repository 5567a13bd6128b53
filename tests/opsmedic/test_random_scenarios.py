"""Scenarios generated at random within the contract (`tests/random_scenarios.py`): two of every fault kind,
on varied clusters, GPU models, ticks and approvers, each scored against what its fault implies. A fixed
seed keeps the run reproducible; other seeds are for `python tests/random_scenarios.py OUT N SEED`."""

from __future__ import annotations

import os

import pytest
from random_scenarios import KINDS, generate

from opsmedic.evaluation import run_scenario
from sandbox.scenario import parse_scenario

SEED = 2026


@pytest.fixture(scope="module")
def results() -> dict[str, object]:
    with pytest.MonkeyPatch.context() as mp:
        for var in list(os.environ):
            if var.startswith("OPSMEDIC_"):
                mp.delenv(var, raising=False)
        mp.setenv("OPSMEDIC_RETRIEVAL", "false")  # which runbooks are cited does not change what is done
        mp.setenv("OPSMEDIC_MODEL_REGISTRY", "sandbox")
        mp.setenv("OPSMEDIC_CLUSTER_BACKEND", "sandbox")
        return {raw["name"]: run_scenario(parse_scenario(raw)) for raw in generate(SEED, 2 * len(KINDS))}


def test_every_generated_scenario_passes_safely(results: dict[str, object]) -> None:
    failed = {name: r.failures for name, r in results.items() if not r.passed}  # type: ignore[attr-defined]
    assert failed == {}
    assert sum(r.unsafe_actions for r in results.values()) == 0  # type: ignore[attr-defined]
    assert sum(r.policy_bypasses for r in results.values()) == 0  # type: ignore[attr-defined]
