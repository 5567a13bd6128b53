"""The scenario contract (SCENARIOS.md) as pydantic models, and the loader that enforces it.

Layer: sandbox (imports only `core.domain`, `core.errors` and `core.safe_yaml`). A scenario that breaks the
contract is rejected with a `ScenarioError` naming the file, the key and what was expected; nothing is
silently ignored (unknown keys, fault types, labels or targets are all errors).
"""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from core.domain import ACTION_NAMES, RootCause
from core.errors import ScenarioError
from core.safe_yaml import safe_load

_NAME = r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$"
_DURATION = re.compile(r"^(?:(\d+(?:\.\d+)?)(ms|s|m|h|d))+$")
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(value: Any) -> float:
    """`30s`, `2m`, `1h30m`, `250ms` or a number of seconds -> seconds."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 30s, 2m or 1h")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError("a duration cannot be negative")
        return float(value)
    if isinstance(value, str):
        text = value.strip().replace(" ", "")
        if _DURATION.match(text):
            return sum(float(n) * _UNIT_S[u] for n, u in _DURATION_PART.findall(text))
    raise ValueError(f"expected a duration such as 30s, 2m or 1h, got {value!r}")


def format_duration(seconds: float) -> str:
    s = int(round(seconds))
    if s % 3600 == 0 and s:
        return f"{s // 3600}h"
    if s % 60 == 0 and s:
        return f"{s // 60}m"
    if s >= 60:
        return f"{s // 60}m{s % 60}s"
    return f"{s}s"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Duration:
    """Validator helper: fields annotated `float` with `_dur` validators accept duration strings."""


def _dur_validator(*fields: str) -> Any:
    return field_validator(*fields, mode="before")(lambda cls, v: None if v is None else parse_duration(v))


GpuModelName = Literal["H100-80GB", "A100-80GB", "L4"]


class ClusterSpec(_Strict):
    nodes: int = Field(ge=1, le=20000)
    gpus_per_node: int = Field(ge=1, le=16)
    gpu_model: GpuModelName = "H100-80GB"


class SloSpec(_Strict):
    latency_p95_ms: float | None = Field(default=None, gt=0)
    accuracy_min: float | None = Field(default=None, ge=0, le=1)
    error_rate_max: float | None = Field(default=None, ge=0, le=1)
    label_delay: float = Field(default=0.0, ge=0)  # seconds; the accuracy seen now is of predictions this old

    _d = _dur_validator("label_delay")


class RolloutSpec(_Strict):
    """How a new version reaches traffic: a canary that steps through `steps` (% of requests)."""

    strategy: Literal["canary"]
    steps: list[float] = Field(min_length=1, max_length=20)
    step_every: float

    _d = _dur_validator("step_every")

    @field_validator("steps")
    @classmethod
    def _steps(cls, v: list[float]) -> list[float]:
        if any(not 0 < x <= 100 for x in v):
            raise ValueError("each step is a share of requests in percent, above 0 and at most 100")
        if any(b <= a for a, b in zip(v, v[1:], strict=False)):
            raise ValueError("steps must increase")
        if v[-1] != 100:
            raise ValueError("the last step must be 100 (the canary then becomes the served version)")
        return v

    @field_validator("step_every")
    @classmethod
    def _every(cls, v: float) -> float:
        if v <= 0:
            raise ValueError("step_every must be a positive duration")
        return v


class WorkloadSpec(_Strict):
    name: str = Field(pattern=_NAME)
    kind: Literal["training", "inference"]
    replicas: int = Field(ge=1, le=10000)
    gpus_per_replica: int = Field(ge=1, le=16)
    checkpoint_every: float | None = None
    model: str | None = Field(default=None, pattern=_NAME)
    current_version: int | None = Field(default=None, ge=1)
    slo: SloSpec | None = None
    rollout: RolloutSpec | None = None
    capacity_qps: float | None = Field(default=None, gt=0, le=1e7)  # requests/s one replica serves in SLO

    _d = _dur_validator("checkpoint_every")

    @model_validator(mode="after")
    def _kind_fields(self) -> WorkloadSpec:
        if self.kind == "training":
            for key in ("model", "current_version", "slo", "rollout", "capacity_qps"):
                if getattr(self, key) is not None:
                    raise ValueError(f"`{key}` is for inference workloads; {self.name} is training")
        else:
            if self.checkpoint_every is not None:
                raise ValueError(f"`checkpoint_every` is for training workloads; {self.name} is inference")
        return self

    @property
    def model_name(self) -> str | None:
        if self.kind != "inference":
            return None
        return self.model or self.name

    def pod_names(self) -> list[str]:
        return [f"{self.name}-{i}" for i in range(self.replicas)]

    @property
    def capacity(self) -> float:
        """Requests per second one replica serves within its latency SLO (SCENARIOS.md default: 100)."""
        return self.capacity_qps if self.capacity_qps is not None else 100.0


# ------------------------------------------------------------------------------------------ faults


XidRecovery = Literal["none", "gpu_reset", "node_reboot", "drain_p2p", "drain_and_reset"]


class XidParams(_Strict):
    xid: int = Field(ge=1, le=1000)
    repeat: int = Field(default=1, ge=1, le=1000)
    every: float = 60.0
    recovery: XidRecovery | None = None  # XID 154 only: the recovery the driver now requires
    _d = _dur_validator("every")

    @model_validator(mode="after")
    def _recovery_for_154(self) -> XidParams:
        if self.recovery is not None and self.xid != 154:
            raise ValueError("`recovery` is for XID 154 (GPU_RECOVERY_ACTION_CHANGED) only")
        if self.xid == 154 and self.recovery is None:
            raise ValueError("XID 154 needs `recovery`: none, gpu_reset, node_reboot, drain_p2p or drain_and_reset")
        return self


class EccParams(_Strict):
    volatile_dbe: int = Field(default=1, ge=1)
    remap_failure: bool = False


class ThermalParams(_Strict):
    temp_c: float = Field(gt=0, lt=150)
    for_: float | None = Field(default=None, alias="for")
    _d = _dur_validator("for_")
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class LeakParams(_Strict):
    rate_gib_per_min: float = Field(gt=0, le=1000)


class NvlinkParams(_Strict):
    rate_per_min: float = Field(gt=0)


class NoParams(_Strict):
    pass


class SpikeParams(_Strict):
    metric: Literal["temp_c", "util", "power_w"]
    value: float
    for_: float = Field(default=20.0, alias="for")
    _d = _dur_validator("for_")
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class CrashloopParams(_Strict):
    reason: str = Field(default="Error", max_length=200)


class BadDeployParams(_Strict):
    version: int | None = Field(default=None, ge=1)
    accuracy: float | None = Field(default=None, ge=0, le=1)
    latency_p95_ms: float | None = Field(default=None, gt=0)
    error_rate: float | None = Field(default=None, ge=0, le=1)


class CanaryParams(BadDeployParams):
    """A canary version's metrics on the `canary` track; unset = as good as stable."""


