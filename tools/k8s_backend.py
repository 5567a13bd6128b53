"""The Kubernetes action backend: opsmedic's whitelisted actions through the official `kubernetes` client.

Layer: tools (imports `core.domain`, `core.errors`, `core.actions`, `tools.k8s_client`; never the
sandbox: in the demo, eval and tests it is pointed at `sandbox.k8s_api`, which speaks the same protocol as
kube-apiserver). Implements `tools.backend.ActionBackend`; `KubernetesTelemetry` builds what it can of
a `ClusterSnapshot` from the API, and `LeaseElector` (in `tools.k8s_lease`) elects the daemon's leader.

What each action does (namespace: the backend's, `default` unless configured; with `*` -- every namespace --
a pod or workload action goes to the namespace its object is in, found by name across namespaces, and a name
found in several is refused; a target may also name it, `team-a/trainer-0`):

=================  ====================================================================================
cordon_node        patch spec.unschedulable=true + taint `opsmedic.io/cordoned=<incident>:NoSchedule` +
                   label `opsmedic.io/cordoned-by=<incident>`; a cordoned node is a no-op (changed=False)
uncordon_node      the reverse, removing opsmedic's taint and label
drain_node         cordon, then the Eviction API for every pod on the node except DaemonSet and mirror
                   pods. A 429 (a PodDisruptionBudget) is retried until `deadline_s`, then the drain
                   fails with `DisruptionBudgetBlocked` so that the remediator escalates: opsmedic never
                   deletes around a PDB
reschedule_pod     evict the pod (its controller re-creates it elsewhere); on a NotReady node only with
                   params force=True, as a delete with gracePeriodSeconds=0 (no kubelet will confirm it)
restart_pod        delete the pod (graceful); its controller re-creates it. Pods without a controller
                   are refused: deleting them would not bring them back
scale_deployment   the workload named by the target -- StatefulSet, Deployment, Argo `Rollout` (each through
                   its `/scale` subresource) or KServe `InferenceService` (`spec.predictor.minReplicas`).
                   A scale-up is bounded by the free GPUs (`tools.k8s_serving.ServingApi.free_gpus`) and
                   by the policy maximum (`max_replicas`, lowered per workload by its annotation
                   `opsmedic.io/max-replicas`); past either the action fails with a PermanentToolError
                   that says to escalate: the result is ok=False, the graph's verify step records it
                   failed, re-diagnoses (bounded attempts) and escalates to a human
abort_rollout      the model's serving workload (label `opsmedic.io/model`, see `tools.k8s_serving`):
                   an Argo `Rollout` gets the documented abort, the merge patch `{"status":{"abort":true}}`
                   on its status subresource (the main resource when the CRD has none), as `kubectl argo
                   rollouts abort` sends it; a KServe `InferenceService` gets
                   `spec.predictor.canaryTrafficPercent: 0` (KServe's rollback: all traffic to the last
                   rolled-out revision). A Deployment or StatefulSet has no canary: refused. Verified
                   when the controller reports traffic back on stable (Argo: canary weight 0, or phase
                   Degraded with RolloutAborted; KServe: the latest revision at 0 %)
pause_job          StatefulSet/Deployment: one patch that records the replica count in the annotation
                   `opsmedic.io/paused-replicas` and sets replicas to 0 (pods stop, checkpoints stay);
                   a batch/v1 Job of that name instead gets spec.suspend=true
resume_job         the reverse: replicas back from the annotation (which is removed), or suspend=false
reset_gpu          a node-agent request (the API server cannot reset a GPU): the annotation
                   `opsmedic.io/reset-gpu-<index>: <request-id>` on the GPU's Node. The node agent
                   (a DaemonSet; the sandbox API plays it) resets the GPU when no process holds it and
                   answers in `opsmedic.io/reset-gpu-<index>-status: <request-id>:<state>[:<message>]`,
                   state accepted | in-progress | done | failed. Refused up front when a pod's
                   `opsmedic.io/gpus` annotation says it holds the GPU
=================  ====================================================================================

Each row is one entry of `HANDLERS` (the module's one table: per catalogue action its `_do_` and `_check_`
methods, or `Unsupported`). Every action carries parameters typed by `core.actions`, is idempotent per
idempotency key, and has a dry run: the API's `dryRun=All` where the API has one (patches, evictions, scale),
otherwise a report computed from a read. Model and notification actions are not Kubernetes actions: they go to
the `fallback` backend when one is given, else they fail with a PermanentToolError.

The incident id, used in labels and taints, is the idempotency key's prefix before the first `:` (the
graph's keys are `<incident>:<step>:<digest>`), sanitised to a label value.
"""

from __future__ import annotations

import copy
import datetime as dt
import logging
import re
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubernetes import client

from core.actions import (
    ACTION_TOOLS,
    DrainParams,
    RescheduleParams,
    ResourceKind,
    ScaleParams,
    Unsupported,
    actions_on,
    handler_table,
    supported,
    validate_action,
)
from core.domain import Action, ActionResult, ClusterSnapshot, NodeStatus, PodStatus, VerificationResult
from core.errors import PermanentToolError, ToolError, TransientToolError
from tools.backend import ActionBackend
from tools.k8s_client import KubeCaller, KubePermanentError, KubeTransientError, RetryPolicy, build_api_client
from tools.k8s_lease import LeaseElector
from tools.k8s_serving import ARGO_ROLLOUTS, KIND_NAMES, KSERVE_ISVC, ServingApi, ServingWorkload, gpus_per_replica

LABEL_CORDONED_BY = "opsmedic.io/cordoned-by"
TAINT_CORDONED = "opsmedic.io/cordoned"
ANN_CORDONED_AT = "opsmedic.io/cordoned-at"
ANN_PAUSED = "opsmedic.io/paused-replicas"
ANN_GPUS = "opsmedic.io/gpus"
ANN_STEP = "opsmedic.io/step"
LABEL_KIND = "opsmedic.io/workload-kind"
TAINT_UNSCHEDULABLE = "node.kubernetes.io/unschedulable"
POD_ACTIONS = actions_on(ResourceKind.pod)
WORKLOAD_ACTIONS = actions_on(ResourceKind.workload)
ANN_MAX_REPLICAS = "opsmedic.io/max-replicas"
MERGE_PATCH = "application/merge-patch+json"
_LABEL_VALUE = re.compile(r"[^A-Za-z0-9._-]")
log = logging.getLogger(__name__)


class DisruptionBudgetBlocked(PermanentToolError):
    """Evictions were refused (429) by a PodDisruptionBudget until the deadline: a human must decide."""

    def __init__(self, message: str, pods: list[str]) -> None:
        super().__init__(message)
        self.pods = pods


def reset_request_key(index: int) -> str:
    return f"opsmedic.io/reset-gpu-{index}"


def reset_status_key(index: int) -> str:
    return f"opsmedic.io/reset-gpu-{index}-status"


def label_value(text: str) -> str:
    """A valid label value (<= 63 chars of [A-Za-z0-9._-], alphanumeric at both ends)."""
    v = _LABEL_VALUE.sub("-", text)[:63].strip("-._")
    return v or "opsmedic"


def incident_of(idempotency_key: str) -> str:
    return label_value(idempotency_key.split(":", 1)[0] if idempotency_key else "opsmedic")


def node_ready(node: Any) -> bool:
    for c in (node.status.conditions or []) if node.status else []:
        if c.type == "Ready":
            return bool(c.status == "True")
    return False


def pod_ready(pod: Any) -> bool:
    for c in (pod.status.conditions or []) if pod.status else []:
        if c.type == "Ready":
            return bool(c.status == "True")
    return False


def _controller(pod: Any) -> Any | None:
    return next((o for o in (pod.metadata.owner_references or []) if o.controller), None)


