"""Model actions on a cluster: the registry moves, the serving workload follows, the SLO decides.

Layer: tools (imports `core.domain`, `core.errors`, `tools.backend`, `tools.k8s_serving`; never the
sandbox). The Kubernetes-mode daemon (`opsmedic.daemon.world.KubeWorld`) wraps its MLflow backend
(`tools.mlflow_backend.MlflowModelBackend`) in `ClusterModelBackend`, so that a model action does on a
cluster what a person would:

- `rollback_model` / `promote_model`: the registry's `champion` alias moves (MLflow), then the model's
  serving workload -- the one object labelled `opsmedic.io/model: <model>` (`tools.k8s_serving`) -- is rolled
  so that its pods load the alias's new version (`kubectl rollout restart` semantics, see
  `ServingApi.restart`). The restart is recorded on the workload (`opsmedic.io/restarted-for: <key>`), so
  that a retry after a crash between the two steps restarts it once, not twice.
- verification holds only when the alias is where it should be, the workload's rollout has finished
  (observedGeneration, updated / ready replicas: `tools.k8s_serving.rollout_status`) and, when a metrics
  source is configured (`OPSMEDIC_PROMETHEUS_URL`), the pods report the alias's version
  (`model_serving_version`) and the model's SLO holds again in those metrics (accuracy, p95 latency,
  error rate) -- not merely that the alias moved.
- `retrain_model`: with a `RetrainJobs` runner (`tools.k8s_retrain`, `OPSMEDIC_RETRAIN_JOB_TEMPLATE`) a
  Kubernetes Job trains and registers the version where training runs; without one the registry backend
  trains in process, as before. Promotion stays with `promote_model` and its held-out evaluation.

A model whose serving is not labelled is still rolled back in the registry; the result says that no pod was
restarted and verification then rests on the metrics alone.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable
from typing import Any, Protocol

from core.domain import Action, ActionResult, ModelStatus, VerificationResult
from core.errors import PermanentToolError, ToolError
from tools.backend import ActionBackend, TelemetrySource
from tools.k8s_serving import ServingApi, ServingWorkload, rollout_status

log = logging.getLogger(__name__)
ROLLS = frozenset({"rollback_model", "promote_model"})


class Retrainer(Protocol):
    def execute(self, action: Action, *, idempotency_key: str, dry_run: bool = False) -> ActionResult: ...

    def verify(self, action: Action) -> VerificationResult: ...


def slo_holds(m: ModelStatus) -> tuple[bool, str]:
    """Whether a model's measured service meets its SLO; a measure without its objective is not judged."""
    broken: list[str] = []
    seen: list[str] = []
    if m.accuracy is not None and m.slo_accuracy_min is not None:
        seen.append(f"accuracy {m.accuracy:.3f} (min {m.slo_accuracy_min:g})")
        if m.accuracy < m.slo_accuracy_min:
            broken.append("accuracy")
    if m.latency_p95_ms is not None and m.slo_latency_p95_ms is not None:
        seen.append(f"p95 {m.latency_p95_ms:g} ms (max {m.slo_latency_p95_ms:g})")
        if m.latency_p95_ms > m.slo_latency_p95_ms:
            broken.append("latency")
    if m.error_rate is not None and m.slo_error_rate_max is not None:
        seen.append(f"error rate {m.error_rate:.3f} (max {m.slo_error_rate_max:g})")
        if m.error_rate > m.slo_error_rate_max:
            broken.append("error rate")
    if not seen:
        return False, f"{m.name}: no SLO measure in the metrics yet"
    text = ", ".join(seen)
    return (False, f"{m.name} SLO broken ({', '.join(broken)}): {text}") if broken else (True, f"{m.name}: {text}")


