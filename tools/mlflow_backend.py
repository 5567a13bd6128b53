"""The MLflow action backend: `rollback_model`, `retrain_model` and `promote_model` on a real MLflow registry.

Layer: tools (adapters); implements the model half of `tools.backend.ActionBackend`. Imports
`core.domain`, `core.errors`, `core.actions`, `tools.mlflow_store` and (lazily)
`tools.mlflow_training`, `sandbox.model_data`, MLflow and scikit-learn, so importing this module is cheap
and `opsmedic --help` never loads MLflow.

What the registry holds, and what each action does:

- *Serving* is a registered-model alias (default `champion`): the version it points at is the one served.
- `rollback_model` moves the alias to `to_version`, or to the previous good version (the one that served
  before the current one, else the newest older version that was never rolled back from). The version
  rolled away from is tagged `opsmedic.rolled_back` with the reason; the model is tagged with the previous
  alias holder (`opsmedic.previous_serving`) and the last rollback.
- `retrain_model` trains a real scikit-learn model (`tools.mlflow_training`) on the model's recent data
  (`sandbox.model_data.current` with the model's data seed and current drift, both kept as registered-model
  tags), logs an MLflow run with params, metrics (held-out accuracy of the new model and of the serving
  version on the same held-out rows) and the model (MLflow `sklearn` flavour, explicit pip requirements),
  and registers it as a new version that is NOT served.
- `promote_model` moves the alias to the candidate (`version`, else the newest) only if it beats the serving
  version on the held-out set by `min_margin`; otherwise it keeps serving the old version and answers
  ok=False with a detail that tells the remediator to escalate.

Each action is one entry of `HANDLERS` (its dry-run plan, its execution and its check, per catalogue action;
the rest are `Unsupported`). Idempotency: a result is remembered per idempotency key in memory and as a
registered-model tag (`opsmedic.action.<digest>`), so that a re-run after a crash or a graph resume is a no-op
returning the first result; a retrain is also found by its key on the version it registered. Transient
failures are not remembered, so a retry with the same key tries again.

Models are logged through `MlflowClient` (run, LoggedModel, artifacts, version) rather than the fluent
`mlflow.sklearn.log_model`, which needs MLflow's process-global tracking URI and active run: the backend
holds no global state, so several backends (one per scenario) can share a process, and a user's
`MLFLOW_TRACKING_URI` is never touched. The artifacts are the same `sklearn` flavour `log_model` writes.
"""

from __future__ import annotations

import hashlib
import json
import re
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core.actions import PromoteParams, RollbackParams, Unsupported, handler_table, supported, validate_action
from core.domain import Action, ActionResult, VerificationResult
from core.errors import PermanentToolError, ToolError, TransientToolError
from tools.mlflow_store import DEFAULT_ATTEMPTS, call, import_mlflow, prepare_sqlite_store, sqlite_path

if TYPE_CHECKING:
    from mlflow.entities.model_registry import ModelVersion, RegisteredModel

    from sandbox.model_data import Dataset
    from sandbox.scenario import Scenario

DEFAULT_ALIAS = "champion"
DEFAULT_EXPERIMENT = "opsmedic-models"

# Tags (all under one prefix so that a person browsing the registry can tell opsmedic's from theirs).
T_MODEL = "opsmedic.model"  # registered model: the opsmedic target name
T_SEED = "opsmedic.data.seed"  # registered model: seed of its synthetic data
T_DRIFT = "opsmedic.data.drift"  # registered model: JSON {feature: psi} of its current traffic
T_PREVIOUS = "opsmedic.previous_serving"  # registered model: the alias holder before the last move
T_LAST_ROLLBACK = "opsmedic.last_rollback"  # registered model: JSON {from, to, key}
T_ACTION = "opsmedic.action."  # registered model: + digest of an idempotency key -> JSON result
T_ORIGIN = "opsmedic.origin"  # version: bootstrap | bad_deploy | retrain
T_KEY = "opsmedic.idempotency_key"  # version (and run): the action that created it
T_ACCURACY = "opsmedic.heldout_accuracy"  # version: accuracy on the held-out set when it was registered
T_SERVED = "opsmedic.served_reason"  # version: why the alias last moved to it
T_ROLLED_BACK = "opsmedic.rolled_back"  # version: why serving was rolled back away from it
T_ROLLBACK_FROM = "opsmedic.rollback_from"  # version: the version a rollback came from
T_PROMOTION = "opsmedic.promotion"  # version: promoted / refused, with the numbers
T_LATENCY = "opsmedic.latency_p95_ms"  # version: declared serving latency (the simulator owns latency)
T_LOGGED_MODEL = "opsmedic.logged_model_id"  # version: its MLflow LoggedModel (see `_log_version`)

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,250}$")
HELDOUT_WINDOW = 999  # the fixed held-out window of a model's traffic (same rows for retrain and promote)
RECENT_WINDOW = 1000  # + number of versions: every retrain sees a fresh day of data


