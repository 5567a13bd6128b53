"""The governor's decision context carries the namespace an action acts in, so the policy's `namespace`
conditions apply on a cluster with many tenants (issue 17); the sandbox (no namespaces) is unchanged."""

from __future__ import annotations

from typing import Any

from agents.governor import action_namespace, decision_context
from core.domain import Action, ClusterSnapshot, ModelStatus, NodeStatus, PodStatus, Verdict
from policies import PolicyEngine, load_policy
from policies.model import Condition


def pod(name: str, workload: str, namespace: str | None) -> PodStatus:
    return PodStatus(name=name, workload=workload, kind="inference", node="node-0", phase="Running", ready=True,
                     namespace=namespace)


SNAP = ClusterSnapshot(
    at_s=0.0, gpus=[], nodes=[NodeStatus(name="node-0", ready=True, gpus=4)],
    pods=[pod("api-0", "api", "prod"), pod("api-1", "api", "prod"), pod("job-0", "job", "research"),
          pod("twin-0", "twin", "a"), pod("twin-0", "twin", "b")],
    models=[ModelStatus(name="fraud-model", serving_version=2, versions=[1, 2], workload="api")],
)


def act(name: str, target: str, **params: Any) -> Action:
    return Action(name=name, target=target, params=params)  # type: ignore[arg-type]


def test_the_namespace_comes_from_the_target_or_the_telemetry() -> None:
    assert action_namespace(act("restart_pod", "api-0"), SNAP) == "prod"
    assert action_namespace(act("restart_pod", "team-x/api-0"), SNAP) == "team-x"  # named: taken as named
    assert action_namespace(act("scale_deployment", "job", replicas=2), SNAP) == "research"
    assert action_namespace(act("rollback_model", "fraud-model"), SNAP) == "prod"  # its serving workload
    assert action_namespace(act("restart_pod", "twin-0"), SNAP) is None  # in two namespaces: unknown
    assert action_namespace(act("restart_pod", "nowhere"), SNAP) is None
    assert action_namespace(act("cordon_node", "node-0"), SNAP) is None  # cluster-wide


def test_a_namespace_condition_applies_to_its_namespace_only() -> None:
    policy = load_policy()
    rp = policy.actions["restart_pod"].model_copy(
        update={"approval": False, "conditions": [Condition(namespace="prod", require_approval=True)]})
    engine = PolicyEngine(policy.model_copy(update={"actions": {**policy.actions, "restart_pod": rp}}))

    def verdict(target: str) -> Verdict:
        a = act("restart_pod", target)
        ctx = decision_context(SNAP, incident_id="i", now_s=0.0, history=[], actions_in_incident=0, action=a)
        return engine.decide(a, ctx).verdict

    assert verdict("api-0") == Verdict.needs_approval  # prod: a human decides
    assert verdict("job-0") == Verdict.allow  # research: the condition does not apply
    assert verdict("twin-0") == Verdict.needs_approval  # unknown namespace: the condition holds, to be safe
    # without the action (the old call), the namespace is unknown, as before
    ctx = decision_context(SNAP, incident_id="i", now_s=0.0, history=[], actions_in_incident=0)
    assert ctx.namespace is None
