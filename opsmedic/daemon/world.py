"""The world a daemon watches and acts on: the sandbox's simulated cluster, or a Kubernetes cluster.

Layer: interfaces (`opsmedic.daemon`); may import tools and sandbox. A `World` gives the daemon the four
things the incident driver needs — a clock, a telemetry source, an action backend and a tick length — plus
`advance()` (the sandbox steps its simulator; a real cluster moves on its own) and the prefix of the
graph threads that belong to it in the shared checkpointer.

**The sandbox world survives restarts.** A simulated cluster lives in memory, so a daemon killed while an
incident waits for approval would come back to a brand-new cluster at t=0 and find the fault again —
and open a second incident for it. Instead the world is event-sourced: the simulator is deterministic
(seeded by its scenario), the execution ledger records every action that changed it with the simulated
time it ran at, and the world's clock is saved every tick. On start the simulator is fast-forwarded to the
saved time, replaying the recorded actions at their times, which rebuilds the same cluster the dead
process left; graphs then resume from their checkpoints against it. `--fresh` starts a new world instead.
"""

from __future__ import annotations

import hashlib
import logging
import os
import sqlite3
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from core.actions import EscalateParams, MessageParams
from core.clock import Clock, SimClock, WallClock
from core.domain import Action, ActionResult, ClusterSnapshot, VerificationResult

if TYPE_CHECKING:
    from sandbox.scenario import Scenario
    from tools.backend import ActionBackend, TelemetrySource
    from tools.drift_feed import DriftTelemetry, FeatureWindowSource
    from tools.ledger import LedgerRecord
    from tools.pagerduty import PagerDutyEvents

log = logging.getLogger("opsmedic.daemon.world")
MODEL_ACTIONS = frozenset({"rollback_model", "retrain_model", "promote_model"})

_SCHEMA = """
CREATE TABLE IF NOT EXISTS opsmedic_daemon_worlds (
    world_id   TEXT PRIMARY KEY,
    scenario   TEXT NOT NULL,
    digest     TEXT NOT NULL,
    epoch      INTEGER NOT NULL,
    sim_now    REAL NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
)
"""


class World(Protocol):
    kind: str
    name: str
    clock: Clock
    telemetry: TelemetrySource
    backend: ActionBackend
    created_wall: float  # when this world began (epoch seconds): the chat's actions since then are its own
    tick_s: float  # the world's seconds between two monitor ticks
    interval_s: float  # wall seconds between two monitor ticks
    thread_prefix: str

    def restore(self, records: list[LedgerRecord]) -> None: ...

    def advance(self) -> None: ...

    def save(self) -> None: ...

    def describe(self) -> dict[str, Any]: ...

    def close(self) -> None: ...


# ------------------------------------------------------------------------------------------ sandbox


