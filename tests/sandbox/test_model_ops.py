"""Model operations in the simulator (SCENARIOS.md): per-track metrics, canary rollouts and their abort,
label delay, concept drift, broken feature pipelines, request surges and scaling onto free GPUs."""

from __future__ import annotations

from typing import Any

import pytest

from core.domain import Action
from core.errors import PermanentToolError
from sandbox.cluster import Simulator
from sandbox.scenario import Scenario, parse_scenario

Raw = dict[str, Any]


def model_scenario(faults: list[Raw], *, slo: Raw | None = None, rollout: Raw | None = None,
                   nodes: int = 2, gpus: int = 4, replicas: int = 2, capacity: float | None = None,
                   duration: str = "1h") -> Scenario:
    w: Raw = {"name": "fraud-model", "kind": "inference", "replicas": replicas, "gpus_per_replica": 1,
              "model": "fraud-model", "current_version": 3,
              "slo": slo or {"latency_p95_ms": 50, "accuracy_min": 0.90, "error_rate_max": 0.01}}
    if rollout is not None:
        w["rollout"] = rollout
    if capacity is not None:
        w["capacity_qps"] = capacity
    return parse_scenario({"name": "t", "description": "t", "seed": 5,
                           "cluster": {"nodes": nodes, "gpus_per_node": gpus}, "workloads": [w],
                           "faults": faults, "duration": duration, "expect": {"incident": True}})


CANARY = {"strategy": "canary", "steps": [10, 50, 100], "step_every": "5m"}


def run_until(sim: Simulator, t: float) -> None:
    while sim.now < t:
        sim.step()


def test_scenario_start_metrics_follow_the_contract() -> None:
    sim = Simulator(model_scenario([]))
    run_until(sim, 60)
    m = sim.snapshot().model("fraud-model")
    assert m is not None
    assert 0.94 <= (m.accuracy or 0) <= 0.96  # max(0.90, 0.85) + 0.05
    assert 0.55 * 50 * 0.9 <= (m.latency_p95_ms or 0) <= 0.55 * 50 * 1.1
    assert m.error_rate == 0.0
    assert m.requests_per_s == pytest.approx(0.5 * 100 * 2)  # half the declared replicas' capacity
    assert m.replicas_ready == 2 and m.capacity_qps == 100


def test_canary_steps_on_schedule_and_becomes_the_served_version() -> None:
    sim = Simulator(model_scenario(
        [{"at": "2m", "type": "model_canary", "target": "fraud-model", "params": {"version": 4}}],
        rollout=CANARY))
    run_until(sim, 150)
    m = sim.snapshot().model("fraud-model")
    assert m is not None and m.tracks["canary"].version == 4 and m.tracks["canary"].traffic_pct == 10
    assert m.tracks["stable"].traffic_pct == 90 and m.serving_version == 3
    run_until(sim, 2 * 60 + 5 * 60 + 10)
    assert sim.snapshot().model("fraud-model").tracks["canary"].traffic_pct == 50  # type: ignore[union-attr]
    run_until(sim, 2 * 60 + 10 * 60 + 10)
    m = sim.snapshot().model("fraud-model")
    assert m is not None and m.serving_version == 4 and "canary" not in m.tracks
    # reaching 100 % is not a deploy for the model_*_regression causes
    assert m.last_deploy_at_s is None


def test_abort_rollout_sends_all_traffic_back_to_stable_and_keeps_the_version() -> None:
    sim = Simulator(model_scenario(
        [{"at": "2m", "type": "model_canary", "target": "fraud-model", "params": {"version": 4, "error_rate": 0.08}}],
        rollout=CANARY))
    run_until(sim, 180)
    m = sim.snapshot().model("fraud-model")
    assert m is not None and m.tracks["canary"].error_rate == pytest.approx(0.08, rel=0.15)
    assert m.tracks["stable"].error_rate == 0.0
    assert not sim.recovered()[0]  # a track with traffic breaks the error-rate SLO
    changed, detail = sim.execute(Action(name="abort_rollout", target="fraud-model"))
    assert changed and "aborted" in detail
    assert sim.verify(Action(name="abort_rollout", target="fraud-model")).ok
    run_until(sim, 20 * 60)
    m = sim.snapshot().model("fraud-model")
    assert m is not None and m.serving_version == 3 and 4 in m.versions
    assert m.tracks["stable"].traffic_pct == 100 and "canary" not in m.tracks
    assert sim.recovered()[0]
    assert sim.execute(Action(name="abort_rollout", target="fraud-model"))[0] is False  # idempotent


def test_abort_without_a_canary_is_refused() -> None:
    sim = Simulator(model_scenario([]))
    with pytest.raises(PermanentToolError, match="no canary rollout"):
        sim.abort_rollout("fraud-model")


