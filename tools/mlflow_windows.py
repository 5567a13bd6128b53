"""Drift and validation windows from MLflow: the serving version's training dataset is the reference window.

Layer: tools (read adapter). Imports `core.errors`, `tools.drift_feed` and `tools.mlflow_store`; MLflow and
pandas only inside functions, so importing this module (and `opsmedic --help`) never pays for them.

What a model was trained on is the right reference for its drift, and MLflow already records it: a training
run logs its rows with dataset tracking (`mlflow.log_input(mlflow.data.from_pandas(df, source=...),
context="training")`). A logged dataset keeps its name, digest, schema and *source*, not its rows, so the
rows must live where the source says: `log_dataset` below writes them as a Parquet artifact of the run and
logs that artifact as the dataset's source (opsmedic's retraining does this for every version it registers).
A training image of one's own may log any source MLflow or opsmedic can read back: a file path or
`file://` URI, an artifact store URI (`s3://`, `gs://`, `mlflow-artifacts:/`, `runs:/`...) or an HTTP(S) URL,
pointing at a Parquet or CSV file (or a folder holding one).

`MlflowRunWindowSource` (a `tools.drift_feed.FeatureWindowSource`), for each model the snapshot names:

- **reference**: the version behind the registry's serving alias (`champion`), its source run, and the
  newest dataset that run logged with context `training`, loaded from its source. After a retrain and a
  promotion the alias moves, and the new version's training rows become the reference.
- **current**: the newest run tagged `opsmedic.model=<model>` in the same experiment that logged a dataset
  with context `serving` or `current` (what a serving logger records), else the training run's own such
  dataset, else `files`' `<dir>/<model>/current.{parquet,csv}` (a `DirectoryWindowSource`).
- With `fallback_reference` (the daemon's `auto`), a model whose run has no usable training dataset takes
  its reference from `files` instead, and `notes` says why.

A window's key is the version, the run and digest of each MLflow dataset (and a file's size and mtime), so a
window is loaded and scored once however many ticks see it, and a reference is downloaded once however
often its current window changes (frames are kept per run and digest). Lookups are refreshed every
`refresh_s`, not every tick. A model with no usable window is skipped with the reason in `errors` (said once
in the log); a failed download is retried after `refresh_s`. Nothing here raises into the snapshot.
"""

from __future__ import annotations

import json
import logging
import tempfile
import threading
import time
import urllib.parse
import urllib.request
import warnings
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core.errors import ToolError
from tools.drift_feed import WINDOW_SUFFIXES, DirectoryWindowSource, FeatureWindow, WindowFileError, read_window
from tools.mlflow_store import call, import_mlflow

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities import Dataset as DatasetEntity
    from mlflow.entities import DatasetInput

    from tools.drift import Frame

log = logging.getLogger("opsmedic.drift")

TRAINING = "training"  # dataset context of the rows a version was trained on
CURRENT_CONTEXTS = ("serving", "current")  # dataset contexts of recent inference inputs
ARTIFACT_DIR = "datasets"  # where `log_dataset` writes a run's rows
MODEL_TAG = "opsmedic.model"  # run tag naming the opsmedic model (`tools.mlflow_backend.T_MODEL`)
CONTEXT_TAG = "mlflow.data.context"  # `mlflow.utils.mlflow_tags.MLFLOW_DATASET_CONTEXT`


# ----------------------------------------------------------------------------------------- writing