class SandboxWorld:
    """A scenario's simulated cluster advanced in real time x `speed` (one tick every tick/speed s)."""

    kind = "sandbox"

    def __init__(self, scenario: Scenario, *, speed: float, db_path: Path, fresh: bool = False) -> None:
        from opsmedic.evaluation import SimTelemetry
        from sandbox.cluster import Simulator
        from tools.sandbox_backend import SandboxBackend

        self.scenario = scenario
        self.name = scenario.name
        self.sim = Simulator(scenario)
        self.clock: Clock = SimClock(self.sim)
        from tools.drift_feed import SandboxWindowSource, drift_telemetry_from_settings

        # drift is measured, not read off the simulator: Evidently over the sandbox's feature windows, in the
        # background (a tick never waits for a report)
        self.drift = drift_telemetry_from_settings(SimTelemetry(self.sim), SandboxWindowSource(self.sim))
        self.telemetry: TelemetrySource = self.drift
        self.backend: ActionBackend = SandboxBackend(self.sim)
        self.tick_s = float(scenario.tick)
        self.speed = float(speed)
        self.interval_s = self.tick_s / self.speed
        self._db = sqlite3.connect(str(db_path), timeout=30.0, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode = WAL")
        # the world's clock is saved every tick: losing the last one to a power cut only replays a tick
        self._db.execute("PRAGMA synchronous = NORMAL")
        self._db.execute(_SCHEMA)
        self.world_id, self._saved_now, self.created_wall = self._open(fresh)
        self.thread_prefix = f"daemon:{self.world_id}:"
        self._replay: list[tuple[float, Action]] = []
        self.replayed = 0

    def _open(self, fresh: bool) -> tuple[str, float, float]:
        digest = hashlib.sha256(self.scenario.model_dump_json().encode()).hexdigest()[:16]
        row = self._db.execute("SELECT world_id, digest, epoch, sim_now, created_at FROM opsmedic_daemon_worlds "
                               "WHERE scenario = ? ORDER BY epoch DESC LIMIT 1", (self.name,)).fetchone()
        if row is not None and not fresh and row[1] == digest:
            return str(row[0]), float(row[3]), float(row[4])
        if row is not None and row[1] != digest and not fresh:
            log.warning("the scenario changed since its world was saved: starting a new world",
                        extra={"scenario": self.name, "old_world": row[0]})
        epoch = (int(row[2]) + 1) if row is not None else 1
        world_id = f"{self.name}.{epoch}"
        now = time.time()
        self._db.execute("INSERT INTO opsmedic_daemon_worlds (world_id, scenario, digest, epoch, sim_now, "
                         "created_at, updated_at) VALUES (?, ?, ?, ?, 0, ?, ?)",
                         (world_id, self.name, digest, epoch, now, now))
        return world_id, 0.0, now

    def restore(self, records: list[LedgerRecord]) -> None:
        """Fast-forward to the saved time, replaying the actions that changed this world (see the module
        docstring). `records` are the ledger records of this world's incidents."""
        done = []
        for r in records:
            res = r.result
            if r.status == "done" and res is not None and res.ok and res.changed and not res.dry_run:
                done.append((float(res.at_s), r.action))
        done.sort(key=lambda x: x[0])
        self._replay = done
        t0 = time.perf_counter()
        steps = 0
        while self.sim.now + 1e-9 < self._saved_now:
            self.sim.step()
            self._apply_due()
            steps += 1
        if steps or done:
            log.info("sandbox world restored", extra={
                "world": self.world_id, "sim_now": self.sim.now, "steps": steps, "actions_replayed": self.replayed,
                "ms": round((time.perf_counter() - t0) * 1000, 1)})

    def _apply_due(self) -> None:
        from core.errors import ToolError

        while self._replay and self._replay[0][0] <= self.sim.now + 1e-9:
            _, action = self._replay.pop(0)
            try:
                self.sim.execute(action)
                self.replayed += 1
            except ToolError as exc:  # it worked the first time; the world differs: say so, go on
                log.warning("replayed action failed", extra={"action": action.key, "error": str(exc)})

    def advance(self) -> None:
        self.sim.step()
        self._apply_due()

    def save(self) -> None:
        self._db.execute("UPDATE opsmedic_daemon_worlds SET sim_now = ?, updated_at = ? WHERE world_id = ?",
                         (self.sim.now, time.time(), self.world_id))

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "scenario": self.name, "world": self.world_id, "sim_now_s": self.sim.now,
                "speed": self.speed, "tick_s": self.tick_s, "nodes": len(self.sim.nodes), "gpus": len(self.sim.gpus),
                "drift": self.drift.describe()}

    def close(self) -> None:
        try:
            self.save()
        finally:
            self.drift.close()
            self._db.close()


# --------------------------------------------------------------------------------------- kubernetes


