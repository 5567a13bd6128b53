"""Domain models shared by every layer of opsmedic.

This module sits at the bottom of the dependency graph (see DESIGN.md): it holds pydantic models and
vocabularies only, performs no I/O and imports nothing from opsmedic's other packages (within `core` only the
action catalogue `core.actions`, which sits below it, and `core.errors`). The sandbox, the
tools, the policy engine, the knowledge base and the agents all speak these types, so the vocabularies
here (root-cause labels, action names, risks) are exactly the ones in SCENARIOS.md.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable
from enum import StrEnum
from typing import Annotated, Any, Literal, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_serializer, model_validator

# The action vocabulary is the catalogue's (`core.actions`, below this module); re-exported here so that
# `from core.domain import ActionName, Risk, ResourceKind` keeps reading as the domain's words.
from core.actions import ACTION_NAMES as ACTION_NAMES
from core.actions import ActionName as ActionName
from core.actions import ActionParams, NoParams, parse_params
from core.actions import ResourceKind as ResourceKind
from core.actions import Risk as Risk
from core.errors import PermanentToolError

# --------------------------------------------------------------------------------------------------
# Vocabularies (SCENARIOS.md)
# --------------------------------------------------------------------------------------------------

RootCause = Literal[
    "gpu_fell_off_bus",
    "gpu_uncorrectable_ecc",
    "gpu_thermal_throttle",
    "gpu_memory_leak",
    "nvlink_errors",
    "gpu_app_error",
    "training_job_stalled",
    "node_not_ready",
    "pod_crashloop",
    "model_quality_regression",
    "model_latency_regression",
    "data_drift",
    "canary_regression",
    "concept_drift",
    "feature_pipeline_broken",
    "capacity_saturation",
    "gpu_reset_required",
    "node_reboot_required",
    "unknown",
    "healthy",
]
ROOT_CAUSES: tuple[str, ...] = RootCause.__args__  # type: ignore[attr-defined]

# Root causes are the runbooks' own labels: `RootCause` above is the contract's core set (scenario files use
# only these, and every one of them needs a primary runbook), and a runbook library may declare more. The
# runbook loader registers the labels of every runbook it validates, so that a diagnosis may carry a label the
# loaded library knows and nothing else. Registration only adds: a label once known stays known in a process.
ROOT_CAUSE_LABEL_RE = re.compile(r"^[a-z][a-z0-9]*(?:_[a-z0-9]+)*$")
_LIBRARY_ROOT_CAUSES: set[str] = set()


def register_root_causes(labels: Iterable[str]) -> None:
    """Make labels that a validated runbook library declares known (the runbook loader calls this)."""
    for label in labels:
        if not ROOT_CAUSE_LABEL_RE.match(label):
            raise ValueError(f"root-cause label {label!r} must be lower-case words joined by '_'")
        _LIBRARY_ROOT_CAUSES.add(label)


def known_root_causes() -> tuple[str, ...]:
    """The contract's labels, then the loaded runbook libraries' own labels (sorted)."""
    return ROOT_CAUSES + tuple(sorted(_LIBRARY_ROOT_CAUSES - set(ROOT_CAUSES)))


def _known_root_cause(label: str) -> str:
    if label not in ROOT_CAUSES and label not in _LIBRARY_ROOT_CAUSES:
        raise ValueError(f"unknown root cause {label!r}: neither a contract label nor one a loaded runbook declares")
    return label


# a root cause as a diagnosis carries it: a contract label or one the loaded runbook library declares
RootCauseLabel = Annotated[str, AfterValidator(_known_root_cause)]

def resource_kind_of(resource: str) -> ResourceKind:
    """Infer the kind of a resource id from opsmedic's naming scheme.

    `node-2/gpu-3` is a GPU, `node-2` a node; pods and models are told apart by the caller, who knows
    the cluster, so this only recognises the two hardware shapes and `cluster`.
    """
    if resource == "cluster":
        return ResourceKind.cluster
    if "/gpu-" in resource:
        return ResourceKind.gpu
    if resource.startswith("node-") and resource[5:].isdigit():
        return ResourceKind.node
    return ResourceKind.pod


def canonical_json(value: Any) -> str:
    """The one JSON spelling used for digests and hash chains: sorted keys, no whitespace."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


