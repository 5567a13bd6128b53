"""Drift in the monitor's loop: feature windows in, Evidently scores out, laid over the telemetry snapshot.

Layer: tools (read adapter). Imports `core.domain`, `core.settings`, `tools.drift` and, lazily,
`sandbox.model_data` (for the sandbox's windows) and pandas (for window files).

The monitor already turns a model's `drift_psi` / `drift_kl` into signals with thresholds and hysteresis;
what it lacked was somebody measuring them. `DriftTelemetry` wraps any `TelemetrySource`: on each
`snapshot()` it asks a `FeatureWindowSource` for every model's reference and current feature windows, has
`tools.drift` score them (Evidently, in `DriftWorker`'s thread pool), and replaces the models' drift
scores with the latest report's. Windows carry a `key` that changes when their contents do, so a window is
scored once however many ticks see it, and a report already made for a key is reused.

Two modes:
- **off the hot path** (`wait=False`, the daemon): a changed window is submitted and the snapshot goes out
  with the previous report's scores (or the inner source's, before the first report). A tick never waits
  for Evidently.
- **in step** (`wait=True`, `opsmedic eval`): the snapshot waits for the report. Simulated time does not
  wait for anything, so an asynchronous report would land at a different simulated moment on every run;
  waiting keeps evaluation deterministic.

Window sources:
- `SandboxWindowSource(sim)`: draws the sandbox's synthetic traffic (`sandbox.model_data`) at the drift
  level the simulator has reached (`Simulator.feature_drift`), levels quantised so that a ten-minute ramp
  is a handful of windows rather than one per tick.
- `tools.mlflow_windows.MlflowRunWindowSource`: production with an MLflow registry. The reference window is
  the training dataset logged in the serving version's run; the current window a dataset logged as
  `serving`/`current`, or this directory's current file.
- `DirectoryWindowSource(root)`: production. `root/<model>/reference.{parquet,csv}` (what the serving
  version was trained on) and `root/<model>/current.{parquet,csv}` (recent inference inputs, rewritten by
  whatever logs them). A file that cannot be read is reported in `errors` and that model is skipped; the
  others go on.

A failed or unreadable window never fails the snapshot: the inner source's scores stand, and the failure
is counted (`failures`, `last_error`).
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from core.domain import ClusterSnapshot, ModelStatus
from tools.drift import DriftReport, DriftThresholds, DriftWorker, Engine, Frame

if TYPE_CHECKING:
    from tools.backend import TelemetrySource

log = logging.getLogger("opsmedic.drift")

WINDOW_SUFFIXES = (".parquet", ".csv")


@dataclass(frozen=True)
class FeatureWindow:
    """A model's two windows, loaded only when `key` is new (reading them may cost disk or a draw)."""

    model: str
    key: str
    load: Callable[[], tuple[Frame, Frame]]  # (reference, current)


class FeatureWindowSource(Protocol):
    def windows(self, models: Sequence[str]) -> list[FeatureWindow]:
        """The windows of those of `models` this source knows."""
        ...


# ------------------------------------------------------------------------------------------ sources