class NotifyBackend:
    """What handles the actions the Kubernetes backend does not: `notify` and `escalate` go to the
    daemon's log, to Slack when Slack is configured, and an escalation pages through PagerDuty when a
    routing key is configured (`tools.pagerduty`). Model actions (`rollback_model`, `retrain_model`,
    `promote_model`) go to the MLflow registry when one is configured (`--mlflow-tracking-uri`, the
    backend eval uses); without one they fail plainly and the graph escalates.

    A page is delivered at least once: PagerDuty folds repeats into one alert by its dedup key, the
    incident id. A page PagerDuty cannot take now (rate limited, down) raises `TransientToolError`, so the
    graph step is retried from its checkpoint; Slack is told once per idempotency key all the same. After a
    crash in the middle of an escalation, `lookup` and `verify` say "not sent" unless this process sent
    it, so the retry pages instead of assuming it did. `resolve_pages` resolves the alert of every paged
    incident that is over (the daemon calls it after each tick)."""

    def __init__(self, clock: Callable[[], float], send: Callable[[str, str], None] | None = None,
                 pager: PagerDutyEvents | None = None, *, default_severity: str = "critical",
                 models: ActionBackend | None = None) -> None:
        self._clock = clock
        self.models = models
        self._send = send
        self.pager = pager
        self.default_severity = default_severity
        self._done: dict[str, ActionResult] = {}
        self._told: set[str] = set()  # idempotency keys already told to Slack
        self._sent_digests: set[str] = set()
        self.paged: dict[str, str] = {}  # incident id -> dedup key of its open PagerDuty alert
        self._resolve_after: dict[str, tuple[int, float]] = {}  # incident -> (failures, not before, monotonic)

    def execute(self, action: Action, *, idempotency_key: str, dry_run: bool = False) -> ActionResult:
        if idempotency_key in self._done:
            return self._done[idempotency_key].model_copy(update={"changed": False})
        now = self._clock()
        if action.name in MODEL_ACTIONS and self.models is not None:
            return self.models.execute(action, idempotency_key=idempotency_key, dry_run=dry_run)
        if action.name not in ("notify", "escalate"):
            return ActionResult(action=action, ok=False, changed=False, idempotency_key=idempotency_key, at_s=now,
                                detail=f"{action.key}: no backend for this action is configured in the daemon")
        message = action.params_as(MessageParams).message or action.key
        if dry_run:
            return ActionResult(action=action, ok=True, changed=False, dry_run=True, idempotency_key=idempotency_key,
                                at_s=now, detail=f"dry run: would {action.name} {message[:200]}")
        # `message` is a reserved LogRecord attribute: passing it in `extra` raised KeyError (issue 17)
        log.warning(action.name, extra={"target": action.target, "text": message[:2000]})
        if self._send is not None and idempotency_key not in self._told:
            self._send(action.name, f"{action.target}: {message}")
            self._told.add(idempotency_key)
        detail = f"{action.name} sent"
        ok = True
        if action.name == "escalate" and self.pager is not None:
            ok, paged = self._page(action, idempotency_key, message)
            detail = f"{detail}; {paged}"
        result = ActionResult(action=action, ok=ok, changed=ok, idempotency_key=idempotency_key, at_s=now,
                              detail=detail)
        self._done[idempotency_key] = result
        if ok:
            self._sent_digests.add(action.digest())
        return result

    def _page(self, action: Action, key: str, message: str) -> tuple[bool, str]:
        """Trigger the incident's alert. A transient failure raises (the step is retried); a permanent one
        (PagerDuty refused the event) is reported in the result, since retrying cannot help."""
        from core.errors import PermanentToolError
        from tools.pagerduty import SEVERITIES

        assert self.pager is not None
        # the key is `<incident>:escalate` (the graph's own escalation) or a plan step's idempotency key
        # (`<incident>:a0:s2:<digest>`): either way the incident's id, which PagerDuty dedups on, comes first
        incident_id = key.split(":", 1)[0]
        severity = str(action.params_as(EscalateParams).severity or self.default_severity)
        if severity not in SEVERITIES:
            severity = self.default_severity
        reason = message.removeprefix(f"{incident_id}: ")
        details: dict[str, Any] = {"incident_id": incident_id, "resource": action.target, "reason": reason}
        evidence = action.params_as(EscalateParams).evidence
        if evidence:
            details["evidence"] = [str(e) for e in evidence]
        try:
            dedup = self.pager.trigger(dedup_key=incident_id, summary=f"opsmedic: {action.target}: {reason}",
                                       severity=severity, component=action.target, group="opsmedic",
                                       class_="escalation", custom_details=details)
        except PermanentToolError as exc:
            log.error("PagerDuty refused the page", extra={"incident_id": incident_id, "error": str(exc)})
            return False, f"page refused: {exc}"
        self.paged[incident_id] = dedup
        log.info("paged", extra={"incident_id": incident_id, "severity": severity})
        return True, f"paged PagerDuty ({severity}, dedup_key {dedup})"

    def adopt_pages(self, records: list[LedgerRecord]) -> None:
        """After a restart: the incidents this daemon paged before (from the execution ledger), so that
        their alerts are resolved when they end."""
        for r in records:
            res = r.result
            if (r.action.name == "escalate" and r.status == "done" and res is not None and res.ok
                    and not res.dry_run and "paged PagerDuty" in res.detail):
                self.paged.setdefault(r.incident_id, r.incident_id)

    def resolve_pages(self, still_open: Callable[[str], bool]) -> list[str]:
        """Resolve the alert of every paged incident for which `still_open(incident_id)` is False; returns
        the incidents resolved. A failure is logged and tried again next time."""
        from core.errors import PermanentToolError, ToolError

        if self.pager is None:
            return []
        done = []
        for incident_id, dedup in list(self.paged.items()):
            fails, not_before = self._resolve_after.get(incident_id, (0, 0.0))
            if time.monotonic() < not_before or still_open(incident_id):
                continue
            try:
                self.pager.resolve(dedup)
            except PermanentToolError as exc:
                log.error("PagerDuty refused to resolve a page", extra={"incident_id": incident_id,
                                                                         "error": str(exc)})
            except ToolError as exc:
                # this runs on the daemon's loop: a pager that is down is tried again later, not every tick
                delay = min(300.0, 5.0 * 2 ** fails)
                self._resolve_after[incident_id] = (fails + 1, time.monotonic() + delay)
                log.warning("resolving a page failed; will retry", extra={"incident_id": incident_id,
                                                                           "error": str(exc), "retry_in_s": delay})
                continue
            del self.paged[incident_id]
            self._resolve_after.pop(incident_id, None)
            done.append(incident_id)
            log.info("page resolved", extra={"incident_id": incident_id})
        return done

    def lookup(self, idempotency_key: str) -> ActionResult | None:
        if idempotency_key in self._done:
            return self._done[idempotency_key]
        lookup = getattr(self.models, "lookup", None)  # the registry remembers its actions by key
        found = lookup(idempotency_key) if callable(lookup) else None
        return found if isinstance(found, ActionResult) else None

    def verify(self, action: Action) -> VerificationResult:
        if action.name in MODEL_ACTIONS and self.models is not None:
            return self.models.verify(action)
        if action.name == "escalate" and action.digest() not in self._sent_digests:
            # only reached after a crash mid-call: not known to be sent, so the retry sends it
            return VerificationResult(action=action, ok=False, at_s=self._clock(),
                                      detail="escalate: no record that this page went out")
        return VerificationResult(action=action, ok=True, detail=f"{action.name} needs no verification",
                                  at_s=self._clock())

    def close(self) -> None:
        if self.pager is not None:
            self.pager.close()
        close = getattr(self.models, "close", None)
        if callable(close):
            close()