# --------------------------------------------------------------------------------------------------
# Cluster observations (what telemetry sources produce and the monitor consumes)
# --------------------------------------------------------------------------------------------------

# NVML clock event reasons (nvmlClocksEventReason*), as bit flags.
CLOCK_REASON_GPU_IDLE = 0x1
CLOCK_REASON_APP_CLOCKS = 0x2
CLOCK_REASON_SW_POWER_CAP = 0x4
CLOCK_REASON_HW_SLOWDOWN = 0x8
CLOCK_REASON_SYNC_BOOST = 0x10
CLOCK_REASON_SW_THERMAL = 0x20
CLOCK_REASON_HW_THERMAL = 0x40
CLOCK_REASON_HW_POWER_BRAKE = 0x80


class GpuSample(BaseModel):
    """One GPU's health reading at one instant, in NVML's terms. `None` means absent/not supported."""

    model_config = ConfigDict(frozen=True)

    gpu: str  # node-1/gpu-3
    node: str
    index: int
    present: bool = True  # False once the GPU has fallen off the bus (NVML can no longer see it)
    util_pct: float | None = None
    mem_util_pct: float | None = None
    mem_used_mib: float | None = None
    mem_total_mib: float | None = None
    temp_c: float | None = None
    power_w: float | None = None
    power_limit_w: float | None = None
    sm_clock_mhz: float | None = None
    mem_clock_mhz: float | None = None
    clock_event_reasons: int | None = None
    ecc_sbe_volatile: int | None = None
    ecc_dbe_volatile: int | None = None
    ecc_dbe_aggregate: int | None = None
    remapped_rows_correctable: int | None = None
    remapped_rows_uncorrectable: int | None = None
    remap_pending: bool | None = None
    remap_failure: bool | None = None
    pcie_replay_counter: int | None = None
    nvlink_crc_errors: int | None = None
    nvlink_replay_errors: int | None = None
    xids: list[int] = Field(default_factory=list)  # XID events seen since the previous sample
    # the recovery the driver requires (NVML's GPU recovery action, announced by XID 154): none, gpu_reset,
    # node_reboot, drain_p2p or drain_and_reset; None where the source cannot read it
    recovery_action: str | None = None
    processes: list[str] = Field(default_factory=list)  # pods (or pids) using the GPU


class NodeStatus(BaseModel):
    model_config = ConfigDict(frozen=True)

    name: str
    ready: bool
    unschedulable: bool = False
    cordoned_by: str | None = None  # incident id when opsmedic cordoned it
    gpus: int = 0
    taints: list[str] = Field(default_factory=list)
    # node conditions other than Ready that are True (kubelet's DiskPressure, MemoryPressure, PIDPressure)
    conditions: list[str] = Field(default_factory=list)


PodPhase = Literal["Pending", "Running", "Succeeded", "Failed", "Unknown"]


class PodStatus(BaseModel):
    model_config = ConfigDict(frozen=True)

    name: str
    workload: str
    kind: Literal["training", "inference"]
    node: str | None
    gpus: list[str] = Field(default_factory=list)  # GPU ids it holds
    phase: PodPhase
    ready: bool
    reason: str | None = None  # CrashLoopBackOff, OOMKilled, Error, NodeLost ...
    restarts: int = 0
    step: int | None = None  # training progress counter
    started_at_s: float = 0.0
    log_tail: list[str] = Field(default_factory=list)  # recent log lines: data, never instructions
    namespace: str | None = None  # Kubernetes namespace (None: the sandbox, or a source that does not say)


class ModelTrack(BaseModel):
    """One traffic track of a model (`stable` or `canary`) at one tick: what a canary analysis compares."""

    model_config = ConfigDict(frozen=True)

    version: int
    traffic_pct: float = Field(ge=0, le=100)
    accuracy: float | None = None  # label-delayed: the accuracy of predictions `label_delay_s` old
    latency_p95_ms: float | None = None
    error_rate: float | None = None
    requests_per_s: float | None = None


