"""The MLflow-backed sandbox for model operations: a canary version is registered (unserved) when its
rollout starts and served when it reaches 100 %; `abort_rollout` sends traffic back to stable and tags the
aborted version in MLflow; concept drift reaches the registry so that retraining learns the new relation
and the promotion gate compares versions on current labels."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from core.domain import Action
from sandbox.cluster import Simulator
from sandbox.scenario import Scenario, parse_scenario
from tools.mlflow_backend import T_DRIFT, MlflowModelBackend
from tools.model_registry_bridge import T_ABORTED, MlflowSandboxBackend
from tools.sandbox_backend import SandboxBackend


def scenario(fault: dict[str, Any], **slo: Any) -> Scenario:
    return parse_scenario({
        "name": "bridge", "description": "t", "seed": 31, "cluster": {"nodes": 1, "gpus_per_node": 4},
        "workloads": [{"name": "fraud-model", "kind": "inference", "replicas": 2, "gpus_per_replica": 1,
                       "model": "fraud-model", "current_version": 3,
                       "slo": {"latency_p95_ms": 50, "accuracy_min": 0.9, **slo},
                       "rollout": {"strategy": "canary", "steps": [10, 100], "step_every": "5m"}}],
        "faults": [fault], "duration": "1h", "expect": {"incident": True}})


def bridge(tmp_path: Path, sc: Scenario) -> tuple[Simulator, MlflowSandboxBackend]:
    sim = Simulator(sc)
    registry = MlflowModelBackend(f"sqlite:///{tmp_path / 'mlflow.db'}", name_prefix="b.", clock=lambda: sim.now)
    return sim, MlflowSandboxBackend(sim, SandboxBackend(sim), registry)


def run_until(sim: Simulator, b: MlflowSandboxBackend, t: float) -> None:
    while sim.now < t:
        sim.step()
        b.sync()


def test_aborted_canary_is_registered_unserved_and_tagged(tmp_path: Path) -> None:
    sim, b = bridge(tmp_path, scenario({"at": "1m", "type": "model_canary", "target": "fraud-model",
                                        "params": {"version": 4, "error_rate": 0.08}}))
    run_until(sim, b, 90)
    assert b.registry.versions("fraud-model") == [1, 2, 3, 4] and b.registry.serving_version("fraud-model") == 3
    res = b.execute(Action(name="abort_rollout", target="fraud-model"), idempotency_key="k1")
    assert res.ok and res.changed
    assert b.registry.version_tags("fraud-model", 4)[T_ABORTED] == "true"
    assert sim.models["fraud-model"].canary is None and b.registry.serving_version("fraud-model") == 3
    run_until(sim, b, 900)  # the rollout never resumes
    assert b.registry.serving_version("fraud-model") == 3


def test_a_canary_that_reaches_100_percent_moves_the_serving_alias(tmp_path: Path) -> None:
    sim, b = bridge(tmp_path, scenario({"at": "1m", "type": "model_canary", "target": "fraud-model",
                                        "params": {"version": 4, "accuracy": 0.96}}))
    run_until(sim, b, 60 + 300 + 20)
    assert sim.models["fraud-model"].serving == 4 and b.registry.serving_version("fraud-model") == 4


@pytest.mark.parametrize("label_delay", ["0s"])
def test_concept_drift_reaches_the_registry_and_a_retrain_beats_the_old_version(
        tmp_path: Path, label_delay: str) -> None:
    import json

    from sandbox import model_data

    sim, b = bridge(tmp_path, scenario({"at": "1m", "type": "concept_drift", "target": "fraud-model",
                                        "params": {"accuracy": 0.84, "over": "2m"}}, label_delay=label_delay))
    run_until(sim, b, 240)
    drift = json.loads(b.registry.model_tags("fraud-model")[T_DRIFT])
    assert drift == {model_data.CONCEPT_KEY: 1.0}
    assert b.execute(Action(name="retrain_model", target="fraud-model"), idempotency_key="r").ok
    res = b.execute(Action(name="promote_model", target="fraud-model"), idempotency_key="p")
    assert res.ok and res.changed, res.detail
    run_until(sim, b, 260)
    assert (sim.models["fraud-model"].accuracy_true or 0) > 0.93
