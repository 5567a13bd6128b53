"""The simulated GPU cluster: nodes, GPUs, pods, models, faults and the effects of actions.

Layer: sandbox (imports `core` and its own modules only). Each catalogue action (`core.actions`) has one
entry in `_HANDLERS` at the end: how the simulator carries it out and how it reads the effect back. The simulator
advances a simulated clock in ticks; every random draw comes from one `random.Random(seed)`, so the same
scenario and seed give the same run. GPU readings are sampled from a real H100 NVML trace
(`nvml_profile`), and actions change the world the way a real cluster would: a cordoned node takes no new
pods, evicted pods are re-created where there is room, a GPU resets only when no process holds it, a
rollback serves the previous version.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

from pydantic import BaseModel

from core import xids
from core.actions import (
    MessageParams,
    PromoteParams,
    RescheduleParams,
    RollbackParams,
    ScaleParams,
    handler_table,
)
from core.domain import (
    CLOCK_REASON_HW_THERMAL,
    CLOCK_REASON_SW_POWER_CAP,
    Action,
    ClusterSnapshot,
    GpuSample,
    ModelStatus,
    ModelTrack,
    NodeStatus,
    PodStatus,
    VerificationResult,
)
from core.errors import PermanentToolError
from infra.gc_pause import gc_paused
from sandbox.nvml_profile import TraceRow, profiles
from sandbox.scenario import (
    BadDeployParams,
    CanaryParams,
    ConceptDriftParams,
    CrashloopParams,
    DriftParams,
    EccParams,
    FaultSpec,
    LeakParams,
    LogInjectionParams,
    NvlinkParams,
    PipelineBreakParams,
    RolloutSpec,
    Scenario,
    SpikeParams,
    SurgeParams,
    ThermalParams,
    XidParams,
    place_pods,
)

GPU_SPECS: dict[str, tuple[float, float]] = {  # model -> (framebuffer MiB, power limit W)
    "H100-80GB": (81559.0, 700.0),
    "A100-80GB": (81920.0, 400.0),
    "L4": (23034.0, 72.0),
}
THERMAL_SLOWDOWN_C = 89.0
NODE_MONITOR_GRACE_S = 40.0  # kube-controller-manager marks a silent node NotReady after this
POD_START_S = {"training": 60.0, "inference": 20.0}
RESET_S = 20.0
RETRAIN_S = 600.0
CRASH_BACKOFF_S = 30.0
PERSISTENT_CRASH_REASONS = {"ImagePullBackOff", "ErrImagePull", "CreateContainerConfigError", "InvalidImageName"}


@dataclass(slots=True)  # 10,000 of them in a fleet, each read every tick: slots keep them small
class SimGpu:
    id: str
    node: str
    index: int
    temp: float
    temp_offset: float
    present: bool = True
    needs_reset: bool = False
    reset_until: float | None = None
    # XID 154 node_reboot: the driver requires a node reboot; no GPU reset clears it
    needs_reboot: bool = False
    recovery: str | None = None  # the recovery action XID 154 announced (what NVML would report)
    fault_reason: str | None = None  # what a CUDA program on this GPU sees while it is failed
    ecc_sbe: int = 0
    ecc_dbe_vol: int = 0
    ecc_dbe_agg: int = 0
    remap_corr: int = 0
    remap_unc: int = 0
    remap_pending: bool = False
    remap_failure: bool = False
    pcie_replay: int = 0
    nvlink_crc: float = 0.0
    nvlink_replay: float = 0.0
    nvlink_rate_per_min: float = 0.0
    pending_xids: list[int] = field(default_factory=list)
    pod: str | None = None
    mem_used: float = 500.0
    power_capped: bool = False
    thermal: tuple[float, float, float, float] | None = None  # (start, start_temp, target, end)
    spike: tuple[str, float, float] | None = None  # (metric, value, until)
    # the snapshot's template for this GPU's sample and the `Simulator._idle_key` it was built from
    sample_template: tuple[tuple[Any, ...], dict[str, Any]] | None = field(default=None, repr=False, compare=False)

    @property
    def healthy(self) -> bool:
        return self.present and not self.needs_reset and not self.needs_reboot and self.reset_until is None


@dataclass
class SimNode:
    name: str
    kubelet_up: bool = True
    down_since: float | None = None
    unschedulable: bool = False
    cordoned_by: str | None = None
    disk_pressure: bool = False  # the kubelet's DiskPressure condition (no scenario fault sets it; tests do)

    def ready(self, now: float) -> bool:
        return self.kubelet_up or (self.down_since is not None and now - self.down_since < NODE_MONITOR_GRACE_S)


@dataclass
class SimPod:
    name: str
    workload: str
    kind: str
    gpus_needed: int
    node: str | None = None
    gpus: list[str] = field(default_factory=list)
    state: str = "Pending"  # Pending | Starting | Running | CrashLoop | Unknown | Deleted
    ready_at: float = 0.0
    started_at: float = 0.0
    restarts: int = 0
    reason: str | None = None
    app_error: bool = False
    stalled: bool = False
    crash_reason: str | None = None
    next_crash_at: float = 0.0
    leak_rate_mib_s: float = 0.0
    leak_mib: float = 0.0
    step: float = 0.0
    ckpt_step: float = 0.0
    last_ckpt_at: float = 0.0
    checkpoint_every: float = 600.0
    base_mem_mib: float = 0.0
    log: list[str] = field(default_factory=list)
    paused: bool = False


@dataclass
class SimVersion:
    version: int
    accuracy: float
    latency_ms: float
    drift_robust: bool = False
    error_rate: float = 0.0
    concept: float = 0.0  # how far into a concept drift the labels it learned from were (0: before, 1: after)
    learned_breakage: bool = False  # trained on rows of a broken feature pipeline


# How much accuracy a broken feature costs per share of broken values (SCENARIOS.md: "accuracy drops").
PIPELINE_ACCURACY_COST = {"nulls": 0.12, "out_of_range": 0.15, "type_change": 0.2}
LEARNED_BREAKAGE_COST = 0.08  # a version trained on broken rows, once the pipeline is fixed


@dataclass
class TrackMetrics:
    """One traffic track (`stable` or `canary`) of a model at one tick."""

    version: int
    share: float  # of requests, 0..1
    accuracy_true: float
    accuracy: float | None  # what the monitor can see: predictions `label_delay` old
    latency_ms: float
    error_rate: float
    rps: float


@dataclass
class SimModel:
    name: str
    workload: str
    versions: dict[int, SimVersion]
    serving: int
    previous: int | None = None
    slo_accuracy: float | None = None
    slo_latency: float | None = None
    last_deploy_at: float | None = None
    drift_target: dict[str, float] = field(default_factory=dict)
    drift_start: float | None = None
    drift_psi: dict[str, float] = field(default_factory=dict)
    retrain_done_at: float | None = None
    history: list[str] = field(default_factory=list)
    bad_versions: set[int] = field(default_factory=set)  # rolled back from: never a rollback target again
    accuracy_now: float | None = None
    latency_now: float | None = None
    # --- model operations (SCENARIOS.md: error rate, label delay, canary, concept drift, pipelines, load)
    slo_error_rate: float | None = None
    label_delay: float = 0.0
    rollout: RolloutSpec | None = None
    canary: int | None = None  # the version rolling out, if any
    canary_step: int = 0
    canary_next_at: float = 0.0
    rollout_started_at: float | None = None
    aborted: set[int] = field(default_factory=set)
    concept: tuple[float, float, float] | None = None  # (start, over, accuracy drop when complete)
    pipeline: tuple[str, str, float] | None = None  # (feature, kind, fraction) of a broken feature pipeline
    retrain_started_at: float | None = None
    capacity_qps: float = 100.0  # per replica
    base_rps: float = 0.0
    surges: list[tuple[float, float, float]] = field(default_factory=list)  # (start, end, multiplier)
    accuracy_true: float | None = None
    error_rate_now: float | None = None
    rps_now: float | None = None
    load_ratio: float | None = None  # requests / (ready replicas x capacity)
    tracks: dict[str, TrackMetrics] = field(default_factory=dict)
    acc_history: list[tuple[float, dict[str, float]]] = field(default_factory=list)  # (t, {track: true acc})


@dataclass(frozen=True)
class SimEvent:
    at_s: float
    kind: str  # fault | pod | action | model | node
    detail: str


_M = TypeVar("_M", bound=BaseModel)


_DEFAULTS: dict[type[Any], dict[str, Any]] = {}
_FIELD_COUNT: dict[type[Any], int] = {}


def _defaults_of(cls: type[BaseModel]) -> dict[str, Any]:
    """The fields of `cls` that have a default (cached per class)."""
    found = _DEFAULTS.get(cls)
    if found is None:
        found = {n: f for n, f in cls.model_fields.items() if not f.is_required()}
        _DEFAULTS[cls] = found
    return found


def _default(cls: type[BaseModel], name: str) -> Any:
    return cls.model_fields[name].get_default(call_default_factory=True)


def _complete(cls: type[BaseModel], values: dict[str, Any]) -> dict[str, Any]:
    """`values` holding every field of `cls` in its declared order: a field added to the domain model since a
    builder below was written takes its declared default (a fresh one for a default_factory)."""
    count = _FIELD_COUNT.get(cls)
    if count is None:
        count = _FIELD_COUNT[cls] = len(cls.model_fields)
    # the builders name only real fields, so as many keys as fields means every field (the common case,
    # checked by a length, not a set difference: this runs once per GPU per tick)
    if len(values) != count and _defaults_of(cls).keys() - values.keys():
        return {name: (values[name] if name in values else _default(cls, name)) for name in cls.model_fields}
    return values


def _built(cls: type[_M], values: dict[str, Any], fields_set: set[str] | None = None) -> _M:
    """`cls` from `values` without validation: what pydantic's `model_construct` does, without its
    per-field Python loop (a tenth of the cost at 10,000 GPUs a tick). `values` must hold every field of
    `cls` in its declared order (a dump follows it), each already of its field's type:
    tests/sandbox/test_snapshot_construct.py holds that validating what the snapshot builds changes nothing.
    `fields_set`, where given, is every field's name (`_all_fields`), shared by the objects of one snapshot."""
    if fields_set is None:
        fields_set = set(values)
    obj = _new(cls)
    _setattr(obj, "__dict__", _complete(cls, values))
    _setattr(obj, "__pydantic_fields_set__", fields_set)
    _setattr(obj, "__pydantic_extra__", None)
    _setattr(obj, "__pydantic_private__", None)
    return obj