def _is_daemon_or_mirror(pod: Any) -> bool:
    owner = _controller(pod)
    if owner is not None and owner.kind == "DaemonSet":
        return True
    return "kubernetes.io/config.mirror" in (pod.metadata.annotations or {})


def _split_gpu(target: str) -> tuple[str, int]:
    node, sep, gpu = target.partition("/")
    if not sep or not gpu.startswith("gpu-") or not gpu[4:].isdigit():
        raise PermanentToolError(f"{target!r} is not a GPU id (expected node-N/gpu-M)")
    return node, int(gpu[4:])


class KubernetesBackend:
    """`ActionBackend` over the Kubernetes API (see the module docstring for what each action does)."""

    def __init__(
        self,
        api_client: Any | None = None,
        *,
        kubeconfig: str | Path | None = None,
        context: str | None = None,
        in_cluster: bool = False,
        namespace: str = "default",
        retry: RetryPolicy | None = None,
        fallback: ActionBackend | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        eviction_poll_s: float = 2.0,
        eviction_deadline_s: float = 120.0,
        max_drain_wait_s: float | None = None,
        reset_ack_timeout_s: float = 5.0,
        action_clock: Callable[[], float] | None = None,
        record_events: bool = True,
        max_replicas: int = 32,
    ) -> None:
        self.api_client = api_client or build_api_client(kubeconfig, context=context, in_cluster=in_cluster)
        self.core = client.CoreV1Api(self.api_client)
        self.apps = client.AppsV1Api(self.api_client)
        self.batch = client.BatchV1Api(self.api_client)
        self.namespace = namespace
        self.caller = KubeCaller(retry, sleep=sleep)
        self.fallback = fallback
        self._clock = clock
        self._sleep = sleep
        self._eviction_poll_s = eviction_poll_s
        self._eviction_deadline_s = eviction_deadline_s
        self._max_drain_wait_s = max_drain_wait_s
        self._reset_ack_timeout_s = reset_ack_timeout_s
        # The time stamped on results: the simulator's clock in the sandbox, wall time otherwise.
        self._action_clock = action_clock or time.time
        self._done: dict[str, ActionResult] = {}
        self._eviction_version = "policy/v1"
        self._record_events = record_events
        # the policy maximum of scale_deployment (a workload's opsmedic.io/max-replicas may only lower it)
        self.max_replicas = max_replicas
        self.serving = ServingApi(self.api_client, self.caller, namespace)
        self.custom = self.serving.custom
        self._involved: dict[str, dict[str, str]] = {}  # action key -> the object acted on, for its event
        # a view of a backend for every namespace (`_in`) still waits for pods of every namespace in a drain
        self._every_view = self.every_namespace

    # ------------------------------------------------------------------------------ the protocol

    def execute(self, action: Action, *, idempotency_key: str, dry_run: bool = False) -> ActionResult:
        """Run the action once per idempotency key. Failures come back as ok=False with the reason (the
        remediator's verify step escalates them); transient failures are not remembered, so the same key
        may be tried again later."""
        if idempotency_key in self._done:
            first = self._done[idempotency_key]
            return first.model_copy(update={"changed": False, "detail": f"already done: {first.detail}"})
        if action.name not in K8S_ACTIONS and self.fallback is not None:
            return self.fallback.execute(action, idempotency_key=idempotency_key, dry_run=dry_run)
        try:
            view, local = self._resolve(action)
            changed, detail = view.apply(local, idempotency_key=idempotency_key, dry_run=dry_run)
            result = ActionResult(
                action=action,
                ok=True,
                changed=changed and not dry_run,
                detail=detail,
                idempotency_key=idempotency_key,
                at_s=self._action_clock(),
                dry_run=dry_run,
            )
            if result.changed:
                view._event(local, detail, incident_of(idempotency_key))
        except TransientToolError as exc:
            return ActionResult(
                action=action,
                ok=False,
                changed=False,
                detail=str(exc),
                dry_run=dry_run,
                idempotency_key=idempotency_key,
                at_s=self._action_clock(),
            )
        except ToolError as exc:
            result = ActionResult(
                action=action,
                ok=False,
                changed=False,
                detail=str(exc),
                dry_run=dry_run,
                idempotency_key=idempotency_key,
                at_s=self._action_clock(),
            )
        if not dry_run:
            self._done[idempotency_key] = result
        return result

    def apply(self, action: Action, *, idempotency_key: str = "", dry_run: bool = False) -> tuple[bool, str]:
        """Carry the action out (or dry-run it). Returns (changed, detail); raises opsmedic ToolErrors."""
        validate_action(action)
        handler = HANDLERS[action.name]
        if isinstance(handler, Unsupported):
            raise PermanentToolError(f"{action.key}: {handler.reason}")
        return handler.do(self, action, incident_of(idempotency_key), dry_run)

    def verify(self, action: Action) -> VerificationResult:
        if action.name not in K8S_ACTIONS and self.fallback is not None:
            return self.fallback.verify(action)
        try:
            view, local = self._resolve(action)
            ok, detail = view._check(local)
        except ToolError as exc:
            ok, detail = False, f"cannot verify: {exc}"
        return VerificationResult(action=action, ok=ok, detail=detail, at_s=self._action_clock())

    # ------------------------------------------------------------------------------ namespaces

    @property
    def every_namespace(self) -> bool:
        return self.namespace in ("*", "")

    def _in(self, namespace: str) -> KubernetesBackend:
        """This backend addressing one namespace (the same client, results and retry policy)."""
        if namespace == self.namespace:
            return self
        view = copy.copy(self)
        view.namespace = namespace
        view.serving = ServingApi(self.api_client, self.caller, namespace)
        view.custom = view.serving.custom
        return view

    def _resolve(self, action: Action) -> tuple[KubernetesBackend, Action]:
        """The backend for the namespace the action's object lives in, and the action with a bare name.

        A pod or workload target may name its namespace (`team-a/trainer-0`). Otherwise a backend bound to
        one namespace uses it, as it always did; a backend for every namespace (`*`) finds the object's
        namespace (a name in several namespaces is refused: qualify it). Node actions are cluster-wide."""
        if action.name in POD_ACTIONS | WORKLOAD_ACTIONS and "/" in action.target:
            ns, _, name = action.target.partition("/")
            if not ns or not name or "/" in name:
                raise PermanentToolError(f"{action.target!r} is neither a name nor namespace/name")
            return self._in(ns), action.model_copy(update={"target": name})
        if not self.every_namespace:
            return self, action
        if action.name in POD_ACTIONS:
            return self._in(self._namespace_of("pod", action.target)), action
        if action.name in WORKLOAD_ACTIONS:
            return self._in(self._namespace_of("workload", action.target)), action
        if action.name == "abort_rollout":
            return self._in(self.serving.for_model(action.target).namespace), action
        return self._in("default"), action  # node actions: their events go to `default`, as kubectl's do

    def _cluster_lister(self, crd: tuple[str, str, str], selector: str) -> Callable[[], Any]:
        group, version, plural = crd
        return lambda: self.custom.list_cluster_custom_object(group, version, plural, field_selector=selector)

    def _namespace_of(self, what: str, name: str) -> str:
        sel = f"metadata.name={name}"
        listers: list[tuple[str, Callable[[], Any]]]
        if what == "pod":
            listers = [("pod", lambda: self.core.list_pod_for_all_namespaces(field_selector=sel))]
        else:
            listers = [
                ("statefulset", lambda: self.apps.list_stateful_set_for_all_namespaces(field_selector=sel)),
                ("deployment", lambda: self.apps.list_deployment_for_all_namespaces(field_selector=sel)),
                ("job", lambda: self.batch.list_job_for_all_namespaces(field_selector=sel)),
            ]
            for kind, crd in (("rollout", ARGO_ROLLOUTS), ("inferenceservice", KSERVE_ISVC)):
                listers.append((kind, self._cluster_lister(crd, sel)))
        found: set[str] = set()
        for kind, fn in listers:
            try:
                got: Any = self.caller.call(f"find {kind} {name} in every namespace", fn)
            except KubePermanentError as exc:
                if exc.status == 404:  # a CRD that is not installed
                    continue
                raise
            items = got.get("items") or [] if isinstance(got, dict) else got.items or []
            for item in items:
                meta = item.get("metadata") or {} if isinstance(item, dict) else item.metadata
                ns = meta.get("namespace") if isinstance(meta, dict) else meta.namespace
                if ns:
                    found.add(str(ns))
        if not found:
            raise PermanentToolError(f"no {what} named {name!r} in any namespace")
        if len(found) > 1:
            raise PermanentToolError(
                f"{what} {name!r} exists in namespaces {', '.join(sorted(found))}: name it as "
                f"namespace/{name}; opsmedic will not guess which")
        return found.pop()

    def executed_keys(self) -> set[str]:
        return set(self._done)

    def _event(self, action: Action, detail: str, incident: str) -> None:
        """Record a core/v1 Event on the object acted on, so `kubectl describe` tells who did what and why.
        Best effort: an action that happened is not failed by a missing event."""
        if not self._record_events:
            return
        target_kind = ACTION_TOOLS[action.name].target_kind
        # a GPU's event goes on its node; workloads and models on their StatefulSet (`_involved` may say better)
        kind = {ResourceKind.node: "Node", ResourceKind.gpu: "Node", ResourceKind.pod: "Pod"}.get(
            target_kind, "StatefulSet"
        )
        name = action.target.split("/")[0] if target_kind == ResourceKind.gpu else action.target
        involved: dict[str, str] = {
            "kind": kind,
            "name": name,
            "apiVersion": "apps/v1" if kind == "StatefulSet" else "v1",
        }
        involved = self._involved.pop(action.key, involved)
        if kind != "Node":
            involved.setdefault("namespace", self.namespace)
        # an Event lives in its object's namespace; a cluster-scoped object's (a Node's) in `default`, where
        # the kubelet records its own: kube-apiserver refuses any other ("does not match event.namespace")
        event_ns = involved.get("namespace") or "default"
        now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        body = {
            "metadata": {"generateName": f"{name}.opsmedic-", "namespace": event_ns},
            "involvedObject": involved,
            "reason": "Opsmedic" + "".join(w.title() for w in action.name.split("_")),
            "message": f"{incident}: {detail}"[:1024],
            "type": "Normal",
            "count": 1,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "source": {"component": "opsmedic"},
            "reportingComponent": "opsmedic",
            "reportingInstance": label_value(socket.gethostname()),
        }
        try:
            self.caller.call(
                f"record event for {action.key}", self.core.create_namespaced_event, event_ns, body
            )
        except ToolError as exc:
            log.warning("could not record an event for %s: %s", action.key, exc)

    # ----------------------------------------------------------------------------------- reads

    def _dry(self, dry_run: bool) -> dict[str, Any]:
        return {"dry_run": "All"} if dry_run else {}

    def _patch_custom(self, what: str, crd: tuple[str, str, str], name: str, body: dict[str, Any], dry_run: bool,
                      *, sub: str = "") -> None:
        """A JSON merge patch of a custom resource (Argo Rollout, KServe InferenceService), or of its `status`
        or `scale` subresource."""
        group, version, plural = crd
        patch = {"": self.custom.patch_namespaced_custom_object,
                 "status": self.custom.patch_namespaced_custom_object_status,
                 "scale": self.custom.patch_namespaced_custom_object_scale}[sub]
        self.caller.call(what, patch, group, version, self.namespace, plural, name, body,
                         _content_type=MERGE_PATCH, **self._dry(dry_run))

    def _node(self, name: str) -> Any:
        try:
            return self.caller.call(f"get node {name}", self.core.read_node, name)
        except KubePermanentError as exc:
            if exc.status == 404:
                raise PermanentToolError(f"node {name!r} not found") from exc
            raise

    def _pod(self, name: str) -> Any:
        try:
            return self.caller.call(
                f"get pod {self.namespace}/{name}", self.core.read_namespaced_pod, name, self.namespace
            )
        except KubePermanentError as exc:
            if exc.status == 404:
                raise PermanentToolError(f"pod {name!r} not found in namespace {self.namespace}") from exc
            raise

    def _pods_on(self, node: str) -> list[Any]:
        pods = self.caller.call(
            f"list pods on {node}",
            self.core.list_pod_for_all_namespaces,
            field_selector=f"spec.nodeName={node}",
        )
        return list(pods.items or [])

    def _require_workload(self, name: str) -> tuple[str, Any]:
        found = self._workload(name)
        if found is None:
            raise PermanentToolError(f"no StatefulSet, Deployment or Job named {name!r} in {self.namespace}")
        return found

    def _workload(self, name: str) -> tuple[str, Any] | None:
        """("statefulset" | "deployment" | "job", object) for a workload name, or None."""
        for kind, fn in (
            ("statefulset", self.apps.read_namespaced_stateful_set),
            ("deployment", self.apps.read_namespaced_deployment),
            ("job", self.batch.read_namespaced_job),
        ):
            try:
                return kind, self.caller.call(f"get {kind} {self.namespace}/{name}", fn, name, self.namespace)
            except KubePermanentError as exc:
                if exc.status != 404:
                    raise
        return None

    def _workload_pods(self, obj: Any) -> list[Any]:
        match = (obj.spec.selector.match_labels or {}) if obj.spec and obj.spec.selector else {}
        selector = ",".join(f"{k}={v}" for k, v in sorted(match.items()))
        if not selector:
            return []
        pods = self.caller.call(
            f"list pods of {obj.metadata.name}",
            self.core.list_namespaced_pod,
            self.namespace,
            label_selector=selector,
        )
        return list(pods.items or [])

    def _taints(self, node: Any) -> list[dict[str, Any]]:
        raw = self.api_client.sanitize_for_serialization(node.spec.taints or []) if node.spec else []
        return [dict(t) for t in raw]

    # --------------------------------------------------------------------------------- nodes

    def _patch_node(self, name: str, body: dict[str, Any], dry_run: bool) -> Any:
        return self.caller.call(f"patch node {name}", self.core.patch_node, name, body, **self._dry(dry_run))

    def _do_cordon_node(self, action: Action, incident: str, dry_run: bool) -> tuple[bool, str]:
        name = action.target
        for _ in range(3):  # optimistic concurrency: re-read on a 409 and try again
            node = self._node(name)
            labels = node.metadata.labels or {}
            if node.spec and node.spec.unschedulable:
                who = labels.get(LABEL_CORDONED_BY)
                by = f"by opsmedic ({who})" if who else "by someone else; left as it is"
                return False, f"{name} was already cordoned {by}"
            taints = [t for t in self._taints(node) if t.get("key") != TAINT_CORDONED]
            taints.append({"key": TAINT_CORDONED, "value": incident, "effect": "NoSchedule"})
            body = {
                "metadata": {
                    "resourceVersion": node.metadata.resource_version,
                    "labels": {LABEL_CORDONED_BY: incident},
                    "annotations": {ANN_CORDONED_AT: dt.datetime.now(dt.UTC).isoformat()},
                },
                "spec": {"unschedulable": True, "taints": taints},
            }
            try:
                self._patch_node(name, body, dry_run)
            except KubePermanentError as exc:
                if exc.status == 409:
                    continue
                raise
            what = (
                f"{name} cordoned (spec.unschedulable, taint {TAINT_CORDONED}={incident}:NoSchedule, label "
                f"{LABEL_CORDONED_BY}={incident})"
            )
            return True, ("dry run: would have " + what) if dry_run else what
        raise KubeTransientError(
            f"cordon {name}: the node kept changing under us (409 three times)", 409, "Conflict"
        )

    def _do_uncordon_node(self, action: Action, incident: str, dry_run: bool) -> tuple[bool, str]:
        name = action.target
        for _ in range(3):
            node = self._node(name)
            labels = node.metadata.labels or {}
            mine = [t for t in self._taints(node) if t.get("key") == TAINT_CORDONED]
            if not (node.spec and node.spec.unschedulable) and not mine and LABEL_CORDONED_BY not in labels:
                return False, f"{name} was already schedulable"
            taints = [
                t for t in self._taints(node) if t.get("key") not in (TAINT_CORDONED, TAINT_UNSCHEDULABLE)
            ]
            body = {
                "metadata": {
                    "resourceVersion": node.metadata.resource_version,
                    "labels": {LABEL_CORDONED_BY: None},
                    "annotations": {ANN_CORDONED_AT: None},
                },
                "spec": {"unschedulable": None, "taints": taints or None},
            }
            try:
                self._patch_node(name, body, dry_run)
            except KubePermanentError as exc:
                if exc.status == 409:
                    continue
                raise
            return True, ("dry run: would have " if dry_run else "") + f"{name} uncordoned"
        raise KubeTransientError(
            f"uncordon {name}: the node kept changing (409 three times)", 409, "Conflict"
        )

    # ----------------------------------------------------------------------------- evictions

    def _evict_once(self, pod: Any, grace: int | None, dry_run: bool) -> str:
        """One eviction: 'evicted' | 'gone' | 'blocked' (429). Other failures raise."""
        ns, name = pod.metadata.namespace, pod.metadata.name
        for _ in range(2):
            body: dict[str, Any] = {
                "apiVersion": self._eviction_version,
                "kind": "Eviction",
                "metadata": {"name": name, "namespace": ns},
            }
            if grace is not None:
                body["deleteOptions"] = {"gracePeriodSeconds": grace}
            if dry_run:
                body.setdefault("deleteOptions", {})["dryRun"] = ["All"]
            try:
                self.caller.call(
                    f"evict pod {ns}/{name}",
                    self.core.create_namespaced_pod_eviction,
                    name,
                    ns,
                    body,
                    retry_429=False,
                    **self._dry(dry_run),
                )
                return "evicted"
            except KubeTransientError as exc:
                if exc.status == 429:
                    return "blocked"
                raise
            except KubePermanentError as exc:
                if exc.status == 404 and exc.reason == "NotFound" and "Eviction" not in str(exc):
                    return "gone"
                # API servers before 1.22 know Eviction only as policy/v1beta1: fall back once.
                if (
                    exc.status in (400, 404)
                    and self._eviction_version == "policy/v1"
                    and "Eviction" in str(exc)
                ):
                    self._eviction_version = "policy/v1beta1"
                    continue
                raise
        raise PermanentToolError(f"evict pod {ns}/{name}: the API server accepts no Eviction version we know")

    def _evict_until(
        self, pods: list[Any], grace: int | None, deadline_s: float, dry_run: bool
    ) -> tuple[list[str], list[str], list[str]]:
        """Evict pods, retrying those a PDB protects until the deadline. Returns (evicted, gone, blocked)."""
        evicted: list[str] = []
        gone: list[str] = []
        pending = list(pods)
        end = self._clock() + deadline_s
        while True:
            blocked = []
            for pod in pending:
                outcome = self._evict_once(pod, grace, dry_run)
                if outcome == "blocked":
                    blocked.append(pod)
                else:
                    (evicted if outcome == "evicted" else gone).append(pod.metadata.name)
            pending = blocked
            if not pending or dry_run or self._clock() + self._eviction_poll_s > end:
                break
            self._sleep(self._eviction_poll_s)
        return evicted, gone, [p.metadata.name for p in pending]

    def _do_drain_node(self, action: Action, incident: str, dry_run: bool) -> tuple[bool, str]:
        name = action.target
        p = action.params_as(DrainParams)
        grace, deadline = p.grace_period_s, float(p.deadline_s)
        if self._max_drain_wait_s is not None:
            deadline = min(deadline, self._max_drain_wait_s)
        cordoned, cordon_detail = self._do_cordon_node(action, incident, dry_run)
        pods = self._pods_on(name)
        skipped = [p.metadata.name for p in pods if _is_daemon_or_mirror(p)]
        going = [
            p.metadata.name for p in pods if p.metadata.deletion_timestamp and not _is_daemon_or_mirror(p)
        ]
        todo = [p for p in pods if not _is_daemon_or_mirror(p) and not p.metadata.deletion_timestamp]
        evicted, gone, blocked = self._evict_until(todo, grace, deadline, dry_run)
        notes = []
        if skipped:
            notes.append(f"skipped DaemonSet/mirror pods {', '.join(skipped)}")
        if going:
            notes.append(f"already terminating: {', '.join(going)}")
        if dry_run:
            text = f"dry run: {cordon_detail}; would evict {len(evicted)} pod(s)"
            text += f": {', '.join(evicted)}" if evicted else ""
            if blocked:
                text += f"; a PodDisruptionBudget blocks {', '.join(blocked)} now"
            return bool(evicted) or cordoned, "; ".join([text, *notes])
        if blocked:
            raise DisruptionBudgetBlocked(
                f"drain of {name} blocked: a PodDisruptionBudget refused eviction of {', '.join(blocked)} "
                f"for {deadline:.0f}s (evicted {len(evicted)}: {', '.join(evicted) or 'none'}); escalate: "
                "opsmedic does not delete around a PDB",
                blocked,
            )
        if not evicted and not gone:
            return cordoned, "; ".join([f"{name} had no pods to evict ({cordon_detail})", *notes])
        text = f"evicted {len(evicted)} pod(s) from {name} through the Eviction API: {', '.join(evicted)}"
        return True, "; ".join([text, *notes])

    # ----------------------------------------------------------------------------------- pods

    def _do_reschedule_pod(self, action: Action, incident: str, dry_run: bool) -> tuple[bool, str]:
        pod = self._pod(action.target)
        node_name = pod.spec.node_name if pod.spec else None
        if node_name and not node_ready(self._node(node_name)):
            if not action.params_as(RescheduleParams).force:
                raise PermanentToolError(
                    f"{action.target} is on NotReady node {node_name}: an eviction cannot "
                    "complete there; reschedule with force"
                )
            self.caller.call(
                f"force delete pod {action.target}",
                self.core.delete_namespaced_pod,
                action.target,
                self.namespace,
                grace_period_seconds=0,
                body={"gracePeriodSeconds": 0},
                **self._dry(dry_run),
            )
            what = (
                f"{action.target} force-deleted (grace 0) from NotReady node {node_name}; its controller "
                "re-creates it on a schedulable node"
            )
            return True, ("dry run: would have " + what) if dry_run else what
        evicted, gone, blocked = self._evict_until([pod], None, self._eviction_deadline_s, dry_run)
        if blocked:
            if dry_run:
                return False, f"dry run: a PodDisruptionBudget blocks the eviction of {action.target} now"
            raise DisruptionBudgetBlocked(
                f"a PodDisruptionBudget refused the eviction of {action.target} for "
                f"{self._eviction_deadline_s:.0f}s; escalate",
                blocked,
            )
        if gone:
            return False, f"{action.target} was already gone"
        what = (
            f"{action.target} evicted from {node_name or 'no node'}; its controller re-creates it elsewhere"
        )
        return True, ("dry run: would have " + what) if dry_run else what

    def _do_restart_pod(self, action: Action, incident: str, dry_run: bool) -> tuple[bool, str]:
        pod = self._pod(action.target)
        owner = _controller(pod)
        if owner is None:
            raise PermanentToolError(
                f"{action.target} has no controller: deleting it would not bring it back"
            )
        self.caller.call(
            f"delete pod {action.target}",
            self.core.delete_namespaced_pod,
            action.target,
            self.namespace,
            **self._dry(dry_run),
        )
        what = f"{action.target} deleted; its {owner.kind} {owner.name} re-creates it"
        return True, ("dry run: would have " + what) if dry_run else what

    # ------------------------------------------------------------------------------ workloads

    def _scale_api(self, kind: str) -> tuple[Callable[..., Any], Callable[..., Any]]:
        if kind == "statefulset":
            return self.apps.read_namespaced_stateful_set_scale, self.apps.patch_namespaced_stateful_set_scale
        return self.apps.read_namespaced_deployment_scale, self.apps.patch_namespaced_deployment_scale

    def _do_scale_deployment(self, action: Action, incident: str, dry_run: bool) -> tuple[bool, str]:
        want = action.params_as(ScaleParams).replicas
        w = self.serving.by_name(action.target)
        if w is None:
            raise PermanentToolError(
                f"no StatefulSet, Deployment, Rollout or InferenceService named {action.target!r} "
                f"in {self.namespace}"
            )
        self._involved[action.key] = self._ref(w)
        have = self._replicas(w)
        if have == want:
            return False, f"{w.title} already has {want} replica(s)"
        if want > have:
            self._check_scale_bounds(w, have, want)
        if w.kind == "inferenceservice":
            predictor = w.spec.get("predictor") or {}
            patch: dict[str, Any] = {"minReplicas": want}
            top = predictor.get("maxReplicas")
            if isinstance(top, int) and 0 < top < want:
                patch["maxReplicas"] = want  # KServe rejects minReplicas above maxReplicas
            self._patch_custom(f"scale {w.title}", KSERVE_ISVC, w.name, {"spec": {"predictor": patch}},
                               dry_run)
            what = f"{w.title} scaled from {have} to {want} replica(s) (spec.predictor.minReplicas)"
        else:
            body = {"spec": {"replicas": want}}
            if w.kind == "rollout":
                self._patch_custom(f"scale {w.title}", ARGO_ROLLOUTS, w.name, body, dry_run, sub="scale")
            else:
                _, patch_scale = self._scale_api(w.kind)
                self.caller.call(
                    f"scale {w.title}", patch_scale, w.name, self.namespace, body, **self._dry(dry_run)
                )
            what = f"{w.kind} {w.name} scaled from {have} to {want} replica(s)"
        return True, ("dry run: would have " + what) if dry_run else what

    def _ref(self, w: ServingWorkload) -> dict[str, str]:
        return {"kind": KIND_NAMES[w.kind], "name": w.name, "apiVersion": str(w.obj.get("apiVersion") or "")}

    def _replicas(self, w: ServingWorkload) -> int:
        """The replica count the workload asks for now (its /scale spec; KServe: minReplicas, default 1)."""
        if w.kind == "inferenceservice":
            low = (w.spec.get("predictor") or {}).get("minReplicas")
            return int(low) if isinstance(low, int) else 1
        if w.kind == "rollout":
            group, version, plural = ARGO_ROLLOUTS
            scale: Any = self.caller.call(
                f"get {w.title} scale",
                self.custom.get_namespaced_custom_object_scale,
                group,
                version,
                self.namespace,
                plural,
                w.name,
            )
            return int((scale.get("spec") or {}).get("replicas") or 0)
        read, _ = self._scale_api(w.kind)
        got = self.caller.call(f"get {w.title} scale", read, w.name, self.namespace)
        return int(got.spec.replicas or 0) if got.spec else 0

    def _check_scale_bounds(self, w: ServingWorkload, have: int, want: int) -> None:
        """A scale-up past the policy maximum or past the free GPUs fails permanently: a human decides."""
        limit, source = self.max_replicas, "the policy maximum"
        own = w.annotations.get(ANN_MAX_REPLICAS)
        if own is not None:
            if not own.strip().isdigit():
                raise PermanentToolError(
                    f"{w.title}: annotation {ANN_MAX_REPLICAS}={own!r} is not a replica count; escalate"
                )
            if int(own) < limit:
                limit, source = int(own), f"its annotation {ANN_MAX_REPLICAS}"
        if want > limit:
            raise PermanentToolError(
                f"scaling {w.title} to {want} replicas exceeds {source} of {limit}; escalate: "
                "capacity beyond it is a human decision"
            )
        per = gpus_per_replica(w)
        need = (want - have) * per
        if need > 0:
            free = self.serving.free_gpus()
            if need > free:
                raise PermanentToolError(
                    f"scaling {w.title} from {have} to {want} replicas needs {need} GPU(s) "
                    f"({per} per replica) and only {free} are free on schedulable nodes; escalate: "
                    "the cluster has no room for it"
                )

    def _do_abort_rollout(self, action: Action, incident: str, dry_run: bool) -> tuple[bool, str]:
        model = action.target
        w = self.serving.for_model(model)
        self._involved[action.key] = self._ref(w)
        if w.kind == "rollout":
            status = w.status
            if status.get("abort") is True:
                return False, f"the rollout of model {model} ({w.title}) was already aborted"
            stable, current = status.get("stableRS"), status.get("currentPodHash")
            if stable and current and stable == current:
                raise PermanentToolError(
                    f"{w.title} (model {model}) has no update in progress (current pod hash {current} is "
                    "stable): nothing to abort"
                )
            body = {"status": {"abort": True}}
            try:
                self._patch_custom(f"abort {w.title}", ARGO_ROLLOUTS, w.name, body, dry_run, sub="status")
            except KubePermanentError as exc:
                if exc.status != 404:
                    raise
                # as `kubectl argo rollouts abort`: a Rollout CRD without the status subresource
                self._patch_custom(f"abort {w.title}", ARGO_ROLLOUTS, w.name, body, dry_run)
            what = (
                f"aborted the canary of model {model}: {w.title} status.abort=true (the Argo Rollouts "
                "controller sends all traffic back to the stable ReplicaSet)"
            )
        elif w.kind == "inferenceservice":
            predictor = w.spec.get("predictor") or {}
            pct = predictor.get("canaryTrafficPercent")
            if pct == 0:
                return False, f"the canary of model {model} ({w.title}) already has 0 % of traffic"
            if pct is None:
                raise PermanentToolError(
                    f"{w.title} (model {model}) has no canaryTrafficPercent: no canary rollout to abort"
                )
            self._patch_custom(f"abort {w.title}", KSERVE_ISVC, w.name,
                               {"spec": {"predictor": {"canaryTrafficPercent": 0}}}, dry_run)
            what = (
                f"aborted the canary of model {model}: {w.title} spec.predictor.canaryTrafficPercent "
                f"{pct} -> 0 (KServe pins all traffic to the last rolled-out revision)"
            )
        else:
            raise PermanentToolError(
                f"model {model} is served by {w.title}, which has no canary rollout to abort "
                "(only an Argo Rollout or a KServe InferenceService has one)"
            )
        return True, ("dry run: would have " + what) if dry_run else what

    def _check_abort(self, model: str) -> tuple[bool, str]:
        w = self.serving.for_model(model)
        status = w.status
        if w.kind == "rollout":
            if status.get("abort") is not True:
                return False, f"{w.title}: status.abort is not set"
            weights = (status.get("canary") or {}).get("weights") or {}
            if weights:
                canary = int((weights.get("canary") or {}).get("weight") or 0)
                stable = int((weights.get("stable") or {}).get("weight") or 0)
                if canary == 0:
                    return True, f"{w.title} aborted; traffic stable {stable} %, canary {canary} %"
                return False, (
                    f"{w.title}: abort requested (status.abort=true) but the canary still has {canary} % of "
                    "traffic: the Argo Rollouts controller has not reported traffic back on stable yet"
                )
            message = str(status.get("message") or "")
            if status.get("phase") == "Degraded" and "RolloutAborted" in message:
                return True, f"{w.title} aborted: {message}"
            return False, (
                f"{w.title}: abort requested (status.abort=true); the Argo Rollouts controller has not "
                "reported traffic back on stable yet"
            )
        if w.kind == "inferenceservice":
            pct = (w.spec.get("predictor") or {}).get("canaryTrafficPercent")
            if pct != 0:
                return False, f"{w.title}: canaryTrafficPercent is {pct}"
            traffic = (((status.get("components") or {}).get("predictor") or {}).get("traffic")) or []
            latest = [t for t in traffic if t.get("latestRevision")]
            if not traffic:
                return False, (
                    f"{w.title}: canaryTrafficPercent=0 requested; the KServe controller has not reported "
                    "its traffic split yet"
                )
            share = sum(int(t.get("percent") or 0) for t in latest)
            return share == 0, f"{w.title}: latest revision has {share} % of traffic"
        return False, f"model {model} is served by {w.title}, which has no canary"

    def _patch_workload(self, kind: str, name: str, body: dict[str, Any], dry_run: bool) -> Any:
        fn = {
            "statefulset": self.apps.patch_namespaced_stateful_set,
            "deployment": self.apps.patch_namespaced_deployment,
            "job": self.batch.patch_namespaced_job,
        }[kind]
        return self.caller.call(f"patch {kind} {name}", fn, name, self.namespace, body, **self._dry(dry_run))

    def _do_pause_job(self, action: Action, incident: str, dry_run: bool) -> tuple[bool, str]:
        kind, obj = self._require_workload(action.target)
        anns = obj.metadata.annotations or {}
        if kind == "job":
            if obj.spec.suspend:
                return False, f"job {action.target} was already suspended"
            self._patch_workload(
                kind,
                action.target,
                {
                    "spec": {"suspend": True},
                    "metadata": {"annotations": {ANN_PAUSED: f"suspended by {incident}"}},
                },
                dry_run,
            )
            what = f"job {action.target} suspended (spec.suspend=true)"
        else:
            replicas = obj.spec.replicas if obj.spec.replicas is not None else 1
            if replicas == 0 and ANN_PAUSED in anns:
                return (
                    False,
                    f"{kind} {action.target} was already paused (replicas 0, was {anns[ANN_PAUSED]})",
                )
            if replicas == 0:
                return False, f"{kind} {action.target} already has 0 replicas (not paused by opsmedic)"
            # One patch, so the count to resume to is recorded atomically with the scale-down.
            self._patch_workload(
                kind,
                action.target,
                {"metadata": {"annotations": {ANN_PAUSED: str(replicas)}}, "spec": {"replicas": 0}},
                dry_run,
            )
            what = (
                f"{kind} {action.target} paused: scaled from {replicas} to 0 "
                f"(annotation {ANN_PAUSED}={replicas})"
            )
        return True, ("dry run: would have " + what) if dry_run else what

    def _do_resume_job(self, action: Action, incident: str, dry_run: bool) -> tuple[bool, str]:
        kind, obj = self._require_workload(action.target)
        anns = obj.metadata.annotations or {}
        if kind == "job":
            if not obj.spec.suspend:
                return False, f"job {action.target} was not suspended"
            self._patch_workload(
                kind,
                action.target,
                {"spec": {"suspend": False}, "metadata": {"annotations": {ANN_PAUSED: None}}},
                dry_run,
            )
            what = f"job {action.target} resumed (spec.suspend=false)"
        else:
            if ANN_PAUSED not in anns:
                if (obj.spec.replicas or 0) > 0:
                    return False, f"{kind} {action.target} was not paused ({obj.spec.replicas} replica(s))"
                raise PermanentToolError(
                    f"{kind} {action.target} has 0 replicas and no {ANN_PAUSED} annotation: "
                    "nothing says how many replicas to resume"
                )
            try:
                replicas = int(anns[ANN_PAUSED])
            except ValueError:
                raise PermanentToolError(
                    f"{kind} {action.target}: {ANN_PAUSED}={anns[ANN_PAUSED]!r} is not a replica count"
                ) from None
            self._patch_workload(
                kind,
                action.target,
                {"metadata": {"annotations": {ANN_PAUSED: None}}, "spec": {"replicas": replicas}},
                dry_run,
            )
            what = f"{kind} {action.target} resumed with {replicas} replica(s)"
        return True, ("dry run: would have " + what) if dry_run else what

    # ---------------------------------------------------------------------------------- GPUs

    def _gpu_users(self, node: str, gpu_id: str) -> list[str]:
        return [
            p.metadata.name
            for p in self._pods_on(node)
            if gpu_id in ((p.metadata.annotations or {}).get(ANN_GPUS) or "").split(",")
        ]

    def _do_reset_gpu(self, action: Action, incident: str, dry_run: bool) -> tuple[bool, str]:
        node_name, idx = _split_gpu(action.target)
        node = self._node(node_name)
        if not node_ready(node):
            raise PermanentToolError(f"cannot reset {action.target}: node {node_name} is NotReady")
        users = self._gpu_users(node_name, action.target)
        if users:
            raise PermanentToolError(
                f"cannot reset {action.target}: in use by pod {', '.join(users)}; move the pod first"
            )
        anns = node.metadata.annotations or {}
        status = anns.get(reset_status_key(idx), "")
        if status.split(":")[1:2] in (["accepted"], ["in-progress"]):
            return False, f"{action.target} reset already in progress ({status})"
        request = f"{incident}-{int(self._action_clock() * 1000) % 10**10}"
        self._patch_node(node_name, {"metadata": {"annotations": {reset_request_key(idx): request}}}, dry_run)
        if dry_run:
            return True, (
                f"dry run: would have asked the node agent on {node_name} to reset GPU {idx} "
                f"(annotation {reset_request_key(idx)}={request})"
            )
        end = self._clock() + self._reset_ack_timeout_s
        answer = ""
        while True:
            anns = self._node(node_name).metadata.annotations or {}
            answer = anns.get(reset_status_key(idx), "")
            if answer.startswith(request + ":") or self._clock() >= end:
                break
            self._sleep(0.2)
        if not answer.startswith(request + ":"):
            return True, f"{action.target} reset requested from the node agent on {node_name} (no answer yet)"
        state, _, message = answer[len(request) + 1 :].partition(":")
        if state == "failed":
            raise PermanentToolError(
                f"the node agent on {node_name} could not reset {action.target}: {message}"
            )
        return True, f"{action.target} reset requested; node agent on {node_name}: {state}"

    # ---------------------------------------------------------------------------- verification

    def _check(self, a: Action) -> tuple[bool, str]:
        handler = HANDLERS[a.name]
        if isinstance(handler, Unsupported):
            return False, f"{a.key}: not a Kubernetes action"
        return handler.check(self, a)

    def _check_cordon_node(self, a: Action) -> tuple[bool, str]:
        t = a.target
        node = self._node(t)
        unsched = bool(node.spec and node.spec.unschedulable)
        by = (node.metadata.labels or {}).get(LABEL_CORDONED_BY)
        return unsched, f"{t} unschedulable={unsched}" + (f", cordoned by {by}" if by else "")

    def _check_uncordon_node(self, a: Action) -> tuple[bool, str]:
        t = a.target
        node = self._node(t)
        unsched = bool(node.spec and node.spec.unschedulable)
        return not unsched, f"{t} unschedulable={unsched}"

    def _check_drain_node(self, a: Action) -> tuple[bool, str]:
        t = a.target
        left = [p.metadata.name for p in self._pods_on(t) if not _is_daemon_or_mirror(p)]
        if left:
            return False, f"pods still on {t}: {', '.join(left)}"
        if self._every_view:
            listing = self.caller.call("list pods", self.core.list_pod_for_all_namespaces)
        else:
            listing = self.caller.call("list pods", self.core.list_namespaced_pod, self.namespace)
        pods: list[Any] = listing.items
        waiting = [str(p.metadata.name) for p in pods or [] if not pod_ready(p)]
        if waiting:
            return False, f"{t} drained; waiting for {', '.join(waiting)} to be ready elsewhere"
        return True, f"{t} drained; pods running elsewhere"

    def _check_pod(self, a: Action) -> tuple[bool, str]:
        t = a.target
        try:
            pod = self._pod(t)
        except PermanentToolError:
            return False, f"{t} does not exist (yet)"
        node = pod.spec.node_name if pod.spec else None
        ready = (
            pod_ready(pod) and pod.status.phase == "Running" and pod.metadata.deletion_timestamp is None
        )
        if ready and node:
            ready = node_ready(self._node(node))
        return ready, f"{t} {pod.status.phase} on {node}" + ("" if ready else " (not ready)")

    def _check_reset_gpu(self, a: Action) -> tuple[bool, str]:
        t = a.target
        node_name, idx = _split_gpu(t)
        answer = (self._node(node_name).metadata.annotations or {}).get(reset_status_key(idx), "")
        if not answer:
            return False, f"no reset of {t} on record"
        state = answer.split(":")[1] if ":" in answer else answer
        return state == "done", f"{t} reset: {state}" + (f" ({answer})" if state == "failed" else "")

    def _check_abort_rollout(self, a: Action) -> tuple[bool, str]:
        return self._check_abort(a.target)

    def _check_scale_deployment(self, a: Action) -> tuple[bool, str]:
        want = a.params_as(ScaleParams).replicas
        w = self.serving.by_name(a.target)
        if w is not None and w.kind in ("rollout", "inferenceservice"):
            return self._check_scaled(w, want)
        return self._check_workload(a.target, want)

    def _check_pause_job(self, a: Action) -> tuple[bool, str]:
        return self._check_workload(a.target, 0, pausing=True)

    def _check_resume_job(self, a: Action) -> tuple[bool, str]:
        return self._check_workload(a.target, None)

    def _check_workload(self, t: str, want: int | None, *, pausing: bool = False) -> tuple[bool, str]:
        """A Job, StatefulSet or Deployment at `want` ready replicas (None: its own spec's count), or, when
        `pausing`, suspended or scaled to zero with no pod left."""
        found = self._workload(t)
        if found is None:
            return False, f"{t} not found"
        kind, obj = found
        if kind == "job":
            suspended = bool(obj.spec.suspend)
            active = (obj.status.active or 0) if obj.status else 0
            if pausing:
                return suspended and active == 0, f"job {t} suspend={suspended}, active pods {active}"
            return not suspended, f"job {t} suspend={suspended}, active pods {active}"
        want = obj.spec.replicas if want is None else want
        ready = (obj.status.ready_replicas or 0) if obj.status else 0
        have = obj.spec.replicas
        pods = self._workload_pods(obj)
        if pausing:
            ok = have == 0 and not pods
            return ok, f"{kind} {t} paused={ok} ({len(pods)} pod(s) left)"
        ok = have == want and ready == want
        return ok, f"{kind} {t}: {ready}/{have} ready (want {want})"

    def _check_scaled(self, w: ServingWorkload, want: int) -> tuple[bool, str]:
        if w.kind == "rollout":
            have = w.spec.get("replicas")
            ready = int(w.status.get("readyReplicas") or 0)
            return have == want and ready == want, f"{w.title}: {ready}/{have} ready (want {want})"
        low = (w.spec.get("predictor") or {}).get("minReplicas")
        pods = self.caller.call(
            f"list pods of {w.title}",
            self.core.list_namespaced_pod,
            self.namespace,
            label_selector=f"serving.kserve.io/inferenceservice={w.name}",
        )
        ready = sum(1 for p in pods.items or [] if pod_ready(p))
        return low == want and ready >= want, f"{w.title}: minReplicas {low}, {ready} predictor pod(s) ready"


