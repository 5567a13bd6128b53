"""diagnose_model's model-operations causes: canary_regression, feature_pipeline_broken, capacity_saturation
and concept_drift, each told apart from its neighbour, each citing its primary runbook, and the plans
built from those runbooks (abort, notify, scale with a computed replica count, retrain + promote)."""

from __future__ import annotations

from typing import Any

import pytest

from agents import remediator
from agents.diagnostician import find, to_diagnosis
from agents.runbook_source import RunbookCatalog
from core.domain import (
    ClusterSnapshot,
    GpuSample,
    Incident,
    ModelStatus,
    ModelTrack,
    NodeStatus,
    PodStatus,
    ResourceKind,
    Signal,
)

M = "fraud"


@pytest.fixture(scope="module")
def catalog() -> RunbookCatalog:
    return RunbookCatalog.bundled()


def status(**kw: Any) -> ModelStatus:
    base: dict[str, Any] = dict(name=M, serving_version=3, versions=[1, 2, 3], previous_version=2, accuracy=0.95,
                                latency_p95_ms=27.0, slo_accuracy_min=0.9, slo_latency_p95_ms=50.0,
                                error_rate=0.0, slo_error_rate_max=0.01, requests_per_s=100.0, workload="fraud-svc",
                                replicas_ready=2, capacity_qps=100.0)
    base.update(kw)
    return ModelStatus(**base)


def snapshot(m: ModelStatus, util: float = 50.0, gpus: int = 4) -> ClusterSnapshot:
    return ClusterSnapshot(
        at_s=1000.0,
        gpus=[GpuSample(gpu=f"node-0/gpu-{i}", node="node-0", index=i, util_pct=util if i < 2 else 0.0)
              for i in range(gpus)],
        nodes=[NodeStatus(name="node-0", ready=True, gpus=gpus)],
        pods=[PodStatus(name=f"fraud-svc-{i}", workload="fraud-svc", kind="inference", node="node-0",
                        gpus=[f"node-0/gpu-{i}"], phase="Running", ready=True) for i in range(2)],
        models=[m])


def incident(*kinds: str) -> Incident:
    return Incident(id="inc-1", resource=M, resource_kind=ResourceKind.model, opened_at_s=1000.0,
                    signals=[Signal(kind=k, resource=M, resource_kind=ResourceKind.model, at_s=1000.0, detail=k)
                             for k in kinds])


def plan_for(inc: Incident, snap: ClusterSnapshot, catalog: RunbookCatalog) -> tuple[str, str, list[str]]:
    f = find(inc, snap)
    rb = catalog.for_cause(f.root_cause, f.runbook_hint)
    assert rb is not None, f.root_cause
    p = remediator.plan(inc, to_diagnosis(f, [rb.id]), rb, snap)
    return f.root_cause, rb.id, [s.action.key for s in p.steps]


CANARY = {"stable": ModelTrack(version=3, traffic_pct=90), "canary": ModelTrack(version=4, traffic_pct=10)}


def test_failed_canary_is_aborted_not_rolled_back(catalog: RunbookCatalog) -> None:
    cause, rb, steps = plan_for(incident("canary_analysis_failed"), snapshot(status(tracks=CANARY)), catalog)
    assert (cause, rb) == ("canary_regression", "canary-rollback")
    assert steps == ["abort_rollout@fraud", "notify@fraud"]


def test_broken_pipeline_notifies_and_never_retrains_even_with_drift(catalog: RunbookCatalog) -> None:
    m = status(accuracy=0.88, drift_psi={"amount": 2.4}, data_issues={"amount": "null share 0.60 (reference 0.00)"})
    inc = incident("data_validation_failed", "drift_psi", "slo_accuracy")
    cause, rb, steps = plan_for(inc, snapshot(m), catalog)
    assert (cause, rb, steps) == ("feature_pipeline_broken", "feature-pipeline-break", ["notify@fraud"])
    assert "null share" in find(inc, snapshot(m)).summary


