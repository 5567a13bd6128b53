"""The governor agent: deterministic code that decides every proposed action against the policy.

Layer: agents. No LLM output, runbook text or log line reaches a tool without passing `decide` here; the
graph's `act` node refuses to execute an action that lacks an allow, or a consumed approval bound to the
same digest. This module only assembles the facts a decision needs (cluster capacity out of service,
executed-action history) and hands them to `policies.engine.PolicyEngine`.
"""

from __future__ import annotations

from core.actions import actions_on
from core.domain import Action, ClusterSnapshot, PolicyDecision, ResourceKind
from policies.engine import DecisionContext, HistoryEntry, PolicyEngine

POD_ACTIONS = actions_on(ResourceKind.pod)
WORKLOAD_ACTIONS = actions_on(ResourceKind.workload)
MODEL_ACTIONS = actions_on(ResourceKind.model)


def action_namespace(action: Action, snap: ClusterSnapshot) -> str | None:
    """The Kubernetes namespace an action acts in, for the policy's `namespace` conditions: named in the
    target (`team-a/trainer-0`), else the namespace the telemetry reports for the pod, or for the pods of
    the workload (or of the model's serving workload). None when unknown (no namespace in the telemetry, a
    node action, a name found in several namespaces): the engine then treats the condition as matching."""
    target = action.target
    if action.name in POD_ACTIONS | WORKLOAD_ACTIONS and "/" in target:
        return target.split("/", 1)[0] or None
    if action.name in POD_ACTIONS:
        found = {p.namespace for p in snap.pods if p.name == target}
    elif action.name in WORKLOAD_ACTIONS | MODEL_ACTIONS:
        workload = target
        if action.name in MODEL_ACTIONS:
            model = next((m for m in snap.models if m.name == target), None)
            workload = model.workload if model is not None and model.workload else target
        found = {p.namespace for p in snap.pods if p.workload == workload}
    else:
        return None
    return found.pop() if len(found) == 1 and None not in found else None


def decision_context(
    snap: ClusterSnapshot, *, incident_id: str, now_s: float, history: list[HistoryEntry],
    actions_in_incident: int, requested_by: str = "opsmedic", proposed_by_model: bool = False,
    action: Action | None = None,
) -> DecisionContext:
    out_nodes = sorted(n.name for n in snap.nodes if n.unschedulable or not n.ready)
    total_gpus = sum(n.gpus for n in snap.nodes)
    # A cordoned node's GPUs still serve their pods, so they count against the node breaker only; GPUs
    # that are lost, resetting or on a NotReady node serve nothing and count against the GPU breaker.
    out_gpus = {g.gpu for g in snap.gpus if not g.present or g.util_pct is None}
    for n in snap.nodes:
        if not n.ready:
            out_gpus.update(f"{n.name}/gpu-{i}" for i in range(n.gpus))
    return DecisionContext(
        incident_id=incident_id, now_s=now_s, requested_by=requested_by, total_nodes=len(snap.nodes),
        total_gpus=total_gpus, nodes_out_of_service=out_nodes, gpus_out_of_service=sorted(out_gpus),
        history=history, actions_in_incident=actions_in_incident, proposed_by_model=proposed_by_model,
        # a model whose inputs fail validation (a broken feature pipeline) may not be retrained on them
        retrain_blocked={m.name: "; ".join(f"{f}: {why}" for f, why in sorted(m.data_issues.items()))
                         for m in snap.models if m.data_issues},
        namespace=action_namespace(action, snap) if action is not None else None,
    )


def decide(engine: PolicyEngine, action: Action, ctx: DecisionContext) -> PolicyDecision:
    return engine.decide(action, ctx)