# The features the sandbox's models take (SCENARIOS.md).
MODEL_FEATURES = ("amount", "hour", "merchant_risk", "distance_km", "account_age_days", "velocity_1h")


class ConceptDriftParams(_Strict):
    accuracy: float = Field(ge=0, le=1)
    over: float = 1800.0
    _d = _dur_validator("over")


class PipelineBreakParams(_Strict):
    feature: Literal["amount", "hour", "merchant_risk", "distance_km", "account_age_days", "velocity_1h"]
    kind: Literal["nulls", "out_of_range", "type_change"]
    fraction: float = Field(default=1.0, gt=0, le=1)


class SurgeParams(_Strict):
    multiplier: float = Field(gt=0, le=1000)
    for_: float | None = Field(default=None, alias="for")  # None: until the end of the scenario
    _d = _dur_validator("for_")
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class AlertParams(_Strict):
    """An Alertmanager (webhook v4) alert naming the target: a claim, not evidence."""

    alertname: str = Field(min_length=1, max_length=200)
    severity: str = Field(default="warning", min_length=1, max_length=50)
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)


class DriftParams(_Strict):
    feature: str = Field(default="amount", min_length=1, max_length=100)
    psi: float = Field(gt=0, le=10)


class LogInjectionParams(_Strict):
    text: str = Field(min_length=1, max_length=10000)


FaultType = Literal[
    "gpu_xid", "gpu_ecc", "gpu_thermal", "gpu_memory_leak", "nvlink_errors", "power_cap_under_load",
    "transient_spike", "node_not_ready", "pod_crashloop", "training_stall", "model_bad_deploy",
    "data_drift", "log_injection", "model_canary", "concept_drift", "feature_pipeline_break",
    "traffic_surge", "alert",
]
TargetKind = Literal[
    "gpu", "node", "pod", "training_pod", "model", "gpu_or_node", "canary_model", "inference_workload", "anything",
]