_new = object.__new__
_setattr = object.__setattr__


def _all_fields(cls: type[BaseModel]) -> set[str]:
    """A fresh set of every field name of `cls`: the `__pydantic_fields_set__` that one snapshot's objects of
    `cls` share (each has every field set). Sharing it is safe because these models are frozen: pydantic
    changes a fields set in place only on attribute assignment, which a frozen model refuses, and copies it
    for `model_copy`. One set per snapshot instead of one per object saved a set of ~27 names per GPU per
    tick, and the collector's walk over it."""
    assert cls.model_config.get("frozen"), cls
    return set(cls.model_fields)


def _round1(x: float) -> float:
    """`round(x, 1)`, the same float, at a fraction of its cost (it formats and parses a decimal string;
    an idle GPU's sample rounds two readings a tick). `round(x, 1)` is the float nearest to n / 10, n the
    integer nearest to the exact 10x (ties to even). Where y = x * 10.0 is below 1e9 in magnitude, it is
    within half a unit in its last place (6e-8) of the exact 10x, so where it lies farther than 1e-6 from
    a tie its nearest integer is n, and n / 10 (an exact integer over 10, correctly rounded by IEEE
    division) is that float. Ties, zero (whose sign `round` keeps), huge values, infinities and NaN go to
    `round` itself. `_gpu_samples` has it written out; tests/sandbox/test_snapshot_construct.py tests it
    against `round`."""
    y = x * 10.0
    if -1e9 < y < 1e9:
        n = round(y)
        d = y - n
        if n and -0.499999 < d < 0.499999:
            return n / 10
    return round(x, 1)


class _SampleValues:
    """Holds a GPU sample template's values as attributes, for `_compact`."""


def _compact(values: dict[str, Any]) -> dict[str, Any]:
    """The same mapping, as a dict that shares its keys with every other one made here (CPython's split
    table, the layout of an instance's `__dict__`): a copy of it is a third of the memory of a copy of a
    plain 27-key dict, which a fleet snapshot makes 10,000 times a tick, and which the collector then walks
    and the next tick frees. Equal, in the same order, and a plain `dict` whatever the layout (another
    Python, or more fields than a shared table holds, just gives a plain one)."""
    holder = _SampleValues()
    for name, value in values.items():
        setattr(holder, name, value)
    compact = holder.__dict__
    return compact if list(compact) == list(values) else values


@contextmanager
def _collector_paused() -> Iterator[None]:
    """Hold Python's cyclic garbage collector while a snapshot is built. A fleet snapshot allocates some
    22,000 tracked objects (a sample and its dict per GPU; fields sets and empty lists are shared, node and
    pod statuses kept) that all survive until the next one; each young-generation collection on the way
    would walk the survivors again. Nothing built here forms a cycle (reference counting frees the previous
    snapshot), and the collector resumes, with its counts, after: its one walk over the new snapshot is
    what remains (about a sixth of a 10,000-GPU tick)."""
    with gc_paused():
        yield


