"""A small server-side memory of recent metrics, so that the console can plot what happened around a fault.

Layer: interfaces (`opsmedic.console`). Snapshots carry only the present; the console keeps:

- a **ring buffer** of the last `capacity` snapshots' per-GPU readings (temperature, FB memory used,
  utilisation, power) as one float32 array — 10,000 GPUs x 4 metrics x 200 rows is 32 MB, and the number
  of rows shrinks when the fleet is larger so that memory stays bounded (`max_cells`);
- per-model readings (accuracy, latency p95, worst drift PSI) in a deque per model, and, where the source
  reports them, per-track readings (`stable` / `canary`: traffic share, error rate, requests per second) for
  the model page's rollout plots;
- **pinned series**: when an incident opens, the history of its resource is copied out of the ring and then
  extended at every snapshot (bounded by `pin_max` points), so that its plot keeps the moments before the
  fault long after the ring has moved on.

A resource's series depends on its kind: a GPU its own readings; a node the hottest GPU, the sum of FB
memory and the mean utilisation of its GPUs; a pod the same over the GPUs it held when the incident
opened (or its model's readings when it serves a model); a model its quality, latency and drift; the
cluster the fleet's mean temperature and utilisation and the number of GPUs gone. Thread-safe.
"""

from __future__ import annotations

import math
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from core.domain import ClusterSnapshot, ModelStatus, ResourceKind

GPU_METRICS: tuple[str, ...] = ("temp_c", "mem_used_mib", "util_pct", "power_w")
MODEL_METRICS: tuple[str, ...] = ("accuracy", "latency_p95_ms", "drift_psi")

# metric -> (label, unit) as the plots show them
LABELS: dict[str, tuple[str, str]] = {
    "temp_c": ("GPU temperature", "°C"),
    "temp_max_c": ("Hottest GPU temperature", "°C"),
    "temp_mean_c": ("Mean GPU temperature", "°C"),
    "mem_used_mib": ("FB memory used", "MiB"),
    "util_pct": ("GPU utilisation", "%"),
    "power_w": ("Power draw", "W"),
    "gpus_missing": ("GPUs not visible", "GPUs"),
    "accuracy": ("Accuracy", ""),
    "latency_p95_ms": ("Latency p95", "ms"),
    "drift_psi": ("Drift score (max PSI)", ""),
}

F32 = npt.NDArray[np.float32]

TRACKS: tuple[str, ...] = ("stable", "canary")
# per-track plots on the model page: (name, label, unit, how a track's reading becomes the plotted value)
TRACK_METRICS: tuple[tuple[str, str, str], ...] = (
    ("traffic_pct", "Traffic share", "%"),
    ("error_rate_pct", "Error rate", "%"),
    ("requests_per_s", "Requests per second", "req/s"),
)


@dataclass
class _Spec:
    """How one resource's points are computed: from GPU columns (aggregated) or from a model's readings."""

    kind: str  # gpu | gpus | model | fleet
    gpus: tuple[str, ...] = ()
    model: str | None = None


@dataclass
class _Pinned:
    spec: _Spec
    t: list[float] = field(default_factory=list)
    values: dict[str, list[float]] = field(default_factory=dict)


def _f(v: float | int | None) -> float:
    return float("nan") if v is None else float(v)


def _clean(values: Any) -> list[float | None]:
    out: list[float | None] = []
    for v in values:
        fv = float(v)
        out.append(None if math.isnan(fv) else round(fv, 3))
    return out


def _model_point(snap: ClusterSnapshot, name: str) -> dict[str, float] | None:
    m = snap.model(name)
    if m is None:
        return None
    drift = max(m.drift_psi.values()) if m.drift_psi else float("nan")
    return {"accuracy": _f(m.accuracy), "latency_p95_ms": _f(m.latency_p95_ms), "drift_psi": drift}


