"""`retrain_model` where training runs: a Kubernetes Job from a template the operator owns.

Layer: tools (imports `core.domain`, `core.errors`, `core.safe_yaml`, `tools.k8s_client`,
`tools.k8s_backend`'s label helper). Used by `tools.k8s_models.ClusterModelBackend` when
`OPSMEDIC_RETRAIN_JOB_TEMPLATE` is set; without it the MLflow backend trains in process.

The template is a batch/v1 Job (image, command, resources, service account, node selector: the
operator's) read from a YAML file, or from a ConfigMap (`configmap:NAME` or `configmap:NAMESPACE/NAME`,
key `job.yaml`) when the action runs. opsmedic fills in:

- `metadata.name` `opsmedic-retrain-<model>-<hash of the action>` (so a retry finds the same Job), the
  namespace, labels `opsmedic.io/model` and `opsmedic.io/incident`, annotation `opsmedic.io/idempotency-key`;
- `spec.activeDeadlineSeconds` (the deadline; the template's own if smaller), `backoffLimit` 0 unless set;
- in every container, the environment `tools.train_job` documents: `MLFLOW_TRACKING_URI`, `OPSMEDIC_MODEL`,
  `OPSMEDIC_MLFLOW_RUN_ID` (a run opsmedic opens for this training), `OPSMEDIC_IDEMPOTENCY_KEY`,
  `OPSMEDIC_DATA_WINDOW_START` / `_END`; and `{model}`, `{run_id}`, `{window_start}`, `{window_end}` in the
  container's `args` are replaced by the same values.

`execute` creates the Job (or adopts the one a previous attempt created) and returns; `verify` follows it:
not done while it runs, failed when Kubernetes marks it Failed (backoff or deadline exceeded), done when it
Completed and the registry holds a READY version tagged with the action's key. The graph's verification
deadline for `retrain_model` bounds the wait. The new version is not served: `promote_model`, gated on
held-out evaluation, decides that.
"""

from __future__ import annotations

import copy
import datetime as dt
import hashlib
from pathlib import Path
from typing import Any, Protocol

from kubernetes import client

from core.domain import Action, ActionResult, VerificationResult
from core.errors import ConfigError, PermanentToolError, ToolError
from tools.k8s_client import KubeCaller, KubePermanentError

ANN_KEY = "opsmedic.io/idempotency-key"
LABEL_MODEL = "opsmedic.io/model"
LABEL_INCIDENT = "opsmedic.io/incident"
CONFIGMAP_KEY = "job.yaml"


class TrainingRegistry(Protocol):
    tracking_uri: str
    name_prefix: str

    def new_run(self, target: str, *, key: str, run_name: str) -> str: ...

    def version_for_key(self, target: str, key: str) -> tuple[int, str, str] | None: ...


def _label(text: str) -> str:
    from tools.k8s_backend import label_value

    return label_value(text)


def parse_template(text: str, where: str) -> dict[str, Any]:
    """A Job template, checked for what opsmedic needs (kind Job, a container with an image)."""
    from core.safe_yaml import safe_load

    try:
        obj = safe_load(text)
    except Exception as exc:  # a YAML error of any kind: say where
        raise ConfigError(f"{where}: not valid YAML: {exc}") from exc
    if not isinstance(obj, dict) or obj.get("kind", "Job") != "Job":
        raise ConfigError(f"{where}: the retraining template must be a batch/v1 Job")
    containers = (((obj.get("spec") or {}).get("template") or {}).get("spec") or {}).get("containers")
    if not isinstance(containers, list) or not containers or not all(
            isinstance(c, dict) and c.get("image") and c.get("name") for c in containers):
        raise ConfigError(f"{where}: spec.template.spec.containers needs at least one container with a name "
                          "and an image")
    return obj