class Simulator:
    """One scenario's cluster, advanced tick by tick."""

    def __init__(self, scenario: Scenario) -> None:
        self.scenario = scenario
        self.rng = random.Random(scenario.seed)
        self.now = 0.0
        self.tick = scenario.tick
        self.prof = profiles()
        mem_total, power_limit = GPU_SPECS[scenario.cluster.gpu_model]
        self.mem_total = mem_total
        self.power_limit = power_limit
        self.power_scale = power_limit / self.prof.power_limit_w
        self.events: list[SimEvent] = []
        self.notifications: list[str] = []
        self.nodes: dict[str, SimNode] = {n: SimNode(n) for n in scenario.node_names()}
        self.gpus: dict[str, SimGpu] = {}
        for n in scenario.node_names():
            for i in range(scenario.cluster.gpus_per_node):
                gid = f"{n}/gpu-{i}"
                off = self.rng.uniform(-2.0, 3.0)
                self.gpus[gid] = SimGpu(id=gid, node=n, index=i, temp=36.0 + off, temp_offset=off)
        self.pods: dict[str, SimPod] = {}
        self.models: dict[str, SimModel] = {}
        for w in scenario.workloads:
            for pod in w.pod_names():
                base = 0.72 if w.kind == "training" else (0.45 if w.gpus_per_replica > 1 else 0.3)
                self.pods[pod] = SimPod(
                    name=pod, workload=w.name, kind=w.kind, gpus_needed=w.gpus_per_replica,
                    checkpoint_every=w.checkpoint_every or 600.0,
                    base_mem_mib=mem_total * base,
                )
            if w.model_name:
                cur = w.current_version or 1
                slo = w.slo
                lat_slo = slo.latency_p95_ms if slo else None
                acc_slo = slo.accuracy_min if slo else None
                base_lat = (lat_slo or 100.0) * 0.55
                base_acc = min(0.99, max(acc_slo or 0.85, 0.85) + 0.05)
                versions = {
                    v: SimVersion(v, round(base_acc + self.rng.uniform(-0.004, 0.004), 4),
                                  base_lat * self.rng.uniform(0.95, 1.05))
                    for v in range(1, cur + 1)
                }
                self.models[w.model_name] = SimModel(
                    name=w.model_name, workload=w.name, versions=versions, serving=cur,
                    previous=cur - 1 if cur > 1 else None, slo_accuracy=acc_slo, slo_latency=lat_slo,
                    slo_error_rate=slo.error_rate_max if slo else None,
                    label_delay=slo.label_delay if slo else 0.0, rollout=w.rollout,
                    capacity_qps=w.capacity, base_rps=0.5 * w.capacity * w.replicas,
                )
        for pod, (node, idxs) in place_pods(scenario).items():
            self._bind(self.pods[pod], node, [f"{node}/gpu-{i}" for i in idxs])
            p = self.pods[pod]
            p.state, p.ready_at, p.started_at = "Running", 0.0, 0.0
        self._applied: set[tuple[int, int]] = set()  # (fault index, repetition)
        if any(f.type == "gpu_xid" for f in scenario.faults):
            # NVIDIA's XID catalog is parsed once per process, here rather than in the tick of the first XID
            # (a tenth of a second of YAML: at fleet size, as much as a whole tick)
            xids.codes()
        # what the snapshot keeps between ticks (`_node_statuses`; a GPU's is `SimGpu.sample_template`): by
        # name, the key it was built from and what was built
        self._node_cache: dict[str, tuple[tuple[Any, ...], NodeStatus]] = {}
        self._pod_cache: dict[str, tuple[tuple[Any, ...], PodStatus]] = {}
        # Model-operations noise has its own stream, so that adding it left every older scenario's draws
        # (GPU readings, accuracy noise) exactly where they were.
        self.mrng = random.Random(f"{scenario.seed}:models")
        self._update_models(0.0)

    # ------------------------------------------------------------------------------------- clock

    @property
    def duration(self) -> float:
        return self.scenario.duration

    @property
    def done(self) -> bool:
        return self.now >= self.scenario.duration

    def step(self) -> None:
        dt = self.tick
        self.now = round(self.now + dt, 6)
        self._inject_faults()
        self._update_nodes()
        self._update_pods(dt)
        self._update_gpus(dt)
        self._update_models(dt)

    def _event(self, kind: str, detail: str) -> None:
        self.events.append(SimEvent(self.now, kind, detail))

    # ------------------------------------------------------------------------------------ faults

    def _inject_faults(self) -> None:
        for i, f in enumerate(self.scenario.faults):
            reps = f.typed_params().repeat if f.type == "gpu_xid" else 1
            every = f.typed_params().every if f.type == "gpu_xid" else 0.0
            for r in range(reps):
                at = f.at + r * every
                if at <= self.now and (i, r) not in self._applied:
                    self._applied.add((i, r))
                    self._apply_fault(f, r)

    def _apply_fault(self, f: FaultSpec, rep: int) -> None:
        p = f.typed_params()
        self._event("fault", f"{f.type} on {f.target}" + (f" {f.params}" if f.params else ""))
        if isinstance(p, XidParams):
            self._xid(self.gpus[f.target], p.xid, p.recovery)
        elif isinstance(p, EccParams):
            g = self.gpus[f.target]
            g.ecc_dbe_vol += p.volatile_dbe
            g.ecc_dbe_agg += p.volatile_dbe
            g.remap_unc += 1
            g.needs_reset = True
            g.remap_pending = not p.remap_failure
            g.remap_failure = g.remap_failure or p.remap_failure
            self._crash_gpu_pods(g, "uncorrectable ECC error", persistent=True)
        elif isinstance(p, ThermalParams):
            g = self.gpus[f.target]
            end = f.at + 60.0 + (p.for_ if p.for_ is not None else 10 * self.scenario.duration)
            g.thermal = (f.at, g.temp, p.temp_c, end)
        elif isinstance(p, LeakParams):
            self.pods[f.target].leak_rate_mib_s = p.rate_gib_per_min * 1024.0 / 60.0
        elif isinstance(p, NvlinkParams):
            self.gpus[f.target].nvlink_rate_per_min = p.rate_per_min
        elif f.type == "power_cap_under_load":
            targets = [f.target] if f.target in self.gpus else [g for g in self.gpus if g.startswith(f.target + "/")]
            for gid in targets:
                self.gpus[gid].power_capped = True
        elif isinstance(p, SpikeParams):
            self.gpus[f.target].spike = (p.metric, p.value, f.at + p.for_)
        elif f.type == "node_not_ready":
            n = self.nodes[f.target]
            n.kubelet_up, n.down_since = False, self.now
        elif isinstance(p, CrashloopParams):
            pod = self.pods[f.target]
            pod.crash_reason = p.reason
            if pod.state in ("Running", "Starting"):
                self._crash(pod, p.reason)
        elif f.type == "training_stall":
            pod = self.pods[f.target]
            pod.stalled = True
            pod.log.append("NCCL watchdog: collective operation has not completed (waiting)")
        elif isinstance(p, CanaryParams):
            self._start_canary(self.models[f.target], p)
        elif isinstance(p, BadDeployParams):
            m = self.models[f.target]
            cur = m.versions[m.serving]
            v = p.version or max(m.versions) + 1
            m.versions[v] = SimVersion(
                v, p.accuracy if p.accuracy is not None else cur.accuracy,
                p.latency_p95_ms if p.latency_p95_ms is not None else cur.latency_ms,
                error_rate=p.error_rate if p.error_rate is not None else cur.error_rate,
                concept=cur.concept,
            )
            self._serve(m, v, f"deploy of version {v}")
        elif isinstance(p, ConceptDriftParams):
            m = self.models[f.target]
            m.concept = (f.at, max(p.over, 1e-6), max(0.0, m.versions[m.serving].accuracy - p.accuracy))
        elif isinstance(p, PipelineBreakParams):
            self.models[f.target].pipeline = (p.feature, p.kind, p.fraction)
        elif isinstance(p, SurgeParams):
            m = self._model_of_workload(f.target)
            end = f.at + p.for_ if p.for_ is not None else math.inf
            m.surges.append((f.at, end, p.multiplier))
        elif isinstance(p, DriftParams):
            m = self.models[f.target]
            m.drift_target[p.feature] = p.psi
            m.drift_start = m.drift_start if m.drift_start is not None else f.at
        elif isinstance(p, LogInjectionParams):
            self.pods[f.target].log.append(p.text)

    def _xid(self, g: SimGpu, xid: int, recovery: str | None = None) -> None:
        """One XID event, with the consequence NVIDIA's XID catalog gives its bucket (SCENARIOS.md, "XIDs").
        XID 154 carries the recovery the driver now requires for the GPU: it overrides the bucket of the
        XID it accompanies (the earlier XIDs' effects are already applied; the override only adds)."""
        g.pending_xids.append(xid)
        if xid == xids.RECOVERY_XID:
            g.recovery = recovery
        what = xids.read(xid, recovery)
        self._ecc_counters(g, xid)
        eff = what.effect
        if eff == "restart_bm":
            g.present = False
            g.fault_reason = "CUDA error: GPU has fallen off the bus"
            self._crash_gpu_pods(g, g.fault_reason, persistent=True)
        elif eff == "node_reboot":
            g.needs_reboot = True
            g.fault_reason = g.fault_reason or f"CUDA error: unspecified launch failure (XID {xid}; node reboot)"
            self._crash_gpu_pods(g, g.fault_reason, persistent=True)
        elif eff in ("reset_gpu", "ecc_dbe"):
            g.needs_reset = True
            g.fault_reason = g.fault_reason or (
                "CUDA error: uncorrectable ECC error encountered" if what.root_cause == "gpu_uncorrectable_ecc"
                else f"CUDA error: unspecified launch failure (XID {xid}; GPU reset required)")
            self._crash_gpu_pods(g, g.fault_reason, persistent=True)
        elif xid == 94:  # contained: only the faulting process dies; the pod restarts by itself
            for pod in self._gpu_pods(g):
                pod.restarts += 1
                pod.state, pod.ready_at = "Starting", self.now + POD_START_S[pod.kind]
                pod.log.append("CUDA error: uncorrectable ECC error encountered (contained)")
        elif eff == "restart_app":
            for pod in self._gpu_pods(g):
                pod.app_error = True
                pod.log.append("RuntimeError: CUDA error: an illegal memory access was encountered")
                self._event("pod", f"{pod.name} hit a CUDA application error (XID {xid})")
        elif eff == "nvlink":
            g.nvlink_crc += 50
            g.nvlink_replay += 10
        else:  # ignore / event: recorded, the GPU keeps working
            self._event("gpu", f"{g.id}: {what.describe()}; the GPU keeps working")

    @staticmethod
    def _ecc_counters(g: SimGpu, xid: int) -> None:
        """What an ECC-family XID leaves in NVML's counters (the diagnostician reads them as evidence)."""
        if xid in (48, 94, 95, 140):
            g.ecc_dbe_vol += 1
            g.ecc_dbe_agg += 1
            g.remap_pending = True
        elif xid == 92:
            g.ecc_sbe += 500
        elif xid == 63:
            g.remap_unc += 1
            g.remap_pending = True
        elif xid == 64:
            g.remap_failure = True

    def _gpu_pods(self, g: SimGpu) -> list[SimPod]:
        return [p for p in self.pods.values() if g.id in p.gpus and p.state != "Deleted"]

    def _crash_gpu_pods(self, g: SimGpu, why: str, *, persistent: bool) -> None:
        for pod in self._gpu_pods(g):
            pod.log.append(why)
            self._crash(pod, "CrashLoopBackOff")

    def _crash(self, pod: SimPod, reason: str) -> None:
        pod.state, pod.reason = "CrashLoop", reason
        pod.restarts += 1
        pod.next_crash_at = self.now + CRASH_BACKOFF_S
        self._event("pod", f"{pod.name} is crashing ({reason})")

    # -------------------------------------------------------------------------------- dynamics

    def _update_nodes(self) -> None:
        for n in self.nodes.values():
            if not n.ready(self.now):
                for pod in self.pods.values():
                    if pod.node == n.name and pod.state not in ("Deleted", "Unknown"):
                        pod.state, pod.reason = "Unknown", "NodeLost"
                        self._event("pod", f"{pod.name} is unreachable: its node {n.name} is NotReady")

    def _pod_blocked(self, pod: SimPod) -> str | None:
        """Why a pod's containers cannot run where it is bound, if they cannot."""
        for gid in pod.gpus:
            g = self.gpus[gid]
            if not g.present:
                return "CUDA error: no CUDA-capable device is detected"
            if g.needs_reset or g.needs_reboot:
                return g.fault_reason or "CUDA error: uncorrectable ECC error encountered"
        if pod.crash_reason:
            return pod.crash_reason
        return None

    def _update_pods(self, dt: float) -> None:
        for pod in self.pods.values():
            if pod.state == "Pending":
                self._try_schedule(pod)
            elif pod.state == "Starting" and self.now >= pod.ready_at:
                blocked = self._pod_blocked(pod)
                if blocked:
                    self._crash(pod, "CrashLoopBackOff")
                else:
                    pod.state, pod.reason = "Running", None
            elif pod.state == "CrashLoop" and self.now >= pod.next_crash_at:
                if self._pod_blocked(pod):
                    pod.restarts += 1
                    pod.next_crash_at = self.now + min(300.0, CRASH_BACKOFF_S * 2 ** min(pod.restarts, 4))
                else:
                    pod.state, pod.ready_at = "Starting", self.now + POD_START_S[pod.kind]
            if pod.state == "Running":
                self._run_pod(pod, dt)

    def _run_pod(self, pod: SimPod, dt: float) -> None:
        if pod.kind == "training" and not pod.stalled:
            slow = min((self._clock_factor(self.gpus[g]) for g in pod.gpus), default=1.0)
            pod.step += dt * 1.0 * slow
            if self.now - pod.last_ckpt_at >= pod.checkpoint_every:
                pod.ckpt_step, pod.last_ckpt_at = pod.step, self.now
        if pod.leak_rate_mib_s > 0:
            pod.leak_mib += pod.leak_rate_mib_s * dt
            if pod.base_mem_mib + pod.leak_mib >= self.mem_total:
                pod.log.append("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB")
                pod.leak_mib = 0.0
                pod.restarts += 1
                pod.state, pod.reason = "Starting", "OOMKilled"
                pod.ready_at = self.now + POD_START_S[pod.kind]
                self._event("pod", f"{pod.name} was killed: GPU out of memory")

    def _clock_factor(self, g: SimGpu) -> float:
        return 0.55 if g.temp > THERMAL_SLOWDOWN_C else 1.0

    def _update_gpus(self, dt: float) -> None:
        # once per GPU per tick: names bound once, and `rng.uniform(-0.3, 0.3)` written out as `random.Random`
        # computes it, a + (b - a) * random(), so that the draws and values stay exactly those of the call
        alpha = 1.0 - math.exp(-dt / 25.0)
        now, rng, pods_get = self.now, self.rng, self.pods.get
        random_ = rng.random
        noise_span = 0.3 - -0.3
        for g in self.gpus.values():
            if g.reset_until is not None and now >= g.reset_until:
                g.reset_until = None
                self._finish_reset(g)
            pod = pods_get(g.pod) if g.pod else None
            running = pod is not None and pod.state == "Running"
            if g.power_capped or (running and pod is not None and pod.kind == "training" and not pod.stalled):
                target = 62.0 + g.temp_offset
            elif running and pod is not None and pod.kind == "inference":
                target = 50.0 + g.temp_offset
            else:
                target = 36.0 + g.temp_offset
            if g.thermal is not None:
                start, t0, hot, end = g.thermal
                if now < end:
                    frac = min(1.0, (now - start) / 60.0)
                    g.temp = t0 + (hot - t0) * frac + rng.uniform(-0.4, 0.4)
                    continue
                g.thermal = None
            g.temp += (target - g.temp) * alpha + (-0.3 + noise_span * random_())
            if g.nvlink_rate_per_min > 0:
                g.nvlink_crc += g.nvlink_rate_per_min * dt / 60.0 * rng.uniform(0.7, 1.3)
                g.nvlink_replay += g.nvlink_rate_per_min * dt / 600.0

    def _finish_reset(self, g: SimGpu) -> None:
        g.ecc_dbe_vol = 0
        g.ecc_sbe = 0
        g.nvlink_crc = g.nvlink_replay = 0.0
        if g.remap_failure:
            self._event("node", f"{g.id} reset, but its row remapping failed: it needs replacement")
            return
        g.needs_reset = False
        g.remap_pending = False
        g.fault_reason, g.recovery = None, None
        self._event("node", f"{g.id} reset and healthy")

    def reboot_node(self, name: str) -> None:
        """A person rebooted `name` (opsmedic has no reboot action: it escalates one). Every GPU of the node comes
        back from what only a reboot clears (fell off the bus, XID 154 node_reboot) and its pods start again.
        A row-remap failure survives: that GPU needs replacing."""
        node = self._node(name)
        for pod in [p for p in self.pods.values() if p.node == name and p.state != "Deleted"]:
            self._recreate(pod, in_place=False)
        for g in (g for g in self.gpus.values() if g.node == name):
            g.present, g.needs_reboot, g.reset_until = True, False, None
            g.ecc_dbe_vol = g.ecc_sbe = 0
            g.nvlink_crc = g.nvlink_replay = 0.0
            g.recovery = None
            if not g.remap_failure:
                g.needs_reset, g.remap_pending, g.fault_reason = False, False, None
        node.kubelet_up, node.down_since = True, None
        self._event("node", f"{name} rebooted")

    def feature_drift(self, model: str) -> tuple[dict[str, float], bool]:
        """({feature: the PSI its live distribution has reached against the original training data}, whether
        the serving version was trained on the drifted data). Noise-free: `sandbox.model_data.current` draws
        feature windows with these levels, and a drift detector measures them. A drift ramps up over ten
        minutes from the fault's start."""
        m = self.models[model]
        if m.drift_start is None:
            return {}, m.versions[m.serving].drift_robust
        ramp = min(1.0, max(0.0, self.now - m.drift_start) / 600.0)
        return {f: target * ramp for f, target in m.drift_target.items()}, m.versions[m.serving].drift_robust

    def concept_level(self, model: str, at: float) -> float:
        """How far a concept drift has moved the input-label relation at time `at` (0 before, 1 done)."""
        m = self.models[model]
        if m.concept is None:
            return 0.0
        start, over, _ = m.concept
        return min(1.0, max(0.0, (at - start) / over))

    def _true_accuracy(self, m: SimModel, ver: SimVersion, acc: float) -> float:
        """`acc` (the version's accuracy with data drift) less what concept drift and a broken pipeline
        cost it now."""
        if m.concept is not None:
            acc -= m.concept[2] * abs(self.concept_level(m.name, self.now) - ver.concept)
        if m.pipeline is not None:
            _, kind, fraction = m.pipeline
            acc -= PIPELINE_ACCURACY_COST[kind] * fraction
        if ver.learned_breakage:
            acc -= LEARNED_BREAKAGE_COST
        return acc

    def load(self, m: SimModel) -> float:
        """Requests per second the workload receives now (base x any surge)."""
        mult = 1.0
        for start, end, k in m.surges:
            if start <= self.now < end:
                mult *= k
        return m.base_rps * mult

    @staticmethod
    def latency_factor(ratio: float) -> float:
        """Latency p95 multiplier at a load ratio (requests / capacity): flat up to capacity, where the
        SLO still holds, then queueing makes it climb."""
        return 1.0 if ratio <= 1.0 else 1.0 + 4.0 * (ratio - 1.0)

    def _visible_accuracy(self, m: SimModel, track: str) -> float | None:
        """The accuracy labels can confirm now: that of predictions `label_delay` old."""
        if not m.acc_history:
            return None
        if m.label_delay <= 0:
            return m.acc_history[-1][1].get(track)
        cutoff = self.now - m.label_delay
        seen = [h for h in m.acc_history if h[0] <= cutoff + 1e-9]
        row = seen[-1] if seen else m.acc_history[0]
        return row[1].get(track)

    def _step_canary(self, m: SimModel) -> None:
        if m.canary is None or m.rollout is None or self.now < m.canary_next_at:
            return
        m.canary_step += 1
        m.canary_next_at = self.now + m.rollout.step_every
        pct = m.rollout.steps[min(m.canary_step, len(m.rollout.steps) - 1)]
        if pct >= 100:
            v, m.canary = m.canary, None
            # SCENARIOS.md: a canary that reaches 100 % is not a deploy for the model_*_regression causes
            self._serve(m, v, "canary reached 100 %", deploy=False)
        else:
            self._event("model", f"{m.name} canary v{m.canary} now takes {pct:g} % of requests")

    def canary_share(self, m: SimModel) -> float:
        if m.canary is None or m.rollout is None:
            return 0.0
        return m.rollout.steps[min(m.canary_step, len(m.rollout.steps) - 1)] / 100.0

    def _update_models(self, dt: float) -> None:
        for m in self.models.values():
            if m.retrain_done_at is not None and self.now >= m.retrain_done_at:
                m.retrain_done_at = None
                v = max(m.versions) + 1
                base = max(x.accuracy for x in m.versions.values() if not x.drift_robust or True)
                acc = round(min(0.99, max(base, 0.94) + self.rng.uniform(0.0, 0.01)), 4)
                lat = m.versions[m.serving].latency_ms
                started = m.retrain_started_at if m.retrain_started_at is not None else self.now
                m.versions[v] = SimVersion(v, acc, lat, drift_robust=True,
                                           concept=self.concept_level(m.name, started - m.label_delay),
                                           learned_breakage=m.pipeline is not None)
                m.history.append(f"{self.now:.0f}s: version {v} trained on recent data (accuracy {acc:.3f})")
                self._event("model", f"{m.name} version {v} registered by retraining")
            self._step_canary(m)
            robust = m.versions[m.serving].drift_robust
            levels, _ = self.feature_drift(m.name)
            for feat, level in levels.items():
                val = 0.02 if robust else max(0.02, level)
                m.drift_psi[feat] = round(val * self.rng.uniform(0.92, 1.08), 4)
            if m.pipeline is not None:
                # a broken feature's drift score jumps (its missing / impossible values fall outside every
                # reference bin), whatever the version
                feat, kind, fraction = m.pipeline
                m.drift_psi[feat] = round(max(m.drift_psi.get(feat, 0.0), 4.0 * fraction)
                                          * self.mrng.uniform(0.95, 1.05), 4)
            ready = [
                p for p in self.pods.values()
                if p.workload == m.workload and p.state == "Running" and not p.app_error
            ]
            ver = m.versions[m.serving]
            if not ready:
                m.accuracy_now = m.latency_now = m.accuracy_true = m.error_rate_now = None
                m.rps_now = m.load_ratio = None
                m.tracks = {}
                continue
            acc = ver.accuracy
            if m.drift_start is not None and not robust and m.drift_target:
                hours = max(0.0, self.now - m.drift_start) / 3600.0
                strength = max(m.drift_target.values()) / 0.35
                acc -= min(0.2, 0.022 * hours * strength)
            acc_noise = self.rng.uniform(-0.003, 0.003)
            stable_true = round(self._true_accuracy(m, ver, acc) + acc_noise, 4)
            slow = max(
                (1.6 if any(self._clock_factor(self.gpus[g]) < 1 for g in p.gpus) else 1.0) for p in ready
            )
            lat_noise = self.rng.uniform(0.96, 1.04)
            load = self.load(m)
            # Capacity is that of the workload's replicas (its desired count): a replica that is down is the
            # pod's or node's incident, and the load balancer's retries keep the SLO while it comes back;
            # more requests than the replicas serve is saturation.
            replicas = sum(1 for p in self.pods.values() if p.workload == m.workload and p.state != "Deleted")
            ratio = load / (m.capacity_qps * max(1, replicas))
            lf = self.latency_factor(ratio)
            share = self.canary_share(m)
            trues = {"stable": stable_true}
            tracks = {"stable": TrackMetrics(
                version=m.serving, share=1.0 - share, accuracy_true=stable_true, accuracy=None,
                latency_ms=round(ver.latency_ms * slow * lat_noise * lf, 2),
                error_rate=round(ver.error_rate * self.mrng.uniform(0.9, 1.1), 5), rps=round(load * (1 - share), 2),
            )}
            if m.canary is not None and share > 0:
                cv = m.versions[m.canary]
                c_true = round(self._true_accuracy(m, cv, cv.accuracy) + self.mrng.uniform(-0.003, 0.003), 4)
                trues["canary"] = c_true
                tracks["canary"] = TrackMetrics(
                    version=m.canary, share=share, accuracy_true=c_true, accuracy=None,
                    latency_ms=round(cv.latency_ms * slow * self.mrng.uniform(0.96, 1.04) * lf, 2),
                    error_rate=round(cv.error_rate * self.mrng.uniform(0.9, 1.1), 5), rps=round(load * share, 2),
                )
            m.acc_history.append((self.now, trues))
            keep = self.now - m.label_delay - 2 * self.tick
            while len(m.acc_history) > 2 and m.acc_history[1][0] <= keep:
                m.acc_history.pop(0)
            for name, tr in tracks.items():
                tr.accuracy = self._visible_accuracy(m, name)
            m.tracks = tracks
            m.accuracy_true = stable_true
            m.accuracy_now = tracks["stable"].accuracy
            m.latency_now = tracks["stable"].latency_ms
            m.error_rate_now = tracks["stable"].error_rate
            m.rps_now = round(load, 2)
            m.load_ratio = round(ratio, 4)

    # ------------------------------------------------------------------------------ scheduling

    def _bind(self, pod: SimPod, node: str, gpus: list[str]) -> None:
        pod.node, pod.gpus = node, gpus
        for gid in gpus:
            self.gpus[gid].pod = pod.name

    def _unbind(self, pod: SimPod) -> None:
        for gid in pod.gpus:
            if self.gpus[gid].pod == pod.name:
                self.gpus[gid].pod = None
        pod.node, pod.gpus = None, []

    def _free_gpus(self, node: str) -> list[str]:
        return [
            g.id for g in self.gpus.values()
            if g.node == node and g.pod is None and g.healthy
        ]

    def _schedulable(self, node: str) -> bool:
        n = self.nodes[node]
        return n.kubelet_up and not n.unschedulable

    def _try_schedule(self, pod: SimPod, prefer: tuple[str, list[str]] | None = None) -> bool:
        if pod.paused:
            return False
        if prefer is not None:
            node, gpus = prefer
            if self._schedulable(node) and all(self.gpus[g].pod is None and self.gpus[g].healthy for g in gpus):
                self._start(pod, node, gpus)
                return True
        for node in self.nodes:
            if not self._schedulable(node):
                continue
            free = sorted(self._free_gpus(node), key=lambda gid: self.gpus[gid].index)
            if len(free) >= pod.gpus_needed:
                self._start(pod, node, free[: pod.gpus_needed])
                return True
        pod.state, pod.reason = "Pending", "Unschedulable"
        return False

    def _start(self, pod: SimPod, node: str, gpus: list[str]) -> None:
        self._bind(pod, node, gpus)
        pod.state, pod.reason = "Starting", "ContainerCreating"
        pod.ready_at = self.now + POD_START_S[pod.kind]
        pod.started_at = self.now
        pod.step = pod.ckpt_step
        pod.last_ckpt_at = self.now
        self._event("pod", f"{pod.name} scheduled on {node} ({', '.join(g.split('/')[1] for g in gpus)})")

    def _recreate(self, pod: SimPod, *, in_place: bool) -> None:
        """Delete the pod and let its controller create a fresh one (same name, StatefulSet-style)."""
        prefer = (pod.node, list(pod.gpus)) if in_place and pod.node else None
        self._unbind(pod)
        pod.app_error = pod.stalled = False
        if pod.crash_reason not in PERSISTENT_CRASH_REASONS:
            pod.crash_reason = None
        pod.leak_mib = 0.0
        pod.reason = None
        self._try_schedule(pod, prefer=prefer)

    # ------------------------------------------------------------------------------- actions

    def execute(self, action: Action) -> tuple[bool, str]:
        """Apply an action. Returns (changed, detail); raises PermanentToolError when it cannot be done."""
        changed, detail = _HANDLERS[action.name].do(self, action)
        self._event("action", f"{action.key}: {detail}")
        return changed, detail

    def _node(self, name: str) -> SimNode:
        if name not in self.nodes:
            raise PermanentToolError(f"node {name!r} not found")
        return self.nodes[name]

    def _pod(self, name: str) -> SimPod:
        pod = self.pods.get(name)
        if pod is None or pod.state == "Deleted":
            raise PermanentToolError(f"pod {name!r} not found")
        return pod

    def _gpu(self, gid: str) -> SimGpu:
        if gid not in self.gpus:
            raise PermanentToolError(f"GPU {gid!r} not found")
        return self.gpus[gid]

    def _model(self, name: str) -> SimModel:
        if name not in self.models:
            raise PermanentToolError(f"model {name!r} not registered")
        return self.models[name]

    def _do_cordon_node(self, a: Action) -> tuple[bool, str]:
        t = a.target
        n = self._node(t)
        if n.unschedulable:
            return False, f"{t} was already cordoned"
        n.unschedulable = True
        n.cordoned_by = "opsmedic"
        return True, f"{t} cordoned: no new pods will be scheduled there"

    def _do_uncordon_node(self, a: Action) -> tuple[bool, str]:
        t = a.target
        n = self._node(t)
        if not n.unschedulable:
            return False, f"{t} was already schedulable"
        n.unschedulable, n.cordoned_by = False, None
        return True, f"{t} uncordoned"

    def _do_drain_node(self, a: Action) -> tuple[bool, str]:
        t = a.target
        n = self._node(t)
        if not n.unschedulable:
            n.unschedulable = True
        pods = [p for p in self.pods.values() if p.node == t and p.state != "Deleted"]
        if not pods:
            return False, f"{t} had no pods to evict"
        moved = []
        for p in pods:
            self._recreate(p, in_place=False)
            moved.append(f"{p.name} -> {p.node or 'Pending'}")
        return True, f"evicted {len(pods)} pod(s): " + ", ".join(moved)

    def _do_reschedule_pod(self, a: Action) -> tuple[bool, str]:
        t = a.target
        pod = self._pod(t)
        old = pod.node
        if old is not None and not self.nodes[old].ready(self.now) and not a.params_as(RescheduleParams).force:
            raise PermanentToolError(
                f"{t} is on NotReady node {old}: eviction cannot complete there; reschedule with force"
            )
        # Keep the pod off the GPUs it leaves: they are the reason it moves.
        held = [self.gpus[g] for g in pod.gpus]
        saved = [(g, g.pod) for g in held]
        self._unbind(pod)
        for g in held:
            g.pod = "__leaving__"
        pod.app_error = pod.stalled = False
        pod.leak_mib = 0.0
        ok = self._try_schedule(pod)
        for g, _ in saved:
            g.pod = None if g.pod == "__leaving__" else g.pod
        where = pod.node if ok else "Pending (no room)"
        return True, f"{t} moved from {old} to {where}"

    def _do_restart_pod(self, a: Action) -> tuple[bool, str]:
        t = a.target
        pod = self._pod(t)
        pod.restarts += 1
        self._recreate(pod, in_place=True)
        return True, f"{t} deleted and re-created on {pod.node or 'Pending'}"

    def _do_reset_gpu(self, a: Action) -> tuple[bool, str]:
        t = a.target
        g = self._gpu(t)
        if not self.nodes[g.node].ready(self.now):
            raise PermanentToolError(f"cannot reset {t}: node {g.node} is NotReady")
        if not g.present:
            raise PermanentToolError(f"cannot reset {t}: the GPU is not visible to the driver; reboot the node")
        if g.needs_reboot:
            raise PermanentToolError(f"cannot reset {t}: XID 154 asks for a node reboot; a reset will not help")
        if g.pod is not None:
            raise PermanentToolError(f"cannot reset {t}: in use by pod {g.pod}; move the pod first")
        if g.reset_until is not None:
            return False, f"{t} reset already in progress"
        g.reset_until = self.now + RESET_S
        return True, f"{t} reset started (nvidia-smi -r)"

    def _model_of_workload(self, workload: str) -> SimModel:
        m = next((x for x in self.models.values() if x.workload == workload), None)
        if m is None:
            raise PermanentToolError(f"{workload!r} is not an inference workload")
        return m

    def scale_workload(self, workload: str, replicas: int) -> str:
        """Set a workload's replica count, as its controller would: new replicas (the next ordinals) are
        placed by the contract's rule (lowest-numbered node with room, its lowest free GPUs); scaling down
        removes the highest ordinals. Refused, with nothing changed, when the new replicas do not all fit
        on free healthy GPUs of schedulable nodes."""
        pods = sorted((p for p in self.pods.values() if p.workload == workload),
                      key=lambda p: int(p.name.rsplit("-", 1)[-1]))
        if not pods:
            raise PermanentToolError(f"workload {workload!r} not found")
        if replicas < 0:
            raise PermanentToolError(f"cannot scale {workload} to {replicas} replicas")
        live = [p for p in pods if p.state != "Deleted"]
        have = len(live)
        if replicas == have:
            return f"{workload} already has {replicas} replica(s)"
        if replicas < have:
            for p in live[replicas:]:
                self._unbind(p)
                p.state, p.paused, p.reason = "Deleted", True, None
            self._event("pod", f"{workload} scaled down from {have} to {replicas}")
            return f"{workload} scaled from {have} to {replicas} replica(s)"
        need, per = replicas - have, pods[0].gpus_needed
        fits = sum(len(self._free_gpus(n)) // per for n in self.nodes if self._schedulable(n))
        if fits < need:
            raise PermanentToolError(
                f"cannot scale {workload} from {have} to {replicas}: {need} more replica(s) of {per} GPU(s) "
                f"each, but free healthy GPUs fit only {fits}; escalate for capacity")
        template = pods[0]
        by_name = {p.name: p for p in pods}
        for i in range(replicas):
            name = f"{workload}-{i}"
            pod = by_name.get(name)
            if pod is not None and pod.state != "Deleted":
                continue
            if pod is None:
                pod = self.pods[name] = SimPod(
                    name=name, workload=workload, kind=template.kind, gpus_needed=per,
                    checkpoint_every=template.checkpoint_every, base_mem_mib=template.base_mem_mib)
            pod.state, pod.paused, pod.reason = "Pending", False, None
            self._try_schedule(pod)
        self._event("pod", f"{workload} scaled up from {have} to {replicas}")
        return f"{workload} scaled from {have} to {replicas} replica(s)"

    def _do_scale_deployment(self, a: Action) -> tuple[bool, str]:
        t = a.target
        want = a.params_as(ScaleParams).replicas
        before = sum(1 for p in self.pods.values() if p.workload == t and p.state != "Deleted")
        detail = self.scale_workload(t, want)
        return before != want, detail

    def abort_rollout(self, model: str) -> str:
        """Abort a canary rollout: all traffic back to the stable version; the canary version stays
        registered, unserved, and never resumes."""
        m = self._model(model)
        if m.canary is None:
            raise PermanentToolError(f"{model} has no canary rollout in progress")
        v, m.canary = m.canary, None
        m.aborted.add(v)
        m.canary_step = 0
        m.history.append(f"{self.now:.0f}s: canary version {v} aborted; stable v{m.serving} takes all traffic")
        self._event("model", f"{model} canary v{v} aborted: all traffic back to v{m.serving}")
        return f"{model} canary version {v} aborted: 100 % of requests on stable version {m.serving}"

    def _do_abort_rollout(self, a: Action) -> tuple[bool, str]:
        t = a.target
        m = self._model(t)
        if m.canary is None and m.aborted:
            return False, f"{t} rollout already aborted; stable version {m.serving} serves all traffic"
        return True, self.abort_rollout(t)

    def _start_canary(self, m: SimModel, p: CanaryParams) -> None:
        cur = m.versions[m.serving]
        v = p.version or max(m.versions) + 1
        m.versions[v] = SimVersion(
            v, p.accuracy if p.accuracy is not None else cur.accuracy,
            p.latency_p95_ms if p.latency_p95_ms is not None else cur.latency_ms,
            error_rate=p.error_rate if p.error_rate is not None else cur.error_rate,
            drift_robust=cur.drift_robust, concept=cur.concept,
        )
        m.canary, m.canary_step, m.rollout_started_at = v, 0, self.now
        m.canary_next_at = self.now + (m.rollout.step_every if m.rollout else 0.0)
        share = self.canary_share(m)
        m.history.append(f"{self.now:.0f}s: canary version {v} starts at {share:.0%} of requests")
        self._event("model", f"{m.name} canary v{v} starts at {share:.0%} of requests")

    def _do_pause_job(self, a: Action) -> tuple[bool, str]:
        t = a.target
        pods = [p for p in self.pods.values() if p.workload == t]
        if not pods or pods[0].kind != "training":
            raise PermanentToolError(f"{t} is not a training job")
        for p in pods:
            p.paused = True
            self._unbind(p)
            p.state = "Pending"
        return True, f"{t} paused at its last checkpoint"

    def _do_resume_job(self, a: Action) -> tuple[bool, str]:
        t = a.target
        pods = [p for p in self.pods.values() if p.workload == t]
        if not pods:
            raise PermanentToolError(f"{t} is not a training job")
        for p in pods:
            p.paused = False
            self._try_schedule(p)
        return True, f"{t} resumed"

    def _serve(self, m: SimModel, version: int, why: str, *, deploy: bool = True) -> None:
        m.previous, m.serving = m.serving, version
        if deploy:
            m.last_deploy_at = self.now
        m.history.append(f"{self.now:.0f}s: serving version {version} ({why})")
        self._event("model", f"{m.name} now serves version {version} ({why})")

    def serve_version(self, model: str, version: int, why: str) -> None:
        """Serve `version` because the model registry says so (the registry-backed sandbox). Going back to
        an older version is a rollback: the version left is bad and never a rollback target again."""
        m = self._model(model)
        if version not in m.versions:
            raise PermanentToolError(f"{model} has no version {version}")
        frm = m.serving
        self._serve(m, version, why)
        if version < frm:
            m.bad_versions.add(frm)
            older = [v for v in m.versions if v < version and v not in m.bad_versions]
            m.previous = max(older) if older else None

    def _do_rollback_model(self, a: Action) -> tuple[bool, str]:
        t = a.target
        m = self._model(t)
        to = a.params_as(RollbackParams).to_version or m.previous
        if to is None or to not in m.versions or to in m.bad_versions:
            raise PermanentToolError(f"{t} has no previous version to roll back to")
        if to == m.serving:
            return False, f"{t} already serves version {to}"
        frm = m.serving
        self._serve(m, int(to), f"rollback from {frm}")
        # the version rolled back from is bad: the next rollback goes further back, never forward to it
        m.bad_versions.add(frm)
        older = [v for v in m.versions if v < int(to) and v not in m.bad_versions]
        m.previous = max(older) if older else None
        return True, f"{t} rolled back from version {frm} to {to}"

    def _do_retrain_model(self, a: Action) -> tuple[bool, str]:
        t = a.target
        m = self._model(t)
        if m.retrain_done_at is not None:
            return False, f"{t} retraining already running"
        m.retrain_done_at = self.now + RETRAIN_S
        m.retrain_started_at = self.now
        return True, f"{t} retraining started on the last 24h of data"

    def _do_promote_model(self, a: Action) -> tuple[bool, str]:
        t = a.target
        m = self._model(t)
        p = a.params_as(PromoteParams)
        newest = p.version or max(m.versions)
        if newest == m.serving:
            return False, f"{t} already serves version {newest}"
        margin = p.min_margin
        cand = m.versions[newest]
        current = m.accuracy_now if m.accuracy_now is not None else m.versions[m.serving].accuracy
        if cand.accuracy < current + margin:
            raise PermanentToolError(
                f"version {newest} (held-out accuracy {cand.accuracy:.3f}) does not beat the serving "
                f"version ({current:.3f}) by {margin}"
            )
        self._serve(m, int(newest), "promotion after retraining")
        return True, f"{t} promoted to version {newest} (accuracy {cand.accuracy:.3f} vs {current:.3f})"

    def _do_notify(self, a: Action) -> tuple[bool, str]:
        t = a.target
        self.notifications.append(f"notify {t}: {a.params_as(MessageParams).message}")
        return True, "owners notified"

    def _do_escalate(self, a: Action) -> tuple[bool, str]:
        t = a.target
        self.notifications.append(f"escalate {t}: {a.params_as(MessageParams).message}")
        return True, "on-call paged"

    # ----------------------------------------------------------------------------- verification

    def verify(self, action: Action) -> VerificationResult:
        ok, detail = self._check(action)
        return VerificationResult(action=action, ok=ok, detail=detail, at_s=self.now)

    def _pod_healthy(self, pod: SimPod) -> bool:
        return (
            pod.state == "Running" and not pod.app_error and pod.node is not None
            and self.nodes[pod.node].ready(self.now)
            and all(self.gpus[g].healthy for g in pod.gpus)
        )

    def _check(self, a: Action) -> tuple[bool, str]:
        return _HANDLERS[a.name].check(self, a)

    def _check_cordon_node(self, a: Action) -> tuple[bool, str]:
        t = a.target
        return self.nodes[t].unschedulable, f"{t} unschedulable={self.nodes[t].unschedulable}"

    def _check_uncordon_node(self, a: Action) -> tuple[bool, str]:
        t = a.target
        return not self.nodes[t].unschedulable, f"{t} unschedulable={self.nodes[t].unschedulable}"

    def _check_drain_node(self, a: Action) -> tuple[bool, str]:
        t = a.target
        left = [p.name for p in self.pods.values() if p.node == t]
        moved = [p for p in self.pods.values() if p.state != "Deleted"]
        waiting = [p.name for p in moved if p.state in ("Pending", "Starting")]
        if left:
            return False, f"pods still on {t}: {', '.join(left)}"
        if waiting:
            return False, f"waiting for {', '.join(waiting)}"
        return True, f"{t} drained; pods running elsewhere"

    def _check_pod(self, a: Action) -> tuple[bool, str]:
        t = a.target
        pod = self.pods[t]
        ok = self._pod_healthy(pod)
        return ok, f"{t} {pod.state} on {pod.node}" + ("" if ok else f" ({pod.reason or 'not ready'})")

    def _check_reset_gpu(self, a: Action) -> tuple[bool, str]:
        t = a.target
        g = self.gpus[t]
        if g.reset_until is not None:
            return False, f"{t} reset in progress"
        return g.healthy, f"{t} " + ("healthy after reset" if g.healthy else "still unhealthy after reset")

    def _check_rollback_model(self, a: Action) -> tuple[bool, str]:
        t = a.target
        m = self.models[t]
        ok = m.accuracy_now is not None and self._model_meets_slo(m)
        return ok, f"{t} serves version {m.serving}; accuracy {m.accuracy_now}, p95 {m.latency_now} ms"

    def _check_retrain_model(self, a: Action) -> tuple[bool, str]:
        t = a.target
        m = self.models[t]
        if m.retrain_done_at is not None:
            return False, f"{t} retraining still running"
        return True, f"{t} version {max(m.versions)} registered"

    def _check_promote_model(self, a: Action) -> tuple[bool, str]:
        t = a.target
        m = self.models[t]
        return m.serving == max(m.versions), f"{t} serves version {m.serving}"

    def _check_abort_rollout(self, a: Action) -> tuple[bool, str]:
        t = a.target
        m = self.models[t]
        ok = m.canary is None
        return ok, (f"{t}: all traffic on stable version {m.serving}" if ok
                    else f"{t}: canary version {m.canary} still takes traffic")

    def _check_scale_deployment(self, a: Action) -> tuple[bool, str]:
        t = a.target
        pods = [p for p in self.pods.values() if p.workload == t and p.state != "Deleted"]
        want = a.params_as(ScaleParams).replicas
        ready = sum(1 for p in pods if self._pod_healthy(p))
        ok = len(pods) == want and ready == len(pods)
        return ok, f"{t}: {ready}/{len(pods)} replica(s) ready (want {want})"

    def _check_pause_job(self, a: Action) -> tuple[bool, str]:
        t = a.target
        return all(p.node is None for p in self.pods.values() if p.workload == t), f"{t} paused"

    def _check_resume_job(self, a: Action) -> tuple[bool, str]:
        t = a.target
        ok = all(self._pod_healthy(p) for p in self.pods.values() if p.workload == t)
        return ok, f"{t} running={ok}"

    def _check_message(self, a: Action) -> tuple[bool, str]:
        msg = f"{a.name} {a.target}: {a.params_as(MessageParams).message}"
        ok = msg in self.notifications
        return ok, "delivered" if ok else "not delivered"

    def _model_meets_slo(self, m: SimModel) -> bool:
        """Every track that receives traffic meets the SLO (latency, error rate, and the true accuracy:
        SCENARIOS.md judges recovery on it, not on the label-delayed figure)."""
        if m.accuracy_now is None or m.latency_now is None:
            return False
        tracks: list[TrackMetrics | None] = [tr for tr in m.tracks.values() if tr.share > 0] or [None]
        for tr in tracks:
            acc = tr.accuracy_true if tr is not None else m.accuracy_now
            lat = tr.latency_ms if tr is not None else m.latency_now
            err = tr.error_rate if tr is not None else 0.0
            if m.slo_accuracy is not None and acc < m.slo_accuracy:
                return False
            if m.slo_latency is not None and lat > m.slo_latency:
                return False
            if m.slo_error_rate is not None and err > m.slo_error_rate:
                return False
        return True

    def recovered(self) -> tuple[bool, list[str]]:
        """SCENARIOS.md: every workload has all its replicas Running on healthy GPUs, and every
        inference workload meets its SLO."""
        problems = []
        for pod in self.pods.values():
            if pod.state == "Deleted":  # scaled away: not a replica any more
                continue
            if not self._pod_healthy(pod):
                where = f" on {pod.node}" if pod.node else ""
                problems.append(f"{pod.name} is {pod.state}{where} ({pod.reason or 'not ready'})")
        for m in self.models.values():
            if not self._model_meets_slo(m):
                problems.append(
                    f"{m.name} misses its SLO: accuracy {m.accuracy_true} (min {m.slo_accuracy}), "
                    f"p95 {m.latency_now} ms (max {m.slo_latency}), error rate {m.error_rate_now} "
                    f"(max {m.slo_error_rate})"
                )
        return not problems, problems

    # -------------------------------------------------------------------------------- snapshot

    def _row(self, rows: tuple[TraceRow, ...]) -> TraceRow:
        return rows[self.rng.randrange(len(rows))]

    def _idle_rows(self) -> tuple[tuple[float, float, float, int], ...]:
        """Per row of the idle trace, what an idle GPU's sample takes from it, converted once as `_gpu_sample`
        converts it: (power, SM clock, memory clock, clock reasons)."""
        cached: tuple[tuple[float, float, float, int], ...] | None = self.__dict__.get("_idle_rows_cache")
        if cached is None:
            cached = tuple((float(round(r.power_w * self.power_scale, 2)), float(r.sm_clock_mhz),
                            float(r.mem_clock_mhz), int(r.clock_event_reasons))
                           for r in self.prof.idle)
            if not cached:
                raise ValueError("the NVML trace has no idle rows")
            self.__dict__["_idle_rows_cache"] = cached
        return cached

    def _load_rows(self, factor: float | None) -> tuple[tuple[float, float, float, float, float, int], ...]:
        """Per row of the load trace, what a busy GPU's sample takes from it, converted once as `_gpu_sample`
        converts it: (utilisation, memory utilisation, power, SM clock, memory clock, clock reasons). `factor`
        None: a training GPU's (the row as recorded); else an inference replica's at that `_util_factor`."""
        cache: dict[float | None, tuple[tuple[float, float, float, float, float, int], ...]] = \
            self.__dict__.setdefault("_load_rows_cache", {})
        found = cache.get(factor)
        if found is None:
            built = []
            for r in self.prof.load:
                if factor is None:
                    util, power = r.gpu_util_pct, r.power_w * self.power_scale
                    sm, reasons = r.sm_clock_mhz, r.clock_event_reasons
                else:
                    util = round(r.gpu_util_pct * 0.55 * factor)
                    power = (95.0 + (r.power_w - 95.0) * 0.5) * self.power_scale
                    sm, reasons = 1980.0, 0
                built.append((float(util), float(min(100.0, util * 0.6)), float(round(power, 2)), float(sm),
                              float(r.mem_clock_mhz), int(reasons)))
            if not built:
                raise ValueError("the NVML trace has no load rows")
            if len(cache) >= 64:  # a factor follows the load ratio: a few values a run, but keep it bounded
                cache.clear()
            found = cache[factor] = tuple(built)
        return found

    @staticmethod
    def _idle_key(g: SimGpu) -> tuple[Any, ...]:
        """What an idle GPU's sample takes from its state apart from the per-tick readings (`_idle_template`).
        Keep it in step with `_idle_template`: the template is rebuilt whenever this changes."""
        return (g.ecc_sbe, g.ecc_dbe_vol, g.ecc_dbe_agg, g.remap_corr, g.remap_unc, g.remap_pending,
                g.remap_failure, g.pcie_replay, g.nvlink_crc, g.nvlink_replay, g.recovery)

    def _idle_template(self, g: SimGpu, nvlink: bool) -> dict[str, Any]:
        """An idle GPU's sample (`_gpu_sample` for a present GPU with no pod, fault, spike, cap or reset) with
        its per-tick readings left blank: every field, in order; the blanks are filled per tick by
        `_gpu_samples`. Its other values come from `_idle_key` and from what never changes."""
        return _compact(_complete(GpuSample, {
            "gpu": g.id, "node": g.node, "index": g.index, "present": True,
            "util_pct": 0.0, "mem_util_pct": 0.0, "mem_used_mib": None,
            "mem_total_mib": float(self.mem_total), "temp_c": None,
            "power_w": None, "power_limit_w": float(self.power_limit), "sm_clock_mhz": None,
            "mem_clock_mhz": None, "clock_event_reasons": None,
            "ecc_sbe_volatile": g.ecc_sbe, "ecc_dbe_volatile": g.ecc_dbe_vol, "ecc_dbe_aggregate": g.ecc_dbe_agg,
            "remapped_rows_correctable": g.remap_corr, "remapped_rows_uncorrectable": g.remap_unc,
            "remap_pending": g.remap_pending, "remap_failure": g.remap_failure,
            "pcie_replay_counter": g.pcie_replay,
            "nvlink_crc_errors": int(g.nvlink_crc) if nvlink else None,
            "nvlink_replay_errors": int(g.nvlink_replay) if nvlink else None,
            "xids": None, "recovery_action": g.recovery,
            "processes": None,
        }))

    def _gpu_samples(self, ready: dict[str, bool]) -> list[GpuSample]:
        """The sample of every GPU on a reachable node, in order: `_gpu_sample`'s, the same values of the same
        types from the same random draws in the same order, with the common cases made faster. Those are a
        present GPU with no fault, spike, cap or reset that is idle (most of a fleet's GPUs) or that serves a
        Running pod (a training pod that is not stalled, or an inference replica). Their sample is a copy of
        a per-GPU template (`_idle_template`, rebuilt when `_idle_key` changes) with the trace row converted
        once (`_idle_rows`, `_load_rows`), `rng.randrange` and `rng.uniform` written out as `random.Random`
        computes them, and `round(x, 1)` as `_round1`. Every other GPU takes `_gpu_sample` itself.
        tests/sandbox/test_snapshot_construct.py holds the two equal, value for value, type for type and
        draw for draw."""
        fields_set = _all_fields(GpuSample)
        nvlink = self.scenario.cluster.gpu_model != "L4"
        idle_rows = self._idle_rows()
        n_idle = len(idle_rows)
        idle_bits = n_idle.bit_length()
        train_rows = self._load_rows(None)
        n_load = len(train_rows)
        load_bits = n_load.bit_length()
        serving_rows: dict[str, tuple[tuple[float, float, float, float, float, int], ...]] = {}  # by workload
        getrandbits, random_ = self.rng.getrandbits, self.rng.random
        pods_get = self.pods.get
        template = self._idle_template
        general = self._gpu_sample
        new, setattr_ = _new, _setattr
        # the empty lists that this snapshot's idle samples share, like their fields set: the samples are
        # frozen and nothing changes a snapshot's lists in place; one list per GPU and tick was a third of
        # what the collector walked after each fleet snapshot
        no_xids: list[int] = []
        no_processes: list[str] = []
        out: list[GpuSample] = []
        append = out.append
        for g in self.gpus.values():
            if not ready[g.node]:
                continue
            if not g.present or g.power_capped or g.spike is not None or g.thermal is not None \
                    or g.reset_until is not None:
                append(general(g, fields_set))
                continue
            pod_name = g.pod
            pod = None
            if pod_name is not None:
                pod = pods_get(pod_name) if pod_name else None
                if pod is None or pod.state != "Running":
                    append(general(g, fields_set))
                    continue
                if pod.kind == "training" and not pod.stalled:
                    rows = train_rows
                elif pod.kind == "inference":
                    found = serving_rows.get(pod.workload)
                    if found is None:
                        found = serving_rows[pod.workload] = self._load_rows(self._util_factor(pod.workload))
                    rows = found
                else:
                    append(general(g, fields_set))
                    continue
            # `_idle_key`, written out
            key = (g.ecc_sbe, g.ecc_dbe_vol, g.ecc_dbe_agg, g.remap_corr, g.remap_unc, g.remap_pending,
                   g.remap_failure, g.pcie_replay, g.nvlink_crc, g.nvlink_replay, g.recovery)
            entry = g.sample_template
            if entry is None or entry[0] != key:
                entry = g.sample_template = (key, template(g, nvlink))
            values = entry[1].copy()
            if pod is None:
                # self.rng.randrange(n_idle), as random.Random._randbelow_with_getrandbits draws it
                r = getrandbits(idle_bits)
                while r >= n_idle:
                    r = getrandbits(idle_bits)
                (values["power_w"], values["sm_clock_mhz"], values["mem_clock_mhz"],
                 values["clock_event_reasons"]) = idle_rows[r]
                # self.rng.uniform(0, 30) is 0 + (30 - 0) * random()
                mem = 480.0 + 30 * random_()
                values["processes"] = no_processes
            else:
                r = getrandbits(load_bits)
                while r >= n_load:
                    r = getrandbits(load_bits)
                (values["util_pct"], values["mem_util_pct"], values["power_w"], values["sm_clock_mhz"],
                 values["mem_clock_mhz"], values["clock_event_reasons"]) = rows[r]
                random_()  # `_gpu_sample` draws an idle GPU's memory, then the pod's: uniform(0, 30), unused
                # self.rng.uniform(-64, 64) is -64 + (64 - -64) * random()
                mem = pod.base_mem_mib + pod.leak_mib + (-64 + 128 * random_())
                values["processes"] = [pod_name]
            # round(mem, 1) and round(g.temp, 1) as `_round1` computes them, written out (a call each costs
            # as much as the rest): n / 10 unless 10x lies near a tie, is zero, huge or not a number
            y = mem * 10.0
            n = round(y) if -1e9 < y < 1e9 else 0
            d = y - n
            values["mem_used_mib"] = n / 10 if n and -0.499999 < d < 0.499999 else round(mem, 1)
            temp = g.temp  # a float: SimGpu.temp only ever holds floats
            y = temp * 10.0
            n = round(y) if -1e9 < y < 1e9 else 0
            d = y - n
            values["temp_c"] = n / 10 if n and -0.499999 < d < 0.499999 else round(temp, 1)
            if g.pending_xids:
                values["xids"], g.pending_xids = g.pending_xids, []
            else:
                values["xids"] = no_xids
            sample = new(GpuSample)
            setattr_(sample, "__dict__", values)
            setattr_(sample, "__pydantic_fields_set__", fields_set)
            setattr_(sample, "__pydantic_extra__", None)
            setattr_(sample, "__pydantic_private__", None)
            append(sample)
        return out

    def _gpu_sample(self, g: SimGpu, fields_set: set[str] | None = None) -> GpuSample:
        xids, g.pending_xids = g.pending_xids, []
        # Built without validation (`_built`): every value below already has its field's type (the
        # simulator's own numbers), and validating 10,000 samples a tick was most of a fleet snapshot's time.
        build = GpuSample.model_construct
        if not g.present:
            return build(gpu=g.id, node=g.node, index=g.index, present=False, xids=xids)
        pod = self.pods.get(g.pod) if g.pod else None
        running = pod is not None and pod.state == "Running"
        if g.power_capped or (running and pod is not None and pod.kind == "training" and not pod.stalled):
            row = self._row(self.prof.load)
            util, power = row.gpu_util_pct, row.power_w * self.power_scale
            sm, reasons = row.sm_clock_mhz, row.clock_event_reasons
        elif running and pod is not None and pod.kind == "inference":
            row = self._row(self.prof.load)
            util = round(row.gpu_util_pct * 0.55 * self._util_factor(pod.workload))
            power = (95.0 + (row.power_w - 95.0) * 0.5) * self.power_scale
            sm, reasons = 1980.0, 0
        else:
            row = self._row(self.prof.idle)
            util, power = 0.0, row.power_w * self.power_scale
            sm, reasons = row.sm_clock_mhz, row.clock_event_reasons
        temp = g.temp
        if g.spike is not None:
            metric, value, until = g.spike
            if self.now < until:
                if metric == "temp_c":
                    temp = value
                elif metric == "util":
                    util = value
                else:
                    power = value
            else:
                g.spike = None
        if g.thermal is not None and temp > THERMAL_SLOWDOWN_C:
            reasons = (reasons & ~CLOCK_REASON_SW_POWER_CAP) | CLOCK_REASON_HW_THERMAL
            sm = round(sm * 0.55)
            power *= 0.7
        mem = 480.0 + self.rng.uniform(0, 30)
        if pod is not None and pod.state in ("Running", "Starting", "CrashLoop"):
            mem = pod.base_mem_mib + pod.leak_mib + self.rng.uniform(-64, 64)
        if g.reset_until is not None:
            util, mem = 0.0, 0.0
        nvlink = self.scenario.cluster.gpu_model != "L4"
        return _built(GpuSample, {
            "gpu": g.id, "node": g.node, "index": g.index, "present": True,
            "util_pct": float(util), "mem_util_pct": float(min(100.0, util * 0.6)), "mem_used_mib": round(mem, 1),
            "mem_total_mib": float(self.mem_total), "temp_c": float(round(temp, 1)),
            "power_w": float(round(power, 2)), "power_limit_w": float(self.power_limit), "sm_clock_mhz": float(sm),
            "mem_clock_mhz": float(row.mem_clock_mhz), "clock_event_reasons": int(reasons),
            "ecc_sbe_volatile": g.ecc_sbe, "ecc_dbe_volatile": g.ecc_dbe_vol, "ecc_dbe_aggregate": g.ecc_dbe_agg,
            "remapped_rows_correctable": g.remap_corr, "remapped_rows_uncorrectable": g.remap_unc,
            "remap_pending": g.remap_pending, "remap_failure": g.remap_failure,
            "pcie_replay_counter": g.pcie_replay,
            "nvlink_crc_errors": int(g.nvlink_crc) if nvlink else None,
            "nvlink_replay_errors": int(g.nvlink_replay) if nvlink else None,
            "xids": xids, "recovery_action": g.recovery,
            "processes": [g.pod] if g.pod and pod is not None and pod.state != "Pending" else [],
        }, fields_set)

    def _util_factor(self, workload: str) -> float:
        """GPU utilisation of an inference replica scales with its load; 1 at the base load (half of
        capacity), so utilisation rises toward 100 % as requests outgrow the replicas."""
        m = next((x for x in self.models.values() if x.workload == workload), None)
        if m is None or m.load_ratio is None:
            return 1.0
        return max(1.0, min(100.0 / 55.0, m.load_ratio / 0.5))

    def _node_statuses(self, ready: dict[str, bool]) -> list[NodeStatus]:
        """Every node's status. A node's status changes only with what it is built from, so the object is
        kept and handed out again until then (it is frozen, and nothing in it is drawn at random)."""
        per_node = self.scenario.cluster.gpus_per_node
        cache = self._node_cache
        out: list[NodeStatus] = []
        for n in self.nodes.values():
            up = ready[n.name]
            key = (up, n.unschedulable, n.cordoned_by, n.disk_pressure)
            hit = cache.get(n.name)
            if hit is None or hit[0] != key:
                hit = cache[n.name] = (key, _built(NodeStatus, dict(
                    name=n.name, ready=up, unschedulable=n.unschedulable, cordoned_by=n.cordoned_by,
                    gpus=per_node,
                    taints=(["node.kubernetes.io/unschedulable"] if n.unschedulable else [])
                    + ([] if up else ["node.kubernetes.io/unreachable"]),
                    conditions=["DiskPressure"] if n.disk_pressure else [],
                )))
            out.append(hit[1])
        return out

    def _pod_statuses(self) -> list[PodStatus]:
        """Every pod's status but the deleted ones'. Like a node's, a pod's status object is kept and handed
        out again until what it is built from changes (a training pod's step changes every tick)."""
        cache = self._pod_cache
        out: list[PodStatus] = []
        for p in self.pods.values():
            if p.state == "Deleted":
                continue
            step = int(p.step) if p.kind == "training" else None
            log_tail = p.log[-10:]
            key = (p.workload, p.kind, p.state, p.app_error, p.reason, p.restarts, p.node, tuple(p.gpus), step,
                   p.started_at, tuple(log_tail))
            hit = cache.get(p.name)
            if hit is None or hit[0] != key:
                phase = {"Starting": "Pending", "CrashLoop": "Running"}.get(p.state, p.state)
                pod_ready = p.state == "Running" and not p.app_error
                reason = p.reason if p.state != "Running" else ("Error" if p.app_error else None)
                hit = cache[p.name] = (key, _built(PodStatus, dict(
                    name=p.name, workload=p.workload, kind=p.kind, node=p.node, gpus=list(p.gpus),
                    phase=phase, ready=pod_ready, reason=reason, restarts=p.restarts,
                    step=step, started_at_s=float(p.started_at),
                    log_tail=log_tail, namespace=None,  # every field, in order (see `_built`)
                )))
            out.append(hit[1])
        return out

    def snapshot(self) -> ClusterSnapshot:
        with _collector_paused():
            return self._snapshot()

    def _snapshot(self) -> ClusterSnapshot:
        # built without validation (`_built`, see `_gpu_sample`); nodes and pods kept while unchanged
        ready = {name: n.ready(self.now) for name, n in self.nodes.items()}
        gpus = self._gpu_samples(ready)
        nodes = self._node_statuses(ready)
        pods = self._pod_statuses()
        models = [
            ModelStatus(
                name=m.name, serving_version=m.serving, versions=sorted(m.versions),
                accuracy=m.accuracy_now, latency_p95_ms=m.latency_now, slo_accuracy_min=m.slo_accuracy,
                slo_latency_p95_ms=m.slo_latency, drift_psi=dict(m.drift_psi),
                last_deploy_at_s=m.last_deploy_at, previous_version=m.previous,
                error_rate=m.error_rate_now, slo_error_rate_max=m.slo_error_rate, label_delay_s=m.label_delay,
                requests_per_s=m.rps_now, workload=m.workload, capacity_qps=m.capacity_qps,
                replicas_ready=sum(1 for p in self.pods.values()
                                   if p.workload == m.workload and p.state == "Running" and not p.app_error),
                tracks={
                    name: ModelTrack(version=tr.version, traffic_pct=round(tr.share * 100, 3),
                                     accuracy=tr.accuracy, latency_p95_ms=tr.latency_ms,
                                     error_rate=tr.error_rate, requests_per_s=tr.rps)
                    for name, tr in m.tracks.items()
                } if m.rollout is not None else {},
                rollout_started_at_s=m.rollout_started_at,
            )
            for m in self.models.values()
        ]
        return ClusterSnapshot.model_construct(at_s=float(self.now), gpus=gpus, nodes=nodes, pods=pods, models=models)


# ------------------------------------------------------------------------------- the action table


@dataclass(frozen=True)
class _Handler:
    """How the simulator carries out one catalogue action, and how it reads the effect back."""

    do: Callable[[Simulator, Action], tuple[bool, str]]
    check: Callable[[Simulator, Action], tuple[bool, str]]


# one entry per catalogue action (`handler_table` refuses a table that misses one); the simulator does them all
_HANDLERS = handler_table("sandbox.cluster.Simulator", {
    "restart_pod": _Handler(Simulator._do_restart_pod, Simulator._check_pod),
    "reschedule_pod": _Handler(Simulator._do_reschedule_pod, Simulator._check_pod),
    "cordon_node": _Handler(Simulator._do_cordon_node, Simulator._check_cordon_node),
    "uncordon_node": _Handler(Simulator._do_uncordon_node, Simulator._check_uncordon_node),
    "drain_node": _Handler(Simulator._do_drain_node, Simulator._check_drain_node),
    "reset_gpu": _Handler(Simulator._do_reset_gpu, Simulator._check_reset_gpu),
    "scale_deployment": _Handler(Simulator._do_scale_deployment, Simulator._check_scale_deployment),
    "pause_job": _Handler(Simulator._do_pause_job, Simulator._check_pause_job),
    "resume_job": _Handler(Simulator._do_resume_job, Simulator._check_resume_job),
    "rollback_model": _Handler(Simulator._do_rollback_model, Simulator._check_rollback_model),
    "retrain_model": _Handler(Simulator._do_retrain_model, Simulator._check_retrain_model),
    "promote_model": _Handler(Simulator._do_promote_model, Simulator._check_promote_model),
    "abort_rollout": _Handler(Simulator._do_abort_rollout, Simulator._check_abort_rollout),
    "notify": _Handler(Simulator._do_notify, Simulator._check_message),
    "escalate": _Handler(Simulator._do_escalate, Simulator._check_message),
})
HANDLERS = _HANDLERS  # read by the test that every backend's table covers the catalogue
