"""Data drift per feature (PSI and KL divergence) with Evidently, off the monitor's hot path.

Layer: tools (read adapter). Imports `core.domain`, `core.settings`, numpy and pandas; Evidently
(its stat-test registry, `evidently.legacy.calculations.stattests`, which its `ValueDrift` metric runs on) is
imported lazily, with `DO_NOT_TRACK` set first (see `_no_tracking`) so that it never phones home. Its import costs
seconds, which is one reason `DriftWorker` runs reports in a thread pool and the monitor only reads the
latest cached result.

`compute_drift(reference, current)` returns a `DriftReport`: per feature PSI and KL, each compared with its
threshold (defaults PSI > 0.2, KL > 0.15, from `MonitorSettings`), and `report.signals()` turns the
drifted features into the monitor's `drift_psi` / `drift_kl` signals. `psi_numpy` / `kl_numpy` re-implement
both binnings so that tests cross-check them against Evidently, and so that a report still comes out
(engine "numpy") when Evidently is missing or fails.

**Binning.** Evidently's built-in `psi` and `kl_div` cut a numeric feature with more than 20 distinct values
into equal-width Sturges bins over both windows together (its own docstring says "reference quantiles";
the code does not). On a skewed feature that is nearly blind: a log-normal transaction amount shifted by
0.6 standard deviations, which costs a fraud model five points of accuracy, lands almost entirely in the
first bin and scores PSI 0.04. The textbook PSI, the one the 0.1 / 0.2 / 0.25 rules of thumb were made for,
bins on the reference window's deciles, which makes it invariant under monotone transforms (the same shift
scores the same on `amount` and on `log(amount)`). So by default (`binning="quantile"`) opsmedic registers
reference-quantile PSI and KL with Evidently's stat-test registry (its documented extension point for
custom drift methods) and runs them through Evidently's `Report`; `binning="equal_width"` selects
Evidently's built-ins. Categorical features and numeric ones with few distinct values get one bin per value
either way, as in Evidently.
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

from core.domain import ResourceKind, Signal
from core.settings import MonitorSettings

Engine = Literal["evidently", "numpy"]
Binning = Literal["quantile", "equal_width"]
Frame: TypeAlias = "pd.DataFrame | Mapping[str, Sequence[Any] | npt.NDArray[Any]]"
_NUMERIC_BINNED_MIN_UNIQUE = 20  # Evidently bins numeric columns with more distinct values than this


class DriftThresholds(BaseModel):
    model_config = ConfigDict(frozen=True)

    psi: float = Field(default=0.2, ge=0)
    kl: float = Field(default=0.15, ge=0)
    min_samples: int = Field(default=30, ge=1)  # fewer rows in either window: the feature is skipped
    binning: Binning = "quantile"  # see the module docstring
    bins: int = Field(default=10, ge=2, le=100)  # quantile binning: this many reference quantiles

    @classmethod
    def from_settings(cls, s: MonitorSettings) -> DriftThresholds:
        return cls(psi=s.drift_psi, kl=s.drift_kl, binning=s.drift_binning, bins=s.drift_bins)


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
            for kind, label, value, drifted, threshold in (("drift_psi", "PSI", d.psi, d.psi_drifted, th.psi),
                                                           ("drift_kl", "KL", d.kl, d.kl_drifted, th.kl)):
                if drifted and value is not None:
                    out.append(Signal(kind=kind, resource=self.model, resource_kind=ResourceKind.model,
                                      at_s=self.at_s, value=value, threshold=threshold, labels={"feature": f},
                                      detail=f"{self.model} feature {f!r} {label} {value:.2f} > {threshold}",
                                      source=self.engine))
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


def binned_shares(
    reference: Any, current: Any, *, binning: Binning = "quantile", bins: int = 10
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """The two windows' shares per bin (NaNs dropped first), empty bins floored as Evidently floors them.

    `equal_width` is Evidently's binning; `quantile` puts the edges at the reference window's `bins`
    quantiles (ties merged), values beyond the reference's range falling into the end bins.
    """
    ref = pd.Series(reference).dropna()
    cur = pd.Series(current).dropna()
    if ref.empty or cur.empty:
        raise ValueError("a window is empty after dropping missing values")
    if _is_numeric(ref) and _is_numeric(cur) and ref.nunique() > _NUMERIC_BINNED_MIN_UNIQUE:
        r_values, c_values = ref.to_numpy(float), cur.to_numpy(float)
        if binning == "quantile":
            inner = np.unique(np.quantile(r_values, np.linspace(0.0, 1.0, bins + 1)[1:-1]))
            n = inner.size + 1
            r = np.bincount(np.searchsorted(inner, r_values, side="right"), minlength=n) / r_values.size
            c = np.bincount(np.searchsorted(inner, c_values, side="right"), minlength=n) / c_values.size
        else:
            edges = np.histogram_bin_edges(np.concatenate([r_values, c_values]), bins="sturges")
            r = np.histogram(r_values, edges)[0] / len(ref)
            c = np.histogram(c_values, edges)[0] / len(cur)
    else:
        keys = list(dict.fromkeys([*cur.unique().tolist(), *ref.unique().tolist()]))
        rc, cc = ref.value_counts(), cur.value_counts()
        r = np.array([rc.get(k, 0) for k in keys], dtype=float) / len(ref)
        c = np.array([cc.get(k, 0) for k in keys], dtype=float) / len(cur)
    return _floor_zeros(r.astype(float)), _floor_zeros(c.astype(float))


def _psi_of(r: npt.NDArray[np.float64], c: npt.NDArray[np.float64]) -> float:
    return float(np.sum((r - c) * np.log(r / c)))


def _kl_of(r: npt.NDArray[np.float64], c: npt.NDArray[np.float64]) -> float:
    # shares renormalised after the zero floor, as scipy's `entropy` does inside Evidently
    r, c = r / r.sum(), c / c.sum()
    return float(np.sum(r * np.log(r / c)))


def psi_numpy(reference: Any, current: Any, *, binning: Binning = "quantile", bins: int = 10) -> float:
    """Population stability index: sum((ref - cur) * ln(ref / cur)) over bins."""
    return _psi_of(*binned_shares(reference, current, binning=binning, bins=bins))


def kl_numpy(reference: Any, current: Any, *, binning: Binning = "quantile", bins: int = 10) -> float:
    """KL(reference || current) over the same bins."""
    return _kl_of(*binned_shares(reference, current, binning=binning, bins=bins))


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


_registered: dict[int, tuple[str, str]] = {}
_register_lock = threading.Lock()


def _quantile_methods(bins: int) -> tuple[str, str]:
    """Register reference-quantile PSI and KL (`bins` quantiles) as Evidently stat tests, once per process,
    and return their names. Evidently hands the impl both windows' pandas Series and the column type."""
    with _register_lock:
        if bins in _registered:
            return _registered[bins]
        from evidently.legacy.calculations.stattests.registry import StatTest, register_stattest
        from evidently.legacy.core import ColumnType

        names = (f"opsmedic_quantile_psi_{bins}", f"opsmedic_quantile_kl_{bins}")
        kinds = [ColumnType.Categorical, ColumnType.Numerical]

        def _psi_q(ref: pd.Series, cur: pd.Series, feature_type: Any, threshold: float) -> tuple[float, bool]:
            value = _psi_of(*binned_shares(ref, cur, binning="quantile", bins=bins))
            return value, value >= threshold

        def _kl_q(ref: pd.Series, cur: pd.Series, feature_type: Any, threshold: float) -> tuple[float, bool]:
            value = _kl_of(*binned_shares(ref, cur, binning="quantile", bins=bins))
            return value, value >= threshold

        register_stattest(StatTest(names[0], f"PSI ({bins} reference quantiles)", kinds, 0.2), _psi_q)
        register_stattest(StatTest(names[1], f"KL divergence ({bins} reference quantiles)", kinds, 0.15), _kl_q)
        _registered[bins] = names
        return names