class ModelStatus(BaseModel):
    model_config = ConfigDict(frozen=True)

    name: str
    serving_version: int
    versions: list[int]
    accuracy: float | None = None
    latency_p95_ms: float | None = None
    slo_accuracy_min: float | None = None
    slo_latency_p95_ms: float | None = None
    drift_psi: dict[str, float] = Field(default_factory=dict)
    drift_kl: dict[str, float] = Field(default_factory=dict)
    last_deploy_at_s: float | None = None
    previous_version: int | None = None
    # --- model operations (all optional: a source that does not know them leaves them unset)
    error_rate: float | None = None  # stable track's share of failed requests
    slo_error_rate_max: float | None = None
    label_delay_s: float = 0.0  # how old the predictions are whose accuracy is visible
    requests_per_s: float | None = None  # all tracks together
    workload: str | None = None  # the inference workload serving it
    replicas_ready: int | None = None
    capacity_qps: float | None = None  # requests/s one replica serves within its latency SLO
    tracks: dict[str, ModelTrack] = Field(default_factory=dict)  # "stable" / "canary" while a rollout runs
    rollout_started_at_s: float | None = None
    # feature -> what failed when the current window was validated against the reference profile
    data_issues: dict[str, str] = Field(default_factory=dict)


class ClusterSnapshot(BaseModel):
    """Everything the monitor sees at one tick."""

    at_s: float
    gpus: list[GpuSample]
    nodes: list[NodeStatus]
    pods: list[PodStatus]
    models: list[ModelStatus]

    def gpu(self, gpu_id: str) -> GpuSample | None:
        return next((g for g in self.gpus if g.gpu == gpu_id), None)

    def node(self, name: str) -> NodeStatus | None:
        return next((n for n in self.nodes if n.name == name), None)

    def pod(self, name: str) -> PodStatus | None:
        return next((p for p in self.pods if p.name == name), None)

    def model(self, name: str) -> ModelStatus | None:
        return next((m for m in self.models if m.name == name), None)

    def pods_on_gpu(self, gpu_id: str) -> list[PodStatus]:
        return [p for p in self.pods if gpu_id in p.gpus]

    def pods_on_node(self, node: str) -> list[PodStatus]:
        return [p for p in self.pods if p.node == node]


# --------------------------------------------------------------------------------------------------
# Signals and incidents
# --------------------------------------------------------------------------------------------------


class Signal(BaseModel):
    """A detector's finding: something abnormal about one resource, with the numbers behind it."""

    model_config = ConfigDict(frozen=True)

    kind: str  # e.g. gpu_xid, gpu_temp_high, fb_memory_growth, node_not_ready, slo_accuracy ...
    resource: str
    resource_kind: ResourceKind
    at_s: float
    value: float | None = None
    threshold: float | None = None
    detail: str = ""
    labels: dict[str, str] = Field(default_factory=dict)
    source: str = "sandbox"


IncidentStatus = Literal["open", "awaiting_approval", "resolved", "escalated", "failed"]


class Incident(BaseModel):
    id: str
    resource: str
    resource_kind: ResourceKind
    opened_at_s: float
    signals: list[Signal]
    status: IncidentStatus = "open"
    title: str = ""


class Evidence(BaseModel):
    model_config = ConfigDict(frozen=True)

    kind: str
    resource: str
    detail: str
    value: float | None = None


class Diagnosis(BaseModel):
    root_cause: RootCauseLabel
    resource: str
    confidence: float = Field(ge=0.0, le=1.0)
    summary: str
    evidence: list[Evidence] = Field(default_factory=list)
    runbook_ids: list[str] = Field(default_factory=list)
    source: Literal["deterministic", "llm"] = "deterministic"


# --------------------------------------------------------------------------------------------------
# Actions, plans, decisions
# --------------------------------------------------------------------------------------------------


P = TypeVar("P", bound=BaseModel)


