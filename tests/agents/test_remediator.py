"""The remediator: a runbook's placeholder steps expanded against the incident and the live snapshot into a
typed, whitelisted ActionPlan (a proposal: the governor still decides every step)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from agents.remediator import expand_step, plan
from agents.runbook_source import RunbookCatalog
from core.domain import ClusterSnapshot, Diagnosis, Incident, ResourceKind
from core.errors import PermanentToolError
from knowledge.runbooks import Runbook, RunbookStep
from sandbox.cluster import Simulator
from sandbox.scenario import load_scenario


@pytest.fixture(scope="module")
def catalog() -> RunbookCatalog:
    return RunbookCatalog.bundled()


def world(path: Path, until: float) -> ClusterSnapshot:
    sim = Simulator(load_scenario(path))
    while sim.now < until:
        sim.step()
    return sim.snapshot()


def diag(cause: str, resource: str, summary: str = "summary") -> Diagnosis:
    return Diagnosis(root_cause=cause, resource=resource, confidence=0.9, summary=summary)  # type: ignore[arg-type]


def inc(resource: str, kind: ResourceKind = ResourceKind.gpu) -> Incident:
    return Incident(id="inc-1", resource=resource, resource_kind=kind, opened_at_s=100.0, signals=[])


def step(action: str, target: str, **params: Any) -> RunbookStep:
    return RunbookStep(action=action, target=target, risk="low", why="because", params=params)  # type: ignore[arg-type]


def runbook_with(catalog: RunbookCatalog, *steps: RunbookStep) -> Runbook:
    base = catalog.for_cause("gpu_fell_off_bus")
    assert base is not None
    return base.model_copy(update={"id": "test-runbook", "actions": list(steps)})


def test_xid79_plan_from_the_bundled_runbook(
    catalog: RunbookCatalog, scenario_path: Callable[[str], Path]
) -> None:
    snap = world(scenario_path("xid79-fell-off-bus"), 130)
    d = diag("gpu_fell_off_bus", "node-1/gpu-3")
    rb = catalog.for_cause("gpu_fell_off_bus")
    p = plan(inc("node-1/gpu-3"), d, rb, snap)
    keys = [s.action.key for s in p.steps]
    assert keys[:2] == ["cordon_node@node-1", "drain_node@node-1"]
    assert "reset_gpu" not in {s.action.name for s in p.steps}
    assert p.incident_id == "inc-1" and rb is not None and p.runbook_ids == [rb.id]
    assert all(s.runbook_id == rb.id and s.why for s in p.steps)
    assert all(s.optional == (s.action.name in ("notify", "escalate")) for s in p.steps)


def test_placeholders_expand_against_the_snapshot(
    catalog: RunbookCatalog, scenario_path: Callable[[str], Path]
) -> None:
    snap = world(scenario_path("xid48-ecc-reset"), 190)  # llama-ft-0 holds node-0/gpu-0..3
    rb = runbook_with(
        catalog,
        step("cordon_node", "node"),
        step("reschedule_pod", "pods_on_gpu"),
        step("reset_gpu", "gpu"),
        step("restart_pod", "pod"),
        step("escalate", "gpu"),
        step("notify", "workload"),
    )
    p = plan(inc("node-0/gpu-2"), diag("gpu_uncorrectable_ecc", "node-0/gpu-2"), rb, snap)
    assert [s.action.key for s in p.steps] == [
        "cordon_node@node-0",
        "reschedule_pod@llama-ft-0",
        "reset_gpu@node-0/gpu-2",
        "restart_pod@llama-ft-0",
        "escalate@node-0/gpu-2",
    ]  # a GPU has no workload: the notify step expands to nothing


def test_pods_on_a_not_ready_node_are_rescheduled_with_force(
    catalog: RunbookCatalog, scenario_path: Callable[[str], Path]
) -> None:
    snap = world(scenario_path("node-not-ready"), 200)
    rb = catalog.for_cause("node_not_ready")
    p = plan(inc("node-2", ResourceKind.node), diag("node_not_ready", "node-2"), rb, snap)
    resched = [s.action for s in p.steps if s.action.name == "reschedule_pod"]
    assert [a.key for a in resched] == ["reschedule_pod@fraud-model-2"] and resched[0].given_params() == {
        "force": True
    }
    assert "cordon_node@node-2" in [s.action.key for s in p.steps]
    healthy = world(scenario_path("node-not-ready"), 60)  # before the fault: no force
    acts = expand_step(
        step("reschedule_pod", "pods_on_node"),
        diag("node_not_ready", "node-2"),
        inc("node-2", ResourceKind.node),
        healthy,
    )
    assert [(a.key, a.given_params()) for a in acts] == [("reschedule_pod@fraud-model-2", {})]


def test_rollback_names_the_previous_version(
    catalog: RunbookCatalog, scenario_path: Callable[[str], Path]
) -> None:
    snap = world(scenario_path("bad-deploy-rollback"), 300)
    rb = catalog.for_cause("model_quality_regression")
    p = plan(
        inc("fraud-model", ResourceKind.model), diag("model_quality_regression", "fraud-model"), rb, snap
    )
    rollback = [s.action for s in p.steps if s.action.name == "rollback_model"]
    assert [(a.target, a.given_params()) for a in rollback] == [("fraud-model", {"to_version": 3})]


def test_app_error_restarts_only_the_pod(
    catalog: RunbookCatalog, scenario_path: Callable[[str], Path]
) -> None:
    snap = world(scenario_path("xid13-app-error"), 120)
    rb = catalog.for_cause("gpu_app_error")
    p = plan(inc("node-0/gpu-1"), diag("gpu_app_error", "fraud-model-1"), rb, snap)
    assert [s.action.key for s in p.steps if not s.optional] == ["restart_pod@fraud-model-1"]


def test_notify_message_comes_from_the_diagnosis(
    catalog: RunbookCatalog, scenario_path: Callable[[str], Path]
) -> None:
    snap = world(scenario_path("xid13-app-error"), 120)
    rb = runbook_with(catalog, step("notify", "pod", message="obey the log"))
    [s] = plan(inc("node-0/gpu-1"), diag("gpu_app_error", "fraud-model-1", "XID 13 in pod"), rb, snap).steps
    assert s.action.given_params() == {"message": "gpu_app_error on fraud-model-1: XID 13 in pod"}


def test_healthy_or_uncovered_means_no_steps(
    catalog: RunbookCatalog, scenario_path: Callable[[str], Path]
) -> None:
    snap = world(scenario_path("xid13-app-error"), 20)
    healthy = plan(
        inc("node-0/gpu-1"), diag("healthy", "node-0/gpu-1"), catalog.for_cause("gpu_fell_off_bus"), snap
    )
    assert healthy.steps == [] and "nothing to do" in healthy.rationale
    nothing = plan(inc("node-0/gpu-1"), diag("gpu_app_error", "fraud-model-1"), None, snap)
    assert nothing.steps == [] and "no runbook" in nothing.rationale


def test_targets_are_deduplicated_and_missing_ones_dropped(
    catalog: RunbookCatalog, scenario_path: Callable[[str], Path]
) -> None:
    snap = world(scenario_path("xid13-app-error"), 20)
    d = diag("gpu_uncorrectable_ecc", "node-1/gpu-3")  # nobody runs on node-1/gpu-3
    assert expand_step(step("reschedule_pod", "pods_on_gpu"), d, inc("node-1/gpu-3"), snap) == []
    assert expand_step(step("rollback_model", "model"), d, inc("node-1/gpu-3"), snap) == []
    assert [a.key for a in expand_step(step("cordon_node", "node"), d, inc("node-1/gpu-3"), snap)] == [
        "cordon_node@node-1"
    ]


def test_a_step_with_parameters_its_tool_refuses_is_an_error(
    catalog: RunbookCatalog, scenario_path: Callable[[str], Path]
) -> None:
    snap = world(scenario_path("xid13-app-error"), 20)
    rb = runbook_with(catalog, step("cordon_node", "node", force=True))
    with pytest.raises(PermanentToolError, match="invalid parameters"):
        plan(inc("node-0/gpu-1"), diag("gpu_fell_off_bus", "node-0/gpu-1"), rb, snap)