def _evidently_scores(
    ref: pd.DataFrame, cur: pd.DataFrame, features: list[str], th: DriftThresholds
) -> dict[tuple[str, str], float]:
    """{(feature, "psi" | "kl"): score} from Evidently's stat tests.

    These are the functions Evidently's `ValueDrift` metric calls (`get_stattest` resolves a method name
    in its registry, the stat test bins and scores), without the `Report` around them: a report renders a
    Plotly widget per metric, four fifths of its run time, and the monitor never shows one.
    """
    _no_tracking()
    from evidently.legacy.calculations.stattests import get_stattest
    from evidently.legacy.core import ColumnType

    psi_method, kl_method = _quantile_methods(th.bins) if th.binning == "quantile" else ("psi", "kl_div")
    out: dict[tuple[str, str], float] = {}
    for f in features:
        r, c = ref[f].dropna(), cur[f].dropna()
        kind = ColumnType.Numerical if _is_numeric(r) and _is_numeric(c) else ColumnType.Categorical
        for method, name, threshold in ((psi_method, "psi", th.psi), (kl_method, "kl", th.kl)):
            result = get_stattest(r, c, kind, method)(r, c, kind, threshold)
            out[(f, name)] = float(result.drift_score)
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
            scores = _evidently_scores(ref[scored], cur[scored], scored, th)
        except Exception as exc:  # noqa: BLE001 - any Evidently failure falls back, and is reported
            used = "numpy"
            notes.append(f"Evidently failed ({type(exc).__name__}: {str(exc)[:200]}); numpy scores used")
    for f in scored:
        psi = scores.get((f, "psi"))
        kl = scores.get((f, "kl"))
        if psi is None or kl is None:
            shares = binned_shares(ref[f], cur[f], binning=th.binning, bins=th.bins)
            psi, kl = _psi_of(*shares), _kl_of(*shares)
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
