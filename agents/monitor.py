"""The monitor agent: turns raw cluster snapshots into incidents.

Layer: agents. It runs once per telemetry tick, outside the per-incident graph (one graph per incident
starts from what it opens). Three jobs, in order:

1. **Detect** — stateless detectors read one snapshot (plus a short history) and emit `Signal`s.
2. **Hysteresis** — a signal must hold for its detector's window before it counts (events such as XIDs
   and ECC counters count at once), so that a 30-second temperature spike is not an incident.
3. **Group** — signals are keyed by the resource that explains them: a pod's failure is attached to the
   failing GPU or NotReady node under it, a model's SLO breach to its drift, and many NotReady nodes at
   once form one partition incident. One failing GPU is one incident, however many signals mention it.

A key with an open incident absorbs new signals; after the incident closes, the key only opens a new
incident when its condition clears and then comes back (flapping suppression).

**At fleet size** (10,000 GPUs, hundreds of pods: `opsmedic bench --only fleet`) nothing in a tick is
quadratic — a pod's GPUs are looked up by id, never by scanning every GPU — and the per-GPU path is cut
to what a reading can trigger. A GPU with no XID, present, without uncorrectable ECC errors or a failed
remap, below the temperature threshold (a finite reading) and without the HW-thermal clock reason cannot
raise any of the event or threshold detectors, so it skips them after one test of those fields; only its
NVLink counter is recorded, because the rate detector needs every sample (`agents.counter_rate`: a counter
that sits still, as nearly all do, costs an update of three numbers, not a sample tuple). The
framebuffer-leak fit stops as soon as the history cannot rise often enough to count. These are exact
short-cuts, not approximations: the same signals come out for every snapshot (the scenarios and
`tests/agents` hold this). Per-object code was kept over a vectorised (numpy) monitor because every
detector here has per-object state (hysteresis, histories, XID gating) and the scalar path is already a
few microseconds per quiet GPU; building arrays from the snapshot's objects would cost about as much.
"""

from __future__ import annotations

import math
from collections import defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass, field

from agents.counter_rate import CounterRates
from core import xids as xid_catalog
from core.domain import (
    CLOCK_REASON_HW_THERMAL,
    ClusterSnapshot,
    GpuSample,
    Incident,
    ModelStatus,
    ModelTrack,
    ResourceKind,
    Signal,
)
from core.settings import MonitorSettings

# Model operations (SCENARIOS.md). Canary analysis in the manner of Argo Rollouts' AnalysisTemplates and
# Flagger: the canary track is compared with the stable track and with the SLO over a window that must
# hold a minimum number of canary requests; fewer requests is *inconclusive* (wait), never a pass.
CANARY_WINDOW_S = 60.0
CANARY_MIN_REQUESTS = 200.0
CANARY_ACCURACY_MARGIN = 0.01  # "worse than stable": accuracy more than this lower,
CANARY_LATENCY_RATIO = 1.10  # latency p95 more than 10 % higher,
CANARY_ERROR_MARGIN = 0.002  # or error rate more than this higher
# Accuracy decay with no deploy and no input drift (concept drift): labelled accuracy that is still falling
# is a moving target, and a retrain on it would learn half the change; wait until the labelled accuracy
# settles (bounded: after ACCURACY_MAX_WAIT_S the breach is reported anyway).
ACCURACY_SETTLE_S = 300.0
ACCURACY_SETTLE_DELTA = 0.01
ACCURACY_MAX_WAIT_S = 1800.0
RECENT_DEPLOY_S = 3600.0
LOAD_CLEAR_RATIO = 0.9  # hysteresis: over capacity starts above 1.0 x capacity and ends below 0.9 x


@dataclass
class _Track:
    """Hysteresis state of one (detector, resource) pair."""

    first_seen: float
    last_seen: float
    active: bool = False


@dataclass
class KeyState:
    """Which incident holds a grouping key, and whether it has closed (then the key stays quiet until its
    condition clears)."""

    incident_id: str | None = None
    closed: bool = False
    quiet_since: float | None = None
    # A pod incident that closed as resolved: if its condition is back a quiet period after the close, the
    # fix did not hold, and that is news (a new incident) rather than flapping to sit out.
    recurs: bool = False
    closed_at: float | None = None