def incident_still_open(driver: Any, incident_id: str) -> bool:
    """Whether an incident is not over yet: its graph still runs (or waits), or the monitor still holds its
    resource for it (the graph ended, escalated or resolved, but the condition has not cleared for the quiet
    period). Once neither holds, a page for it can be resolved."""
    from opsmedic.daemon.grouping import monitor_key

    st = driver.states.get(incident_id)
    if st is not None and st.outcome == "open":
        return True
    inc = driver.incidents.get(incident_id) or (st.incident if st is not None else None)
    if inc is None:
        return False
    state = driver.monitor.key_state(monitor_key(inc))
    return bool(state is not None and state.incident_id == incident_id)


class CompositeTelemetry:
    """Nodes and pods from the Kubernetes API, GPUs and models from Prometheus (DCGM exporter, service
    metrics): the API knows nothing of XIDs or temperatures."""

    def __init__(self, cluster: TelemetrySource, metrics: TelemetrySource) -> None:
        self.cluster = cluster
        self.metrics = metrics

    def snapshot(self) -> ClusterSnapshot:
        base = self.cluster.snapshot()
        extra = self.metrics.snapshot()
        return base.model_copy(update={"gpus": extra.gpus, "models": extra.models})


class TimeoutTelemetry:
    """A telemetry read bounded in time. The Kubernetes client sets no request timeout of its own, so an API
    server that hangs would hang the monitor loop with it; here a read that takes longer than `timeout_s`
    raises a `TransientToolError` (the tick is skipped, or the graph step is retried from its checkpoint).
    Reads run on one worker thread: a hung read blocks later ones behind it (each of which times out in
    turn) instead of piling up threads."""

    def __init__(self, inner: TelemetrySource, timeout_s: float) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self.inner = inner
        self.timeout_s = timeout_s
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="opsmedic-telemetry")

    def snapshot(self) -> ClusterSnapshot:
        from concurrent.futures import TimeoutError as FutureTimeout

        from core.errors import TransientToolError

        fut = self._pool.submit(self.inner.snapshot)
        try:
            snap: ClusterSnapshot = fut.result(timeout=self.timeout_s)
            return snap
        except FutureTimeout:
            fut.cancel()
            raise TransientToolError(f"telemetry read took longer than {self.timeout_s:g}s") from None

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