@dataclass(frozen=True)
class ModelSpec:
    """A model to create in the registry: versions 1..current_version exist, current_version is served."""

    name: str
    current_version: int = 1


def specs_from_scenario(scenario: Scenario) -> list[ModelSpec]:
    """The registered models a scenario names (SCENARIOS.md: versions 1..current exist, current serves)."""
    return [ModelSpec(name, w.current_version or 1) for w in scenario.workloads if (name := w.model_name)]


class MlflowModelBackend:
    """Model actions on an MLflow tracking server and model registry (SQLite by default).

    `tracking_uri` is e.g. `sqlite:///path/mlflow.db` (created, migrated from a cached template, with
    artifacts in `<db folder>/mlartifacts` unless `artifact_root` says otherwise) or `http://host:5000`.
    `name_prefix` namespaces registered-model names (e.g. one prefix per scenario in a shared store);
    action targets and this class's methods use the un-prefixed opsmedic model name. `clock` stamps
    results (pass the simulator's clock in the sandbox).
    """

    def __init__(
        self,
        tracking_uri: str,
        registry_uri: str | None = None,
        *,
        alias: str = DEFAULT_ALIAS,
        name_prefix: str = "",
        experiment: str = DEFAULT_EXPERIMENT,
        artifact_root: str | Path | None = None,
        clock: Callable[[], float] = time.time,
        attempts: int = DEFAULT_ATTEMPTS,
        n_recent: int = 4000,
        n_heldout: int = 4000,
        n_bootstrap: int = 2000,
        cache_dir: str | Path | None = None,
    ) -> None:
        self._mlflow = import_mlflow()
        db = sqlite_path(tracking_uri)
        if db is not None:
            tracking_uri = prepare_sqlite_store(db, cache_dir=cache_dir)
            if artifact_root is None:
                artifact_root = db.parent / "mlartifacts"
        if registry_uri is None:
            registry_uri = tracking_uri
        elif (reg_db := sqlite_path(registry_uri)) is not None:
            registry_uri = prepare_sqlite_store(reg_db, cache_dir=cache_dir)
        self.tracking_uri = tracking_uri
        self.registry_uri = registry_uri
        self.alias = alias
        self.name_prefix = name_prefix
        self.experiment = experiment
        self.artifact_root = (
            Path(artifact_root).expanduser().resolve().as_uri()
            if artifact_root is not None and "://" not in str(artifact_root) else artifact_root
        )
        self.clock = clock
        self.attempts = attempts
        self.n_recent = n_recent
        self.n_heldout = n_heldout
        self.n_bootstrap = n_bootstrap
        # Opening the client opens the store (and checks its schema), so it can fail like any call.
        self.client = call(self._mlflow.MlflowClient, tracking_uri=tracking_uri, registry_uri=registry_uri,
                           attempts=attempts, what="open MLflow store")
        self._experiment_id: str | None = None
        self._done: dict[str, ActionResult] = {}
        self._loaded: dict[tuple[str, int], Any] = {}  # versions are immutable, so loads are cached
        self._lock = threading.RLock()

    # ------------------------------------------------------------------------------------- plumbing

    def _c(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return call(fn, *args, attempts=self.attempts, **kwargs)

    def registered_name(self, target: str) -> str:
        name = f"{self.name_prefix}{target}"
        if not _NAME.match(name):
            raise PermanentToolError(f"{target!r} is not a valid model name (letters, digits, '.', '_', '-')")
        return name

    def _experiment(self) -> str:
        if self._experiment_id is None:
            exp = self._c(self.client.get_experiment_by_name, self.experiment)
            if exp is None:
                try:
                    self._experiment_id = str(self._c(
                        self.client.create_experiment, self.experiment, artifact_location=self.artifact_root))
                except PermanentToolError:  # created by a concurrent backend in the meantime
                    exp = self._c(self.client.get_experiment_by_name, self.experiment)
                    if exp is None:
                        raise
                    self._experiment_id = str(exp.experiment_id)
            else:
                self._experiment_id = str(exp.experiment_id)
        return self._experiment_id

    def _registered(self, target: str) -> RegisteredModel:
        name = self.registered_name(target)
        try:
            reg: RegisteredModel = self._c(self.client.get_registered_model, name)
        except PermanentToolError as exc:
            raise PermanentToolError(f"{target} is not a registered model in MLflow ({name}): {exc}") from exc
        return reg

    def _versions(self, name: str) -> list[ModelVersion]:
        found: list[ModelVersion] = self._c(self.client.search_model_versions, f"name = '{name}'")
        return sorted(found, key=lambda mv: int(mv.version))

    @staticmethod
    def _serving_of(reg: RegisteredModel, alias: str) -> int | None:
        version = (reg.aliases or {}).get(alias)
        return int(version) if version is not None else None

    def _data(self, reg: RegisteredModel) -> tuple[int, dict[str, float]]:
        tags = reg.tags or {}
        if T_SEED not in tags:
            raise PermanentToolError(
                f"{reg.name} has no {T_SEED} tag: opsmedic did not create it, so it has no data to train on")
        return int(tags[T_SEED]), {k: float(v) for k, v in json.loads(tags.get(T_DRIFT) or "{}").items()}

    def _heldout(self, seed: int, drift: Mapping[str, float]) -> Dataset:
        from sandbox import model_data

        return model_data.current(seed, self.n_heldout, drift, window=HELDOUT_WINDOW)

    def _load(self, name: str, version: int) -> Any:
        key = (name, version)
        if key not in self._loaded:
            import mlflow.artifacts
            import mlflow.sklearn

            # Resolved through this client: `models:/name/version` would be resolved through MLflow's
            # process-global registry URI instead.
            source = str(self._c(self.client.get_model_version_download_uri, name, str(version)))
            if source.startswith("file://"):  # a local store: read in place, no copy
                local = urllib.request.url2pathname(urllib.parse.urlparse(source).path)
                self._loaded[key] = self._c(mlflow.sklearn.load_model, local)
            else:
                with tempfile.TemporaryDirectory(prefix="opsmedic-model-") as tmp:
                    path = self._c(mlflow.artifacts.download_artifacts, artifact_uri=source, dst_path=tmp,
                                   tracking_uri=self.tracking_uri)
                    self._loaded[key] = self._c(mlflow.sklearn.load_model, path)
        return self._loaded[key]

    def _serve(self, name: str, version: int, reason: str, previous: int | None) -> None:
        """Point the serving alias at `version`, recording why and who held it before."""
        self._c(self.client.set_registered_model_alias, name, self.alias, str(version))
        if previous is not None and previous != version:
            self._c(self.client.set_registered_model_tag, name, T_PREVIOUS, str(previous))
        self._c(self.client.set_model_version_tag, name, str(version), T_SERVED, reason)

    def _log_version(self, name: str, model: Any, *, run_name: str, params: Mapping[str, str],
                     metrics: Mapping[str, float], tags: Mapping[str, str], description: str,
                     run_id: str | None = None, train: Dataset | None = None) -> int:
        """One MLflow run with params and metrics, the model logged in it, and a new registered version.
        `run_id`: an existing run to log into (a retraining Job's, created by whoever launched it).
        `train`: the rows the model was fitted on, logged as the run's `training` dataset (the reference
        window of the version's drift and validation, `tools.mlflow_windows`).

        The same steps as `mlflow.sklearn.log_model` + `register_model`, through this backend's client."""
        import mlflow.sklearn
        from mlflow.entities import LoggedModelOutput, Metric, Param
        from mlflow.models import Model

        from tools import mlflow_training

        exp = self._experiment()
        if run_id is None:
            run = self._c(self.client.create_run, exp, run_name=run_name, tags=dict(tags))
            run_id = run.info.run_id
        else:
            run = self._c(self.client.get_run, run_id)
            exp = str(run.info.experiment_id)
            for k, v in tags.items():
                self._c(self.client.set_tag, run_id, k, v)
        try:
            logged = self._c(self.client.create_logged_model, exp, name="model", source_run_id=run_id,
                             params=mlflow_training.params(), tags=dict(tags), model_type="sklearn")
            now_ms = int(time.time() * 1000)
            self._c(self.client.log_batch, run_id,
                    metrics=[Metric(k, float(v), now_ms, 0, model_id=logged.model_id, run_id=run_id)
                             for k, v in metrics.items()],
                    params=[Param(k, str(v)) for k, v in params.items()])
            with tempfile.TemporaryDirectory(prefix="opsmedic-model-") as tmp:
                local = str(Path(tmp) / "model")
                meta = Model(artifact_path=logged.artifact_location, model_uuid=logged.model_id,
                             run_id=run_id, model_id=logged.model_id)
                # Explicit pip requirements: inferring them imports and inspects the environment (seconds).
                self._c(mlflow.sklearn.save_model, model, local, mlflow_model=meta,
                        pip_requirements=mlflow_training.pip_requirements())
                self._c(self.client.log_model_artifacts, logged.model_id, local)
            if train is not None:
                from tools.mlflow_windows import log_dataset

                log_dataset(self.client, run_id, mlflow_training.frame(train), name=f"{name}-training",
                            targets=mlflow_training.LABEL, artifact_uri=str(run.info.artifact_uri),
                            attempts=self.attempts)
            self._c(self.client.finalize_logged_model, logged.model_id, "READY")
            self._c(self.client.log_outputs, run_id, [LoggedModelOutput(logged.model_id, step=0)])
            self._c(self.client.set_terminated, run_id, "FINISHED")
        except ToolError:
            try:
                self.client.set_terminated(run_id, "FAILED")
            except Exception:  # best effort: the original error is the one to report
                pass
            raise
        # The source is the logged model's storage location, not `models:/<id>`: MLflow's SQL registry
        # resolves a `models:/` source through the process-global tracking URI (its own TODO says so).
        # It then keeps no model id either, so the version names its LoggedModel in a tag.
        mv = self._c(self.client.create_model_version, name, logged.artifact_location, run_id=run_id,
                     tags={**tags, T_LOGGED_MODEL: logged.model_id}, description=description,
                     model_id=logged.model_id)
        return int(mv.version)

    # ------------------------------------------------------------------------------------ read side

    def serving_version(self, target: str) -> int | None:
        return self._serving_of(self._registered(target), self.alias)

    def versions(self, target: str) -> list[int]:
        return [int(mv.version) for mv in self._versions(self.registered_name(target))]

    def version_tags(self, target: str, version: int) -> dict[str, str]:
        mv = self._c(self.client.get_model_version, self.registered_name(target), str(version))
        return dict(mv.tags or {})

    def model_tags(self, target: str) -> dict[str, str]:
        return dict(self._registered(target).tags or {})

    def heldout_accuracy(self, target: str, version: int | None = None) -> float:
        """Accuracy of `version` (default: the serving one) on the model's current held-out traffic."""
        from tools import mlflow_training

        reg = self._registered(target)
        v = version if version is not None else self._serving_of(reg, self.alias)
        if v is None:
            raise PermanentToolError(f"{target} has no version behind alias {self.alias!r}")
        seed, drift = self._data(reg)
        return mlflow_training.accuracy(self._load(reg.name, v), self._heldout(seed, drift))

    # ----------------------------------------------------------------------------- sandbox set-up

    def bootstrap(self, models: Iterable[ModelSpec | tuple[str, int]], seed: int) -> dict[str, int]:
        """Create each registered model with versions 1..current (small real models trained on reference
        data) and point the alias at `current`. Re-running it adds only missing versions and leaves an
        existing alias alone. Returns {model: serving version}."""
        from sandbox import model_data
        from tools import mlflow_training

        out: dict[str, int] = {}
        with self._lock:
            for spec in models:
                target, current = (spec.name, spec.current_version) if isinstance(spec, ModelSpec) else spec
                if current < 1:
                    raise PermanentToolError(f"{target}: current_version must be at least 1")
                name = self.registered_name(target)
                dseed = model_data.data_seed(seed, target)
                try:
                    reg = self._c(self.client.get_registered_model, name)
                    if T_SEED not in (reg.tags or {}):  # adopted: give it data to retrain on
                        for key, value in {T_MODEL: target, T_SEED: str(dseed), T_DRIFT: "{}"}.items():
                            self._c(self.client.set_registered_model_tag, name, key, value)
                except PermanentToolError:
                    reg = self._c(self.client.create_registered_model, name,
                                  tags={T_MODEL: target, T_SEED: str(dseed), T_DRIFT: "{}"},
                                  description=f"opsmedic model {target}; serving: alias {self.alias!r}")
                have = len(self._versions(name))
                heldout = model_data.reference(dseed, self.n_heldout, window=HELDOUT_WINDOW)
                for v in range(have + 1, current + 1):
                    train = model_data.reference(dseed, self.n_bootstrap, window=v)
                    model = mlflow_training.fit(train, dseed)
                    acc = mlflow_training.accuracy(model, heldout)
                    got = self._log_version(
                        name, model, run_name=f"bootstrap-{target}-v{v}",
                        params={"origin": "bootstrap", "n_train": str(len(train)), "data_seed": str(dseed),
                                "data_window": str(v)},
                        metrics={"heldout_accuracy": acc},
                        tags={T_ORIGIN: "bootstrap", T_MODEL: target, T_ACCURACY: f"{acc:.4f}"},
                        description=f"bootstrap version {v} trained on reference data", train=train,
                    )
                    if got != v:
                        raise PermanentToolError(f"{name}: expected version {v}, MLflow registered {got}")
                serving = self._serving_of(reg, self.alias)
                if serving is None:
                    self._serve(name, current, "bootstrap", None)
                    serving = current
                out[target] = serving
        return out

    def bootstrap_scenario(self, scenario: Scenario) -> dict[str, int]:
        return self.bootstrap(specs_from_scenario(scenario), scenario.seed)

    def set_drift(self, target: str, drift: Mapping[str, float]) -> None:
        """Record the model's live drift ({feature: PSI}); retraining and evaluation use it."""
        from sandbox import model_data

        for feature, value in drift.items():
            if feature == model_data.CONCEPT_KEY and 0 <= value <= 1:  # concept-drift progress, not a feature
                continue
            if feature not in model_data.FEATURES:
                raise PermanentToolError(f"unknown feature {feature!r}; one of {model_data.FEATURES}")
            if value < 0:
                raise PermanentToolError(f"{feature}: a PSI cannot be negative")
        name = self.registered_name(target)
        payload = json.dumps({k: float(v) for k, v in sorted(drift.items())})
        self._c(self.client.set_registered_model_tag, name, T_DRIFT, payload)

    def serve(self, target: str, version: int, reason: str) -> None:
        """Point the serving alias at `version` (a canary that completed its rollout)."""
        with self._lock:
            reg = self._registered(target)
            self._serve(reg.name, version, reason, self._serving_of(reg, self.alias))

    def tag_version(self, target: str, version: int, key: str, value: str) -> None:
        """Set one tag on a registered version (e.g. `opsmedic.aborted` on an aborted canary)."""
        name = self.registered_name(target)
        self._c(self.client.set_model_version_tag, name, str(version), key, value)

    def register_bad_version(self, target: str, version: int | None = None, accuracy: float | None = None,
                             latency_p95_ms: float | None = None, *, serve: bool = True) -> int:
        """The `model_bad_deploy` fault: register a real but worse model (trained on mislabelled data, tuned
        to about `accuracy` on held-out data) and, by default, serve it. Returns its version."""
        from tools import mlflow_training

        with self._lock:
            reg = self._registered(target)
            name = reg.name
            have = [int(mv.version) for mv in self._versions(name)]
            nxt = max(have, default=0) + 1
            if version is not None and version != nxt:
                raise PermanentToolError(
                    f"{target}: cannot register version {version}; MLflow numbers versions itself and the "
                    f"next one is {nxt}")
            seed, drift = self._data(reg)
            heldout = self._heldout(seed, drift)
            if accuracy is None:
                train = self._recent(seed, drift, nxt)
                model = mlflow_training.fit(train, seed)
                acc, fraction = mlflow_training.accuracy(model, heldout), 0.0
            else:
                bad = mlflow_training.fit_degraded(seed, accuracy, heldout)
                model, acc, fraction, train = bad.model, bad.accuracy, bad.fraction, bad.train
            tags = {T_ORIGIN: "bad_deploy", T_MODEL: target, T_ACCURACY: f"{acc:.4f}"}
            if latency_p95_ms is not None:
                tags[T_LATENCY] = f"{latency_p95_ms:g}"
            metrics = {"heldout_accuracy": acc}
            if accuracy is not None:
                metrics["target_accuracy"] = accuracy
            v = self._log_version(
                name, model, run_name=f"deploy-{target}-v{nxt}",
                params={"origin": "bad_deploy", "mislabelled_fraction": f"{fraction:.4f}",
                        "data_seed": str(seed)},
                metrics=metrics, tags=tags, description=f"version {nxt}: a deploy with a labelling bug",
                train=train,
            )
            if serve:
                previous = self._serving_of(reg, self.alias)
                self._serve(name, v, f"deploy of version {v}", previous)
            return v

    def _recent(self, seed: int, drift: Mapping[str, float], n_versions: int) -> Dataset:
        from sandbox import model_data

        return model_data.current(seed, self.n_recent, drift, window=RECENT_WINDOW + n_versions)

    # ------------------------------------------------------------------------------------- actions

    def execute(self, action: Action, *, idempotency_key: str, dry_run: bool = False) -> ActionResult:
        handler = HANDLERS[action.name]
        if isinstance(handler, Unsupported):
            raise PermanentToolError(f"{action.key}: {handler.reason}")
        validate_action(action)
        with self._lock:
            if idempotency_key in self._done:
                return _again(self._done[idempotency_key])
            try:
                reg = self._registered(action.target)
                first = _recall(reg, idempotency_key)
                if first is not None:
                    self._done[idempotency_key] = first
                    return _again(first)
                if dry_run:
                    plan = handler.plan(self, action, reg, self._serving_of(reg, self.alias))
                    return self._result(action, idempotency_key, True, False, plan, dry_run=True)
                ok, changed, detail = handler.do(self, action, reg, idempotency_key)
                result = self._result(action, idempotency_key, ok, changed, detail)
                self._remember(reg.name, idempotency_key, result)
            except TransientToolError as exc:  # not remembered: the same key may try again
                return self._result(action, idempotency_key, False, False, f"{exc} (transient; retry)",
                                    dry_run=dry_run)
            except PermanentToolError as exc:
                result = self._result(action, idempotency_key, False, False, str(exc), dry_run=dry_run)
                if dry_run:  # a dry run never stands in for the real action under the same key
                    return result
            self._done[idempotency_key] = result
            return result

    def _result(self, action: Action, key: str, ok: bool, changed: bool, detail: str, *,
                dry_run: bool = False) -> ActionResult:
        return ActionResult(action=action, ok=ok, changed=changed, detail=detail, idempotency_key=key,
                            at_s=self.clock(), dry_run=dry_run)

    def _remember(self, name: str, key: str, result: ActionResult) -> None:
        record = json.dumps({"action": result.action.model_dump(mode="json"), "ok": result.ok,
                             "changed": result.changed, "detail": result.detail[:2000], "at_s": result.at_s})
        try:
            self._c(self.client.set_registered_model_tag, name, _action_tag(key), record)
        except ToolError:  # the action itself succeeded; the in-memory record still guards this process
            pass

    # what a dry run says it would do, per action

    def _plan_rollback(self, action: Action, reg: RegisteredModel, serving: int | None) -> str:
        to = self._rollback_target(reg, action.params_as(RollbackParams), serving)
        return f"dry run: would move alias {self.alias!r} of {action.target} from version {serving} to version {to}"

    def _plan_retrain(self, action: Action, reg: RegisteredModel, serving: int | None) -> str:
        seed, drift = self._data(reg)
        return (f"dry run: would train a new version of {action.target} on {self.n_recent} recent rows "
                f"(drift {drift or 'none'}) and register it without serving it")

    def _plan_promote(self, action: Action, reg: RegisteredModel, serving: int | None) -> str:
        p = action.params_as(PromoteParams)
        cand = p.version or max((int(mv.version) for mv in self._versions(reg.name)), default=None)
        return (f"dry run: would serve version {cand} of {action.target} instead of version {serving} if it "
                f"beats it by {p.min_margin} held-out accuracy")

    def _rollback_target(self, reg: RegisteredModel, params: RollbackParams, serving: int | None) -> int:
        versions = {int(mv.version): mv for mv in self._versions(reg.name)}
        if params.to_version is not None:
            if params.to_version not in versions:
                raise PermanentToolError(f"{reg.name} has no version {params.to_version}")
            return params.to_version

        def good(v: int) -> bool:
            return v in versions and v != serving and T_ROLLED_BACK not in (versions[v].tags or {})

        prev = (reg.tags or {}).get(T_PREVIOUS)
        if prev is not None and good(int(prev)):
            return int(prev)
        older = [v for v in sorted(versions, reverse=True) if (serving is None or v < serving) and good(v)]
        if not older:
            raise PermanentToolError(f"{reg.name} has no previous good version to roll back to")
        return older[0]

    def _rollback(self, action: Action, reg: RegisteredModel, key: str) -> tuple[bool, bool, str]:
        params = action.params_as(RollbackParams)
        serving = self._serving_of(reg, self.alias)
        to = self._rollback_target(reg, params, serving)
        t = action.target
        if to == serving:
            return True, False, f"{t} already serves version {to}"
        reason = f"rollback_model from version {serving} to {to} (idempotency key {key})"
        self._serve(reg.name, to, reason, serving)
        if serving is not None:
            self._c(self.client.set_model_version_tag, reg.name, str(serving), T_ROLLED_BACK, reason)
            self._c(self.client.set_model_version_tag, reg.name, str(to), T_ROLLBACK_FROM, str(serving))
        self._c(self.client.set_registered_model_tag, reg.name, T_LAST_ROLLBACK,
                json.dumps({"from": serving, "to": to, "key": key}))
        return True, True, f"{t} rolled back from version {serving} to {to} (alias {self.alias!r})"

    def _retrain(self, action: Action, reg: RegisteredModel, key: str) -> tuple[bool, bool, str]:
        return self.train_version(action.target, key=key, reg=reg)

    def version_for_key(self, target: str, key: str) -> tuple[int, str, str] | None:
        """(version, status, held-out accuracy tag) of the version an action (idempotency key) registered."""
        for mv in self._versions(self.registered_name(target)):
            if (mv.tags or {}).get(T_KEY) == key:
                return int(mv.version), str(mv.status), str((mv.tags or {}).get(T_ACCURACY))
        return None

    def new_run(self, target: str, *, key: str, run_name: str) -> str:
        """An MLflow run for a training that runs elsewhere (a Kubernetes Job); returns its id."""
        run = self._c(self.client.create_run, self._experiment(), run_name=run_name,
                      tags={T_MODEL: target, T_KEY: key, T_ORIGIN: "retrain"})
        return str(run.info.run_id)

    def train_version(self, target: str, *, key: str, run_id: str | None = None,
                      reg: RegisteredModel | None = None) -> tuple[bool, bool, str]:
        """Fit a new version on the model's recent data, evaluate it on the held-out set and register it
        (not served). Used in process by `retrain_model`, and by `sandbox.train_job` inside a Job.
        Returns (ok, changed, detail); a version already registered for `key` is not trained again."""
        from tools import mlflow_training

        reg = reg if reg is not None else self._registered(target)
        t = target
        versions = self._versions(reg.name)
        for mv in versions:  # registered before a crash that lost the result record
            if (mv.tags or {}).get(T_KEY) == key:
                return True, False, f"{t} version {mv.version} was already trained for this action"
        seed, drift = self._data(reg)
        recent = self._recent(seed, drift, len(versions))
        heldout = self._heldout(seed, drift)
        started = time.perf_counter()
        model = mlflow_training.fit(recent, seed)
        train_s = time.perf_counter() - started
        acc = mlflow_training.accuracy(model, heldout)
        serving = self._serving_of(reg, self.alias)
        metrics = {"heldout_accuracy": acc, "train_accuracy": mlflow_training.accuracy(model, recent),
                   "train_seconds": train_s}
        versus = ""
        if serving is not None:
            serving_acc = mlflow_training.accuracy(self._load(reg.name, serving), heldout)
            metrics |= {"serving_heldout_accuracy": serving_acc, "accuracy_gain": acc - serving_acc}
            versus = f" vs {serving_acc:.3f} for serving version {serving}"
        params = {**mlflow_training.params(), "origin": "retrain", "n_train": str(len(recent)),
                  "n_heldout": str(len(heldout)), "data_seed": str(seed), "drift": json.dumps(drift),
                  "data_window": str(RECENT_WINDOW + len(versions)), "serving_version": str(serving)}
        tags = {T_ORIGIN: "retrain", T_MODEL: t, T_KEY: key, T_ACCURACY: f"{acc:.4f}"}
        v = self._log_version(reg.name, model, run_name=f"retrain-{t}", params=params, metrics=metrics,
                              tags=tags, description="retrained on recent data; not served until promoted",
                              run_id=run_id, train=recent)
        drifted = ", ".join(f"{f} PSI {p:g}" for f, p in drift.items()) or "no drift"
        return True, True, (f"{t} version {v} trained on {len(recent)} recent rows ({drifted}): held-out "
                            f"accuracy {acc:.3f}{versus}; registered, not served until promoted")

    def _promote(self, action: Action, reg: RegisteredModel, key: str) -> tuple[bool, bool, str]:
        from tools import mlflow_training

        params = action.params_as(PromoteParams)
        t = action.target
        versions = [int(mv.version) for mv in self._versions(reg.name)]
        cand = params.version or max(versions, default=0)
        if cand not in versions:
            raise PermanentToolError(f"{reg.name} has no version {cand}")
        serving = self._serving_of(reg, self.alias)
        if cand == serving:
            return True, False, f"{t} already serves version {cand}"
        seed, drift = self._data(reg)
        heldout = self._heldout(seed, drift)
        cand_acc = mlflow_training.accuracy(self._load(reg.name, cand), heldout)
        if serving is not None:
            serving_acc = mlflow_training.accuracy(self._load(reg.name, serving), heldout)
            if cand_acc < serving_acc + params.min_margin:
                detail = (f"{t} version {cand} (held-out accuracy {cand_acc:.3f}) does not beat serving "
                          f"version {serving} ({serving_acc:.3f}) by {params.min_margin}; still serving "
                          f"version {serving}: escalate to a human")
                self._c(self.client.set_model_version_tag, reg.name, str(cand), T_PROMOTION,
                        f"refused: {detail}")
                return False, False, detail
            numbers = f"held-out accuracy {cand_acc:.3f} vs {serving_acc:.3f} for version {serving}"
        else:
            numbers = f"held-out accuracy {cand_acc:.3f}; nothing was served"
        reason = f"promote_model: {numbers} (margin {params.min_margin}; key {key})"
        self._serve(reg.name, cand, reason, serving)
        self._c(self.client.set_model_version_tag, reg.name, str(cand), T_PROMOTION, f"promoted: {numbers}")
        return True, True, f"{t} promoted to version {cand} ({numbers})"

    # --------------------------------------------------------------------------------- verification

    def verify(self, action: Action) -> VerificationResult:
        try:
            ok, detail = self._check(action)
        except ToolError as exc:
            ok, detail = False, str(exc)
        return VerificationResult(action=action, ok=ok, detail=detail, at_s=self.clock())

    def _check(self, action: Action) -> tuple[bool, str]:
        handler = HANDLERS[action.name]
        if isinstance(handler, Unsupported):
            raise PermanentToolError(f"{action.key}: not a model action")
        reg = self._registered(action.target)
        return handler.check(self, action, reg, self._serving_of(reg, self.alias))

    def _check_rollback(self, action: Action, reg: RegisteredModel, serving: int | None) -> tuple[bool, str]:
        t = action.target
        params = action.params_as(RollbackParams)
        last = json.loads((reg.tags or {}).get(T_LAST_ROLLBACK) or "null")
        expected = params.to_version or (int(last["to"]) if last else None)
        if expected is None:
            return False, f"{t} has no rollback on record; serves version {serving}"
        ok = serving == expected
        return ok, f"{t} serves version {serving} (alias {self.alias!r}); rollback target {expected}"

    def _check_retrain(self, action: Action, reg: RegisteredModel, serving: int | None) -> tuple[bool, str]:
        t = action.target
        retrained = [mv for mv in self._versions(reg.name) if (mv.tags or {}).get(T_ORIGIN) == "retrain"]
        if not retrained:
            return False, f"{t} has no retrained version"
        mv = retrained[-1]
        ready = str(mv.status) == "READY"
        return ready, (f"{t} version {mv.version} registered ({mv.status}) with held-out accuracy "
                       f"{(mv.tags or {}).get(T_ACCURACY)}; serving version {serving}")

    def _check_promote(self, action: Action, reg: RegisteredModel, serving: int | None) -> tuple[bool, str]:
        params_p = action.params_as(PromoteParams)
        expected = params_p.version or max((int(mv.version) for mv in self._versions(reg.name)), default=0)
        return serving == expected, f"{action.target} serves version {serving}; promotion target {expected}"


# ------------------------------------------------------------------------------------- the action table


@dataclass(frozen=True)
class _Handler:
    """How the MLflow backend dry-runs, carries out and reads back one catalogue action, given the model's
    registry entry (and the version its alias serves)."""

    plan: Callable[[MlflowModelBackend, Action, RegisteredModel, int | None], str]
    do: Callable[[MlflowModelBackend, Action, RegisteredModel, str], tuple[bool, bool, str]]
    check: Callable[[MlflowModelBackend, Action, RegisteredModel, int | None], tuple[bool, str]]


_MODELS_ONLY = "the MLflow backend runs only ['promote_model', 'retrain_model', 'rollback_model']"
_TABLE: dict[str, _Handler | Unsupported] = {
    "restart_pod": Unsupported(_MODELS_ONLY),
    "reschedule_pod": Unsupported(_MODELS_ONLY),
    "cordon_node": Unsupported(_MODELS_ONLY),
    "uncordon_node": Unsupported(_MODELS_ONLY),
    "drain_node": Unsupported(_MODELS_ONLY),
    "reset_gpu": Unsupported(_MODELS_ONLY),
    "scale_deployment": Unsupported(_MODELS_ONLY),
    "pause_job": Unsupported(_MODELS_ONLY),
    "resume_job": Unsupported(_MODELS_ONLY),
    "rollback_model": _Handler(MlflowModelBackend._plan_rollback, MlflowModelBackend._rollback,
                               MlflowModelBackend._check_rollback),
    "retrain_model": _Handler(MlflowModelBackend._plan_retrain, MlflowModelBackend._retrain,
                              MlflowModelBackend._check_retrain),
    "promote_model": _Handler(MlflowModelBackend._plan_promote, MlflowModelBackend._promote,
                              MlflowModelBackend._check_promote),
    "abort_rollout": Unsupported(_MODELS_ONLY),  # a serving-layer action: the Kubernetes backend's
    "notify": Unsupported(_MODELS_ONLY),
    "escalate": Unsupported(_MODELS_ONLY),
}
HANDLERS = handler_table("tools.mlflow_backend.MlflowModelBackend", _TABLE)
MODEL_ACTIONS: frozenset[str] = supported(HANDLERS)
assert _MODELS_ONLY.endswith(str(sorted(MODEL_ACTIONS)))


def _action_tag(key: str) -> str:
    return T_ACTION + hashlib.sha256(key.encode()).hexdigest()[:24]


def _recall(reg: RegisteredModel, key: str) -> ActionResult | None:
    """The result recorded for this idempotency key on the registered model, if any."""
    raw = (reg.tags or {}).get(_action_tag(key))
    if not raw:
        return None
    try:
        rec = json.loads(raw)
        return ActionResult(action=Action.model_validate(rec["action"]), ok=bool(rec["ok"]),
                            changed=bool(rec["changed"]), detail=str(rec["detail"]), idempotency_key=key,
                            at_s=float(rec.get("at_s", 0.0)))
    except (ValueError, KeyError, TypeError):  # an unreadable record is no record (pydantic errors too)
        return None


def _again(first: ActionResult) -> ActionResult:
    return first.model_copy(update={"changed": False, "detail": f"already done: {first.detail}"})