@dataclass
class XidGate:
    """Turns one XID event into a signal, read through NVIDIA's catalog (bucket, XID 154's recovery), and
    decides whether it counts: an XID the catalog says to IGNORE counts only at `count` events on one GPU
    within `window_s`; below that it is only recorded."""

    count: int = 3
    window_s: float = 3600.0
    _seen: dict[str, deque[float]] = field(default_factory=lambda: defaultdict(deque))

    def signal(self, gpu_id: str, node: str, xid: int, recovery: str | None, t: float) -> tuple[Signal, bool]:
        what = xid_catalog.read(xid, recovery)
        labels = {"node": node, "xid": str(xid), "bucket": what.entry.immediate_action if what.entry else "UNLISTED"}
        if recovery is not None:
            labels["recovery"] = recovery
        detail = what.describe(gpu_id)
        counts = True
        if xid_catalog.is_ignorable(xid):
            seen = self._seen[gpu_id]
            seen.append(t)
            while seen and t - seen[0] > self.window_s:
                seen.popleft()
            counts = len(seen) >= self.count
            detail += (f", {len(seen)} times within {self.window_s:.0f}s" if counts
                       else " (recorded; the catalog says IGNORE)")
        return Signal(kind="gpu_xid", resource=gpu_id, resource_kind=ResourceKind.gpu, at_s=t, value=float(xid),
                      detail=detail, labels=labels), counts


