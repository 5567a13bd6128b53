"""The action catalogue: every action opsmedic may take, declared once.

Layer: core (imports nothing of opsmedic's; `core.domain` imports this module, never the other way). An
action's entry here is all the product knows about it: its name, its typed parameter model, the kind of
object it targets, its default risk, whether it can be undone, whether it takes capacity out of service,
how long its effect takes to show and how long the verifier waits for it, how its effect is checked (in
words) and a one-line summary. `ActionName` is the one list of names; the catalogue is checked against it
below, once, at import. The policy file may raise or lower a risk for a deployment; the catalogue holds the
defaults and the facts policy cannot change.

Why `Action` itself lives in `core.domain` and not here: the plans, decisions and approvals that carry an
action are domain models, and this module must sit below them so that `Action.params` can be the union of
the parameter models declared here (a dict is parsed into the model the catalogue names for the action).
`Risk` and `ResourceKind` are declared here for the same reason (`core.domain` re-exports them).

Adding an action = its name in `ActionName` + its `ActionSpec` below + one handler (or `Unsupported`) in each
backend's table (`handler_table` refuses a table that misses one) + the runbook lines that use it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Annotated, Any, Literal, Protocol, TypeVar

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, ValidationError

from core.errors import PermanentToolError

ActionName = Literal[
    "restart_pod",
    "reschedule_pod",
    "cordon_node",
    "uncordon_node",
    "drain_node",
    "reset_gpu",
    "scale_deployment",
    "pause_job",
    "resume_job",
    "rollback_model",
    "retrain_model",
    "promote_model",
    "abort_rollout",
    "notify",
    "escalate",
]
ACTION_NAMES: tuple[str, ...] = ActionName.__args__  # type: ignore[attr-defined]


class Risk(StrEnum):
    low = "low"
    medium = "medium"
    high = "high"
    critical = "critical"


class ResourceKind(StrEnum):
    gpu = "gpu"
    node = "node"
    pod = "pod"
    workload = "workload"
    model = "model"
    cluster = "cluster"


# ------------------------------------------------------------------------------------ parameter models
# Frozen, like the `Action` that carries them: an approval is bound to the action's digest.


class NoParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DrainParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    grace_period_s: int = Field(default=30, ge=0, le=3600)
    deadline_s: int = Field(default=600, ge=1, le=86400)


class RescheduleParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    force: bool = False  # only for pods on NotReady nodes, after the grace period (policy decides)


class ScaleParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    replicas: int = Field(ge=0, le=10000)


class RollbackParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    to_version: int | None = Field(default=None, ge=1)


class PromoteParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    version: int | None = Field(default=None, ge=1)
    min_margin: float = Field(default=0.01, ge=0.0, le=1.0)


class MessageParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    message: str = Field(default="", max_length=4000)


class EscalateParams(MessageParams):
    # what a pager needs besides the story: the policy's severity and the diagnosis's evidence
    severity: Literal["critical", "error", "warning", "info"] | None = None
    evidence: list[str] = Field(default_factory=list, max_length=20)


PARAM_MODELS: tuple[type[BaseModel], ...] = (
    NoParams, DrainParams, RescheduleParams, ScaleParams, RollbackParams, PromoteParams, MessageParams,
    EscalateParams,
)


def _param_tag(value: Any) -> str | None:
    # `core.domain.Action` has already parsed a dict into the catalogue's model for the action's name, so
    # the union is told apart by the model's own class (never by trying each member on a dict)
    return type(value).__name__ if isinstance(value, BaseModel) else None


ActionParams = Annotated[
    Annotated[NoParams, Tag("NoParams")]
    | Annotated[DrainParams, Tag("DrainParams")]
    | Annotated[RescheduleParams, Tag("RescheduleParams")]
    | Annotated[ScaleParams, Tag("ScaleParams")]
    | Annotated[RollbackParams, Tag("RollbackParams")]
    | Annotated[PromoteParams, Tag("PromoteParams")]
    | Annotated[EscalateParams, Tag("EscalateParams")]
    | Annotated[MessageParams, Tag("MessageParams")],
    Discriminator(_param_tag),
]
"""What `Action.params` holds: the parameter model the catalogue names for the action."""


# ------------------------------------------------------------------------------------------ the catalogue


class ActionSpec(BaseModel):
    model_config = ConfigDict(frozen=True)

    name: ActionName
    kind: Literal["read", "act"]
    target_kind: ResourceKind
    risk: Risk
    reversible: bool
    takes_capacity: bool  # takes a node or GPU out of service (counted by the circuit breaker)
    params: type[BaseModel]
    verify: str  # how the effect is checked, in words (shown by `policy explain` and the demo)
    summary: str
    # how long the effect takes to show, and how long the verifier polls for it at most (simulated seconds);
    # 0 = check at once, no wait
    settle_s: float = 0.0
    deadline_s: float = 0.0
    past: str = ""  # the action done, in a word of plain English ("drained"), as chat tells it
    # the runbook placeholders (`knowledge.runbooks.Target`) a step of this action may name; None: those of
    # its target kind (`PLACEHOLDERS`)
    placeholders: frozenset[str] | None = None

    @property
    def runbook_targets(self) -> frozenset[str]:
        return self.placeholders if self.placeholders is not None else PLACEHOLDERS[self.target_kind]


ToolSpec = ActionSpec  # the registry's former name

# Which runbook placeholder targets make sense for an action on each kind of object. A runbook that asks to
# cordon a GPU or roll back a pod is a typo the remediator could only fail on at run time, so the runbook
# linter refuses it up front. A message (notify, escalate) may be about anything.
PLACEHOLDERS: dict[ResourceKind, frozenset[str]] = {
    ResourceKind.pod: frozenset({"pod", "pods_on_gpu", "pods_on_node"}),
    ResourceKind.node: frozenset({"node"}),
    ResourceKind.gpu: frozenset({"gpu"}),
    ResourceKind.workload: frozenset({"workload"}),
    ResourceKind.model: frozenset({"model"}),
    ResourceKind.cluster: frozenset({"node", "gpu", "pod", "pods_on_gpu", "pods_on_node", "model", "workload"}),
}


ACTION_TOOLS: dict[str, ActionSpec] = {
    s.name: s
    for s in [
        ActionSpec(
            name="restart_pod", kind="act", target_kind=ResourceKind.pod, risk=Risk.low,
            reversible=True, takes_capacity=False, params=NoParams, settle_s=30.0, deadline_s=300.0,
            verify="the pod is Running and ready again with a fresh start time",
            summary="delete the pod so its controller re-creates it in place",
            past="restarted",
        ),
        ActionSpec(
            name="reschedule_pod", kind="act", target_kind=ResourceKind.pod, risk=Risk.medium,
            reversible=True, takes_capacity=False, params=RescheduleParams, settle_s=30.0, deadline_s=300.0,
            verify="the pod runs on another node or on healthy GPUs",
            summary="evict the pod so that it is re-created on a schedulable node",
            past="rescheduled",
        ),
        ActionSpec(
            name="cordon_node", kind="act", target_kind=ResourceKind.node, risk=Risk.low,
            reversible=True, takes_capacity=True, params=NoParams,
            verify="the node is unschedulable and labelled by opsmedic",
            summary="mark the node unschedulable so no new pods land on it",
            past="cordoned",
        ),
        ActionSpec(
            name="uncordon_node", kind="act", target_kind=ResourceKind.node, risk=Risk.low,
            reversible=True, takes_capacity=False, params=NoParams,
            verify="the node is schedulable again",
            summary="return a node to service",
            past="uncordoned",
        ),
        ActionSpec(
            name="drain_node", kind="act", target_kind=ResourceKind.node, risk=Risk.high,
            reversible=True, takes_capacity=True, params=DrainParams, settle_s=70.0, deadline_s=600.0,
            verify="no evictable pod is left on the node and the evicted pods run elsewhere",
            summary="evict every pod on the node through the Eviction API (respects PDBs)",
            past="drained",
        ),
        ActionSpec(
            name="reset_gpu", kind="act", target_kind=ResourceKind.gpu, risk=Risk.high,
            reversible=False, takes_capacity=True, params=NoParams, settle_s=30.0, deadline_s=180.0,
            verify="the GPU is visible, its volatile ECC counters are clear, no remap pending",
            summary="reset one GPU (nvidia-smi -r on its node); refused while a process uses it",
            past="reset",
        ),
        ActionSpec(
            name="scale_deployment", kind="act", target_kind=ResourceKind.workload, risk=Risk.medium,
            reversible=True, takes_capacity=False, params=ScaleParams, settle_s=30.0, deadline_s=300.0,
            verify="the workload has the requested number of ready replicas",
            summary="set a Deployment's or StatefulSet's replica count",
            past="scaled",
        ),
        ActionSpec(
            name="pause_job", kind="act", target_kind=ResourceKind.workload, risk=Risk.medium,
            reversible=True, takes_capacity=False, params=NoParams, settle_s=10.0, deadline_s=120.0,
            placeholders=frozenset({"workload", "pod"}),  # a job may be named by one of its pods
            verify="the job's pods are gone and the job is marked paused",
            summary="suspend a training job (scale to zero, keeping its checkpoints)",
            past="paused",
        ),
        ActionSpec(
            name="resume_job", kind="act", target_kind=ResourceKind.workload, risk=Risk.low,
            reversible=True, takes_capacity=False, params=NoParams, settle_s=70.0, deadline_s=600.0,
            placeholders=frozenset({"workload", "pod"}),  # a job may be named by one of its pods
            verify="the job's pods are Running again",
            summary="resume a paused training job from its last checkpoint",
            past="resumed",
        ),
        ActionSpec(
            name="rollback_model", kind="act", target_kind=ResourceKind.model, risk=Risk.medium,
            reversible=True, takes_capacity=False, params=RollbackParams, settle_s=60.0, deadline_s=600.0,
            verify="the serving alias points at the previous good version and the SLO holds",
            summary="move the model's serving alias back to the previous good version",
            past="rolled back",
        ),
        ActionSpec(
            name="retrain_model", kind="act", target_kind=ResourceKind.model, risk=Risk.high,
            reversible=True, takes_capacity=False, params=NoParams, settle_s=300.0, deadline_s=3600.0,
            verify="a new model version is registered with its evaluation metrics",
            summary="train a new version on recent data (not served until promoted)",
            past="retrained",
        ),
        ActionSpec(
            name="promote_model", kind="act", target_kind=ResourceKind.model, risk=Risk.medium,
            reversible=True, takes_capacity=False, params=PromoteParams, settle_s=30.0, deadline_s=300.0,
            verify="the serving alias points at the new version, which beat the old one",
            summary="serve the newest version if it beats the serving one on held-out data",
            past="promoted",
        ),
        ActionSpec(
            name="abort_rollout", kind="act", target_kind=ResourceKind.model, risk=Risk.medium,
            reversible=True, takes_capacity=False, params=NoParams,
            verify="all traffic is on the stable version and the canary version is unserved",
            summary="abort a canary rollout: send all traffic back to the stable version",
            past="aborted",
        ),
        ActionSpec(
            name="notify", kind="act", target_kind=ResourceKind.cluster, risk=Risk.low,
            reversible=True, takes_capacity=False, params=MessageParams,
            verify="the message was delivered",
            summary="tell the owning team",
            past="notified",
        ),
        ActionSpec(
            name="escalate", kind="act", target_kind=ResourceKind.cluster, risk=Risk.low,
            reversible=True, takes_capacity=False, params=EscalateParams,
            verify="a human was paged",
            summary="page a human with the incident's story",
            past="escalated",
        ),
    ]
}

if tuple(ACTION_TOOLS) != ACTION_NAMES or any(s.params not in PARAM_MODELS for s in ACTION_TOOLS.values()):
    raise AssertionError("the catalogue must declare exactly the actions of `ActionName`, in its order, "
                         "each with a parameter model of `ActionParams`")


def get_tool(name: str) -> ActionSpec:
    try:
        return ACTION_TOOLS[name]
    except KeyError:
        raise PermanentToolError(f"unknown tool {name!r}: not in the whitelist") from None


def actions_on(kind: ResourceKind) -> frozenset[str]:
    """The names of the actions that target `kind` (pods, workloads, ...)."""
    return frozenset(n for n, s in ACTION_TOOLS.items() if s.target_kind == kind)


def parse_params(name: str, target: object, raw: object) -> BaseModel:
    """`raw` (a mapping, or already a parameter model) as the parameter model the catalogue names for the
    action `name`. Raises PermanentToolError, the error `validate_action` always raised, so that every
    caller that built an action and then validated it keeps catching the same error."""
    model = get_tool(name).params
    if isinstance(raw, BaseModel):
        if type(raw) is model:
            return raw
        raise PermanentToolError(f"{name}@{target}: invalid parameters: {type(raw).__name__} given, "
                                 f"{name} takes {model.__name__}")
    try:
        return model.model_validate(raw)
    except ValidationError as exc:  # pydantic's error, translated at the boundary
        raise PermanentToolError(f"{name}@{target}: invalid parameters: {exc}") from exc


class _ActionLike(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def target(self) -> str: ...


_A = TypeVar("_A", bound=_ActionLike)


def validate_action(action: _A) -> _A:
    """The whitelist check, kept for the callers that run it before acting: an `Action` parsed its
    parameters when it was built (invalid ones raised PermanentToolError then), so this only refuses an
    action built without validation (`model_construct`) whose name or parameters are not the catalogue's."""
    spec = get_tool(action.name)
    params = getattr(action, "params", None)
    if type(params) is not spec.params:
        parse_params(action.name, action.target, params)
    return action


# ----------------------------------------------------------------------------------- backend handler tables

H = TypeVar("H")


@dataclass(frozen=True)
class Unsupported:
    """A backend's table entry for an action it does not carry out, and why (its error message)."""

    reason: str


def handler_table(backend: str, table: Mapping[str, H]) -> dict[str, H]:
    """A backend's one handler per catalogue action, checked: every action is handled or declared
    `Unsupported`, and nothing outside the catalogue is (annotate a table with both as
    `dict[str, MyHandler | Unsupported]`). A backend builds its table with this at import, so
    an action added to the catalogue without a handler fails at once, not at 3 a.m."""
    missing = [n for n in ACTION_NAMES if n not in table]
    extra = sorted(set(table) - set(ACTION_NAMES))
    if missing or extra:
        raise AssertionError(f"{backend}'s handler table must cover exactly the catalogue's actions: "
                             f"missing {missing}, not actions {extra}")
    return {n: table[n] for n in ACTION_NAMES}


def supported(table: Mapping[str, object]) -> frozenset[str]:
    """The actions a handler table carries out."""
    return frozenset(n for n, h in table.items() if not isinstance(h, Unsupported))