class KubeWorld:
    """A Kubernetes cluster through the official client: `KubernetesTelemetry` + `KubernetesBackend`."""

    kind = "kubernetes"

    def __init__(self, *, kubeconfig: Path | None, context: str | None, in_cluster: bool, namespace: str,
                 poll_interval_s: float, read_timeout_s: float = 10.0, prometheus_url: str | None = None,
                 drift_windows: Path | None = None, send: Callable[[str, str], None] | None = None,
                 env: Mapping[str, str] | None = None, mlflow_tracking_uri: str | None = None,
                 ca_bundle: Path | None = None, drift_windows_from: str = "auto") -> None:
        from tools.k8s_backend import KubernetesBackend, KubernetesTelemetry
        from tools.k8s_client import build_api_client
        from tools.pagerduty import pager_from_env

        env = os.environ if env is None else env  # the daemon passes what core.settings read
        # built first: a bad routing key (or retraining template) fails the start before any connection
        pager = pager_from_env(env)
        retrain_template = (env.get("OPSMEDIC_RETRAIN_JOB_TEMPLATE") or "").strip() or None

        self.api_client = build_api_client(kubeconfig, context=context, in_cluster=in_cluster)
        self.name = f"kubernetes:{namespace}"
        self.namespace = namespace
        self.clock: Clock = WallClock()
        # `*`: every namespace. Node actions (cordon, drain, reset) are cluster-wide; a pod or workload
        # action goes to the namespace its object is in (`KubernetesBackend` finds it, or the target names
        # it as namespace/name).
        every = namespace == "*"
        action_namespace = namespace
        # watch-based caches of nodes and pods: a tick reads memory, not two lists of the whole cluster
        cluster = KubernetesTelemetry(self.api_client, namespace=None if every else namespace, watch=True)
        self._cluster = cluster
        telemetry: TelemetrySource = cluster
        metrics: TelemetrySource | None = None
        if prometheus_url:
            from tools.prometheus_source import PrometheusSource

            metrics = PrometheusSource(prometheus_url, ca_bundle=ca_bundle)
            telemetry = CompositeTelemetry(cluster, metrics)
        models: ActionBackend | None = None
        registry: Any = None  # the MLflow registry, when there is one (model actions, reference windows)
        abort_tagging: Callable[[ActionBackend], ActionBackend] | None = None
        if mlflow_tracking_uri:
            from tools.k8s_client import KubeCaller
            from tools.k8s_models import ClusterModelBackend
            from tools.k8s_serving import ServingApi
            from tools.mlflow_backend import MlflowModelBackend

            registry = MlflowModelBackend(mlflow_tracking_uri, clock=time.time)
            retrain = None
            if retrain_template is not None:
                from tools.k8s_retrain import RetrainJobs

                retrain = RetrainJobs(self.api_client, retrain_template, tracking_uri=mlflow_tracking_uri,
                                      namespace="default" if every else namespace, registry=registry)
            # serving follows the registry: the model's workload is rolled after the alias moves, and
            # verification waits for its rollout and (with Prometheus) for the SLO to hold again
            serving = ServingApi(self.api_client, KubeCaller(), namespace)
            models = ClusterModelBackend(registry, serving, metrics=metrics, retrain=retrain)

            def abort_tagging(inner: ActionBackend) -> ActionBackend:
                from tools.k8s_models import AbortTagging

                # an aborted canary's registry version is tagged, as the eval's registry bridge does
                return AbortTagging(inner, serving, registry)
        elif retrain_template is not None:
            log.warning("OPSMEDIC_RETRAIN_JOB_TEMPLATE is set but no MLflow registry is configured "
                        "(--mlflow-tracking-uri): retrain_model has no backend", extra={
                            "template": retrain_template})
        self.notify = NotifyBackend(time.time, send, pager, models=models)
        self._bounded = TimeoutTelemetry(telemetry, read_timeout_s)
        self.telemetry: TelemetrySource = self._bounded
        self.drift: DriftTelemetry | None = None
        source = _window_source(drift_windows, drift_windows_from, registry)
        if source is not None:
            from tools.drift_feed import drift_telemetry_from_settings

            self.drift = drift_telemetry_from_settings(self._bounded, source)
            self.telemetry = self.drift
            if not prometheus_url:
                log.warning("drift windows are configured but nothing reports models: the Kubernetes API knows "
                            "none; set OPSMEDIC_PROMETHEUS_URL so that service metrics name them",
                            extra={"drift_windows": str(drift_windows), "from": type(source).__name__})
        self.backend: ActionBackend = KubernetesBackend(self.api_client, namespace=action_namespace,
                                                        fallback=self.notify)
        if abort_tagging is not None:
            self.backend = abort_tagging(self.backend)
        self.tick_s = float(poll_interval_s)
        self.interval_s = float(poll_interval_s)
        # one prefix per namespace: every replica watching it shares (and may resume) the same threads
        self.thread_prefix = f"daemon:k8s:{namespace}:"
        self.server = str(getattr(self.api_client.configuration, "host", ""))
        self.created_wall = 0.0

    def restore(self, records: list[LedgerRecord]) -> None:
        # a real cluster kept its state while we were away; only the pages we owe a resolve are ours
        self.notify.adopt_pages(records)

    def after_work(self, driver: Any) -> None:
        """Called by the daemon after each tick: resolve the pages of incidents that are over."""
        self.notify.resolve_pages(lambda incident_id: incident_still_open(driver, incident_id))

    def advance(self) -> None:
        return None

    def save(self) -> None:
        return None

    def describe(self) -> dict[str, Any]:
        out = {"kind": self.kind, "server": self.server, "namespace": self.namespace, "tick_s": self.tick_s,
               "pagerduty": self.notify.pager is not None, "mlflow": self.notify.models is not None,
               "retrain_jobs": getattr(self.notify.models, "retrain", None) is not None}
        if self.drift is not None:
            out["drift"] = self.drift.describe()
        return out

    def close(self) -> None:
        self.notify.close()
        self._cluster.close()
        if self.drift is not None:
            self.drift.close()  # closes the bounded reader under it too
        else:
            self._bounded.close()
        try:
            self.api_client.close()
        except Exception:  # closing a pool at shutdown must not mask the real exit status
            log.debug("closing the Kubernetes client failed", exc_info=True)


def _window_source(directory: Path | None, windows_from: str, registry: Any) -> FeatureWindowSource | None:
    """Where drift and validation windows come from (`--drift-windows-from`): `files` reads `directory`;
    `mlflow` takes each model's reference from its serving version's MLflow run (its `training` dataset) and
    its current window from a `serving` run or `directory`; `auto` is `mlflow` when a registry is configured,
    falling back to `directory`'s reference for a model whose run logged none, else `files`."""
    if windows_from == "files" or (windows_from == "auto" and registry is None):
        if directory is None:
            return None
        from tools.drift_feed import DirectoryWindowSource

        return DirectoryWindowSource(directory)
    if registry is None:  # `mlflow` without a registry: the configuration refuses it before this
        raise ValueError("drift windows from MLflow need an MLflow registry (--mlflow-tracking-uri)")
    from tools.drift_feed import DirectoryWindowSource
    from tools.mlflow_windows import MlflowRunWindowSource

    files = DirectoryWindowSource(directory) if directory is not None else None
    return MlflowRunWindowSource(registry, files=files, fallback_reference=windows_from == "auto")