def log_dataset(client: MlflowClient, run_id: str, frame: Any, *, name: str, context: str = TRAINING,
                targets: str | None = None, artifact_uri: str | None = None, attempts: int = 3) -> str:
    """Log `frame` (a pandas DataFrame) as a dataset input of `run_id` with `context`, its rows stored as a
    Parquet artifact of the run (`datasets/<name>-<digest>.parquet`) and named as the dataset's source, so
    that `load_rows` reads them back. `artifact_uri`: the run's (`run.info.artifact_uri`), if the caller has
    it, saves reading the run. Returns the dataset's digest."""
    import_mlflow()
    from mlflow.data.digest_utils import compute_pandas_digest
    from mlflow.data.pandas_dataset import from_pandas
    from mlflow.entities import Dataset as DatasetEntity
    from mlflow.entities import DatasetInput, InputTag

    digest = str(compute_pandas_digest(frame))  # what `from_pandas` computes; the file is named after it
    if artifact_uri is None:
        artifact_uri = str(call(client.get_run, run_id, attempts=attempts, what="get run").info.artifact_uri)
    file_name = f"{name}-{digest}.parquet"
    with tempfile.TemporaryDirectory(prefix="opsmedic-dataset-") as tmp:
        local = Path(tmp) / file_name
        frame.to_parquet(local, index=False)
        call(client.log_artifact, run_id, str(local), ARTIFACT_DIR, attempts=attempts, what="log dataset rows")
    uri = f"{artifact_uri.rstrip('/')}/{ARTIFACT_DIR}/{file_name}"
    ds = from_pandas(frame, source=_source_for(uri), name=name, digest=digest, targets=targets)
    # MLflow infers the schema row by row (~25 ms for 4,000 rows of six columns); the types of a few rows and
    # a vectorised null check give the same schema. `schema` is a cached property: this fills its cache.
    ds.__dict__["schema"] = _schema(frame)
    with warnings.catch_warnings():  # the schema's hint that integer columns cannot hold nulls: not ours
        warnings.simplefilter("ignore", UserWarning)
        entity = DatasetEntity(**ds.to_dict())
    call(client.log_inputs, run_id, [DatasetInput(entity, tags=[InputTag(CONTEXT_TAG, context)])],
         attempts=attempts, what="log dataset input")
    return digest


def _schema(frame: Any) -> Any:
    from mlflow.types.schema import ColSpec, Schema
    from mlflow.types.utils import _infer_schema

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        head = _infer_schema(frame.head(64))
    if not isinstance(head, Schema) or not head.has_input_names():
        return head
    cols: list[Any] = list(head.inputs)
    return Schema([ColSpec(c.type, c.name, required=not bool(frame[c.name].isna().any())) for c in cols])


def _source_for(uri: str) -> Any:
    """MLflow's own source for `uri` where it has one (local files, s3, gs...); for the schemes MLflow's
    registry leaves out (`mlflow-artifacts:`, `runs:`, proxied artifacts of a tracking server), a source
    of type `mlflow_artifact` holding the URI, which `load_rows` downloads through the tracking server."""
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.exceptions import MlflowException

    scheme = urllib.parse.urlparse(uri).scheme
    if scheme not in ("mlflow-artifacts", "runs", "models", "http", "https"):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return resolve_dataset_source(uri)
        except MlflowException:
            pass
    return _artifact_source_class()(uri)


_ARTIFACT_SOURCE: Any = None


def _artifact_source_class() -> Any:
    global _ARTIFACT_SOURCE
    if _ARTIFACT_SOURCE is None:
        from mlflow.data.dataset_source import DatasetSource

        class MlflowArtifactDatasetSource(DatasetSource):  # type: ignore[misc]
            """A dataset stored as an artifact that only the tracking server can hand out."""

            def __init__(self, uri: str) -> None:
                self.uri = uri

            @staticmethod
            def _get_source_type() -> str:
                return "mlflow_artifact"

            def load(self, dst_path: str | None = None) -> str:
                from mlflow.artifacts import download_artifacts

                return str(download_artifacts(artifact_uri=self.uri, dst_path=dst_path))

            @staticmethod
            def _can_resolve(raw_source: Any) -> bool:
                return False

            @classmethod
            def _resolve(cls, raw_source: Any) -> MlflowArtifactDatasetSource:
                return cls(str(raw_source))

            def to_dict(self) -> dict[Any, Any]:
                return {"uri": self.uri}

            @classmethod
            def from_dict(cls, source_dict: dict[Any, Any]) -> MlflowArtifactDatasetSource:
                return cls(str(source_dict["uri"]))

        _ARTIFACT_SOURCE = MlflowArtifactDatasetSource
    return _ARTIFACT_SOURCE


