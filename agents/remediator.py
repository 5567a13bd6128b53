"""The remediator: turns a diagnosis and its runbook into a typed `ActionPlan` of whitelisted actions.

Layer: agents. The deterministic path takes the runbook's ordered `actions` and expands each placeholder
target (`node`, `gpu`, `pod`, `pods_on_gpu`, `pods_on_node`, `model`, `workload`) against the incident and
the current snapshot. The plan is a proposal: every step still goes through the governor, and actions
are executed (by `agents.graph`) only after it allows them.
"""

from __future__ import annotations

import math
from typing import Any

from core.actions import ACTION_TOOLS, MessageParams
from core.domain import Action, ActionPlan, ClusterSnapshot, Diagnosis, Incident, PlannedAction
from knowledge.runbooks import Runbook, RunbookStep

# Reschedule pods off a NotReady node by force: their kubelet is gone, so a graceful eviction never ends.
_FORCE_ON_NOT_READY = {"force": True}


def _node_of(resource: str, snap: ClusterSnapshot) -> str | None:
    if "/gpu-" in resource:
        return resource.split("/", 1)[0]
    if snap.node(resource) is not None:
        return resource
    pod = snap.pod(resource)
    if pod is not None:
        return pod.node
    return None


def _gpus_of(diag: Diagnosis, inc: Incident, snap: ClusterSnapshot) -> list[str]:
    for r in (diag.resource, inc.resource):
        if "/gpu-" in r:
            return [r]
    pod = snap.pod(diag.resource)
    return list(pod.gpus) if pod else []


def _workload_of(resource: str, snap: ClusterSnapshot) -> str | None:
    pod = snap.pod(resource)
    if pod is not None:
        return pod.workload
    if any(m.workload == resource for m in snap.models) or any(p.workload == resource for p in snap.pods):
        return resource  # the diagnosis named the workload itself (capacity_saturation)
    m = snap.model(resource)
    if m is not None:
        return m.workload or resource
    return None


# Scale out to where each replica serves this share of its capacity: headroom for the next minute of growth.
SCALE_TARGET_UTILISATION = 0.8


def _replicas_for(workload: str, snap: ClusterSnapshot) -> int | None:
    """Replicas that bring requests per replica under SCALE_TARGET_UTILISATION x capacity; never fewer than
    one more than now. The sandbox (or the cluster) refuses the scale whole if the GPUs are not free."""
    m = next((x for x in snap.models if x.workload == workload), None)
    if m is None or not m.requests_per_s or not m.capacity_qps:
        return None
    pods = [p for p in snap.pods if p.workload == workload]
    now = len(pods)
    need = max(now + 1, math.ceil(m.requests_per_s / (m.capacity_qps * SCALE_TARGET_UTILISATION)))
    # bounded by what free GPUs hold (each replica as large as the existing ones): asking for more is refused
    per = max(1, len(pods[0].gpus)) if pods and pods[0].gpus else 1
    used = {g for p in snap.pods for g in p.gpus}
    free_by_node: dict[str, int] = {}
    for g in snap.gpus:
        node = snap.node(g.node)
        if g.present and g.gpu not in used and node is not None and node.ready and not node.unschedulable:
            free_by_node[g.node] = free_by_node.get(g.node, 0) + 1
    fits = sum(n // per for n in free_by_node.values())
    return min(need, now + fits) if fits else 0


def _is_message(action: str) -> bool:
    """A step that tells people (notify, escalate: the catalogue gives it a message): it carries the
    diagnosis's story, and its failure does not stop the plan."""
    return issubclass(ACTION_TOOLS[action].params, MessageParams)


def expand_step(step: RunbookStep, diag: Diagnosis, inc: Incident, snap: ClusterSnapshot,
                step_runbook_id: str | None = None) -> list[Action]:
    """The concrete actions one runbook step stands for (possibly none: no pods on the GPU)."""
    params: dict[str, Any] = dict(step.params)
    res = diag.resource
    targets: list[str] = []
    if step.target == "node":
        node = _node_of(res, snap) or _node_of(inc.resource, snap)
        targets = [node] if node else []
    elif step.target == "gpu":
        targets = _gpus_of(diag, inc, snap)
    elif step.target == "pod":
        targets = [res] if snap.pod(res) is not None else [p.name for g in _gpus_of(diag, inc, snap)
                                                            for p in snap.pods_on_gpu(g)]
    elif step.target == "pods_on_gpu":
        targets = sorted({p.name for g in _gpus_of(diag, inc, snap) for p in snap.pods_on_gpu(g)})
    elif step.target == "pods_on_node":
        node = _node_of(res, snap)
        targets = [p.name for p in snap.pods_on_node(node)] if node else []
        n = snap.node(node) if node else None
        if step.action == "reschedule_pod" and n is not None and not n.ready:
            params = {**params, **_FORCE_ON_NOT_READY}
    elif step.target == "model":
        targets = [res] if snap.model(res) is not None else []
    elif step.target == "workload":
        w = _workload_of(res, snap)
        targets = [w] if w else []
    if _is_message(step.action):
        near = [r for r in diag.runbook_ids if r != step_runbook_id] if diag.root_cause == "unknown" else []
        params = {"message": (f"{diag.root_cause} on {res}: {diag.summary}"
                              + (f" Nearest runbooks: {', '.join(near)}." if near else ""))[:4000]}
    if step.action == "scale_deployment" and params.get("replicas") is None and targets:
        replicas = _replicas_for(targets[0], snap)
        if replicas == 0:
            # no free GPU holds another replica: the bound is reached, a human must find capacity
            why = f"{diag.root_cause} on {targets[0]}: scaling out needs GPUs and none is free; {diag.summary}"
            return [Action(name="escalate", target=targets[0], params={"message": why[:4000]})]
        if replicas is not None:
            params = {**params, "replicas": replicas}
    if step.action == "rollback_model" and not params.get("to_version"):
        m = snap.model(res)
        if m is not None and m.previous_version is not None:
            params = {**params, "to_version": m.previous_version}
    # an Action parses its parameters when built: invalid ones raise PermanentToolError here
    return [Action(name=step.action, target=t, params=params) for t in dict.fromkeys(targets)]


def plan(inc: Incident, diag: Diagnosis, runbook: Runbook | None, snap: ClusterSnapshot) -> ActionPlan:
    if runbook is None or diag.root_cause == "healthy":
        why = "healthy: nothing to do" if diag.root_cause == "healthy" else "no runbook covers this cause"
        return ActionPlan(incident_id=inc.id, steps=[], rationale=why)
    steps: list[PlannedAction] = []
    for step in runbook.actions:
        for action in expand_step(step, diag, inc, snap, runbook.id):
            steps.append(PlannedAction(action=action, why=step.why, runbook_id=runbook.id,
                                       optional=_is_message(step.action)))
    return ActionPlan(incident_id=inc.id, steps=steps, runbook_ids=[runbook.id],
                      rationale=f"runbook {runbook.id}: {runbook.title}")
