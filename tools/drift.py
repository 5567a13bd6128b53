"""Data drift per feature (PSI and KL divergence) with Evidently, off the monitor's hot path.

Layer: tools (read adapter). Imports `opsmedic.domain`, `opsmedic.settings`, numpy and pandas; Evidently
(0.7 API: `Report`, `Dataset`, `DataDefinition`, `evidently.metrics.ValueDrift(column, method)`) is imported
lazily, with `DO_NOT_TRACK` set first (see `_no_tracking`) so that it never phones home. Its import costs
seconds, which is one reason `DriftWorker` runs reports in a thread pool and the monitor only reads the
latest cached result.

`compute_drift(reference, current)` returns a `DriftReport`: per feature PSI and KL, each compared with its
threshold (defaults PSI > 0.2, KL > 0.15, from `MonitorSettings`), and `report.signals()` turns the
drifted features into the monitor's `drift_psi` / `drift_kl` signals. `psi_numpy` / `kl_numpy` re-implement
Evidently's binning (Sturges bins over both windows for numeric features with more than 20 distinct
values, one bin per value otherwise; empty bins floored) so that tests cross-check the two, and so that a
report still comes out (engine "numpy") when Evidently is missing or fails.
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Literal, TypeAlias

import numpy as np
import numpy.typing as npt
import pandas as pd  # type: ignore[import-untyped,unused-ignore]
from pydantic import BaseModel, ConfigDict, Field

from opsmedic.domain import ResourceKind, Signal
from opsmedic.settings import MonitorSettings

Engine = Literal["evidently", "numpy"]
Frame: TypeAlias = "pd.DataFrame | Mapping[str, Sequence[Any] | npt.NDArray[Any]]"
_NUMERIC_BINNED_MIN_UNIQUE = 20  # Evidently bins numeric columns with more distinct values than this


class DriftThresholds(BaseModel):
    model_config = ConfigDict(frozen=True)

    psi: float = Field(default=0.2, ge=0)
    kl: float = Field(default=0.15, ge=0)
    min_samples: int = Field(default=30, ge=1)  # fewer rows in either window: the feature is skipped

    @classmethod
    def from_settings(cls, s: MonitorSettings) -> DriftThresholds:
        return cls(psi=s.drift_psi, kl=s.drift_kl)


class FeatureDrift(BaseModel):
    model_config = ConfigDict(frozen=True)

    feature: str
    psi: float | None = None
    kl: float | None = None
    psi_drifted: bool = False
    kl_drifted: bool = False
    n_reference: int = 0
    n_current: int = 0
    skipped: str | None = None  # why no score was computed

    @property
    def drifted(self) -> bool:
        return self.psi_drifted or self.kl_drifted


class DriftReport(BaseModel):
    model: str
    at_s: float
    engine: Engine
    thresholds: DriftThresholds
    features: dict[str, FeatureDrift]
    notes: list[str] = Field(default_factory=list)

    @property
    def drifted_features(self) -> list[str]:
        return [f for f, d in self.features.items() if d.drifted]

    @property
    def psi(self) -> dict[str, float]:
        return {f: d.psi for f, d in self.features.items() if d.psi is not None}

    @property
    def kl(self) -> dict[str, float]:
        return {f: d.kl for f, d in self.features.items() if d.kl is not None}

    def signals(self) -> list[Signal]:
        """`drift_psi` / `drift_kl` signals for the drifted features, as `agents.monitor` emits them."""
        out = []
        th = self.thresholds
        for f, d in sorted(self.features.items()):
            if d.psi_drifted and d.psi is not None:
                out.append(
                    Signal(
                        kind="drift_psi",
                        resource=self.model,
                        resource_kind=ResourceKind.model,
                        at_s=self.at_s,
                        value=d.psi,
                        threshold=th.psi,
                        labels={"feature": f},
                        detail=f"{self.model} feature {f!r} PSI {d.psi:.2f} > {th.psi}",
                        source=self.engine,
                    )
                )
            if d.kl_drifted and d.kl is not None:
                out.append(
                    Signal(
                        kind="drift_kl",
                        resource=self.model,
                        resource_kind=ResourceKind.model,
                        at_s=self.at_s,
                        value=d.kl,
                        threshold=th.kl,
                        labels={"feature": f},
                        detail=f"{self.model} feature {f!r} KL {d.kl:.2f} > {th.kl}",
                        source=self.engine,
                    )
                )
        return out


# ------------------------------------------------------------------------------------------- numpy


def _is_numeric(values: pd.Series) -> bool:
    return bool(pd.api.types.is_numeric_dtype(values)) and not pd.api.types.is_bool_dtype(values)


def _floor_zeros(p: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    # Evidently's rule: an empty bin gets a tenth of a thousandth, or a millionth of the smallest share when
    # that is already tiny, so that log(p/q) stays finite without swamping real shares
    nonzero = p[p != 0]
    if nonzero.size == 0:
        return p
    smallest = float(nonzero.min())
    out = p.copy()
    out[out == 0] = smallest / 1e6 if smallest <= 1e-4 else 1e-4
    return out


def binned_shares(reference: Any, current: Any) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """The two windows' shares per bin, binned as Evidently does (NaNs dropped first)."""
    ref = pd.Series(reference).dropna()
    cur = pd.Series(current).dropna()
    if ref.empty or cur.empty:
        raise ValueError("a window is empty after dropping missing values")
    if _is_numeric(ref) and _is_numeric(cur) and ref.nunique() > _NUMERIC_BINNED_MIN_UNIQUE:
        edges = np.histogram_bin_edges(
            np.concatenate([ref.to_numpy(float), cur.to_numpy(float)]), bins="sturges"
        )
        r = np.histogram(ref.to_numpy(float), edges)[0] / len(ref)
        c = np.histogram(cur.to_numpy(float), edges)[0] / len(cur)
    else:
        keys = list(dict.fromkeys([*cur.unique().tolist(), *ref.unique().tolist()]))
        rc, cc = ref.value_counts(), cur.value_counts()
        r = np.array([rc.get(k, 0) for k in keys], dtype=float) / len(ref)
        c = np.array([cc.get(k, 0) for k in keys], dtype=float) / len(cur)
    return _floor_zeros(r.astype(float)), _floor_zeros(c.astype(float))