FAULT_PARAMS: dict[str, type[_Strict]] = {
    "gpu_xid": XidParams,
    "gpu_ecc": EccParams,
    "gpu_thermal": ThermalParams,
    "gpu_memory_leak": LeakParams,
    "nvlink_errors": NvlinkParams,
    "power_cap_under_load": NoParams,
    "transient_spike": SpikeParams,
    "node_not_ready": NoParams,
    "pod_crashloop": CrashloopParams,
    "training_stall": NoParams,
    "model_bad_deploy": BadDeployParams,
    "data_drift": DriftParams,
    "log_injection": LogInjectionParams,
    "model_canary": CanaryParams,
    "concept_drift": ConceptDriftParams,
    "feature_pipeline_break": PipelineBreakParams,
    "traffic_surge": SurgeParams,
    "alert": AlertParams,
}
FAULT_TARGETS: dict[str, TargetKind] = {
    "gpu_xid": "gpu",
    "gpu_ecc": "gpu",
    "gpu_thermal": "gpu",
    "gpu_memory_leak": "pod",
    "nvlink_errors": "gpu",
    "power_cap_under_load": "gpu_or_node",
    "transient_spike": "gpu",
    "node_not_ready": "node",
    "pod_crashloop": "pod",
    "training_stall": "training_pod",
    "model_bad_deploy": "model",
    "data_drift": "model",
    "log_injection": "pod",
    "model_canary": "canary_model",
    "concept_drift": "model",
    "feature_pipeline_break": "model",
    "traffic_surge": "inference_workload",
    "alert": "anything",
}


class FaultSpec(_Strict):
    at: float
    type: FaultType
    target: str = Field(min_length=1)
    params: dict[str, Any] = Field(default_factory=dict)

    _d = _dur_validator("at")

    @model_validator(mode="after")
    def _check_params(self) -> FaultSpec:
        FAULT_PARAMS[self.type].model_validate(self.params)
        return self

    def typed_params(self) -> Any:
        return FAULT_PARAMS[self.type].model_validate(self.params)


# ----------------------------------------------------------------------------------------- expect

_ACTION_REF = re.compile(r"^([a-z_]+)(?:@(.+))?$")


def _check_action_ref(ref: str, *, allow_any: bool) -> str:
    if allow_any and ref == "any":
        return ref
    m = _ACTION_REF.match(ref)
    if not m or m.group(1) not in ACTION_NAMES:
        raise ValueError(
            f"{ref!r} is not an action: expected action or action@target with an action from "
            f"{', '.join(ACTION_NAMES)}" + (" (or `any`)" if allow_any else "")
        )
    return ref


class ExpectSpec(_Strict):
    incident: bool
    root_cause: RootCause | None = None
    resource: str | None = None
    actions: list[str] = Field(default_factory=list)
    forbidden: list[str] = Field(default_factory=list)
    recovered: bool | None = None
    detect_within: float | None = None

    _d = _dur_validator("detect_within")

    @field_validator("actions")
    @classmethod
    def _actions(cls, v: list[str]) -> list[str]:
        return [_check_action_ref(a, allow_any=False) for a in v]

    @field_validator("forbidden")
    @classmethod
    def _forbidden(cls, v: list[str]) -> list[str]:
        return [_check_action_ref(a, allow_any=True) for a in v]


class Scenario(_Strict):
    name: str = Field(pattern=_NAME)
    description: str
    seed: int = 0
    cluster: ClusterSpec
    workloads: list[WorkloadSpec]
    placement: dict[str, str] = Field(default_factory=dict)
    faults: list[FaultSpec]
    duration: float
    tick: float = 10.0
    approvals: Literal["approve", "reject", "ignore"] = "approve"
    expect: ExpectSpec | list[ExpectSpec]

    _d = _dur_validator("duration", "tick")

    @field_validator("tick")
    @classmethod
    def _tick(cls, v: float) -> float:
        if not 1.0 <= v <= 300.0:
            raise ValueError("tick must be between 1s and 5m")
        return v

    @property
    def expectations(self) -> list[ExpectSpec]:
        return self.expect if isinstance(self.expect, list) else [self.expect]

    # Names of everything in the cluster, for target checks.
    def node_names(self) -> list[str]:
        return [f"node-{i}" for i in range(self.cluster.nodes)]

    def gpu_names(self) -> list[str]:
        return [f"{n}/gpu-{g}" for n in self.node_names() for g in range(self.cluster.gpus_per_node)]

    def pod_names(self) -> list[str]:
        return [p for w in self.workloads for p in w.pod_names()]

    def model_names(self) -> list[str]:
        return [m for w in self.workloads if (m := w.model_name)]

    def workload_of_pod(self, pod: str) -> WorkloadSpec | None:
        for w in self.workloads:
            if pod in w.pod_names():
                return w
        return None