# ----------------------------------------------------------------------------------------- reading


def context_of(dataset_input: DatasetInput) -> str | None:
    return next((t.value for t in dataset_input.tags or [] if t.key == CONTEXT_TAG), None)


def source_uri(dataset: DatasetEntity) -> str | None:
    """The location a logged dataset's source names (`uri`, `url` or `path` of its source JSON), if any."""
    try:
        source = json.loads(dataset.source or "null")
    except ValueError:
        return None
    if isinstance(source, str):
        return source or None
    if isinstance(source, dict):
        for key in ("uri", "url", "path"):
            if isinstance(source.get(key), str) and source[key]:
                return str(source[key])
    return None


def load_rows(dataset: DatasetEntity, *, tracking_uri: str, attempts: int = 3) -> Any:
    """The rows of a logged dataset, read from its source, as a pandas frame. Raises `WindowFileError` (a
    source with no file: a code or table source, or an unreadable file) or `ToolError` (a download that
    failed)."""
    uri = source_uri(dataset)
    what = f"dataset {dataset.name!r} (digest {dataset.digest}, source type {dataset.source_type})"
    if uri is None:
        raise WindowFileError(f"{what}: its source names no file to read rows from")
    parsed = urllib.parse.urlparse(uri)
    if parsed.scheme in ("", "file") or (len(parsed.scheme) == 1 and uri[1:3] in (":\\", ":/")):
        local = Path(urllib.request.url2pathname(parsed.path) if parsed.scheme == "file" else uri)
        return _read(local, what)
    mlflow = import_mlflow()
    with tempfile.TemporaryDirectory(prefix="opsmedic-window-") as tmp:
        if parsed.scheme in ("http", "https"):
            import mlflow.data

            got = call(lambda: mlflow.data.get_source(dataset).load(dst_path=tmp), attempts=attempts,
                       what=f"download {uri}")
        else:
            import mlflow.artifacts

            got = call(mlflow.artifacts.download_artifacts, artifact_uri=uri, dst_path=tmp,
                       tracking_uri=tracking_uri, attempts=attempts, what=f"download {uri}")
        return _read(Path(str(got)), what)


def _read(path: Path, what: str) -> Any:
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in WINDOW_SUFFIXES)
        if len(files) != 1:
            raise WindowFileError(f"{what}: {path} holds {len(files)} .parquet/.csv files, not one")
        path = files[0]
    if not path.is_file():
        raise WindowFileError(f"{what}: {path} does not exist")
    if path.suffix not in WINDOW_SUFFIXES:
        raise WindowFileError(f"{what}: {path} is neither Parquet nor CSV")
    return read_window(path)


# ------------------------------------------------------------------------------------------ source


@dataclass(frozen=True)
class _Logged:
    """A dataset input of a run: what to load and what keys it."""

    run_id: str
    dataset: Any  # mlflow.entities.Dataset

    @property
    def key(self) -> str:
        return f"{self.run_id}:{self.dataset.digest}"


@dataclass(frozen=True)
class _Lookup:
    version: int | None
    reference: _Logged | None
    reference_why: str  # why there is no reference (when there is none)
    current: _Logged | None