def psi_numpy(reference: Any, current: Any) -> float:
    """Population stability index: sum((ref - cur) * ln(ref / cur)) over bins."""
    r, c = binned_shares(reference, current)
    return float(np.sum((r - c) * np.log(r / c)))


def kl_numpy(reference: Any, current: Any) -> float:
    """KL(reference || current) over the same bins (shares renormalised after the zero floor, as scipy's
    `entropy` does in Evidently)."""
    r, c = binned_shares(reference, current)
    r, c = r / r.sum(), c / c.sum()
    return float(np.sum(r * np.log(r / c)))


# ------------------------------------------------------------------------------------------ report


def _frame(data: Frame) -> pd.DataFrame:
    return (
        data if isinstance(data, pd.DataFrame) else pd.DataFrame({k: pd.Series(v) for k, v in data.items()})
    )


def _no_tracking() -> None:
    """Turn Evidently's usage telemetry off before it is imported, unless the user set DO_NOT_TRACK.

    Evidently is off when the variable is present at all; MLflow (same process) only when it equals "true",
    so "true" serves both, where "1" would leave MLflow's switch off and break tools.mlflow_store's check.
    """
    os.environ.setdefault("DO_NOT_TRACK", "true")


def _evidently_scores(
    ref: pd.DataFrame, cur: pd.DataFrame, features: list[str]
) -> dict[tuple[str, str], float]:
    _no_tracking()
    from evidently import DataDefinition, Dataset, Report
    from evidently.metrics import ValueDrift

    numeric = [f for f in features if _is_numeric(ref[f]) and _is_numeric(cur[f])]
    categorical = [f for f in features if f not in numeric]
    definition = DataDefinition(numerical_columns=numeric, categorical_columns=categorical)
    metrics = [ValueDrift(column=f, method=m) for f in features for m in ("psi", "kl_div")]
    snapshot = Report(metrics).run(
        Dataset.from_pandas(cur[features], data_definition=definition),
        Dataset.from_pandas(ref[features], data_definition=definition),
    )
    out: dict[tuple[str, str], float] = {}
    for m in snapshot.dict()["metrics"]:
        cfg = m.get("config", {})
        value = m.get("value")
        if isinstance(value, int | float):
            out[(str(cfg.get("column")), str(cfg.get("method")))] = float(value)
    return out