def test_drift_without_validation_failures_is_still_data_drift(catalog: RunbookCatalog) -> None:
    cause, _, steps = plan_for(incident("drift_psi"), snapshot(status(drift_psi={"amount": 0.4})), catalog)
    assert cause == "data_drift" and steps[0] == "retrain_model@fraud"


def test_saturation_scales_the_workload_out_with_headroom(catalog: RunbookCatalog) -> None:
    m = status(requests_per_s=300.0, latency_p95_ms=80.0)
    f = find(incident("slo_latency", "load_over_capacity"), snapshot(m, util=97.0, gpus=8))
    assert (f.root_cause, f.resource) == ("capacity_saturation", "fraud-svc")
    cause, rb, steps = plan_for(incident("slo_latency", "load_over_capacity"), snapshot(m, util=97.0, gpus=8), catalog)
    assert rb == "capacity-saturation-scale-out"
    assert steps == ["scale_deployment@fraud-svc"]
    p = remediator.plan(incident("slo_latency"), to_diagnosis(f, [rb]), catalog.for_cause(cause), snapshot(m, 97.0, 8))
    assert p.steps[0].action.given_params() == {"replicas": 4}  # 300 req/s at 80 % of 100 per replica


def test_scale_is_bounded_by_free_gpus() -> None:
    m = status(requests_per_s=300.0, latency_p95_ms=80.0)
    snap = snapshot(m, util=97.0, gpus=3)  # one GPU free
    f = find(incident("slo_latency"), snap)
    rb = RunbookCatalog.bundled().for_cause(f.root_cause)
    p = remediator.plan(incident("slo_latency"), to_diagnosis(f, ["x"]), rb, snap)
    assert p.steps[0].action.given_params() == {"replicas": 3}


def test_slow_model_with_idle_gpus_is_not_saturation() -> None:
    m = status(requests_per_s=100.0, latency_p95_ms=80.0, last_deploy_at_s=900.0)
    assert find(incident("slo_latency"), snapshot(m, util=40.0)).root_cause == "model_latency_regression"


def test_accuracy_decay_without_deploy_drift_or_broken_inputs_is_concept_drift(catalog: RunbookCatalog) -> None:
    m = status(accuracy=0.84, drift_psi={"amount": 0.01}, label_delay_s=600.0)
    cause, rb, steps = plan_for(incident("slo_accuracy"), snapshot(m), catalog)
    assert (cause, rb) == ("concept_drift", "concept-drift-accuracy-decay")
    assert steps == ["retrain_model@fraud", "promote_model@fraud"]
    assert "600s old" in find(incident("slo_accuracy"), snapshot(m)).evidence[-1].detail


def test_accuracy_drop_after_a_deploy_is_still_a_regression() -> None:
    m = status(accuracy=0.8, last_deploy_at_s=950.0)
    assert find(incident("slo_accuracy"), snapshot(m)).root_cause == "model_quality_regression"


def test_error_rate_after_a_deploy_is_a_quality_regression() -> None:
    m = status(error_rate=0.05, last_deploy_at_s=950.0)
    assert find(incident("slo_error_rate"), snapshot(m)).root_cause == "model_quality_regression"


def test_no_free_gpu_turns_the_scale_into_an_escalation() -> None:
    m = status(requests_per_s=300.0, latency_p95_ms=80.0)
    snap = snapshot(m, util=97.0, gpus=2)  # both GPUs serve the replicas
    f = find(incident("slo_latency"), snap)
    rb = RunbookCatalog.bundled().for_cause(f.root_cause)
    p = remediator.plan(incident("slo_latency"), to_diagnosis(f, ["x"]), rb, snap)
    assert [s.action.key for s in p.steps] == ["escalate@fraud-svc"]
    assert "none is free" in p.steps[0].action.given_params()["message"]