class MlflowRunWindowSource:
    """Reference windows from the serving version's MLflow run, current windows from MLflow or files.

    `registry` is a `tools.mlflow_backend.MlflowModelBackend` (its client, alias and model-name prefix).
    `files`: the `DirectoryWindowSource` of current windows (and, with `fallback_reference`, of reference
    windows a run does not supply). `clock`: monotonic seconds, for `refresh_s`.
    """

    def __init__(self, registry: Any, *, files: DirectoryWindowSource | None = None,
                 fallback_reference: bool = True, refresh_s: float = 30.0, attempts: int = 2,
                 cache_frames: int = 16, clock: Callable[[], float] = time.monotonic) -> None:
        self.registry = registry
        self.files = files
        self.fallback_reference = fallback_reference
        self.refresh_s = refresh_s
        self.attempts = attempts
        self.clock = clock
        self.errors: dict[str, str] = {}  # model -> why its windows were skipped at the last look
        self.notes: dict[str, str] = {}  # model -> where its windows came from, when not all from MLflow
        self._lookups: dict[str, tuple[float, _Lookup]] = {}
        self._frames: OrderedDict[str, Any] = OrderedDict()  # run:digest -> rows
        self._cache_frames = cache_frames
        self._retry: dict[str, tuple[float, int]] = {}  # model -> (not before, attempt) after a failed load
        self._lock = threading.Lock()
        self.loads = 0  # datasets read from their source (not from the frame cache)

    # ------------------------------------------------------------------------------------ lookups

    def _c(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return call(fn, *args, attempts=self.attempts, **kwargs)

    def lookup(self, model: str) -> _Lookup:
        """The serving version of `model` and the datasets its windows come from (cached `refresh_s`)."""
        now = self.clock()
        cached = self._lookups.get(model)
        if cached is not None and now - cached[0] < self.refresh_s:
            return cached[1]
        found = self._lookup(model)
        self._lookups[model] = (now, found)
        return found

    def _lookup(self, model: str) -> _Lookup:
        client = self.registry.client
        alias = self.registry.alias
        try:
            name = self.registry.registered_name(model)
            mv = self._c(client.get_model_version_by_alias, name, alias, what="get serving version")
        except ToolError as exc:
            return _Lookup(None, None, f"no version behind alias {alias!r} in MLflow ({exc})", None)
        version = int(mv.version)
        if not mv.run_id:
            return _Lookup(version, None, f"{name} version {version} has no source run", None)
        try:
            run = self._c(client.get_run, mv.run_id, what="get run")
        except ToolError as exc:
            return _Lookup(version, None, f"{name} version {version}: run {mv.run_id}: {exc}", None)
        inputs = list(run.inputs.dataset_inputs or []) if run.inputs is not None else []
        training = [di for di in inputs if context_of(di) == TRAINING]
        reference = _Logged(mv.run_id, training[-1].dataset) if training else None
        why = "" if training else (f"{name} version {version}: run {mv.run_id} logged no dataset with "
                                   f"context {TRAINING!r}")
        return _Lookup(version, reference, why, self._current(model, run, inputs))

    def _current(self, model: str, run: Any, inputs: list[Any]) -> _Logged | None:
        contexts = ", ".join(f"'{c}'" for c in CURRENT_CONTEXTS)
        escaped = model.replace("'", "\\'")
        try:
            runs = self._c(self.registry.client.search_runs, [str(run.info.experiment_id)],
                           filter_string=f"tags.`{MODEL_TAG}` = '{escaped}' and dataset.context IN ({contexts})",
                           order_by=["attributes.start_time DESC"], max_results=1, what="search serving runs")
        except ToolError as exc:
            log.debug("no serving runs searched", extra={"model": model, "error": str(exc)})
            runs = []
        for candidate, candidate_inputs in [(r, list(r.inputs.dataset_inputs or [])) for r in runs] + [(run, inputs)]:
            current = [di for di in candidate_inputs if context_of(di) in CURRENT_CONTEXTS]
            if current:
                return _Logged(str(candidate.info.run_id), current[-1].dataset)
        return None

    # ------------------------------------------------------------------------------------ windows

    def windows(self, models: Sequence[str]) -> list[FeatureWindow]:
        out = []
        for name in models:
            try:
                w = self._window(name)
            except Exception as exc:  # noqa: BLE001 - one model's surprise never costs the others theirs
                self._error(name, f"{type(exc).__name__}: {exc}")
                continue
            if w is not None:
                out.append(w)
        return out

    def _window(self, model: str) -> FeatureWindow | None:
        retry = self._retry.get(model)
        if retry is not None and self.clock() < retry[0]:
            return None  # a load failed: the last scores stand until the retry
        found = self.lookup(model)
        notes: list[str] = []
        if found.reference is not None:
            ref_key = f"mlflow:v{found.version}:{found.reference.key}"
            ref_load: Callable[[], Frame] = self._dataset_loader(found.reference)
        else:
            ref_file = self._file(model, "reference") if self.fallback_reference else None
            if not isinstance(ref_file, tuple):
                why = f"no reference window: {found.reference_why}"
                if self.fallback_reference:
                    why += f"; files: {ref_file}"
                self._error(model, why)
                return None
            ref_key, ref_load = self._file_key(ref_file), self._file_loader(ref_file[0])
            notes.append(f"reference from {ref_file[0]} ({found.reference_why})")
        if found.current is not None:
            cur_key = f"mlflow:{found.current.key}"
            cur_load: Callable[[], Frame] = self._dataset_loader(found.current)
        else:
            cur_file = self._file(model, "current")
            if not isinstance(cur_file, tuple):
                self._error(model, f"no current window: no MLflow run of {model} logged a dataset with context "
                                   f"{' or '.join(CURRENT_CONTEXTS)}; files: {cur_file}")
                return None
            cur_key, cur_load = self._file_key(cur_file), self._file_loader(cur_file[0])
        if self.errors.pop(model, None) is not None:
            log.info("drift windows usable again", extra={"model": model})
        self._note(model, "; ".join(notes))
        attempt = retry[1] if retry is not None else 0
        key = f"{ref_key}|{cur_key}" + (f"#retry{attempt}" if attempt else "")
        return FeatureWindow(model, key, self._loader(model, ref_load, cur_load))

    def _file(self, model: str, stem: str) -> tuple[Path, tuple[int, int]] | str:
        if self.files is None:
            return "no drift-windows directory is configured"
        return self.files.window_file(model, stem)

    @staticmethod
    def _file_key(found: tuple[Path, tuple[int, int]]) -> str:
        return f"file:{found[0]}:{found[1]}"

    @staticmethod
    def _file_loader(path: Path) -> Callable[[], Frame]:
        return lambda: read_window(path)

    def _dataset_loader(self, logged: _Logged) -> Callable[[], Frame]:
        def load() -> Frame:
            with self._lock:
                frame = self._frames.get(logged.key)
                if frame is not None:
                    self._frames.move_to_end(logged.key)
                    return frame
            frame = load_rows(logged.dataset, tracking_uri=self.registry.tracking_uri, attempts=self.attempts)
            with self._lock:
                self.loads += 1
                self._frames[logged.key] = frame
                while len(self._frames) > self._cache_frames:
                    self._frames.popitem(last=False)
            return frame

        return load

    def _loader(self, model: str, ref: Callable[[], Frame],
                cur: Callable[[], Frame]) -> Callable[[], tuple[Frame, Frame]]:
        def load() -> tuple[Frame, Frame]:
            try:
                out = ref(), cur()
            except Exception as exc:
                attempt = self._retry.get(model, (0.0, 0))[1] + 1
                self._retry[model] = (self.clock() + self.refresh_s, attempt)
                self._lookups.pop(model, None)  # look again too: the version may have moved meanwhile
                self._error(model, f"windows unreadable: {exc}")
                raise
            return out

        return load

    def _error(self, model: str, why: str) -> None:
        if self.errors.get(model) != why:  # said once, not every tick
            log.warning("drift windows skipped", extra={"model": model, "error": why[:500]})
        self.errors[model] = why

    def _note(self, model: str, note: str) -> None:
        if not note:
            self.notes.pop(model, None)
            return
        if self.notes.get(model) != note:
            log.info("drift windows partly from files", extra={"model": model, "note": note[:500]})
        self.notes[model] = note