def compute_drift(
    reference: Frame,
    current: Frame,
    *,
    model: str,
    features: Sequence[str] | None = None,
    thresholds: DriftThresholds | None = None,
    engine: Engine = "evidently",
    at_s: float | None = None,
) -> DriftReport:
    """PSI and KL for each feature of `reference` vs `current` (pandas frames or mappings of columns).

    A feature with fewer than `thresholds.min_samples` non-missing rows in a window is reported with
    `skipped` set and no scores. If Evidently fails, the numpy implementation answers and `notes` says why.
    """
    th = thresholds or DriftThresholds()
    ref, cur = _frame(reference), _frame(current)
    names = list(features) if features is not None else [c for c in ref.columns if c in cur.columns]
    result: dict[str, FeatureDrift] = {}
    scored: list[str] = []
    for f in names:
        if f not in ref.columns or f not in cur.columns:
            result[f] = FeatureDrift(feature=f, skipped="missing from a window")
            continue
        nr, nc = int(ref[f].notna().sum()), int(cur[f].notna().sum())
        if min(nr, nc) < th.min_samples:
            result[f] = FeatureDrift(
                feature=f,
                n_reference=nr,
                n_current=nc,
                skipped=f"fewer than {th.min_samples} values in a window",
            )
            continue
        scored.append(f)
    notes: list[str] = []
    used: Engine = engine
    scores: dict[tuple[str, str], float] = {}
    if scored and engine == "evidently":
        try:
            # one clean frame per feature window is what both engines see: NaNs dropped per column
            scores = _evidently_scores(ref[scored], cur[scored], scored)
        except Exception as exc:  # noqa: BLE001 - any Evidently failure falls back, and is reported
            used = "numpy"
            notes.append(f"Evidently failed ({type(exc).__name__}: {str(exc)[:200]}); numpy scores used")
    for f in scored:
        psi = scores.get((f, "psi"))
        kl = scores.get((f, "kl_div"))
        if psi is None or kl is None:
            psi, kl = psi_numpy(ref[f], cur[f]), kl_numpy(ref[f], cur[f])
        good_psi, good_kl = math.isfinite(psi), math.isfinite(kl)
        result[f] = FeatureDrift(
            feature=f,
            psi=psi if good_psi else None,
            kl=kl if good_kl else None,
            psi_drifted=good_psi and psi > th.psi,
            kl_drifted=good_kl and kl > th.kl,
            n_reference=int(ref[f].notna().sum()),
            n_current=int(cur[f].notna().sum()),
            skipped=None if good_psi or good_kl else "scores are not finite",
        )
    return DriftReport(
        model=model,
        at_s=time.time() if at_s is None else at_s,
        engine=used,
        thresholds=th,
        features={f: result[f] for f in names},
        notes=notes,
    )


# ------------------------------------------------------------------------------------------ worker


class DriftWorker:
    """Runs drift reports in a thread pool; the monitor reads `latest()` / `signals()` without waiting.

    One report per model runs at a time; a request for a model whose report is still running replaces any
    request already waiting for it (only the newest windows matter), and the replaced one is cancelled and
    counted in `coalesced`.
    """

    def __init__(
        self,
        thresholds: DriftThresholds | None = None,
        *,
        engine: Engine = "evidently",
        max_workers: int = 1,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.thresholds = thresholds or DriftThresholds()
        self.engine = engine
        self.clock = clock
        self._pool = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="opsmedic-drift")
        self._lock = threading.Lock()
        self._latest: dict[str, DriftReport] = {}
        self._running: set[str] = set()
        self._waiting: dict[str, tuple[Frame, Frame, float, Future[DriftReport]]] = {}
        self.completed = 0
        self.failures = 0
        self.coalesced = 0
        self.last_error: str | None = None

    def warm(self) -> Future[None]:
        """Import Evidently in the background so the first report does not pay for it."""

        def _import() -> None:
            if self.engine == "evidently":
                _no_tracking()
                import evidently  # noqa: F401

        return self._pool.submit(_import)

    def submit(self, model: str, reference: Frame, current: Frame) -> Future[DriftReport]:
        at_s = self.clock()
        fut: Future[DriftReport] = Future()
        with self._lock:
            if model in self._running:
                old = self._waiting.pop(model, None)
                if old is not None:
                    old[3].cancel()
                    self.coalesced += 1
                self._waiting[model] = (reference, current, at_s, fut)
                return fut
            self._running.add(model)
        self._start(model, reference, current, at_s, fut)
        return fut

    def _start(
        self, model: str, reference: Frame, current: Frame, at_s: float, fut: Future[DriftReport]
    ) -> None:
        if not fut.set_running_or_notify_cancel():  # the caller cancelled it while it waited
            self._next(model)
            return
        self._pool.submit(self._run, model, reference, current, at_s, fut)

    def _next(self, model: str) -> None:
        with self._lock:
            nxt = self._waiting.pop(model, None)
            if nxt is None:
                self._running.discard(model)
        if nxt is not None:
            self._start(model, *nxt)

    def _run(
        self, model: str, reference: Frame, current: Frame, at_s: float, fut: Future[DriftReport]
    ) -> None:
        try:
            report = compute_drift(
                reference, current, model=model, thresholds=self.thresholds, engine=self.engine, at_s=at_s
            )
        except Exception as exc:  # noqa: BLE001 - a bad window must not kill the worker thread
            with self._lock:
                self.failures += 1
                self.last_error = f"{model}: {type(exc).__name__}: {exc}"
            fut.set_exception(exc)
        else:
            with self._lock:
                self._latest[model] = report
                self.completed += 1
            fut.set_result(report)
        self._next(model)

    def latest(self, model: str) -> DriftReport | None:
        with self._lock:
            return self._latest.get(model)

    def signals(self) -> list[Signal]:
        with self._lock:
            reports = list(self._latest.values())
        return [s for r in reports for s in r.signals()]

    def close(self, wait: bool = True) -> None:
        self._pool.shutdown(wait=wait, cancel_futures=True)

    def __enter__(self) -> DriftWorker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