# ------------------------------------------------------------------------------------- the action table


@dataclass(frozen=True)
class _Handler:
    """How the Kubernetes backend carries out one catalogue action (incident id, dry run) and reads it back."""

    do: Callable[[KubernetesBackend, Action, str, bool], tuple[bool, str]]
    check: Callable[[KubernetesBackend, Action], tuple[bool, str]]


_ELSEWHERE = "not a Kubernetes action (model and notification actions belong to other backends)"
# one entry per catalogue action; the unsupported ones go to `fallback` (MLflow, the pager) when there is one
_TABLE: dict[str, _Handler | Unsupported] = {
    "restart_pod": _Handler(KubernetesBackend._do_restart_pod, KubernetesBackend._check_pod),
    "reschedule_pod": _Handler(KubernetesBackend._do_reschedule_pod, KubernetesBackend._check_pod),
    "cordon_node": _Handler(KubernetesBackend._do_cordon_node, KubernetesBackend._check_cordon_node),
    "uncordon_node": _Handler(KubernetesBackend._do_uncordon_node, KubernetesBackend._check_uncordon_node),
    "drain_node": _Handler(KubernetesBackend._do_drain_node, KubernetesBackend._check_drain_node),
    "reset_gpu": _Handler(KubernetesBackend._do_reset_gpu, KubernetesBackend._check_reset_gpu),
    "scale_deployment": _Handler(KubernetesBackend._do_scale_deployment,
                                 KubernetesBackend._check_scale_deployment),
    "pause_job": _Handler(KubernetesBackend._do_pause_job, KubernetesBackend._check_pause_job),
    "resume_job": _Handler(KubernetesBackend._do_resume_job, KubernetesBackend._check_resume_job),
    "rollback_model": Unsupported(_ELSEWHERE),
    "retrain_model": Unsupported(_ELSEWHERE),
    "promote_model": Unsupported(_ELSEWHERE),
    "abort_rollout": _Handler(KubernetesBackend._do_abort_rollout, KubernetesBackend._check_abort_rollout),
    "notify": Unsupported(_ELSEWHERE),
    "escalate": Unsupported(_ELSEWHERE),
}
HANDLERS = handler_table("tools.k8s_backend.KubernetesBackend", _TABLE)
K8S_ACTIONS = supported(HANDLERS)