class SandboxWindowSource:
    """The simulator's models' traffic, drawn from `sandbox.model_data` at the drift the simulator reached.

    The reference window is what the serving version was trained on: the original population, or, once a
    retrained version serves, the drifted one (so a retrained model shows no drift against its own
    training data). While a drift ramps up its level is floored to `step`, so the measured PSI never runs
    ahead of the simulator's; once it has ramped up it is the scenario's own number (a PSI of 0.22 is
    drawn as 0.22, not 0.20). 20,000 rows a window keep the measurement within about 0.01 of the level
    (one standard deviation) for ~40 ms a report.
    """

    def __init__(self, sim: Any, *, rows: int = 20_000, step: float = 0.025) -> None:
        self.sim = sim
        self.rows = rows
        self.step = step

    def windows(self, models: Sequence[str]) -> list[FeatureWindow]:
        from sandbox.model_data import data_seed

        out = []
        for name in models:
            if name not in self.sim.models:
                continue
            levels, retrained = self.sim.feature_drift(name)
            targets = self.sim.models[name].drift_target
            drift = {f: v if v >= targets.get(f, float("inf")) - 1e-9 else int(v / self.step + 1e-9) * self.step
                     for f, v in sorted(levels.items())}
            drift = {f: v for f, v in drift.items() if v > 0}
            seed = data_seed(self.sim.scenario.seed, name)  # the rows the MLflow backend trains on
            shown = sorted((f, round(v, 6)) for f, v in drift.items())
            broken = getattr(self.sim.models[name], "pipeline", None)  # (feature, kind, fraction) or None
            key = f"sandbox:{seed}:{self.rows}:{'retrained' if retrained else 'original'}:{shown}:{broken}"
            out.append(FeatureWindow(name, key, self._loader(seed, drift, retrained, broken)))
        return out

    def _loader(self, seed: int, drift: dict[str, float], retrained: bool,
                broken: tuple[str, str, float] | None = None) -> Callable[[], tuple[Frame, Frame]]:
        def load() -> tuple[Frame, Frame]:
            from sandbox import model_data

            if retrained:
                ref = model_data.current(seed, self.rows, drift, window=2)
            else:
                ref = model_data.reference(seed, self.rows)
            cur = model_data.current(seed, self.rows, drift, window=1)
            current: dict[str, Any] = {f: cur.column(f) for f in model_data.FEATURES}
            if broken is not None:
                feature, kind, fraction = broken
                current[feature] = model_data.break_feature(
                    cur.column(feature), ref.column(feature), kind, fraction, seed=seed)
            return {f: ref.column(f) for f in model_data.FEATURES}, current

        return load


