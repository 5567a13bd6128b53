"""The one registry of whitelisted tools: name, parameter model, kind, risk, reversibility, verification.

Anything not declared here is refused (`get_tool` raises). The policy file may raise or lower a tool's
risk for a deployment; the registry holds the defaults and the facts that policy cannot change
(what a tool targets, whether it can be undone, how its effect is checked).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from core.domain import ACTION_NAMES, Action, ResourceKind, Risk
from core.errors import PermanentToolError


class NoParams(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DrainParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    grace_period_s: int = Field(default=30, ge=0, le=3600)
    deadline_s: int = Field(default=600, ge=1, le=86400)


class RescheduleParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    force: bool = False  # only for pods on NotReady nodes, after the grace period (policy decides)


class ScaleParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    replicas: int = Field(ge=0, le=10000)


class RollbackParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    to_version: int | None = Field(default=None, ge=1)


class PromoteParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    version: int | None = Field(default=None, ge=1)
    min_margin: float = Field(default=0.01, ge=0.0, le=1.0)


class MessageParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    message: str = Field(default="", max_length=4000)


class EscalateParams(MessageParams):
    # what a pager needs besides the story: the policy's severity and the diagnosis's evidence
    severity: Literal["critical", "error", "warning", "info"] | None = None
    evidence: list[str] = Field(default_factory=list, max_length=20)


class ToolSpec(BaseModel):
    model_config = ConfigDict(frozen=True)

    name: str
    kind: Literal["read", "act"]
    target_kind: ResourceKind
    risk: Risk
    reversible: bool
    takes_capacity: bool  # takes a node or GPU out of service (counted by the circuit breaker)
    params: type[BaseModel]
    verify: str  # how the effect is checked, in words (shown by `policy explain` and the demo)
    summary: str


ACTION_TOOLS: dict[str, ToolSpec] = {
    s.name: s
    for s in [
        ToolSpec(name="restart_pod", kind="act", target_kind=ResourceKind.pod, risk=Risk.low,
                 reversible=True, takes_capacity=False, params=NoParams,
                 verify="the pod is Running and ready again with a fresh start time",
                 summary="delete the pod so its controller re-creates it in place"),
        ToolSpec(name="reschedule_pod", kind="act", target_kind=ResourceKind.pod, risk=Risk.medium,
                 reversible=True, takes_capacity=False, params=RescheduleParams,
                 verify="the pod runs on another node or on healthy GPUs",
                 summary="evict the pod so that it is re-created on a schedulable node"),
        ToolSpec(name="cordon_node", kind="act", target_kind=ResourceKind.node, risk=Risk.low,
                 reversible=True, takes_capacity=True, params=NoParams,
                 verify="the node is unschedulable and labelled by opsmedic",
                 summary="mark the node unschedulable so no new pods land on it"),
        ToolSpec(name="uncordon_node", kind="act", target_kind=ResourceKind.node, risk=Risk.low,
                 reversible=True, takes_capacity=False, params=NoParams,
                 verify="the node is schedulable again",
                 summary="return a node to service"),
        ToolSpec(name="drain_node", kind="act", target_kind=ResourceKind.node, risk=Risk.high,
                 reversible=True, takes_capacity=True, params=DrainParams,
                 verify="no evictable pod is left on the node and the evicted pods run elsewhere",
                 summary="evict every pod on the node through the Eviction API (respects PDBs)"),
        ToolSpec(name="reset_gpu", kind="act", target_kind=ResourceKind.gpu, risk=Risk.high,
                 reversible=False, takes_capacity=True, params=NoParams,
                 verify="the GPU is visible, its volatile ECC counters are clear, no remap pending",
                 summary="reset one GPU (nvidia-smi -r on its node); refused while a process uses it"),
        ToolSpec(name="scale_deployment", kind="act", target_kind=ResourceKind.workload,
                 risk=Risk.medium, reversible=True, takes_capacity=False, params=ScaleParams,
                 verify="the workload has the requested number of ready replicas",
                 summary="set a Deployment's or StatefulSet's replica count"),
        ToolSpec(name="pause_job", kind="act", target_kind=ResourceKind.workload, risk=Risk.medium,
                 reversible=True, takes_capacity=False, params=NoParams,
                 verify="the job's pods are gone and the job is marked paused",
                 summary="suspend a training job (scale to zero, keeping its checkpoints)"),
        ToolSpec(name="resume_job", kind="act", target_kind=ResourceKind.workload, risk=Risk.low,
                 reversible=True, takes_capacity=False, params=NoParams,
                 verify="the job's pods are Running again",
                 summary="resume a paused training job from its last checkpoint"),
        ToolSpec(name="rollback_model", kind="act", target_kind=ResourceKind.model,
                 risk=Risk.medium, reversible=True, takes_capacity=False, params=RollbackParams,
                 verify="the serving alias points at the previous good version and the SLO holds",
                 summary="move the model's serving alias back to the previous good version"),
        ToolSpec(name="retrain_model", kind="act", target_kind=ResourceKind.model, risk=Risk.high,
                 reversible=True, takes_capacity=False, params=NoParams,
                 verify="a new model version is registered with its evaluation metrics",
                 summary="train a new version on recent data (not served until promoted)"),
        ToolSpec(name="promote_model", kind="act", target_kind=ResourceKind.model, risk=Risk.medium,
                 reversible=True, takes_capacity=False, params=PromoteParams,
                 verify="the serving alias points at the new version, which beat the old one",
                 summary="serve the newest version if it beats the serving one on held-out data"),
        ToolSpec(name="abort_rollout", kind="act", target_kind=ResourceKind.model, risk=Risk.medium,
                 reversible=True, takes_capacity=False, params=NoParams,
                 verify="all traffic is on the stable version and the canary version is unserved",
                 summary="abort a canary rollout: send all traffic back to the stable version"),
        ToolSpec(name="notify", kind="act", target_kind=ResourceKind.cluster, risk=Risk.low,
                 reversible=True, takes_capacity=False, params=MessageParams,
                 verify="the message was delivered", summary="tell the owning team"),
        ToolSpec(name="escalate", kind="act", target_kind=ResourceKind.cluster, risk=Risk.low,
                 reversible=True, takes_capacity=False, params=EscalateParams,
                 verify="a human was paged", summary="page a human with the incident's story"),
    ]
}

assert set(ACTION_TOOLS) == set(ACTION_NAMES), "the registry must declare exactly the whitelisted actions"


def get_tool(name: str) -> ToolSpec:
    try:
        return ACTION_TOOLS[name]
    except KeyError:
        raise PermanentToolError(f"unknown tool {name!r}: not in the whitelist") from None


def validate_action(action: Action) -> Action:
    """Check an action against its tool's parameter model; raise PermanentToolError if invalid."""
    spec = get_tool(action.name)
    try:
        spec.params.model_validate(action.params)
    except Exception as exc:  # pydantic.ValidationError, translated at the boundary
        raise PermanentToolError(f"{action.key}: invalid parameters: {exc}") from exc
    return action