# ---------------------------------------------------------------------------------------- telemetry


class KubernetesTelemetry:
    """`TelemetrySource` for what the Kubernetes API knows: nodes and pods. GPUs and models come from NVML,
    Prometheus and MLflow, so their lists stay empty here.

    `epoch` turns API timestamps into opsmedic's seconds (the sandbox's `sandbox.k8s_api.EPOCH` makes them
    simulated seconds); `clock` gives the snapshot's `at_s`. With `logs=True` each pod's last `tail_lines`
    log lines are read too: one request per pod whose object changed since its log was read, or whose log is
    older than `log_max_age_s` (an unchanged healthy pod's log is not re-read every tick).

    With `watch=True` (the daemon) nodes and pods come from `tools.k8s_informer.Informer` caches (list once,
    then watch): a tick reads memory, not two lists of the whole cluster; a cache whose watch is broken is
    re-listed on the tick's own thread, so that a cluster that cannot be read still fails the read. Call
    `close()` to stop the watches."""

    def __init__(
        self,
        api_client: Any | None = None,
        *,
        kubeconfig: str | Path | None = None,
        namespace: str | None = None,
        epoch: dt.datetime | None = None,
        clock: Callable[[], float] | None = None,
        logs: bool = True,
        tail_lines: int = 10,
        retry: RetryPolicy | None = None,
        watch: bool = False,
        log_max_age_s: float = 60.0,
        stale_after_s: float = 3.0,
    ) -> None:
        self.api_client = api_client or build_api_client(kubeconfig)
        self.core = client.CoreV1Api(self.api_client)
        self.watch = watch
        self.log_max_age_s = log_max_age_s
        # a watch cache that has heard nothing from the API server for this long is confirmed live with one
        # small read before it is used: a hung API server must show as a failed read (the daemon then skips
        # its ticks and says not ready), never as a quiet cluster read from memory
        self.stale_after_s = stale_after_s
        self._logs: dict[str, tuple[str, float, list[str]]] = {}  # pod uid -> (resourceVersion, read at, tail)
        self._informers: tuple[Any, Any] | None = None
        self.namespace = namespace
        self.epoch = epoch or dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
        self._clock = clock or (lambda: (dt.datetime.now(dt.UTC) - self.epoch).total_seconds())
        self.logs = logs
        self.tail_lines = tail_lines
        self.caller = KubeCaller(retry)

    def _seconds(self, t: dt.datetime | None) -> float:
        if t is None:
            return 0.0
        if t.tzinfo is None:
            t = t.replace(tzinfo=dt.UTC)
        return (t - self.epoch).total_seconds()

    def _cached(self) -> tuple[list[Any], list[Any]]:
        from tools.k8s_informer import Informer

        if self._informers is None:
            nodes = Informer("nodes", self.core.list_node, caller=self.caller)
            pods = (Informer("pods", self.core.list_namespaced_pod, self.namespace, caller=self.caller)
                    if self.namespace else Informer("pods", self.core.list_pod_for_all_namespaces, caller=self.caller))
            nodes.start()
            pods.start()
            self._informers = (nodes, pods)
        out = []
        for inf in self._informers:
            if not inf.synced:
                inf._relist()
            out.append(inf.items())
        if any(inf.silent_for() > self.stale_after_s for inf in self._informers):
            self.caller.call("probe the API server", self.core.list_node, limit=1)
            for inf in self._informers:
                inf.heard()
        return out[0], out[1]

    def close(self) -> None:
        if self._informers is not None:
            for inf in self._informers:
                inf.stop()
            self._informers = None

    def snapshot(self) -> ClusterSnapshot:
        if self.watch:
            nodes_raw, pods_raw = self._cached()
            return self._build(nodes_raw, pods_raw)
        nodes_raw = self.caller.call("list nodes", self.core.list_node).items or []
        if self.namespace:
            pods_raw = (
                self.caller.call("list pods", self.core.list_namespaced_pod, self.namespace).items or []
            )
        else:
            pods_raw = self.caller.call("list pods", self.core.list_pod_for_all_namespaces).items or []
        return self._build(nodes_raw, pods_raw)

    def _build(self, nodes_raw: list[Any], pods_raw: list[Any]) -> ClusterSnapshot:
        nodes = [self._node(n) for n in nodes_raw]
        ready = {n.name: n.ready for n in nodes}
        pods = [self._pod(p, ready) for p in pods_raw]
        return ClusterSnapshot(at_s=self._clock(), gpus=[], nodes=nodes, pods=pods, models=[])

    def _node(self, n: Any) -> NodeStatus:
        taints = [t.key for t in (n.spec.taints or [])] if n.spec else []
        gpus = (n.status.capacity or {}).get("nvidia.com/gpu", "0") if n.status else "0"
        by = (n.metadata.labels or {}).get(LABEL_CORDONED_BY)
        return NodeStatus(
            name=n.metadata.name,
            ready=node_ready(n),
            unschedulable=bool(n.spec and n.spec.unschedulable),
            cordoned_by=by,
            gpus=int(gpus) if str(gpus).isdigit() else 0,
            taints=taints,
            # the kubelet's pressure conditions that are True (DiskPressure drives the node-disk-pressure runbook)
            conditions=[c.type for c in ((n.status.conditions or []) if n.status else [])
                        if c.type != "Ready" and c.status == "True"],
        )

    def _log_tail(self, meta: Any) -> list[str]:
        key = str(meta.uid or f"{meta.namespace}/{meta.name}")
        rv = str(meta.resource_version or "")
        now = time.monotonic()
        cached = self._logs.get(key)
        if cached is not None and cached[0] == rv and now - cached[1] < self.log_max_age_s:
            return list(cached[2])
        try:
            text = self.caller.call(
                f"logs of {meta.name}",
                self.core.read_namespaced_pod_log,
                meta.name,
                meta.namespace,
                tail_lines=self.tail_lines,
            )
            tail = [line for line in str(text or "").splitlines() if line][-self.tail_lines :]
        except ToolError:
            return []  # logs are evidence, not a reason to lose the snapshot
        if len(self._logs) > 100_000:  # pods come and go: forget the oldest half rather than grow forever
            for k in list(self._logs)[: len(self._logs) // 2]:
                del self._logs[k]
        self._logs[key] = (rv, now, tail)
        return list(tail)

    def _pod(self, p: Any, node_ready_by_name: dict[str, bool]) -> PodStatus:
        meta, spec, status = p.metadata, p.spec, p.status
        anns = meta.annotations or {}
        labels = meta.labels or {}
        owner = _controller(p)
        workload = owner.name if owner is not None else labels.get("app.kubernetes.io/name", meta.name)
        kind = labels.get(LABEL_KIND) or (
            "training" if owner is not None and owner.kind == "Job" else "inference"
        )
        phase = status.phase or "Unknown"
        ready = pod_ready(p)
        reason = status.reason
        statuses = status.container_statuses or []
        restarts = sum(c.restart_count for c in statuses)
        for c in statuses:
            if reason:
                break
            if c.state and c.state.waiting and c.state.waiting.reason:
                reason = c.state.waiting.reason
            elif not ready and c.last_state and c.last_state.terminated:
                reason = c.last_state.terminated.reason
        if not reason and phase == "Pending":
            reason = next(
                (c.reason for c in (status.conditions or []) if c.type == "PodScheduled" and c.reason), None
            )
        node = spec.node_name if spec else None
        if node and node_ready_by_name.get(node) is False and phase in ("Running", "Unknown"):
            phase, reason, ready = "Unknown", "NodeLost", False
        if phase not in ("Pending", "Running", "Succeeded", "Failed", "Unknown"):
            phase = "Unknown"
        log_tail: list[str] = []
        if self.logs and node:
            log_tail = self._log_tail(meta)
        step = anns.get(ANN_STEP)
        return PodStatus(
            name=meta.name,
            workload=workload,
            kind=kind,
            node=node,
            gpus=[g for g in (anns.get(ANN_GPUS) or "").split(",") if g],
            phase=phase,
            ready=ready,
            reason=reason,
            restarts=restarts,
            step=int(step) if step and step.isdigit() else None,
            started_at_s=self._seconds(status.start_time),
            log_tail=log_tail,
            namespace=meta.namespace,
        )


__all__ = [
    "LeaseElector",
    "DisruptionBudgetBlocked",
    "KubernetesBackend",
    "KubernetesTelemetry",
    "ServingWorkload",
    "label_value",
    "reset_request_key",
    "reset_status_key",
]
