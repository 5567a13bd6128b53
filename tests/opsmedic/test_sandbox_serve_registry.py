"""`opsmedic sandbox serve --mlflow-tracking-uri`: the scenario's models in an MLflow registry, served by alias
(`opsmedic.sandbox_serve.RegistryServing`), and model timestamps in /metrics as Unix time (`WallTimes`)."""

from __future__ import annotations

from pathlib import Path

from core.domain import Action
from opsmedic.sandbox_serve import RegistryServing, WallTimes
from sandbox.cluster import Simulator
from sandbox.scenario import load_scenario

REPO = Path(__file__).resolve().parents[2]
BAD_DEPLOY = REPO / "sandbox" / "scenarios" / "bad-deploy-rollback.yaml"


def test_the_registry_holds_the_models_and_a_restarted_pod_serves_the_alias(tmp_path: Path) -> None:
    sim = Simulator(load_scenario(BAD_DEPLOY))
    serving = RegistryServing(sim, f"sqlite:///{tmp_path / 'mlflow.db'}")
    registry = serving.registry
    assert registry.versions("fraud-model") == [1, 2, 3] and registry.serving_version("fraud-model") == 3
    while sim.now < 130:  # the bad deploy at 2m registers and serves version 4 in the registry too
        sim.step()
        serving.tick()
    assert registry.serving_version("fraud-model") == 4 and sim.models["fraud-model"].serving == 4

    # a client moves the alias back: nothing restarted, so the pods still serve what they loaded
    moved = registry.execute(Action(name="rollback_model", target="fraud-model", params={}), idempotency_key="k1")
    assert moved.ok and registry.serving_version("fraud-model") == 3
    serving.tick()
    assert sim.models["fraud-model"].serving == 4

    # `rollout restart`: the restarted pods load what `champion` names now
    for pod in [p for p in sim.pods.values() if p.workload == "fraud-model"]:
        sim.execute(Action(name="restart_pod", target=pod.name, params={}))
    serving.tick()
    assert sim.models["fraud-model"].serving == 3
    assert 4 in sim.models["fraud-model"].bad_versions


def test_model_timestamps_are_unix_time_at_the_serving_speed() -> None:
    sim = Simulator(load_scenario(BAD_DEPLOY))
    wall = WallTimes(sim, speed=20.0, clock=lambda: 1_000_000.0)
    while sim.now < 130:
        sim.step()
    from opsmedic.evaluation import SimTelemetry

    snap = SimTelemetry(sim).snapshot()
    (model,) = snap.models
    assert model.last_deploy_at_s is not None and model.last_deploy_at_s <= 130
    (shown,) = wall(snap).models
    assert shown.last_deploy_at_s == 1_000_000.0 + model.last_deploy_at_s / 20.0
    assert shown.accuracy == model.accuracy  # everything else as it was