def test_scale_workload_places_new_replicas_on_free_gpus_by_the_placement_rule() -> None:
    sim = Simulator(model_scenario([]))
    detail = sim.scale_workload("fraud-model", 4)
    assert "from 2 to 4" in detail
    assert sim.pods["fraud-model-2"].gpus == ["node-0/gpu-2"]
    assert sim.pods["fraud-model-3"].gpus == ["node-0/gpu-3"]
    run_until(sim, 60)
    assert sim.snapshot().model("fraud-model").replicas_ready == 4  # type: ignore[union-attr]
    assert sim.verify(Action(name="scale_deployment", target="fraud-model", params={"replicas": 4})).ok
    sim.scale_workload("fraud-model", 3)
    assert sim.pods["fraud-model-3"].state == "Deleted" and sim.recovered()[0]


def test_scale_is_refused_whole_when_the_free_gpus_do_not_fit() -> None:
    sim = Simulator(model_scenario([], nodes=1, gpus=3))
    with pytest.raises(PermanentToolError, match="fit only 1"):
        sim.scale_workload("fraud-model", 4)
    assert sorted(p for p in sim.pods) == ["fraud-model-0", "fraud-model-1"]  # nothing half-done


def test_surge_saturates_and_scaling_out_brings_latency_back() -> None:
    sim = Simulator(model_scenario(
        [{"at": "1m", "type": "traffic_surge", "target": "fraud-model", "params": {"multiplier": 3, "for": "2h"}}],
        capacity=100))
    run_until(sim, 120)
    snap = sim.snapshot()
    m = snap.model("fraud-model")
    assert m is not None and m.requests_per_s == pytest.approx(300)
    assert (m.latency_p95_ms or 0) > 50 and (m.accuracy or 0) > 0.9
    utils = [g.util_pct or 0 for g in snap.gpus if g.gpu in ("node-0/gpu-0", "node-0/gpu-1")]
    assert min(utils) >= 80
    sim.execute(Action(name="scale_deployment", target="fraud-model", params={"replicas": 4}))
    run_until(sim, 180)
    m = sim.snapshot().model("fraud-model")
    assert m is not None and (m.latency_p95_ms or 99) < 50 and sim.recovered()[0]


def test_load_at_exactly_capacity_meets_the_latency_slo() -> None:
    sim = Simulator(model_scenario(
        [{"at": "1m", "type": "traffic_surge", "target": "fraud-model", "params": {"multiplier": 2}}]))
    run_until(sim, 120)
    assert sim.recovered()[0]


def test_label_delay_shows_a_quality_drop_late_and_concept_drift_needs_fresh_labels() -> None:
    sim = Simulator(model_scenario(
        [{"at": "5m", "type": "concept_drift", "target": "fraud-model", "params": {"accuracy": 0.84, "over": "5m"}}],
        slo={"latency_p95_ms": 50, "accuracy_min": 0.90, "label_delay": "10m"}, duration="3h"))
    run_until(sim, 11 * 60)
    m = sim.models["fraud-model"]
    assert m.accuracy_true is not None and m.accuracy_true < 0.86  # the change is complete
    assert m.accuracy_now is not None and m.accuracy_now > 0.93  # labels still show the old world
    assert m.drift_psi == {}  # inputs unchanged
    run_until(sim, 21 * 60)
    assert (sim.models["fraud-model"].accuracy_now or 1) < 0.86
    # an older version does not help: it learned the old relation too
    sim.execute(Action(name="rollback_model", target="fraud-model"))
    sim.step()
    assert (sim.models["fraud-model"].accuracy_true or 1) < 0.87


def test_retraining_before_the_change_is_labelled_regains_only_part() -> None:
    def retrained_at(t: float) -> float:
        sim = Simulator(model_scenario(
            [{"at": "5m", "type": "concept_drift", "target": "fraud-model",
              "params": {"accuracy": 0.84, "over": "5m"}}],
            slo={"latency_p95_ms": 50, "accuracy_min": 0.90, "label_delay": "10m"}, duration="3h"))
        run_until(sim, t)
        sim.execute(Action(name="retrain_model", target="fraud-model"))
        run_until(sim, t + 700)
        sim.execute(Action(name="promote_model", target="fraud-model", params={"min_margin": 0.0}))
        run_until(sim, t + 720)
        return sim.models["fraud-model"].accuracy_true or 0.0

    early, late = retrained_at(12 * 60), retrained_at(25 * 60)
    assert late >= 0.93 and early < late - 0.03


def test_pipeline_break_jumps_drift_and_drops_accuracy() -> None:
    sim = Simulator(model_scenario(
        [{"at": "1m", "type": "feature_pipeline_break", "target": "fraud-model",
          "params": {"feature": "amount", "kind": "nulls", "fraction": 0.6}}]))
    run_until(sim, 120)
    m = sim.models["fraud-model"]
    assert m.drift_psi["amount"] > 1.0
    assert (m.accuracy_now or 1) < 0.90


def test_same_seed_same_model_metrics() -> None:
    def trace() -> list[Any]:
        sim = Simulator(model_scenario(
            [{"at": "1m", "type": "model_canary", "target": "fraud-model", "params": {"error_rate": 0.05}}],
            rollout=CANARY))
        out = []
        for _ in range(30):
            sim.step()
            out.append(sim.snapshot().model("fraud-model"))
        return out

    assert trace() == trace()