class DirectoryWindowSource:
    """`root/<model>/{reference,current}.{parquet,csv}`, re-read when a file's size or mtime changes."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.errors: dict[str, str] = {}  # model -> why its windows were skipped at the last look

    def _file(self, model: str, stem: str) -> Path | None:
        for suffix in WINDOW_SUFFIXES:
            p = self.root / model / f"{stem}{suffix}"
            if p.is_file():
                return p
        return None

    def window_file(self, model: str, stem: str) -> tuple[Path, tuple[int, int]] | str:
        """`root/<model>/<stem>.{parquet,csv}` and its (mtime, size), or why there is none (for a source that
        takes one of the two windows from here, `tools.mlflow_windows.MlflowRunWindowSource`)."""
        path = self._file(model, stem)
        if path is None:
            return f"{self.root / model}: no {stem}.parquet or {stem}.csv"
        try:
            st = path.stat()
        except OSError as exc:  # removed between the look and the stat: next tick
            return f"{self.root / model}: {exc}"
        return path, (st.st_mtime_ns, st.st_size)

    def windows(self, models: Sequence[str]) -> list[FeatureWindow]:
        out = []
        for name in models:
            if not (self.root / name).is_dir():
                continue
            ref_file, cur_file = self.window_file(name, "reference"), self.window_file(name, "current")
            if not isinstance(ref_file, tuple) or not isinstance(cur_file, tuple):
                self._error(name, ref_file if isinstance(ref_file, str) else str(cur_file))
                continue
            (ref, ref_stamp), (cur, cur_stamp) = ref_file, cur_file
            stamp = [ref_stamp, cur_stamp]
            if self.errors.pop(name, None) is not None:
                log.info("drift windows usable again", extra={"model": name})
            out.append(FeatureWindow(name, f"dir:{ref}:{cur}:{stamp}", self._loader(ref, cur)))
        return out

    def _error(self, model: str, why: str) -> None:
        if self.errors.get(model) != why:  # said once, not every tick
            log.warning("drift windows skipped", extra={"model": model, "error": why})
        self.errors[model] = why

    @staticmethod
    def _loader(ref: Path, cur: Path) -> Callable[[], tuple[Frame, Frame]]:
        def load() -> tuple[Frame, Frame]:
            return read_window(ref), read_window(cur)

        return load


class WindowFileError(ValueError):
    """A window file that cannot be used; the message names the file and what is wrong."""


def read_window(path: Path) -> Any:
    """A window file as a pandas frame: Parquet or CSV with a header row, one column per feature."""
    import pandas as pd  # type: ignore[import-untyped,unused-ignore]

    try:
        frame = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)
    except Exception as exc:  # noqa: BLE001 - pandas and pyarrow raise many kinds; all mean "unreadable"
        raise WindowFileError(f"{path}: cannot be read ({type(exc).__name__}: {str(exc)[:200]})") from exc
    if frame.empty or len(frame.columns) == 0:
        raise WindowFileError(f"{path}: no rows")
    return frame


# ---------------------------------------------------------------------------------------- telemetry


class DriftTelemetry:
    """A `TelemetrySource` whose models' drift scores come from `tools.drift` over `source`'s windows."""

    def __init__(
        self,
        inner: TelemetrySource,
        source: FeatureWindowSource,
        *,
        thresholds: DriftThresholds | None = None,
        engine: Engine = "evidently",
        wait: bool = False,
        cache_size: int = 64,
    ) -> None:
        self.inner = inner
        self.source = source
        self.wait = wait
        self.worker = DriftWorker(thresholds, engine=engine)
        if not wait:
            self.worker.warm()  # Evidently's seconds-long import, on the worker thread, before a window needs it
        self._cache: OrderedDict[str, DriftReport] = OrderedDict()  # window key -> report
        self._cache_size = cache_size
        self._current: dict[str, str] = {}  # model -> key of the windows last seen
        self._reports: dict[str, DriftReport] = {}  # model -> latest report
        # model -> {feature: what failed} from validating the current window against the reference's profile
        self._issues: dict[str, dict[str, str]] = {}
        self._issue_cache: dict[str, dict[str, str]] = {}  # window key -> issues
        self.validate = True
        self._lock = threading.Lock()
        self.scored = 0
        self.failures = 0
        self.last_error: str | None = None

    def snapshot(self) -> ClusterSnapshot:
        snap = self.inner.snapshot()
        names = [m.name for m in snap.models]
        if not names:
            return snap
        try:
            windows = self.source.windows(names)
        except Exception as exc:  # noqa: BLE001 - a broken source costs drift scores, never the tick
            self._fail(f"window source: {type(exc).__name__}: {exc}")
            windows = []
        for w in windows:
            self._update(w)
        with self._lock:
            reports = dict(self._reports)
            issues = dict(self._issues)
        if not reports and not issues:
            return snap
        models = [self._overlay(m, reports.get(m.name)) for m in snap.models]
        models = [m.model_copy(update={"data_issues": issues[m.name]}) if issues.get(m.name) else m for m in models]
        return snap.model_copy(update={"models": models})

    def issues(self, model: str) -> dict[str, str]:
        """What the last validation of `model`'s current window found ({} when it passed or never ran)."""
        with self._lock:
            return dict(self._issues.get(model, {}))

    def report(self, model: str) -> DriftReport | None:
        with self._lock:
            return self._reports.get(model)

    def describe(self) -> dict[str, Any]:
        """For a status page: counts, the last failure, and the models with a report."""
        with self._lock:
            out: dict[str, Any] = {"scored": self.scored, "failed": self.failures, "last_error": self.last_error,
                                   "models": sorted(self._reports)}
        for attr, name in (("errors", "window_errors"), ("notes", "window_notes")):
            found = getattr(self.source, attr, None)
            try:
                if found:
                    out[name] = dict(found)
            except RuntimeError:  # the loop thread changed it while this (HTTP) thread copied it: next time
                pass
        return out

    def _update(self, w: FeatureWindow) -> None:
        with self._lock:
            if self._current.get(w.model) == w.key:
                return
            self._current[w.model] = w.key
            cached = self._cache.get(w.key)
            if cached is not None:
                self._cache.move_to_end(w.key)
                self._reports[w.model] = cached
                return
        try:
            reference, current = w.load()
        except Exception as exc:  # noqa: BLE001 - an unreadable window: that model keeps its last scores
            self._fail(f"{w.model}: {exc}")  # the same key is the same file: not retried until it changes
            return
        # Validate before any drift verdict: a broken pipeline moves drift scores too, and the monitor must
        # know the window is malformed rather than shifted.
        if self.validate:
            self._validate(w, reference, current)
        fut = self.worker.submit(w.model, reference, _numeric_columns(current))
        if not self.wait:
            model, key = w.model, w.key
            fut.add_done_callback(lambda f: self._done(model, key, f))
            return
        try:
            fut.result()
        except Exception:  # noqa: BLE001, S110 - _done counts it
            pass
        self._done(w.model, w.key, fut)

    def _validate(self, w: FeatureWindow, reference: Frame, current: Frame) -> None:
        with self._lock:
            cached = self._issue_cache.get(w.key)
        if cached is None:
            from tools.data_validation import validate_window

            try:
                cached = validate_window(reference, current, model=w.model).summary()
            except Exception as exc:  # noqa: BLE001 - a validation that cannot run is not a verdict
                self._fail(f"{w.model}: validation: {type(exc).__name__}: {exc}")
                return
        with self._lock:
            self._issue_cache[w.key] = cached
            while len(self._issue_cache) > self._cache_size:
                self._issue_cache.pop(next(iter(self._issue_cache)))
            self._issues[w.model] = cached

    def _done(self, model: str, key: str, fut: Future[DriftReport]) -> None:
        if fut.cancelled():  # superseded by a newer window of the same model
            return
        exc = fut.exception()
        if exc is not None:
            self._fail(f"{model}: {type(exc).__name__}: {exc}")
            return
        report = fut.result()
        with self._lock:
            self.scored += 1
            self._reports[model] = report
            self._cache[key] = report
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)

    def _fail(self, why: str) -> None:
        with self._lock:
            self.failures += 1
            self.last_error = why
        log.warning("drift scoring skipped", extra={"error": why[:500]})

    @staticmethod
    def _overlay(m: ModelStatus, report: DriftReport | None) -> ModelStatus:
        if report is None:
            return m
        psi, kl = {**m.drift_psi, **report.psi}, {**m.drift_kl, **report.kl}
        return m.model_copy(update={"drift_psi": psi, "drift_kl": kl})

    def close(self) -> None:
        self.worker.close(wait=False)
        close = getattr(self.inner, "close", None)
        if callable(close):
            close()


def _numeric_columns(frame: Frame) -> Frame:
    """The drift engine scores numbers: a column that arrives as another type is scored on what parses as a
    number (the rest counts as missing); validation has already reported the type change."""
    import pandas as pd

    if isinstance(frame, pd.DataFrame):
        cols = {c: frame[c] for c in frame.columns}
    else:
        cols = dict(frame)
    out: dict[str, Any] = {}
    for name, values in cols.items():
        series = values if isinstance(values, pd.Series) else pd.Series(values)
        out[name] = series if pd.api.types.is_numeric_dtype(series.dtype) else pd.to_numeric(series, errors="coerce")
    return pd.DataFrame(out) if isinstance(frame, pd.DataFrame) else out


def drift_telemetry_from_settings(
    inner: TelemetrySource, source: FeatureWindowSource, *, wait: bool = False
) -> DriftTelemetry:
    """`DriftTelemetry` with the thresholds, binning and engine of `core.settings` (`monitor.drift_*`)."""
    from core.settings import load_settings

    monitor = load_settings().monitor
    return DriftTelemetry(
        inner, source, thresholds=DriftThresholds.from_settings(monitor), engine=monitor.drift_engine, wait=wait
    )