class RetrainJobs:
    """Retraining as Kubernetes Jobs (see the module docstring)."""

    def __init__(self, api_client: Any, template: str, *, tracking_uri: str, namespace: str,
                 registry: TrainingRegistry, deadline_s: int = 3600, window_s: int = 86400,
                 caller: KubeCaller | None = None) -> None:
        self.api_client = api_client
        self.batch = client.BatchV1Api(api_client)
        self.core = client.CoreV1Api(api_client)
        self.caller = caller or KubeCaller()
        self.namespace = namespace
        self.registry = registry
        self.tracking_uri = tracking_uri
        self.deadline_s = deadline_s
        self.window_s = window_s
        self.source = template
        self._file: dict[str, Any] | None = None
        if not template.startswith("configmap:"):
            path = Path(template).expanduser()
            if not path.is_file():
                raise ConfigError(f"OPSMEDIC_RETRAIN_JOB_TEMPLATE: {template!r} is not a file (or "
                                  "configmap:NAME for a ConfigMap)")
            self._file = parse_template(path.read_text(encoding="utf-8"), str(path))
        self._done: dict[str, ActionResult] = {}

    # --------------------------------------------------------------------------------- template

    def template(self) -> dict[str, Any]:
        if self._file is not None:
            return copy.deepcopy(self._file)
        ref = self.source.removeprefix("configmap:")
        ns, _, name = ref.rpartition("/")
        ns = ns or self.namespace
        try:
            cm: Any = self.caller.call(f"read ConfigMap {ns}/{name}", self.core.read_namespaced_config_map,
                                       name, ns)
        except KubePermanentError as exc:
            raise PermanentToolError(f"the retraining template ConfigMap {ns}/{name} cannot be read: {exc}") from exc
        data = cm.data or {}
        text = data.get(CONFIGMAP_KEY) or (next(iter(data.values())) if len(data) == 1 else None)
        if not text:
            raise PermanentToolError(f"ConfigMap {ns}/{name} has no {CONFIGMAP_KEY} key with the Job template")
        try:
            return parse_template(text, f"ConfigMap {ns}/{name}")
        except ConfigError as exc:
            raise PermanentToolError(str(exc)) from exc

    def job_name(self, model: str, key: str) -> str:
        digest = hashlib.sha256(key.encode()).hexdigest()[:10]
        return f"opsmedic-retrain-{_label(model).lower()[:30].strip('-.')}-{digest}".replace(".", "-").replace("_", "-")

    def render(self, model: str, key: str, run_id: str, now: dt.datetime) -> dict[str, Any]:
        job = self.template()
        start = (now - dt.timedelta(seconds=self.window_s)).strftime("%Y-%m-%dT%H:%M:%SZ")
        end = now.strftime("%Y-%m-%dT%H:%M:%SZ")
        values = {"model": model, "run_id": run_id, "window_start": start, "window_end": end}
        meta = job.setdefault("metadata", {})
        meta.pop("generateName", None)
        meta["name"] = self.job_name(model, key)
        meta["namespace"] = self.namespace
        meta["labels"] = {**(meta.get("labels") or {}), LABEL_MODEL: _label(model),
                          LABEL_INCIDENT: _label(key.split(":", 1)[0])}
        meta["annotations"] = {**(meta.get("annotations") or {}), ANN_KEY: key}
        job["apiVersion"], job["kind"] = "batch/v1", "Job"
        spec = job.setdefault("spec", {})
        have = spec.get("activeDeadlineSeconds")
        spec["activeDeadlineSeconds"] = min(int(have), self.deadline_s) if isinstance(have, int) else self.deadline_s
        spec.setdefault("backoffLimit", 0)
        pod_spec = spec["template"].setdefault("spec", {})
        pod_spec.setdefault("restartPolicy", "Never")
        env = {"MLFLOW_TRACKING_URI": self.tracking_uri, "OPSMEDIC_MODEL": model,
               "OPSMEDIC_MODEL_PREFIX": self.registry.name_prefix, "OPSMEDIC_MLFLOW_RUN_ID": run_id,
               "OPSMEDIC_IDEMPOTENCY_KEY": key, "OPSMEDIC_DATA_WINDOW_START": start,
               "OPSMEDIC_DATA_WINDOW_END": end}
        for c in pod_spec["containers"]:
            kept = [e for e in c.get("env") or [] if isinstance(e, dict) and e.get("name") not in env]
            c["env"] = kept + [{"name": k, "value": v} for k, v in env.items()]
            if isinstance(c.get("args"), list):
                c["args"] = [str(a).format(**values) if isinstance(a, str) and "{" in a else a for a in c["args"]]
        return job

    # ---------------------------------------------------------------------------------- actions

    def _read(self, name: str) -> Any | None:
        try:
            return self.caller.call(f"get job {self.namespace}/{name}", self.batch.read_namespaced_job, name,
                                    self.namespace)
        except KubePermanentError as exc:
            if exc.status == 404:
                return None
            raise

    def execute(self, action: Action, *, idempotency_key: str, dry_run: bool = False) -> ActionResult:
        key = idempotency_key
        now = dt.datetime.now(dt.UTC)
        if key in self._done:
            first = self._done[key]
            return first.model_copy(update={"changed": False, "detail": f"already done: {first.detail}"})

        def result(ok: bool, changed: bool, detail: str) -> ActionResult:
            return ActionResult(action=action, ok=ok, changed=changed, detail=detail, idempotency_key=key,
                                at_s=now.timestamp(), dry_run=dry_run)

        name = self.job_name(action.target, key)
        try:
            if dry_run:
                self.render(action.target, key, "<run id>", now)  # the template must render
                return result(True, False, f"dry run: would create Job {self.namespace}/{name} from "
                                           f"{self.source} to train {action.target}")
            existing = self._read(name)
            if existing is not None:  # a previous attempt created it (before a crash): follow that one
                res = result(True, False, f"Job {self.namespace}/{name} already trains {action.target}")
            else:
                run_id = self.registry.new_run(action.target, key=key, run_name=f"retrain-{action.target}-job")
                job = self.render(action.target, key, run_id, now)
                self.caller.call(f"create job {self.namespace}/{name}", self.batch.create_namespaced_job,
                                 self.namespace, job)
                res = result(True, True, f"Job {self.namespace}/{name} created to train {action.target} "
                                         f"(MLflow run {run_id}, deadline {job['spec']['activeDeadlineSeconds']}s)"
                                         "; the version it registers is not served until promoted")
        except ToolError as exc:
            return result(False, False, f"retraining Job for {action.target}: {exc}")
        self._done[key] = res
        return res

    def verify(self, action: Action) -> VerificationResult:
        now = dt.datetime.now(dt.UTC).timestamp()
        key = next((k for k, r in self._done.items() if r.action == action), None)

        def out(ok: bool, detail: str) -> VerificationResult:
            return VerificationResult(action=action, ok=ok, detail=detail, at_s=now)

        try:
            if key is None:  # after a restart: the newest Job opsmedic made for this model
                jobs: Any = self.caller.call("list retraining jobs", self.batch.list_namespaced_job, self.namespace,
                                             label_selector=f"{LABEL_MODEL}={_label(action.target)}")
                mine = sorted((j for j in jobs.items or [] if ANN_KEY in (j.metadata.annotations or {})),
                              key=lambda j: j.metadata.creation_timestamp or dt.datetime.min.replace(tzinfo=dt.UTC))
                if not mine:
                    return out(False, f"no retraining Job for {action.target} on record")
                key = mine[-1].metadata.annotations[ANN_KEY]
            name = self.job_name(action.target, key)
            job = self._read(name)
            if job is None:
                return out(False, f"Job {self.namespace}/{name} not found")
            conds = {c.type: c for c in (job.status.conditions or [])} if job.status else {}
            failed = conds.get("Failed")
            if failed is not None and failed.status == "True":
                return out(False, f"Job {name} failed: {failed.reason or ''} {failed.message or ''}".strip())
            done = conds.get("Complete")
            if done is None or done.status != "True":
                active = (job.status.active or 0) if job.status else 0
                return out(False, f"Job {name} still running ({active} active pod(s))")
            found = self.registry.version_for_key(action.target, key)
            if found is None:
                return out(False, f"Job {name} completed but registered no version of {action.target}")
            version, status, acc = found
            return out(status == "READY", f"Job {name} completed: {action.target} version {version} registered "
                                          f"({status}) with held-out accuracy {acc}; not served until promoted")
        except ToolError as exc:
            return out(False, f"cannot follow the retraining Job: {exc}")

    def lookup(self, idempotency_key: str) -> ActionResult | None:
        return self._done.get(idempotency_key)