@dataclass
class Monitor:
    settings: MonitorSettings = field(default_factory=MonitorSettings)
    id_prefix: str = "inc"  # incident ids must be unique across runs that share one database
    incidents: dict[str, Incident] = field(default_factory=dict)
    skipped_samples: int = 0
    _tracks: dict[tuple[str, str], _Track] = field(default_factory=dict)
    _keys: dict[str, KeyState] = field(default_factory=dict)
    _mem: dict[str, deque[tuple[float, float]]] = field(default_factory=lambda: defaultdict(deque))
    _steps: dict[str, deque[tuple[float, int]]] = field(default_factory=lambda: defaultdict(deque))
    _restarts: dict[str, int] = field(default_factory=dict)
    _seq: int = 0
    # XIDs the catalog says to IGNORE open an incident only at `count` on one GPU within `window_s` (the
    # policy's `signals.xid_ignore`); below that they are only recorded: the caller drains `recorded` into
    # the audit log.
    xid_ignore_count: int = 3
    xid_ignore_window_s: float = 3600.0
    recorded: deque[Signal] = field(default_factory=lambda: deque(maxlen=1000))  # bounded if nobody drains
    # where recorded observations go as they happen (the driver: the audit log); None keeps them in `recorded`
    on_record: Callable[[Signal], None] | None = None

    def __post_init__(self) -> None:
        self.xid_gate = XidGate(self.xid_ignore_count, self.xid_ignore_window_s)
        self._nvlink = CounterRates(self.settings.nvlink_window_s)  # NVLink CRC counters, per GPU
    _canary: dict[str, deque[tuple[float, ModelTrack, ModelTrack]]] = field(
        default_factory=lambda: defaultdict(deque))  # model -> (t, canary, stable) samples
    _canary_verdict: dict[str, str] = field(default_factory=dict)  # model -> pass | fail | inconclusive
    _acc: dict[str, deque[tuple[float, float]]] = field(default_factory=lambda: defaultdict(deque))
    _breach_since: dict[str, float] = field(default_factory=dict)
    _over_capacity: set[str] = field(default_factory=set)

    # ------------------------------------------------------------------------------- detection

    def detect(self, snap: ClusterSnapshot) -> list[Signal]:
        """Raw (pre-hysteresis) signals for one snapshot."""
        s = self.settings
        t = snap.at_s
        out: list[Signal] = []
        temp_max = s.gpu_temp_c
        hw = CLOCK_REASON_HW_THERMAL
        nvlink = self._nvlink.sample  # one call per quiet GPU: the rest of `_nvlink_signal` only on a climb
        nvlink_max = s.nvlink_errors_per_min
        self._nvlink.begin(t)
        gpu_by_id: dict[str, GpuSample] = {}
        for g in snap.gpus:
            gpu_by_id[g.gpu] = g
            temp = g.temp_c
            # the quiet GPU (see the module docstring): nothing but its NVLink history can change anything
            if (g.xids or not g.present or g.ecc_dbe_volatile or g.remap_failure
                    or (temp is not None and not -math.inf < temp < temp_max)
                    or (g.clock_event_reasons or 0) & hw):
                out.extend(self._gpu_signals(g, t))
            elif (crc := g.nvlink_crc_errors) is not None:
                rate = nvlink(g.gpu, float(crc), nvlink_max)
                if rate is not None:
                    out.append(self._nvlink_climb(g, t, rate))
        for n in snap.nodes:
            if not n.ready:
                out.append(Signal(kind="node_not_ready", resource=n.name, resource_kind=ResourceKind.node,
                                  at_s=t, detail=f"{n.name} is NotReady: the kubelet stopped reporting"))
            if "DiskPressure" in n.conditions:
                out.append(Signal(kind="node_disk_pressure", resource=n.name, resource_kind=ResourceKind.node,
                                  at_s=t, detail=f"{n.name} reports DiskPressure: its disk is nearly full"))
        for p in snap.pods:
            prev = self._restarts.get(p.name, p.restarts)
            self._restarts[p.name] = p.restarts
            if p.phase == "Unknown":
                out.append(Signal(kind="pod_unreachable", resource=p.name, resource_kind=ResourceKind.pod,
                                  at_s=t, detail=f"{p.name} unreachable ({p.reason})",
                                  labels={"node": p.node or ""}))
            elif p.phase == "Running" and not p.ready:
                out.append(Signal(kind="pod_not_ready", resource=p.name, resource_kind=ResourceKind.pod,
                                  at_s=t, detail=f"{p.name} Running but not ready ({p.reason})",
                                  labels={"reason": p.reason or "", "node": p.node or ""}))
            elif p.restarts > prev and p.reason == "OOMKilled":
                out.append(Signal(kind="pod_oom_killed", resource=p.name, resource_kind=ResourceKind.pod,
                                  at_s=t, value=float(p.restarts), detail=f"{p.name} was OOM-killed",
                                  labels={"node": p.node or ""}))
            # framebuffer growth: the mean of the pod's GPUs, so one leak is one signal
            # (looked up by id: scanning every GPU for every pod made a 10,000-GPU tick quadratic)
            pod_gpus = [found for gid in p.gpus if (found := gpu_by_id.get(gid)) is not None]
            mems = [g.mem_used_mib for g in pod_gpus if g.mem_used_mib is not None]
            total = next((g.mem_total_mib for g in pod_gpus if g.mem_total_mib), None)
            if mems and total and p.phase == "Running":
                sig = self._leak_signal(p.name, t, sum(mems) / len(mems), total)
                if sig:
                    out.append(sig)
            else:
                self._mem.pop(p.name, None)
            if p.kind == "training" and p.phase == "Running" and p.ready and p.step is not None:
                utils = [gpu_by_id[g].util_pct if g in gpu_by_id else None for g in p.gpus]
                sig = self._stall_signal(p.name, t, p.step, utils)
                if sig:
                    out.append(sig)
            elif p.kind == "training":
                self._steps.pop(p.name, None)
        for m in snap.models:
            labels = {"version": str(m.serving_version)}
            degraded = any(p.workload == m.workload and not (p.phase == "Running" and p.ready) for p in snap.pods)
            out.extend(self._model_ops_signals(m, t, degraded=degraded))
            if (m.accuracy is not None and m.slo_accuracy_min is not None and m.accuracy < m.slo_accuracy_min
                    and not self._accuracy_settling(m, t)):
                out.append(Signal(kind="slo_accuracy", resource=m.name, resource_kind=ResourceKind.model, at_s=t,
                                  value=m.accuracy, threshold=m.slo_accuracy_min, labels=labels,
                                  detail=f"{m.name} v{m.serving_version} accuracy {m.accuracy:.3f} "
                                         f"< SLO {m.slo_accuracy_min}"))
            if (m.latency_p95_ms is not None and m.slo_latency_p95_ms is not None
                    and m.latency_p95_ms > m.slo_latency_p95_ms):
                out.append(Signal(kind="slo_latency", resource=m.name, resource_kind=ResourceKind.model, at_s=t,
                                  value=m.latency_p95_ms, threshold=m.slo_latency_p95_ms, labels=labels,
                                  detail=f"{m.name} v{m.serving_version} latency p95 {m.latency_p95_ms:.0f} ms "
                                         f"> SLO {m.slo_latency_p95_ms:.0f} ms"))
            for feat, psi in sorted(m.drift_psi.items()):
                if not math.isfinite(psi):
                    self.skipped_samples += 1
                    continue
                if psi > s.drift_psi:
                    out.append(Signal(kind="drift_psi", resource=m.name, resource_kind=ResourceKind.model, at_s=t,
                                      value=psi, threshold=s.drift_psi, labels={"feature": feat},
                                      detail=f"{m.name} feature {feat!r} PSI {psi:.2f} > {s.drift_psi}"))
            for feat, kl in sorted(m.drift_kl.items()):
                if math.isfinite(kl) and kl > s.drift_kl:
                    out.append(Signal(kind="drift_kl", resource=m.name, resource_kind=ResourceKind.model, at_s=t,
                                      value=kl, threshold=s.drift_kl, labels={"feature": feat},
                                      detail=f"{m.name} feature {feat!r} KL {kl:.2f} > {s.drift_kl}"))
        return out

    # ------------------------------------------------------------------------- model operations

    def _model_ops_signals(self, m: ModelStatus, t: float, *, degraded: bool = False) -> list[Signal]:
        """Error rate, load against capacity, canary analysis and data validation for one model. While a
        replica of its workload is failing, requests per ready replica say nothing about the load (the pod's
        own incident explains it), so the load detector waits."""
        out: list[Signal] = []
        model = ResourceKind.model
        labels = {"version": str(m.serving_version)}
        if m.error_rate is not None and m.slo_error_rate_max is not None and m.error_rate > m.slo_error_rate_max:
            out.append(Signal(kind="slo_error_rate", resource=m.name, resource_kind=model, at_s=t,
                              value=m.error_rate, threshold=m.slo_error_rate_max, labels=labels,
                              detail=f"{m.name} v{m.serving_version} error rate {m.error_rate:.3%} "
                                     f"> SLO {m.slo_error_rate_max:.3%}"))
        sig = None if degraded else self._load_signal(m, t)
        if sig is not None:
            out.append(sig)
        sig = self._canary_signal(m, t)
        if sig is not None:
            out.append(sig)
        if m.data_issues:
            what = "; ".join(f"{f}: {why}" for f, why in sorted(m.data_issues.items()))
            out.append(Signal(kind="data_validation_failed", resource=m.name, resource_kind=model, at_s=t,
                              value=float(len(m.data_issues)), labels={"features": ",".join(sorted(m.data_issues))},
                              detail=f"{m.name} current feature window fails validation against the reference "
                                     f"profile: {what}"[:500]))
        return out

    def _load_signal(self, m: ModelStatus, t: float) -> Signal | None:
        """Throughput against capacity, with hysteresis: over above 1.0 x capacity per replica, clear below
        LOAD_CLEAR_RATIO x."""
        if not m.requests_per_s or not m.replicas_ready or not m.capacity_qps:
            self._over_capacity.discard(m.name)
            return None
        per = m.requests_per_s / m.replicas_ready
        limit = m.capacity_qps * (LOAD_CLEAR_RATIO if m.name in self._over_capacity else 1.0)
        if per <= limit:
            self._over_capacity.discard(m.name)
            return None
        self._over_capacity.add(m.name)
        return Signal(kind="load_over_capacity", resource=m.name, resource_kind=ResourceKind.model, at_s=t,
                      value=round(per, 2), threshold=m.capacity_qps,
                      labels={"workload": m.workload or m.name, "replicas": str(m.replicas_ready)},
                      detail=f"{m.workload or m.name}: {per:.0f} requests/s per replica over {m.replicas_ready} "
                             f"replica(s), capacity {m.capacity_qps:.0f}")

    def canary_verdict(self, model: str) -> str | None:
        """The last canary analysis of `model`: pass, fail or inconclusive (None: no canary seen)."""
        return self._canary_verdict.get(model)

    def _canary_signal(self, m: ModelStatus, t: float) -> Signal | None:
        canary, stable = m.tracks.get("canary"), m.tracks.get("stable")
        hist = self._canary[m.name]
        if canary is None or stable is None or canary.traffic_pct <= 0:
            hist.clear()
            self._canary_verdict.pop(m.name, None)
            return None
        if hist and hist[-1][1].version != canary.version:
            hist.clear()
        hist.append((t, canary, stable))
        while hist and t - hist[0][0] > CANARY_WINDOW_S:
            hist.popleft()
        span = hist[-1][0] - hist[0][0]
        dt = span / (len(hist) - 1) if len(hist) > 1 else 0.0
        requests = sum((c.requests_per_s or 0.0) * dt for _, c, _ in hist)
        if span < CANARY_WINDOW_S * 0.9 or requests < CANARY_MIN_REQUESTS:
            self._canary_verdict[m.name] = "inconclusive"  # not enough data: wait, never promote
            return None

        def mean(values: list[float | None]) -> float | None:
            known = [v for v in values if v is not None]
            return sum(known) / len(known) if known else None

        c_acc, s_acc = mean([c.accuracy for _, c, _ in hist]), mean([s.accuracy for _, _, s in hist])
        c_lat, s_lat = mean([c.latency_p95_ms for _, c, _ in hist]), mean([s.latency_p95_ms for _, _, s in hist])
        c_err, s_err = mean([c.error_rate for _, c, _ in hist]), mean([s.error_rate for _, _, s in hist])
        failed: list[str] = []
        if c_acc is not None and s_acc is not None and c_acc < s_acc - CANARY_ACCURACY_MARGIN:
            failed.append(f"accuracy {c_acc:.3f} vs stable {s_acc:.3f}")
        elif c_acc is not None and m.slo_accuracy_min is not None and c_acc < m.slo_accuracy_min:
            failed.append(f"accuracy {c_acc:.3f} < SLO {m.slo_accuracy_min}")
        if c_lat is not None and s_lat is not None and c_lat > s_lat * CANARY_LATENCY_RATIO:
            failed.append(f"latency p95 {c_lat:.0f} ms vs stable {s_lat:.0f} ms")
        elif c_lat is not None and m.slo_latency_p95_ms is not None and c_lat > m.slo_latency_p95_ms:
            failed.append(f"latency p95 {c_lat:.0f} ms > SLO {m.slo_latency_p95_ms:.0f} ms")
        if c_err is not None and s_err is not None and c_err > s_err + CANARY_ERROR_MARGIN:
            failed.append(f"error rate {c_err:.2%} vs stable {s_err:.2%}")
        elif c_err is not None and m.slo_error_rate_max is not None and c_err > m.slo_error_rate_max:
            failed.append(f"error rate {c_err:.2%} > SLO {m.slo_error_rate_max:.2%}")
        self._canary_verdict[m.name] = "fail" if failed else "pass"
        if not failed:
            return None
        # the window's figures beside the SLO's, so that the audit record alone explains the verdict
        figures = {f"{track}_{name}": f"{v:.4g}" for track, vals in (("canary", (c_acc, c_lat, c_err)),
                                                                     ("stable", (s_acc, s_lat, s_err)))
                   for name, v in zip(("accuracy", "latency_p95_ms", "error_rate"), vals, strict=True)
                   if v is not None}
        figures.update({k: f"{v:g}" for k, v in (("slo_accuracy_min", m.slo_accuracy_min),
                                                 ("slo_latency_p95_ms", m.slo_latency_p95_ms),
                                                 ("slo_error_rate_max", m.slo_error_rate_max)) if v is not None})
        return Signal(kind="canary_analysis_failed", resource=m.name, resource_kind=ResourceKind.model, at_s=t,
                      value=canary.traffic_pct, labels={"canary_version": str(canary.version),
                                                        "stable_version": str(stable.version),
                                                        "window_s": f"{span:.0f}", "requests": f"{requests:.0f}",
                                                        **figures},
                      detail=f"{m.name} canary v{canary.version} at {canary.traffic_pct:g} % fails analysis over "
                             f"{span:.0f}s and {requests:.0f} requests: " + "; ".join(failed))

    def _accuracy_settling(self, m: ModelStatus, t: float) -> bool:
        """True while an accuracy breach that neither a deploy, a canary, input drift nor broken inputs
        explain is still falling: its labelled window has not caught up with the change yet."""
        acc = m.accuracy
        hist = self._acc[m.name]
        if acc is None:
            return False
        hist.append((t, acc))
        while hist and t - hist[0][0] > ACCURACY_SETTLE_S:
            hist.popleft()
        if m.slo_accuracy_min is None or acc >= m.slo_accuracy_min:
            self._breach_since.pop(m.name, None)
            return False
        since = self._breach_since.setdefault(m.name, t)
        deployed = m.last_deploy_at_s is not None and t - m.last_deploy_at_s <= RECENT_DEPLOY_S
        drifting = any(math.isfinite(v) and v > self.settings.drift_psi for v in m.drift_psi.values())
        if deployed or drifting or m.data_issues or "canary" in m.tracks:
            return False
        full = hist[-1][0] - hist[0][0] >= ACCURACY_SETTLE_S * 0.9
        falling = max(a for _, a in hist) - acc > ACCURACY_SETTLE_DELTA
        return (falling or not full) and t - since < ACCURACY_MAX_WAIT_S

    def _gpu_signals(self, g: GpuSample, t: float) -> list[Signal]:
        s = self.settings
        out: list[Signal] = []
        gpu = ResourceKind.gpu

        def sig(kind: str, detail: str, value: float | None = None, threshold: float | None = None,
                **labels: str) -> None:
            out.append(Signal(kind=kind, resource=g.gpu, resource_kind=gpu, at_s=t, value=value,
                              threshold=threshold, detail=detail, labels={"node": g.node, **labels}))

        for xid in g.xids:
            recovery = g.recovery_action if xid == xid_catalog.RECOVERY_XID else None
            x, counts = self.xid_gate.signal(g.gpu, g.node, xid, recovery, t)
            if counts:
                out.append(x)
            elif self.on_record is not None:
                self.on_record(x)
            else:
                self.recorded.append(x)
        if not g.present:
            sig("gpu_lost", f"{g.gpu} is gone from NVML (GPU is lost)")
            return out
        if g.ecc_dbe_volatile:
            sig("ecc_dbe", f"{g.ecc_dbe_volatile} uncorrectable (double-bit) ECC error(s) on {g.gpu}",
                float(g.ecc_dbe_volatile))
        if g.remap_failure:
            sig("remap_failure", f"row remapping failed on {g.gpu}: the GPU needs replacement")
        temp = g.temp_c
        if temp is not None and not math.isfinite(temp):
            self.skipped_samples += 1
            temp = None
        hw_thermal = bool((g.clock_event_reasons or 0) & CLOCK_REASON_HW_THERMAL)
        if (temp is not None and temp >= s.gpu_temp_c) or hw_thermal:
            sig("gpu_temp_high", f"{g.gpu} at {temp} C" + (" with HW thermal slowdown" if hw_thermal else ""),
                temp, s.gpu_temp_c, hw_slowdown=str(hw_thermal).lower())
        if g.nvlink_crc_errors is not None:
            link = self._nvlink_signal(g, t)
            if link is not None:
                out.append(link)
        return out

    def _nvlink_signal(self, g: GpuSample, t: float) -> Signal | None:
        """Record the GPU's NVLink CRC counter; a signal when it climbs faster than the threshold."""
        rate = self._nvlink.sample(g.gpu, float(g.nvlink_crc_errors or 0), self.settings.nvlink_errors_per_min)
        return None if rate is None else self._nvlink_climb(g, t, rate)

    def _nvlink_climb(self, g: GpuSample, t: float, rate: float) -> Signal:
        s = self.settings
        return Signal(kind="nvlink_errors", resource=g.gpu, resource_kind=ResourceKind.gpu, at_s=t, value=rate,
                      threshold=s.nvlink_errors_per_min, labels={"node": g.node},
                      detail=f"NVLink CRC errors on {g.gpu} climbing at {rate:.0f}/min")

    def _leak_signal(self, pod: str, t: float, mem: float, total: float) -> Signal | None:
        s = self.settings
        hist = self._mem[pod]
        if hist and mem < hist[-1][1] - 1024:  # memory dropped by > 1 GiB: a restart, start over
            hist.clear()
        hist.append((t, mem))
        while hist and t - hist[0][0] > s.leak_window_s:
            hist.popleft()
        # a whole window is three quarters of it or more, however few samples that takes (a 30 s tick fits
        # five samples in the default 120 s; asking for six would never see one)
        full = len(hist) >= 3 and hist[-1][0] - hist[0][0] >= s.leak_window_s * 0.75
        if not full and len(hist) < 3:
            return None
        ys = [h[1] for h in hist]
        n = len(ys)
        rises = sum(1 for a, b in zip(ys, ys[1:], strict=False) if b > a) / (n - 1)
        if rises < 0.7:  # not rising often enough to count, whatever the slope (decided before fitting it)
            return None
        xs = [h[0] for h in hist]
        mx, my = sum(xs) / n, sum(ys) / n
        var = sum((x - mx) ** 2 for x in xs)
        slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / var if var else 0.0
        gib_per_min = slope * 60.0 / 1024.0
        if gib_per_min < s.leak_gib_per_min:
            return None
        minutes_left = (total - mem) / 1024.0 / gib_per_min
        # A leak fast enough to fill the GPU before a whole window has been seen (8 GiB/min on a 24 GiB
        # L4) is caught on three strictly rising samples: waiting for the window would meet it as an OOM
        # kill, and each kill restarts the history. Slow growth never takes this path, so sampling noise
        # over a short span cannot raise it.
        if not full and (rises < 1.0 or minutes_left * 60.0 > 2 * s.leak_window_s):
            return None
        return Signal(kind="fb_memory_growth", resource=pod, resource_kind=ResourceKind.pod, at_s=t,
                      value=round(gib_per_min, 2), threshold=s.leak_gib_per_min,
                      labels={"minutes_to_oom": f"{minutes_left:.1f}"},
                      detail=f"{pod} GPU memory grows {gib_per_min:.1f} GiB/min; out of memory in "
                             f"~{minutes_left:.0f} min")

    def _stall_signal(self, pod: str, t: float, step: int, utils: list[float | None]) -> Signal | None:
        s = self.settings
        hist = self._steps[pod]
        hist.append((t, step))
        while hist and t - hist[0][0] > s.stall_window_s:
            hist.popleft()
        if hist[-1][0] - hist[0][0] < s.stall_window_s * 0.9 or hist[-1][1] != hist[0][1]:
            return None
        known = [u for u in utils if u is not None]
        util = sum(known) / len(known) if known else None
        if util is not None and util > s.stall_util_pct:
            return None
        return Signal(kind="training_stalled", resource=pod, resource_kind=ResourceKind.pod, at_s=t,
                      value=float(step), detail=f"{pod} step counter stuck at {step} for "
                      f"{hist[-1][0] - hist[0][0]:.0f}s; GPU utilisation {util if util is not None else '?'}%")

    # ------------------------------------------------------------------------------ hysteresis

    def drain_recorded(self) -> list[Signal]:
        """The observations recorded below an incident's threshold since the last call (for the audit log)."""
        out = list(self.recorded)
        self.recorded.clear()
        return out

    def _hold_for(self, kind: str) -> float:
        s = self.settings
        return {
            "gpu_temp_high": s.thermal_hold_s,
            "node_not_ready": s.node_hold_s,
            "pod_not_ready": s.pod_hold_s,
            "pod_unreachable": s.node_hold_s,
            "slo_accuracy": s.slo_hold_s,
            "slo_latency": s.slo_hold_s,
            "slo_error_rate": s.slo_hold_s,
            "load_over_capacity": s.slo_hold_s,
            "drift_psi": s.drift_hold_s,
            "drift_kl": s.drift_hold_s,
            "nvlink_errors": s.nvlink_hold_s,
        }.get(kind, 0.0)

    def _sustained(self, raw: list[Signal], t: float, tick: float) -> list[Signal]:
        seen: set[tuple[str, str]] = set()
        out = []
        for sig in raw:
            key = (sig.kind, sig.resource)
            seen.add(key)
            tr = self._tracks.get(key)
            # one missing sample is tolerated (N of M); a longer gap restarts the window
            if tr is None or t - tr.last_seen > 2.5 * tick:
                tr = self._tracks[key] = _Track(first_seen=t, last_seen=t)
            tr.last_seen = t
            if t - tr.first_seen >= self._hold_for(sig.kind):
                tr.active = True
            if tr.active:
                out.append(sig)
        for key in [k for k, tr in self._tracks.items() if k not in seen and t - tr.last_seen > 2.5 * tick]:
            del self._tracks[key]
        return out

    # ---------------------------------------------------------------------------------- grouping

    def _group(self, sigs: list[Signal], snap: ClusterSnapshot) -> dict[str, list[Signal]]:
        groups: dict[str, list[Signal]] = defaultdict(list)
        down = sorted({x.resource for x in sigs if x.kind == "node_not_ready"})
        partition = len(down) >= 2 and len(down) > max(1, math.floor(len(snap.nodes) * 0.25))
        gpu_keys = {x.resource for x in sigs if x.resource_kind == ResourceKind.gpu}

        def key_for_down(node: str) -> str:
            return "partition:" + ",".join(down) if partition else node

        for x in sigs:
            if x.kind == "node_not_ready":
                key = key_for_down(x.resource)
            elif x.resource_kind == ResourceKind.pod:
                pod = snap.pod(x.resource)
                node = pod.node if pod else None
                hw = [g for g in (pod.gpus if pod else []) if g in gpu_keys or self._open(g)]
                if node in down or (node is not None and self._open(node)):
                    key = node if node not in down else key_for_down(node)
                elif hw:
                    key = hw[0]
                else:
                    key = x.resource
            else:
                key = x.resource
            groups[key].append(x)
        return groups

    def key_state(self, key: str) -> KeyState | None:
        """The incident holding a grouping key (a GPU, node, pod, model or partition), if any."""
        return self._keys.get(key)

    def claim(self, key: str, incident: Incident, *, closed: bool) -> KeyState:
        """Make `incident` the holder of `key`: after a restart or a leader takeover the monitor then absorbs
        its signals (open) or keeps the resource quiet until its condition clears (closed), instead of
        opening a duplicate."""
        state = self._keys.setdefault(key, KeyState())
        state.incident_id, state.closed, state.quiet_since = incident.id, closed, None
        self.incidents[incident.id] = incident
        return state

    def _open(self, key: str) -> bool:
        state = self._keys.get(key)
        return state is not None and state.incident_id is not None and not state.closed

    def observe(self, snap: ClusterSnapshot, tick: float) -> list[Incident]:
        """Feed one snapshot; returns the incidents opened by it (existing ones absorb their signals)."""
        active = self._sustained(self.detect(snap), snap.at_s, tick)
        groups = self._group(active, snap)
        opened: list[Incident] = []
        t = snap.at_s
        for key, sigs in sorted(groups.items()):
            state = self._keys.setdefault(key, KeyState())
            state.quiet_since = None
            if state.incident_id is not None and not state.closed:
                inc = self.incidents[state.incident_id]
                known = {(s.kind, s.resource) for s in inc.signals}
                inc.signals.extend(s for s in sigs if (s.kind, s.resource) not in known)
                continue
            if state.incident_id is not None and state.closed:
                if state.closed_at is None:
                    state.closed_at = t
                if not (state.recurs and t - state.closed_at >= self.settings.reopen_quiet_s):
                    continue  # closed and still active: wait until the condition clears (no flapping)
            self._seq += 1
            inc_id = f"{self.id_prefix}-{self._seq}"
            kind, resource = self._resource_of(key, sigs)
            title = "; ".join(dict.fromkeys(s.detail for s in sigs))[:300]
            inc = Incident(id=inc_id, resource=resource, resource_kind=kind, opened_at_s=t,
                           signals=list(sigs), title=title)
            self.incidents[inc_id] = inc
            state.incident_id, state.closed, state.recurs, state.closed_at = inc_id, False, False, None
            opened.append(inc)
        for key, state in self._keys.items():
            if key in groups:
                continue
            if state.quiet_since is None:
                state.quiet_since = t
            if state.closed and state.closed_at is None:
                state.closed_at = t
            if state.closed and t - state.quiet_since >= self.settings.reopen_quiet_s:
                state.incident_id, state.closed, state.recurs, state.closed_at = None, False, False, None
        return opened

    @staticmethod
    def _resource_of(key: str, sigs: list[Signal]) -> tuple[ResourceKind, str]:
        if key.startswith("partition:"):
            return ResourceKind.cluster, key.split(":", 1)[1].split(",")[0]
        kinds = {s.resource_kind for s in sigs if s.resource == key}
        return (next(iter(kinds)) if kinds else sigs[0].resource_kind), key

    def close(self, incident_id: str, *, resolved: bool = False) -> None:
        """The graph finished with an incident: its key may open again once its condition clears. A pod
        incident closed as `resolved` (a restart that verified) opens again if its condition is back a
        quiet period later, cleared or not: an escalated one stays with the human it went to."""
        inc = self.incidents.get(incident_id)
        for state in self._keys.values():
            if state.incident_id == incident_id:
                state.closed = True
                state.closed_at = None
                state.recurs = resolved and inc is not None and inc.resource_kind == ResourceKind.pod