def _track_point(m: ModelStatus) -> tuple[float, ...] | None:
    """(stable traffic, err, rps, canary traffic, err, rps): NaN where unknown; None when the source reports no
    model-operations reading at all (no tracks, no error rate, no request rate)."""
    if not m.tracks and m.error_rate is None and m.requests_per_s is None:
        return None
    out: list[float] = []
    for name in TRACKS:
        tr = m.tracks.get(name)
        if tr is None and name == "stable":  # no rollout: the model's own readings are the stable track's
            out += [100.0, _f(None if m.error_rate is None else 100.0 * m.error_rate), _f(m.requests_per_s)]
        elif tr is None:  # no canary: it takes no traffic, and has no error or request rate to plot
            out += [0.0, float("nan"), float("nan")]
        else:
            out += [tr.traffic_pct, _f(None if tr.error_rate is None else 100.0 * tr.error_rate),
                    _f(tr.requests_per_s)]
    return tuple(out)


class MetricHistory:
    """Recent per-GPU and per-model readings, plus pinned series for incidents (see the module docstring)."""

    def __init__(self, capacity: int = 360, *, max_cells: int = 8_000_000, pin_max: int = 4000) -> None:
        self.capacity = capacity
        self.max_cells = max_cells
        self.pin_max = pin_max
        self._lock = threading.Lock()
        self._cols: dict[str, int] = {}
        self._rows = 0  # capacity of the current allocation
        self._gpu: F32 = np.zeros((0, 0, len(GPU_METRICS)), dtype=np.float32)
        self._t: npt.NDArray[np.float64] = np.zeros(0, dtype=np.float64)
        self._n = 0  # snapshots recorded since the last (re)allocation
        self._models: dict[str, deque[tuple[float, float, float, float]]] = {}
        self._tracks: dict[str, deque[tuple[float, tuple[float, ...]]]] = {}
        self._pinned: dict[str, _Pinned] = {}
        self.last_at_s: float | None = None

    # ------------------------------------------------------------------------------------- recording

    def _allocate(self, ncols: int) -> None:
        per_row = max(1, ncols) * len(GPU_METRICS)
        rows = max(30, min(self.capacity, self.max_cells // per_row))
        gpu = np.full((rows, ncols, len(GPU_METRICS)), np.nan, dtype=np.float32)
        t = np.full(rows, np.nan, dtype=np.float64)
        if self._rows and self._n:
            order = self._order()[-rows:]
            old_cols = self._gpu.shape[1]
            k = len(order)
            gpu[:k, :old_cols, :] = self._gpu[order]
            t[:k] = self._t[order]
            self._n = k
        else:
            self._n = 0
        self._gpu, self._t, self._rows = gpu, t, rows

    def _order(self) -> npt.NDArray[np.intp]:
        """Row indices of the ring, oldest first."""
        if self._n <= self._rows:
            return np.arange(self._n)
        start = self._n % self._rows
        return np.concatenate([np.arange(start, self._rows), np.arange(0, start)])

    def record(self, snap: ClusterSnapshot) -> bool:
        """Add one snapshot; False (and nothing recorded) when its time is not newer than the last one."""
        with self._lock:
            if self.last_at_s is not None and snap.at_s <= self.last_at_s:
                return False
            new = [g.gpu for g in snap.gpus if g.gpu not in self._cols]
            if new or not self._rows:
                for gid in new:
                    self._cols[gid] = len(self._cols)
                ncols = len(self._cols)
                if ncols > self._gpu.shape[1] or not self._rows:
                    self._allocate(max(ncols, 2 * self._gpu.shape[1]) if self._rows else ncols)
            row = self._n % self._rows
            data = self._gpu[row]
            data.fill(np.nan)
            cols = self._cols
            for g in snap.gpus:
                c = cols[g.gpu]
                if g.present:
                    data[c, 0] = _f(g.temp_c)
                    data[c, 1] = _f(g.mem_used_mib)
                    data[c, 2] = _f(g.util_pct)
                    data[c, 3] = _f(g.power_w)
            self._t[row] = snap.at_s
            self._n += 1
            for m in snap.models:
                q = self._models.get(m.name)
                if q is None:
                    q = self._models[m.name] = deque(maxlen=self.capacity)
                p = _model_point(snap, m.name)
                assert p is not None
                q.append((snap.at_s, p["accuracy"], p["latency_p95_ms"], p["drift_psi"]))
                tp = _track_point(m)
                if tp is not None:
                    tq = self._tracks.get(m.name)
                    if tq is None:
                        tq = self._tracks[m.name] = deque(maxlen=self.capacity)
                    tq.append((snap.at_s, tp))
            self.last_at_s = snap.at_s
            for pinned in self._pinned.values():
                self._extend(pinned, snap)
            return True

    # --------------------------------------------------------------------------------------- reading

    def _spec(self, resource: str, kind: ResourceKind | str, snap: ClusterSnapshot | None) -> _Spec:
        kind = str(kind)
        if kind == "gpu" or "/gpu-" in resource:
            return _Spec("gpu", gpus=(resource,))
        if kind == "model" or resource in self._models:
            return _Spec("model", model=resource)
        if kind == "node":
            prefix = resource + "/"
            return _Spec("gpus", gpus=tuple(g for g in self._cols if g.startswith(prefix)))
        if kind == "cluster":
            return _Spec("fleet")
        if snap is not None:  # pods and workloads: the model they serve, else the GPUs they hold
            pods = [p for p in snap.pods if p.name == resource or p.workload == resource]
            for p in pods:
                if p.workload in self._models:
                    return _Spec("model", model=p.workload)
            gpus = tuple(dict.fromkeys(g for p in pods for g in p.gpus))
            if gpus:
                return _Spec("gpus", gpus=gpus)
        return _Spec("fleet")

    def _metrics_of(self, spec: _Spec) -> tuple[str, ...]:
        if spec.kind == "gpu":
            return ("temp_c", "mem_used_mib", "util_pct", "power_w")
        if spec.kind == "gpus":
            return ("temp_max_c", "mem_used_mib", "util_pct")
        if spec.kind == "model":
            return MODEL_METRICS
        return ("temp_mean_c", "util_pct", "gpus_missing")

    def _aggregate(self, spec: _Spec, rows: F32) -> dict[str, Any]:
        """rows: (n, ncols, metrics) -> {metric: (n,) array} for a gpu / gpus / fleet spec."""
        n = rows.shape[0]
        with np.errstate(all="ignore"):
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("ignore", category=RuntimeWarning)  # all-NaN slices: a GPU gone
                if spec.kind in ("gpu", "gpus"):
                    idx = [self._cols[g] for g in spec.gpus if g in self._cols]
                    if not idx:
                        return {m: np.full(n, np.nan) for m in self._metrics_of(spec)}
                    sel = rows[:, idx, :]
                    if spec.kind == "gpu":
                        return {m: sel[:, 0, i] for i, m in enumerate(GPU_METRICS)}
                    return {"temp_max_c": np.nanmax(sel[:, :, 0], axis=1),
                            "mem_used_mib": np.nansum(sel[:, :, 1], axis=1),
                            "util_pct": np.nanmean(sel[:, :, 2], axis=1)}
                present = ~np.isnan(rows[:, :, 0])
                return {"temp_mean_c": np.nanmean(rows[:, :, 0], axis=1),
                        "util_pct": np.nanmean(rows[:, :, 2], axis=1),
                        "gpus_missing": (len(self._cols) - present.sum(axis=1)).astype(np.float32)}

    def _ring_series(self, spec: _Spec) -> tuple[list[float], dict[str, list[float]]]:
        if spec.kind == "model":
            q = list(self._models.get(spec.model or "", ()))
            t = [p[0] for p in q]
            return t, {m: [p[i + 1] for p in q] for i, m in enumerate(MODEL_METRICS)}
        if not self._rows or not self._n:
            return [], {m: [] for m in self._metrics_of(spec)}
        order = self._order()
        agg = self._aggregate(spec, self._gpu[order])
        return [float(x) for x in self._t[order]], {m: [float(x) for x in v] for m, v in agg.items()}

    def _extend(self, pinned: _Pinned, snap: ClusterSnapshot) -> None:
        spec = pinned.spec
        if spec.kind == "model":
            point = _model_point(snap, spec.model or "")
            if point is None:
                return
        else:
            row = self._gpu[(self._n - 1) % self._rows][None, :, :]
            point = {m: float(v[0]) for m, v in self._aggregate(spec, row).items()}
        pinned.t.append(snap.at_s)
        for m in self._metrics_of(spec):
            pinned.values.setdefault(m, []).append(point.get(m, float("nan")))
        if len(pinned.t) > self.pin_max:  # keep the first quarter (the fault) and the most recent points
            keep = self.pin_max // 4
            cut = len(pinned.t) - self.pin_max + keep
            pinned.t[keep:cut] = []
            for vals in pinned.values.values():
                vals[keep:cut] = []

    def pin(self, key: str, resource: str, kind: ResourceKind | str, snap: ClusterSnapshot | None) -> None:
        """Keep `resource`'s series under `key` (an incident id) from now on, seeded from the ring."""
        with self._lock:
            if key in self._pinned:
                return
            spec = self._spec(resource, kind, snap)
            t, values = self._ring_series(spec)
            self._pinned[key] = _Pinned(spec, t[-self.pin_max:], {m: v[-self.pin_max:] for m, v in values.items()})

    def unpin(self, key: str) -> None:
        with self._lock:
            self._pinned.pop(key, None)

    def pinned_keys(self) -> set[str]:
        with self._lock:
            return set(self._pinned)

    def series(self, resource: str, kind: ResourceKind | str, snap: ClusterSnapshot | None = None, *,
               key: str | None = None) -> dict[str, Any]:
        """{"resource", "kind", "t": [...], "metrics": [{"name", "label", "unit", "values"}]}, JSON-ready."""
        with self._lock:
            pinned = self._pinned.get(key) if key is not None else None
            if pinned is not None:
                spec, t, values = pinned.spec, list(pinned.t), {m: list(v) for m, v in pinned.values.items()}
            else:
                spec = self._spec(resource, kind, snap)
                t, values = self._ring_series(spec)
        metrics = []
        for m in self._metrics_of(spec):
            label, unit = LABELS[m]
            metrics.append({"name": m, "label": label, "unit": unit, "values": _clean(values.get(m, []))})
        return {"resource": resource, "kind": spec.kind, "t": [round(x, 3) for x in t], "metrics": metrics}

    def model_series(self, name: str) -> dict[str, Any]:
        """The model's series, plus `tracks` (when the source reports them): the time axis and, per metric
        (traffic share, error rate, requests per second), one line per track — stable and canary."""
        out = self.series(name, ResourceKind.model)
        with self._lock:
            q = list(self._tracks.get(name, ()))
        if not q:
            out["tracks"] = None
            return out
        groups = []
        for k, (metric, label, unit) in enumerate(TRACK_METRICS):
            lines = [{"track": track, "values": _clean(p[i * len(TRACK_METRICS) + k] for _, p in q)}
                     for i, track in enumerate(TRACKS)]
            groups.append({"name": metric, "label": label, "unit": unit, "lines": lines})
        out["tracks"] = {"t": [round(t, 3) for t, _ in q], "metrics": groups}
        return out

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {"gpus": len(self._cols), "rows": self._rows, "recorded": self._n, "models": len(self._models),
                    "pinned": len(self._pinned), "bytes": int(self._gpu.nbytes)}