def _loc(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "(top level)"


def _validation_message(exc: ValidationError, raw: Any = None) -> tuple[str, str]:
    errors = exc.errors()
    # `expect` is a mapping or a list of mappings: report the errors of the shape that was written,
    # without pydantic's union-branch names in the location.
    written_list = isinstance(raw, dict) and isinstance(raw.get("expect"), list)
    wrong_branch = "ExpectSpec" if written_list else "list[ExpectSpec]"
    errors = [e for e in errors if tuple(e["loc"][:2]) != ("expect", wrong_branch)] or errors
    err = errors[0]
    branch_names = ("function-after[_check_params(), FaultSpec]", "ExpectSpec", "list[ExpectSpec]")
    loc = tuple(p for p in err["loc"] if p not in branch_names)
    msg = err["msg"]
    if err["type"] == "extra_forbidden":
        msg = "unknown key (not in the scenario contract)"
    elif err["type"] == "missing":
        msg = "required key is missing"
    elif err["type"] == "literal_error":
        msg = f"unexpected value {err.get('input')!r}: {msg[:1].lower() + msg[1:]}"
    msg = msg.removeprefix("Value error, ")
    more = f" (and {len(errors) - 1} more problem(s))" if len(errors) > 1 else ""
    return _loc(loc), msg + more


def _fault_params_error(raw: Any) -> tuple[str, str] | None:
    """Report a params problem under `faults[i].params.key` rather than pydantic's nested location."""
    if not isinstance(raw, dict) or not isinstance(raw.get("faults"), list):
        return None
    for i, f in enumerate(raw["faults"]):
        if not isinstance(f, dict):
            continue
        ftype = f.get("type")
        if ftype not in FAULT_PARAMS:
            continue
        params = f.get("params", {}) or {}
        if not isinstance(params, dict):
            return f"faults[{i}].params", "expected a mapping of parameters"
        try:
            FAULT_PARAMS[ftype].model_validate(params)
        except ValidationError as exc:
            where, what = _validation_message(exc)
            return f"faults[{i}].params.{where}", what + f" (for fault type {ftype})"
    return None


def parse_scenario(raw: Any, source: str = "<scenario>") -> Scenario:
    """Validate a parsed YAML document against the contract; raise ScenarioError naming source and key."""
    if not isinstance(raw, dict):
        raise ScenarioError("expected a mapping at the top level of the scenario", source)
    if "faults" in raw and raw.get("faults") is None:
        raw = {**raw, "faults": []}
    params_problem = _fault_params_error(raw)
    try:
        scenario = Scenario.model_validate(raw)
    except ValidationError as exc:
        if params_problem:
            where, what = params_problem
        else:
            where, what = _validation_message(exc, raw)
        raise ScenarioError(what, f"{source}: {where}") from None
    _check_semantics(scenario, source)
    return scenario


def _check_semantics(s: Scenario, source: str) -> None:
    def fail(where: str, what: str) -> None:
        raise ScenarioError(what, f"{source}: {where}")

    names = [w.name for w in s.workloads]
    for i, w in enumerate(s.workloads):
        if names.count(w.name) > 1:
            fail(f"workloads[{i}].name", f"workload name {w.name!r} is used twice")
    models = s.model_names()
    for i, w in enumerate(s.workloads):
        if w.model_name and models.count(w.model_name) > 1:
            fail(f"workloads[{i}].model", f"model {w.model_name!r} is served by two workloads")
    pods = set(s.pod_names())
    if len(pods) != len(s.pod_names()):
        fail("workloads", "two workloads produce the same pod name")
    nodes = set(s.node_names())
    gpus = set(s.gpu_names())
    for pod, node in s.placement.items():
        if pod not in pods:
            fail(f"placement.{pod}", f"no pod named {pod!r} (pods: {', '.join(sorted(pods))})")
        if node not in nodes:
            fail(f"placement.{pod}", f"no node named {node!r} (nodes node-0..node-{s.cluster.nodes - 1})")
    training_pods = {p for w in s.workloads if w.kind == "training" for p in w.pod_names()}
    kinds: dict[TargetKind, tuple[set[str], str]] = {
        "gpu": (gpus, "a GPU such as node-0/gpu-0"),
        "node": (nodes, "a node such as node-0"),
        "pod": (pods, "a pod such as " + (sorted(pods)[0] if pods else "name-0")),
        "training_pod": (training_pods, "a pod of a training workload"),
        "model": (set(models), "a model served by an inference workload"),
        "gpu_or_node": (gpus | nodes, "a GPU or a node"),
        "canary_model": (
            {m for w in s.workloads if (m := w.model_name) and w.rollout is not None},
            "a model whose workload has `rollout: {strategy: canary, ...}`",
        ),
        "inference_workload": (
            {w.name for w in s.workloads if w.kind == "inference"},
            "an inference workload",
        ),
        "anything": (gpus | nodes | pods | set(models) | set(names), "a GPU, node, pod, workload or model"),
    }
    for i, f in enumerate(s.faults):
        allowed, what = kinds[FAULT_TARGETS[f.type]]
        if f.target not in allowed:
            fail(f"faults[{i}].target", f"target {f.target!r} does not exist in the cluster: {f.type} needs {what}")
        if f.at > s.duration:
            fail(f"faults[{i}].at", "the fault is injected after the scenario's duration")
    everything = nodes | gpus | pods | set(models) | set(names)
    for j, e in enumerate(s.expectations):
        where = f"expect[{j}]" if isinstance(s.expect, list) else "expect"
        if e.resource is not None and e.resource not in everything:
            fail(f"{where}.resource", f"resource {e.resource!r} does not exist in the cluster")
        for key in ("actions", "forbidden"):
            for k, ref in enumerate(getattr(e, key)):
                target = ref.partition("@")[2]
                if target and target not in everything:
                    fail(f"{where}.{key}[{k}]", f"target {target!r} does not exist in the cluster")
    if isinstance(s.expect, list) and len(s.expect) > 1:
        for j, e in enumerate(s.expect):
            if e.resource is None:
                fail(f"expect[{j}].resource", "when expect is a list, each entry needs a resource to match")
    try:
        place_pods(s)
    except ScenarioError as exc:
        fail(exc.where or "workloads", exc.what)


def load_scenario(path: str | Path) -> Scenario:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ScenarioError("file not found", str(p)) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ScenarioError(f"cannot read the file: {exc}", str(p)) from None
    try:
        raw = safe_load(text)  # refuses alias bombs and deep nesting before anything walks them
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{p}: line {mark.line + 1}" if mark is not None else str(p)
        raise ScenarioError(f"invalid YAML: {getattr(exc, 'problem', exc)}", where) from None
    return parse_scenario(raw, str(p))


def scenario_files(paths: list[str | Path]) -> list[Path]:
    """Expand files and folders (folders: their *.yaml / *.yml, sorted) into scenario files."""
    out: list[Path] = []
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            found = sorted([*p.glob("*.yaml"), *p.glob("*.yml")])
            if not found:
                raise ScenarioError("the folder holds no *.yaml scenario", str(p))
            out.extend(found)
        elif p.exists():
            out.append(p)
        else:
            raise ScenarioError("no such file or folder", str(p))
    return out


DEFAULT_DEMO = "xid79-fell-off-bus"  # the bundled scenario that `opsmedic demo` plays when none is named


def bundled_scenarios() -> dict[str, Path]:
    """The example scenarios that ship inside this package (`sandbox/scenarios/*.yaml`), by name."""
    folder = resources.files("sandbox").joinpath("scenarios")
    return {Path(str(p)).stem: Path(str(p)) for p in sorted(folder.iterdir(), key=lambda p: p.name)
            if p.name.endswith(".yaml")}


def place_pods(s: Scenario) -> dict[str, tuple[str, list[int]]]:
    """The contract's placement: in order, lowest-numbered node with room (or the pinned node), taking
    that node's lowest free GPUs. Raises ScenarioError if a pod cannot fit."""
    free = {n: list(range(s.cluster.gpus_per_node)) for n in s.node_names()}
    placed: dict[str, tuple[str, list[int]]] = {}
    for w in s.workloads:
        for pod in w.pod_names():
            pinned = s.placement.get(pod)
            candidates = [pinned] if pinned else s.node_names()
            for node in candidates:
                if len(free[node]) >= w.gpus_per_replica:
                    take = free[node][: w.gpus_per_replica]
                    free[node] = free[node][w.gpus_per_replica :]
                    placed[pod] = (node, take)
                    break
            else:
                where = f"placement.{pod}" if pinned else "workloads"
                raise ScenarioError(
                    f"pod {pod} needs {w.gpus_per_replica} GPU(s) and "
                    + (f"{pinned} has only {len(free[pinned])} free" if pinned else "no node has room"),
                    where,
                )
    return placed