class ClusterModelBackend:
    """The model actions of a Kubernetes-mode daemon (see the module docstring)."""

    def __init__(self, registry: ActionBackend, serving: ServingApi, *, metrics: TelemetrySource | None = None,
                 retrain: Retrainer | None = None, clock: Callable[[], float] | None = None) -> None:
        self.registry = registry
        self.serving = serving
        self.metrics = metrics
        self.retrain = retrain
        self._now = clock or (lambda: dt.datetime.now(dt.UTC).timestamp())

    # ----------------------------------------------------------------------------------- execute

    def execute(self, action: Action, *, idempotency_key: str, dry_run: bool = False) -> ActionResult:
        if action.name == "retrain_model" and self.retrain is not None:
            return self.retrain.execute(action, idempotency_key=idempotency_key, dry_run=dry_run)
        result = self.registry.execute(action, idempotency_key=idempotency_key, dry_run=dry_run)
        if action.name not in ROLLS or not result.ok:
            return result
        recalled = result.detail.startswith("already done:")
        if not (result.changed or recalled or result.dry_run):
            return result  # the alias did not move (it already served that version): nothing to reload
        try:
            w = self.serving.for_model(action.target)
        except PermanentToolError as exc:
            log.warning("the registry moved but no serving workload follows", extra={
                "model": action.target, "error": str(exc)})
            return result.model_copy(update={"detail": f"{result.detail}; serving not restarted: {exc}"})
        except ToolError as exc:  # the alias moved; a retry with the same key restarts the workload
            return result.model_copy(update={"ok": False, "detail": f"{result.detail}; but reading the "
                                                                     f"serving workload failed: {exc}"})
        if not dry_run and self.serving.restarted_for(w) == idempotency_key[:253]:
            return result  # restarted for this very action before a crash: once is enough
        at = dt.datetime.fromtimestamp(self._now(), dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        try:
            rolled = self.serving.restart(w, at=at, cause=idempotency_key[:253], dry_run=dry_run)
        except PermanentToolError as exc:
            return result.model_copy(update={"detail": f"{result.detail}; serving not restarted: {exc}"})
        except ToolError as exc:
            return result.model_copy(update={"ok": False,
                                             "detail": f"{result.detail}; restarting {w.title} failed: {exc}"})
        rolled = ("would restart " + rolled.split(" restarted", 1)[0]) if dry_run else rolled
        return result.model_copy(update={"detail": f"{result.detail}; {rolled}"})

    # ------------------------------------------------------------------------------------ verify

    def verify(self, action: Action) -> VerificationResult:
        if action.name == "retrain_model" and self.retrain is not None:
            return self.retrain.verify(action)
        first = self.registry.verify(action)
        if action.name not in ROLLS or not first.ok:
            return first
        notes = [first.detail]
        ok = True
        try:
            w: ServingWorkload | None = self.serving.refresh(self.serving.for_model(action.target))
        except PermanentToolError as exc:
            w = None
            notes.append(f"no serving workload to wait for ({exc})")
        except ToolError as exc:
            return self._result(action, False, [*notes, f"cannot read the serving workload: {exc}"])
        if w is not None:
            done, text = rollout_status(w)
            notes.append(text)
            ok = done
        if ok and self.metrics is not None:
            ok, text = self._slo(action)
            notes.append(text)
        return self._result(action, ok, notes)

    def _slo(self, action: Action) -> tuple[bool, str]:
        """The model's service as the metrics source reads it (the Prometheus source's model metrics)."""
        assert self.metrics is not None
        try:
            snap = self.metrics.snapshot()
        except ToolError as exc:
            return False, f"cannot read the model's metrics: {exc}"
        m = next((x for x in snap.models if x.name == action.target), None)
        if m is None:
            return False, f"no metrics for {action.target} yet"
        want = self._serving_version(action.target)
        if want is not None and m.serving_version != want:
            return False, f"pods still report version {m.serving_version} (the registry serves {want})"
        return slo_holds(m)

    def _serving_version(self, target: str) -> int | None:
        read = getattr(self.registry, "serving_version", None)
        if not callable(read):
            return None
        try:
            v = read(target)
        except ToolError:
            return None
        return int(v) if isinstance(v, int) else None

    def _result(self, action: Action, ok: bool, notes: list[str]) -> VerificationResult:
        return VerificationResult(action=action, ok=ok, detail="; ".join(notes), at_s=self._now())

    # --------------------------------------------------------------------------------- plumbing

    def lookup(self, idempotency_key: str) -> ActionResult | None:
        for inner in (self.retrain, self.registry):
            find: Any = getattr(inner, "lookup", None)
            found = find(idempotency_key) if callable(find) else None
            if isinstance(found, ActionResult):
                return found
        return None

    def serving_version(self, target: str) -> int | None:
        return self._serving_version(target)

    def close(self) -> None:
        for inner in (self.retrain, self.registry):
            close = getattr(inner, "close", None)
            if callable(close):
                close()


MODEL_VERSION_KEY = "opsmedic.io/model-version"  # on a serving pod template: the registry version it serves
ABORTED_TAG = "opsmedic.aborted"  # on a registry version: its canary rollout was aborted (kept, never served)


class VersionTagger(Protocol):
    def tag_version(self, target: str, version: int, key: str, value: str) -> None: ...


def canary_version(w: ServingWorkload) -> int | None:
    """The registry version the workload's canary serves: the `opsmedic.io/model-version` label or annotation
    on the pod template a Rollout is rolling out (or, on an InferenceService, on the object itself, whose
    latest revision is the canary). None when the workload does not say."""
    template = (w.spec.get("template") or {}).get("metadata") or {}
    meta = {**(w.obj.get("metadata") or {}).get("labels", {}), **w.annotations} if w.kind == "inferenceservice" \
        else {**(template.get("labels") or {}), **(template.get("annotations") or {})}
    raw = meta.get(MODEL_VERSION_KEY)
    try:
        return int(str(raw)) if raw is not None else None
    except ValueError:
        return None


class AbortTagging:
    """The Kubernetes backend, with one thing added: after it aborted a canary, the registry version that canary
    served is tagged `opsmedic.aborted=true` (as the sandbox's registry bridge does in eval), so that nobody
    promotes it by mistake. The version is read from the workload before the abort (its pod template names
    it, `opsmedic.io/model-version`); a workload that does not name it is aborted all the same, and the log
    says the tag could not be written. A failed tag never fails the abort."""

    def __init__(self, inner: ActionBackend, serving: ServingApi, registry: VersionTagger) -> None:
        self.inner = inner
        self.serving = serving
        self.registry = registry

    def execute(self, action: Action, *, idempotency_key: str, dry_run: bool = False) -> ActionResult:
        version: int | None = None
        if action.name == "abort_rollout" and not dry_run:
            try:
                version = canary_version(self.serving.for_model(action.target))
            except ToolError:
                version = None  # the abort itself will say what is wrong with the workload
        result = self.inner.execute(action, idempotency_key=idempotency_key, dry_run=dry_run)
        if action.name == "abort_rollout" and result.ok and not dry_run:
            if version is None:
                log.warning("canary aborted, but its workload names no registry version to tag",
                            extra={"model": action.target, "label": MODEL_VERSION_KEY})
            else:
                try:
                    self.registry.tag_version(action.target, version, ABORTED_TAG, "true")
                except ToolError as exc:
                    log.warning("canary aborted, but tagging its registry version failed",
                                extra={"model": action.target, "version": version, "error": str(exc)})
        return result

    def verify(self, action: Action) -> VerificationResult:
        return self.inner.verify(action)

    def __getattr__(self, name: str) -> Any:  # lookup(), close() and the rest of the wrapped backend
        return getattr(self.inner, name)
