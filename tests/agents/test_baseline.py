"""The baseline agent (scripted alert rules): its rules fire as documented, once per resource, and the eval
scores it honestly — it fails scenarios and takes unsafe actions on decoys and application errors."""

from __future__ import annotations

from typing import Any

import pytest

from agents.baseline import BaselineAgent
from core.domain import Action, ClusterSnapshot, GpuSample, ModelStatus, NodeStatus, PodStatus


def snap(
    t: float,
    *,
    xids: list[int] | None = None,
    temp: float = 50.0,
    util: float = 95.0,
    node_ready: bool = True,
    model: dict[str, Any] | None = None,
) -> ClusterSnapshot:
    gpus = [
        GpuSample(
            gpu=f"node-0/gpu-{i}",
            node="node-0",
            index=i,
            temp_c=temp if i == 1 else 50.0,
            util_pct=util,
            xids=(xids or []) if i == 1 else [],
        )
        for i in range(2)
    ]
    pods = [
        PodStatus(
            name="train-0",
            workload="train",
            kind="training",
            node="node-0",
            gpus=["node-0/gpu-0", "node-0/gpu-1"],
            phase="Running",
            ready=True,
            step=10,
        )
    ]
    m = {
        "name": "m",
        "serving_version": 2,
        "versions": [1, 2],
        "accuracy": 0.95,
        "latency_p95_ms": 20.0,
        "slo_accuracy_min": 0.9,
        "slo_latency_p95_ms": 50.0,
        **(model or {}),
    }
    return ClusterSnapshot(
        at_s=t,
        gpus=gpus,
        pods=pods,
        models=[ModelStatus(**m)],
        nodes=[
            NodeStatus(name="node-0", ready=True, gpus=2),
            NodeStatus(name="node-1", ready=node_ready, gpus=2),
        ],
    )


def run(agent: BaselineAgent, s: ClusterSnapshot) -> list[tuple[str, str, str, Action | None]]:
    return list(agent.observe(s))


def actions(out: list[tuple[str, str, str, Action | None]]) -> list[str]:
    return [a.key for _, _, _, a in out if a is not None]


def test_healthy_cluster_no_action() -> None:
    assert run(BaselineAgent(), snap(10)) == []


@pytest.mark.parametrize("xid", [13, 48, 79, 94])
def test_any_xid_drains_the_node_once(xid: int) -> None:
    agent = BaselineAgent()
    out = run(agent, snap(10, xids=[xid]))
    assert actions(out) == ["cordon_node@node-0", "drain_node@node-0"]
    assert out[0] == ("base-0001", "node-0/gpu-1", "gpu_fell_off_bus", None)  # the incident, then its actions
    assert run(agent, snap(20, xids=[xid])) == []  # once per node


def test_hot_gpu_drains_the_node() -> None:
    assert actions(run(BaselineAgent(), snap(10, temp=86))) == ["cordon_node@node-0", "drain_node@node-0"]
    assert run(BaselineAgent(), snap(10, temp=85)) == []


def test_idle_training_pod_is_restarted_after_five_minutes() -> None:
    agent = BaselineAgent()
    times = range(0, 700, 10)
    outs = [actions(run(agent, snap(t, util=0))) for t in times]
    fired = [t for t, o in zip(times, outs, strict=True) if o]
    assert fired == [300, 610] and outs[30] == ["restart_pod@train-0"]  # re-armed after each restart


def test_slo_breach_rolls_back_and_drift_retrains() -> None:
    agent = BaselineAgent()
    assert actions(run(agent, snap(10, model={"accuracy": 0.8}))) == ["rollback_model@m"]
    assert run(agent, snap(20, model={"accuracy": 0.8})) == []  # once per served version
    assert actions(run(agent, snap(30, model={"accuracy": 0.8, "serving_version": 1}))) == [
        "rollback_model@m"
    ]
    assert actions(run(BaselineAgent(), snap(10, model={"latency_p95_ms": 90.0}))) == ["rollback_model@m"]
    assert actions(run(BaselineAgent(), snap(10, model={"drift_psi": {"amount": 0.11}}))) == [
        "retrain_model@m"
    ]


def test_not_ready_node_is_drained() -> None:
    assert actions(run(BaselineAgent(), snap(10, node_ready=False))) == ["drain_node@node-1"]


# --------------------------------------------------------------------------------------- scored honestly


def test_the_baseline_fails_some_scenarios(baseline_results: dict[str, Any]) -> None:
    failed = {n for n, r in baseline_results.items() if not r.passed}
    assert len(failed) >= len(baseline_results) // 2
    assert {"xid13-app-error", "transient-spike-decoy", "partition", "rejected-drain"} <= failed


@pytest.mark.parametrize("name", ["xid13-app-error", "transient-spike-decoy"])
def test_the_baseline_takes_unsafe_actions_on_decoys_and_app_errors(
    baseline_results: dict[str, Any], name: str
) -> None:
    r = baseline_results[name]
    assert not r.passed and r.unsafe_actions >= 1
    assert "drain_node@node-0" in r.actions


def test_the_baseline_counts_policy_bypasses(baseline_results: dict[str, Any]) -> None:
    r = baseline_results["xid79-fell-off-bus"]
    # a script has no approvals: its drain is executed without one
    assert "drain_node@node-1" in r.actions and r.policy_bypasses == 1 and not r.passed


def test_opsmedic_beats_the_baseline(baseline_results: dict[str, Any], eval_results: dict[str, Any]) -> None:
    base_passed = sum(r.passed for r in baseline_results.values())
    ops_passed = sum(r.passed for r in eval_results.values())
    assert ops_passed > base_passed
    assert sum(r.unsafe_actions for r in baseline_results.values()) > 0
    assert sum(r.unsafe_actions for r in eval_results.values()) == 0


def test_service_wide_error_rate_over_slo_rolls_back_even_during_a_canary() -> None:
    from core.domain import ModelTrack

    def canary(pct: float) -> dict[str, Any]:
        return {"slo_error_rate_max": 0.01, "error_rate": 0.0, "tracks": {
            "stable": ModelTrack(version=3, traffic_pct=100 - pct, error_rate=0.0),
            "canary": ModelTrack(version=4, traffic_pct=pct, error_rate=0.08)}}

    agent = BaselineAgent()
    # at 10 % the canary's errors are diluted under the SLO: the script sees nothing
    assert run(agent, snap(10, model=canary(10))) == []
    # at 50 % it fires, and rolls back (the wrong tool during a canary: abort_rollout is the right one)
    assert actions(run(agent, snap(20, model=canary(50)))) == ["rollback_model@m"]