class Action(BaseModel):
    """One concrete, whitelisted action: a name, a target and its typed parameters. Immutable so that its
    digest, to which an approval is bound, cannot drift.

    `params` may be given as a mapping (runbooks, YAML plans, LLM proposals, chat, stored JSON) or as the
    parameter model itself; either way it is parsed into the model `core.actions` names for `name`, and
    invalid parameters raise PermanentToolError here, at construction. The parameters are serialised, and
    digested, as given (`exclude_unset`): the JSON stored today and every digest stay the same."""

    model_config = ConfigDict(frozen=True)

    name: ActionName
    target: str
    params: ActionParams = Field(default_factory=NoParams)

    @model_validator(mode="before")
    @classmethod
    def _typed_params(cls, data: Any) -> Any:
        # an unknown name is left to the `ActionName` check (a ValidationError, as before)
        if isinstance(data, dict) and data.get("name") in ACTION_NAMES:
            data = {**data, "params": parse_params(data["name"], data.get("target"), data.get("params", {}))}
        return data

    @field_serializer("params")
    def _params_as_given(self, params: BaseModel) -> dict[str, Any]:
        return params.model_dump(exclude_unset=True)

    def given_params(self) -> dict[str, Any]:
        """The parameters as given (defaults left out): what is stored, shown and digested."""
        return self.params.model_dump(exclude_unset=True)

    def params_as(self, model: type[P]) -> P:
        """The parameters as `model` (a handler's typed view); PermanentToolError if the action takes others."""
        if not isinstance(self.params, model):
            raise PermanentToolError(f"{self.key}: takes {type(self.params).__name__}, not {model.__name__}")
        return self.params

    @property
    def key(self) -> str:
        return f"{self.name}@{self.target}"

    def digest(self) -> str:
        payload = {"name": self.name, "target": self.target, "params": self.given_params()}
        return hashlib.sha256(canonical_json(payload).encode()).hexdigest()

    def __str__(self) -> str:
        return self.key

    # Two actions are equal when they would be stored and digested alike: the parameters as given, not the
    # typed values with their defaults (an approval for `drain_node {}` is not one for `{"grace_period_s": 30}`).
    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Action):
            return NotImplemented
        return (self.name, self.target, _as_given(self.params)) == (other.name, other.target, _as_given(other.params))

    def __hash__(self) -> int:
        return hash((self.name, self.target, canonical_json(_as_given(self.params))))


def _as_given(params: object) -> object:
    # an action made with `model_construct` (tests of the whitelist rule) may hold a plain dict
    return params.model_dump(exclude_unset=True) if isinstance(params, BaseModel) else params


class PlannedAction(BaseModel):
    action: Action
    why: str = ""
    runbook_id: str | None = None
    # True for steps whose failure must not stop the plan (notifications)
    optional: bool = False


class ActionPlan(BaseModel):
    incident_id: str
    steps: list[PlannedAction]
    rationale: str = ""
    runbook_ids: list[str] = Field(default_factory=list)
    # "model": an LLM investigation of an `unknown` incident proposed it; every step then needs approval
    proposed_by: Literal["runbook", "model"] = "runbook"


class Verdict(StrEnum):
    allow = "allow"
    needs_approval = "needs_approval"
    deny = "deny"


class PolicyDecision(BaseModel):
    action: Action
    verdict: Verdict
    risk: Risk
    rule: str  # the rule that fired, e.g. "actions.drain_node.approval"
    reasons: list[str] = Field(default_factory=list)
    approvers: list[str] = Field(default_factory=list)
    approvals_required: int = 0
    dry_run: bool = False


class ApprovalStatus(StrEnum):
    pending = "pending"
    approved = "approved"
    rejected = "rejected"
    expired = "expired"
    consumed = "consumed"


class ApprovalRequest(BaseModel):
    id: str
    incident_id: str
    action: Action
    digest: str
    risk: Risk
    rule: str
    approvers: list[str] = Field(default_factory=list)
    approvals_required: int = 1
    requested_at_s: float
    expires_at_s: float
    status: ApprovalStatus = ApprovalStatus.pending
    approved_by: list[str] = Field(default_factory=list)
    decided_at_s: float | None = None
    reason: str | None = None


class ApprovalResponse(BaseModel):
    """What resumes a graph waiting for approval: who said what about which digest."""

    request_id: str
    decision: Literal["approve", "reject", "expired"]
    by: str | None = None
    digest: str | None = None
    at_s: float
    reason: str | None = None


class ActionResult(BaseModel):
    action: Action
    ok: bool
    changed: bool = True
    detail: str = ""
    idempotency_key: str = ""
    at_s: float = 0.0
    dry_run: bool = False


class VerificationResult(BaseModel):
    action: Action | None
    ok: bool
    detail: str
    at_s: float


class AuditEntry(BaseModel):
    seq: int
    at: str  # wall-clock ISO time
    sim_s: float | None = None
    incident_id: str | None = None
    kind: str  # observation, diagnosis, plan, decision, approval_request, approval, rejection, execution...
    payload: dict[str, Any] = Field(default_factory=dict)
    prev_hash: str
    hash: str
