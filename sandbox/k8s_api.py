"""A Kubernetes-compatible REST API over the simulated cluster, for the official `kubernetes` client.

Layer: sandbox (imports `core.domain`, `core.errors`, its own modules, and FastAPI/uvicorn to
serve). The code that heals a real cluster (`tools.k8s_backend`) is pointed at this API in the demo,
the eval and the tests, so it must answer what kube-apiserver answers: JSON objects with the fields the
client's strict models require, `Status` errors with the right code and reason, resourceVersions, dry
runs, and the PodDisruptionBudget check on evictions (429). `tests/contract` runs the same cases against
this API and a real kube-apiserver.

How the simulator maps onto Kubernetes objects (namespace `default` by default):

* simulator nodes   -> `Node`: Ready True / Unknown (kubelet silent past the grace period), capacity
  `nvidia.com/gpu`, allocatable = healthy GPUs (what the device plugin reports), the controllers' taints
  (`node.kubernetes.io/unschedulable`, `.../unreachable`) plus the taints, labels and annotations
  clients set. `spec.unschedulable` *is* the simulator's `SimNode.unschedulable`.
* simulator pods    -> `Pod`, owned by a `StatefulSet` named after the workload; status.phase, Ready,
  containerStatuses (restartCount, waiting reason such as CrashLoopBackOff), GPU limits, and the
  annotations `opsmedic.io/gpus` (GPU ids held) and `opsmedic.io/step` (training progress).
* workloads         -> `StatefulSet` with the `/scale` subresource; an inference workload whose scenario
  declares `rollout: {strategy: canary}` is an Argo Rollouts `Rollout` (argoproj.io/v1alpha1) instead,
  with `/scale` and `/status`, its canary steps (`setWeight` + `pause`) and, in its status, the
  simulator's canary: `canary.weights` (stable / canary share), `stableRS` / `currentPodHash` (one hash
  per model version), `abort`, phase Healthy | Progressing | Degraded (RolloutAborted). Every inference
  workload carries the label `opsmedic.io/model: <model>` (how `tools.k8s_serving` finds what serves a
  model). Models are not Kubernetes objects.
* KServe `InferenceService` (serving.kserve.io/v1beta1): stored (no simulator counterpart), so that the
  KServe path of abort and scale meets the same API here as on a cluster with the CRD.
* leases, events, configmaps, jobs, deployments, PodDisruptionBudgets, namespaces: stored by the API
  (no simulator counterpart); PDB status is computed from the pods, as the disruption controller would.

Writes change the simulator, through `Simulator.execute` wherever an action has the same meaning, so the
simulator's own rules apply (a cordoned node takes no pods, a GPU resets only when free):

* patch `spec.unschedulable`            -> cordon_node / uncordon_node
* `pods/eviction` (PDB permitting)      -> reschedule_pod (the controller re-creates it elsewhere)
* delete pod                            -> restart_pod (re-created in place); with gracePeriodSeconds=0 on a
  NotReady node -> reschedule_pod force=True. A graceful delete or eviction of a pod on a NotReady node
  leaves it Terminating (deletionTimestamp set), as a real cluster does when no kubelet confirms it.
* StatefulSet `/scale`                  -> pause_job (0) / resume_job, and for other counts the API marks
  surplus pods deleted or adds pods for the simulator's scheduler (the Simulator has no scale action).
* Rollout `/scale` (and spec.replicas)  -> the same replica change as a StatefulSet's (for an inference
  workload, `Simulator.scale_workload`, which refuses what free GPUs cannot hold: a 422).
* Rollout status `{"abort": true}`      -> `Simulator.abort_rollout(model)` (what the Argo Rollouts
  controller does on `kubectl argo rollouts abort`: all traffic back to stable). As on kube-apiserver with
  the status subresource, status in a patch of the main resource is ignored.
* node annotation `opsmedic.io/reset-gpu-<index>: <request-id>` -> reset_gpu on `<node>/gpu-<index>`; the
  outcome is published in `opsmedic.io/reset-gpu-<index>-status: <request-id>:<state>[:<message>]`
  with state accepted | in-progress | done | failed (the node-agent protocol, see tools/k8s_backend.py).

* template annotations of a StatefulSet or Rollout (`kubectl rollout restart`'s `restartedAt`), or a
  Rollout's `spec.restartAt` -> every pod of the workload re-created (`restart_pod` on each), generation +1.
  A re-created pod (restart, eviction, delete) is a new pod: new uid, restartCount 0, an empty log.
* a batch/v1 Job whose one container runs `python -m tools.train_job` (the retraining Job): the API's kubelet
  runs that entry point for real on a thread with the container's env; the Job's status follows.

Also: `kubectl get` Tables (`sandbox.k8s_table`), Events for faults (Warning, on the node, pod or workload
hit), cordons (NodeNotSchedulable), pod deletions (Killing) and restarts, and container names equal to the
metrics' `container` label (the workload's name).

Not served: protobuf, server-side apply, OpenAPI (`kubectl apply --validate=false` works), events.k8s.io,
pod creation (pods belong to workloads).

**Watches** stream what changed, as kube-apiserver's do: from `resourceVersion` (or, without one, every
current object as ADDED first), ADDED / MODIFIED / DELETED events carrying their resourceVersions, and
BOOKMARK events when asked for (`allowWatchBookmarks`), until `timeoutSeconds`. The simulated objects are
computed, not stored, so changes are found by re-listing: every list and every watch poll (each
`WATCH_POLL_S`) compares what it renders with what was last seen; an object that has disappeared becomes a
tombstone with a resourceVersion of its own. Tombstones are kept up to `WATCH_HISTORY`; a watch from a
resourceVersion older than the oldest one dropped answers 410 Gone (an ERROR event), and its client re-lists.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import copy
import datetime as dt
import hashlib
import json
import re
import secrets
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import uvicorn
import yaml
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse

from core.domain import Action
from core.errors import ToolError
from sandbox.cluster import SimPod, Simulator
from sandbox.k8s_patch import (
    JSON,
    ApiError,
    already_exists,
    apply_patch,
    bad_request,
    conflict,
    invalid,
    match_fields,
    match_labels,
    micro_time,
    not_found,
    rfc3339,
    route_not_found,
    selector_from_match_labels,
)
from sandbox.k8s_table import to_table, wants_table

EPOCH = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)  # simulated second 0, as a wall-clock time
WATCH_POLL_S = 0.25  # how often an open watch re-lists to find changes
WATCH_HISTORY = 10_000  # deletions remembered for watches that resume from a resourceVersion
WATCH_BOOKMARK_S = 5.0
SERVER_VERSION = {
    "major": "1",
    "minor": "30",
    "gitVersion": "v1.30.0-opsmedic-sandbox",
    "gitCommit": "sandbox",
    "gitTreeState": "clean",
    "buildDate": "2025-01-01T00:00:00Z",
    "goVersion": "go1.22.0",
    "compiler": "gc",
    "platform": "linux/amd64",
}
LABEL_WORKLOAD = "app.kubernetes.io/name"
LABEL_KIND = "opsmedic.io/workload-kind"
LABEL_MODEL = "opsmedic.io/model"
ANN_GPUS = "opsmedic.io/gpus"
ANN_STEP = "opsmedic.io/step"
RESET_REQUEST = re.compile(r"^opsmedic\.io/reset-gpu-(\d+)$")
TAINT_UNSCHEDULABLE = "node.kubernetes.io/unschedulable"
TAINT_UNREACHABLE = "node.kubernetes.io/unreachable"
SYSTEM_TAINTS = {TAINT_UNSCHEDULABLE, TAINT_UNREACHABLE, "node.kubernetes.io/not-ready"}
GPU_PRODUCTS = {"H100-80GB": "NVIDIA-H100-80GB-HBM3", "A100-80GB": "NVIDIA-A100-SXM4-80GB", "L4": "NVIDIA-L4"}
_DNS1123 = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_MICRO_TIME = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}(Z|[+-]\d{2}:\d{2})$")
_UID_NS = uuid.UUID("6f1c1a9e-7d55-4d7e-9b5e-0c0ffee00001")


def _uid(*parts: object) -> str:
    return str(uuid.uuid5(_UID_NS, "/".join(str(p) for p in parts)))


@dataclass(frozen=True)
class Res:
    """One resource of the API: what discovery lists and what a path names."""

    plural: str
    kind: str
    group: str
    version: str
    namespaced: bool
    verbs: tuple[str, ...]
    subresources: tuple[str, ...] = ()
    short: tuple[str, ...] = ()

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def singular(self) -> str:
        return self.kind.lower()


RO = ("get", "list")
RW = ("create", "delete", "get", "list", "patch", "update")
RESOURCES: list[Res] = [
    Res("namespaces", "Namespace", "", "v1", False, ("create", "get", "list"), short=("ns",)),
    Res("nodes", "Node", "", "v1", False, ("get", "list", "patch"), ("status",), short=("no",)),
    Res(
        "pods",
        "Pod",
        "",
        "v1",
        True,
        ("delete", "get", "list", "patch"),
        ("eviction", "log", "status"),
        short=("po",),
    ),
    Res("events", "Event", "", "v1", True, RW, short=("ev",)),
    Res("configmaps", "ConfigMap", "", "v1", True, RW, short=("cm",)),
    Res(
        "statefulsets",
        "StatefulSet",
        "apps",
        "v1",
        True,
        ("get", "list", "patch"),
        ("scale", "status"),
        short=("sts",),
    ),
    Res("deployments", "Deployment", "apps", "v1", True, RW, ("scale", "status"), short=("deploy",)),
    Res("jobs", "Job", "batch", "v1", True, RW, ("status",)),
    Res("poddisruptionbudgets", "PodDisruptionBudget", "policy", "v1", True, RW, ("status",), short=("pdb",)),
    Res(
        "poddisruptionbudgets",
        "PodDisruptionBudget",
        "policy",
        "v1beta1",
        True,
        RW,
        ("status",),
        short=("pdb",),
    ),
    Res("leases", "Lease", "coordination.k8s.io", "v1", True, RW),
    Res("rollouts", "Rollout", "argoproj.io", "v1alpha1", True, ("get", "list", "patch"), ("scale", "status"),
        short=("ro",)),
    Res("inferenceservices", "InferenceService", "serving.kserve.io", "v1beta1", True, RW, ("status",),
        short=("isvc",)),
]
BY_PATH: dict[tuple[str, str, str], Res] = {(r.group, r.version, r.plural): r for r in RESOURCES}
STORED = {
    "namespaces",
    "events",
    "configmaps",
    "deployments",
    "jobs",
    "poddisruptionbudgets",
    "leases",
    "inferenceservices",
}


# Job entry points the sandbox's kubelet runs for real (`python -m <module>`; see `_kubelet_job`)
JOB_ENTRY_POINTS = frozenset({"tools.train_job"})


@dataclass
class _NodeExtra:
    """What clients set on a node that the simulator does not model."""

    labels: dict[str, str] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)
    taints: list[JSON] = field(default_factory=list)
    # reset-gpu requests handled: gpu index -> (request id, state, message)
    resets: dict[int, tuple[str, str, str]] = field(default_factory=dict)


@dataclass
class _Terminating:
    since: float
    grace: int


class SandboxKubeAPI:
    """The API's state and logic. `app` is the FastAPI application; `lock` serialises access to the
    simulator (hold it while stepping the simulator from another thread)."""

    def __init__(
        self, sim: Simulator, *, namespace: str = "default", lock: threading.RLock | None = None
    ) -> None:
        self.sim = sim
        self.namespace = namespace
        self.lock = lock or threading.RLock()
        self._rv = 1
        self._seen: dict[str, tuple[str, int]] = {}  # object key -> (content digest, resourceVersion)
        self._store: dict[tuple[str, str, str], JSON] = {}  # (storage key, namespace, name) -> object
        self._node_extra: dict[str, _NodeExtra] = {n: _NodeExtra() for n in sim.nodes}
        self._incarnation: dict[str, int] = {}
        # a re-created pod is a new pod: its restartCount and its log start afresh (the simulator keeps one
        # SimPod per name, so the API remembers where the new incarnation's counters begin)
        self._restart_base: dict[str, int] = {}
        self._log_base: dict[str, int] = {}
        self._template_anns: dict[str, dict[str, str]] = {}  # workload -> its pod template's annotations
        self._restart_at: dict[str, str] = {}  # Rollout -> spec.restartAt (`kubectl argo rollouts restart`)
        self._faults_seen = 0  # simulator events already turned into API Events
        self._terminating: dict[str, _Terminating] = {}
        self._pod_annotations: dict[str, dict[str, str]] = {}  # what clients set on pods (by pod name)
        self._sts_meta: dict[str, dict[str, dict[str, str]]] = {}
        self._desired: dict[str, int] = {w.name: w.replicas for w in sim.scenario.workloads}
        self._sts_generation: dict[str, int] = {w.name: 1 for w in sim.scenario.workloads}
        self._workloads = {w.name: w for w in sim.scenario.workloads}
        self._aborted: dict[str, int] = {}  # rollout -> the canary version it aborted (its status.abort)
        self._aborted_at: dict[str, float] = {}
        # what lists and watches last saw, per resource: (namespace, name) -> (first resourceVersion, object)
        self._seen_objects: dict[str, dict[tuple[str, str], tuple[int, JSON]]] = {}
        self._tombstones: list[tuple[int, str, JSON]] = []  # (resourceVersion, resource, last object)
        self._compacted_rv = 0  # deletions at or below this were forgotten: a watch from here gets 410
        for ns in (namespace, "default", "kube-system", "kube-public", "kube-node-lease"):
            if ("namespaces", "", ns) not in self._store:
                self._put_stored(
                    "namespaces", "", self._new_meta_obj(RESOURCES[0], "", {"metadata": {"name": ns}})
                )
        self.app = self._build_app()

    # ------------------------------------------------------------------------------------ helpers

    def _next_rv(self) -> int:
        self._rv += 1
        return self._rv

    def _stamp(self, key: str, obj: JSON) -> JSON:
        """Give a computed object a resourceVersion that changes exactly when its content changes."""
        digest = hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()
        seen = self._seen.get(key)
        if seen is None or seen[0] != digest:
            seen = (digest, self._next_rv())
            self._seen[key] = seen
        obj["metadata"]["resourceVersion"] = str(seen[1])
        return obj

    def _time(self, sim_s: float) -> str:
        return rfc3339(EPOCH + dt.timedelta(seconds=sim_s))

    def _now(self) -> str:
        return self._time(self.sim.now)

    # -------------------------------------------------------------------------------------- nodes

    def _node_ready(self, name: str) -> bool:
        return self.sim.nodes[name].ready(self.sim.now)

    def render_node(self, name: str) -> JSON:
        n = self.sim.nodes[name]
        extra = self._node_extra[name]
        cluster = self.sim.scenario.cluster
        ready = n.ready(self.sim.now)
        # by id, not by scanning every GPU: a list of 1,250 nodes would otherwise visit 10,000 GPUs per node
        on_node = (self.sim.gpus.get(f"{name}/gpu-{i}") for i in range(cluster.gpus_per_node))
        healthy = sum(1 for g in on_node if g is not None and g.healthy)
        taints = [t for t in extra.taints if t.get("key") not in SYSTEM_TAINTS]
        if n.unschedulable:
            taints.append({"key": TAINT_UNSCHEDULABLE, "effect": "NoSchedule", "timeAdded": self._now()})
        if not ready:
            since = self._time((n.down_since or 0.0) + 40.0)
            taints += [
                {"key": TAINT_UNREACHABLE, "effect": "NoSchedule", "timeAdded": since},
                {"key": TAINT_UNREACHABLE, "effect": "NoExecute", "timeAdded": since},
            ]
        labels = {
            "kubernetes.io/hostname": name,
            "kubernetes.io/os": "linux",
            "kubernetes.io/arch": "amd64",
            "nvidia.com/gpu.product": GPU_PRODUCTS.get(cluster.gpu_model, cluster.gpu_model),
            "nvidia.com/gpu.count": str(cluster.gpus_per_node),
            **extra.labels,
        }
        annotations = dict(extra.annotations)
        for idx, (req, state, msg) in extra.resets.items():
            annotations[f"opsmedic.io/reset-gpu-{idx}-status"] = self._reset_status(
                name, idx, req, state, msg
            )
        heartbeat = self._now() if n.kubelet_up else self._time(n.down_since or 0.0)
        if ready:
            cond = {
                "type": "Ready",
                "status": "True",
                "reason": "KubeletReady",
                "message": "kubelet is posting ready status",
                "lastHeartbeatTime": heartbeat,
                "lastTransitionTime": self._time(0.0),
            }
        else:
            cond = {
                "type": "Ready",
                "status": "Unknown",
                "reason": "NodeStatusUnknown",
                "message": "Kubelet stopped posting node status.",
                "lastHeartbeatTime": heartbeat,
                "lastTransitionTime": self._time((n.down_since or 0.0) + 40.0),
            }
        pressure = [
            {
                "type": t,
                # DiskPressure is True where a test set it on the simulator's node (SimNode.disk_pressure)
                "status": ("True" if t == "DiskPressure" and n.disk_pressure else "False") if ready else "Unknown",
                "reason": f"KubeletHas{r}",
                "message": f"kubelet has {m}",
                "lastHeartbeatTime": heartbeat,
                "lastTransitionTime": self._time(0.0),
            }
            for t, r, m in (
                ("MemoryPressure", "SufficientMemory", "sufficient memory available"),
                ("DiskPressure", "NoDiskPressure", "no disk pressure"),
                ("PIDPressure", "SufficientPID", "sufficient PID available"),
            )
        ]
        cap = {
            "cpu": "192",
            "memory": "2113398124Ki",
            "pods": "110",
            "ephemeral-storage": "3748905444Ki",
            "nvidia.com/gpu": str(cluster.gpus_per_node),
        }
        alloc = {**cap, "cpu": "191", "memory": "2111198124Ki", "nvidia.com/gpu": str(healthy)}
        spec: JSON = {}
        if n.unschedulable:
            spec["unschedulable"] = True
        if taints:
            spec["taints"] = taints
        obj: JSON = {
            "kind": "Node",
            "apiVersion": "v1",
            "metadata": {
                "name": name,
                "uid": _uid("node", name),
                "creationTimestamp": self._time(0.0),
                "labels": labels,
                **({"annotations": annotations} if annotations else {}),
            },
            "spec": spec,
            "status": {
                "capacity": cap,
                "allocatable": alloc,
                "conditions": [*pressure, cond],
                "addresses": [{"type": "Hostname", "address": name}],
                "nodeInfo": {
                    "machineID": _uid("machine", name).replace("-", ""),
                    "systemUUID": _uid("system", name),
                    "bootID": _uid("boot", name),
                    "kernelVersion": "6.1.0-opsmedic",
                    "osImage": "Debian GNU/Linux 12 (bookworm)",
                    "containerRuntimeVersion": "containerd://1.7.0",
                    "kubeletVersion": "v1.30.0",
                    "kubeProxyVersion": "v1.30.0",
                    "operatingSystem": "linux",
                    "architecture": "amd64",
                },
            },
        }
        return self._stamp(f"node/{name}", obj)

    def _reset_status(self, node: str, idx: int, req: str, state: str, msg: str) -> str:
        g = self.sim.gpus.get(f"{node}/gpu-{idx}")
        if state == "accepted" and g is not None:
            if g.reset_until is not None:
                state = "in-progress"
            elif g.healthy:
                state = "done"
            else:
                state, msg = "failed", "the GPU is still unhealthy after the reset; it needs replacement"
        return f"{req}:{state}" + (f":{msg}" if msg else "")

    def _patch_node(self, name: str, ctype: str, patch: Any, dry_run: bool) -> JSON:
        if name not in self.sim.nodes:
            raise not_found("nodes", name)
        before = self.render_node(name)
        after = apply_patch(ctype, before, patch)
        self._check_precondition(before, after, "nodes", name)
        spec = after.get("spec") or {}
        meta = after.get("metadata") or {}
        unsched = spec.get("unschedulable", False)
        if not isinstance(unsched, bool):
            raise bad_request(
                "json: cannot unmarshal into Go struct field NodeSpec.spec.unschedulable of type bool"
            )
        taints = spec.get("taints") or []
        causes = []
        for i, t in enumerate(taints):
            if not isinstance(t, dict) or not t.get("key"):
                causes.append((f"spec.taints[{i}].key", "Required value"))
            elif t.get("effect") not in ("NoSchedule", "PreferNoSchedule", "NoExecute"):
                causes.append(
                    (
                        f"spec.taints[{i}].effect",
                        f'Unsupported value: "{t.get("effect")}": supported '
                        'values: "NoSchedule", "PreferNoSchedule", "NoExecute"',
                    )
                )
        labels = meta.get("labels") or {}
        annotations = meta.get("annotations") or {}
        for where, d in (("metadata.labels", labels), ("metadata.annotations", annotations)):
            for v in d.values():
                if not isinstance(v, str):
                    raise bad_request(
                        f"json: cannot unmarshal {type(v).__name__} into Go struct field "
                        f"ObjectMeta.{where} of type string"
                    )
        if causes:
            raise invalid("Node", "", name, causes)
        if dry_run:
            return after
        extra = self._node_extra[name]
        sim_node = self.sim.nodes[name]
        if unsched != sim_node.unschedulable:
            incident = next(
                (str(t.get("value") or "") for t in taints if t.get("key") == "opsmedic.io/cordoned"),
                labels.get("opsmedic.io/cordoned-by", ""),
            )
            self.sim.execute(Action(name="cordon_node" if unsched else "uncordon_node", target=name))
            if incident and unsched:  # who cordoned it is the taint's word, not a parameter of the action
                sim_node.cordoned_by = incident
            self._event("Normal", "NodeNotSchedulable" if unsched else "NodeSchedulable",
                        {"kind": "Node", "name": name, "uid": name},
                        f"Node {name} status is now: {'NodeNotSchedulable' if unsched else 'NodeSchedulable'}",
                        component="kubelet")
        extra.taints = [copy.deepcopy(t) for t in taints if t.get("key") not in SYSTEM_TAINTS]
        base = {
            "kubernetes.io/hostname",
            "kubernetes.io/os",
            "kubernetes.io/arch",
            "nvidia.com/gpu.product",
            "nvidia.com/gpu.count",
        }
        extra.labels = {
            k: v for k, v in labels.items() if k not in base or v != before["metadata"]["labels"].get(k)
        }
        status_keys = {
            k for k in annotations if k.endswith("-status") and k.startswith("opsmedic.io/reset-gpu-")
        }
        extra.annotations = {k: v for k, v in annotations.items() if k not in status_keys}
        for key, value in list(extra.annotations.items()):
            m = RESET_REQUEST.match(key)
            if m:
                self._handle_reset(name, int(m.group(1)), value)
        return self.render_node(name)

    def _handle_reset(self, node: str, idx: int, request_id: str) -> None:
        """The sandbox's node agent: honour a reset request once per request id."""
        extra = self._node_extra[node]
        done = extra.resets.get(idx)
        if done is not None and done[0] == request_id:
            return
        try:
            changed, detail = self.sim.execute(Action(name="reset_gpu", target=f"{node}/gpu-{idx}"))
            extra.resets[idx] = (request_id, "accepted", "")
        except ToolError as exc:
            extra.resets[idx] = (request_id, "failed", str(exc))

    # --------------------------------------------------------------------------------------- pods

    def _event(self, type_: str, reason: str, involved: JSON, message: str, *, component: str) -> None:
        """Record a core/v1 Event as the component that did it would (kubelet, node controller, ...):
        `kubectl get events` and `kubectl describe` show what happened to the object."""
        now = self._now()
        ns = involved.get("namespace") or "default"
        body: JSON = {
            "metadata": {"generateName": f"{involved.get('name', 'cluster')}.", "namespace": ns},
            "involvedObject": {"apiVersion": {"StatefulSet": "apps/v1", "Rollout": "argoproj.io/v1alpha1",
                                              "Job": "batch/v1"}.get(str(involved.get("kind")), "v1"), **involved},
            "reason": reason,
            "message": message[:1024],
            "type": type_,
            "count": 1,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "source": {"component": component},
            "reportingComponent": component,
        }
        res = BY_PATH[("", "v1", "events")]
        self._put_stored("events", ns, self._new_meta_obj(res, ns, body))

    def _sync_fault_events(self) -> None:
        """The simulator's faults since the last request, as Warning events on the object they hit (what the
        kubelet, the node controller or a node problem detector would record), so `kubectl get events` and
        `kubectl describe` show them."""
        events = self.sim.events
        for ev in events[self._faults_seen:]:
            if ev.kind != "fault":
                continue
            kind_, _, rest = ev.detail.partition(" on ")
            target = rest.split(" ", 1)[0]
            node = target.split("/", 1)[0]
            if node in self.sim.nodes:
                involved: JSON = {"kind": "Node", "name": node, "uid": node}
            elif target in self.sim.pods:
                involved = {"kind": "Pod", "name": target, "namespace": self.namespace}
            elif target in self._workloads:
                kind = "Rollout" if self._is_rollout(target) else "StatefulSet"
                involved = {"kind": kind, "name": target, "namespace": self.namespace}
            else:
                m = self.sim.models.get(target)
                w = getattr(m, "workload", None) if m is not None else None
                if not w:
                    continue
                involved = {"kind": "Rollout" if self._is_rollout(w) else "StatefulSet", "name": w,
                            "namespace": self.namespace}
            reason = "".join(p.title() for p in kind_.split("_")) or "Fault"
            self._event("Warning", reason, involved, ev.detail, component="opsmedic-sandbox")
        self._faults_seen = len(events)

    def _new_incarnation(self, name: str) -> None:
        """The controller made a new pod of this name: a new uid, restartCount 0, an empty log."""
        self._incarnation[name] = self._incarnation.get(name, 0) + 1
        pod = self.sim.pods.get(name)
        if pod is not None:
            self._restart_base[name] = pod.restarts
            self._log_base[name] = len(pod.log)

    def pod_log(self, pod: SimPod) -> list[str]:
        """The log of the pod's current incarnation (what `kubectl logs` shows)."""
        return list(pod.log[self._log_base.get(pod.name, 0):])

    def _live_pods(self) -> list[SimPod]:
        return [p for p in self.sim.pods.values() if p.state != "Deleted" and not p.paused]

    def _pod(self, ns: str, name: str) -> SimPod:
        pod = self.sim.pods.get(name)
        if ns != self.namespace or pod is None or pod.state == "Deleted" or pod.paused:
            raise not_found("pods", name)
        return pod

    def _settle_terminating(self) -> None:
        """A Terminating pod whose node came back is finished by its kubelet, then re-created."""
        for name in list(self._terminating):
            pod = self.sim.pods.get(name)
            if pod is None or pod.node is None or self._node_ready(pod.node):
                del self._terminating[name]
                if pod is not None and pod.state != "Deleted":
                    self.sim.execute(Action(name="restart_pod", target=name))
                    self._new_incarnation(name)

    def pod_labels(self, pod: SimPod) -> dict[str, str]:
        return {
            LABEL_WORKLOAD: pod.workload,
            "app": pod.workload,
            LABEL_KIND: pod.kind,
            "statefulset.kubernetes.io/pod-name": pod.name,
            "apps.kubernetes.io/pod-index": pod.name.rsplit("-", 1)[-1],
        }

    def render_pod(self, pod: SimPod) -> JSON:
        snap_phase = {"Starting": "Pending", "CrashLoop": "Running"}.get(pod.state, pod.state)
        ready = pod.state == "Running" and not pod.app_error
        reason = pod.reason if pod.state != "Running" else ("Error" if pod.app_error else None)
        inc = self._incarnation.get(pod.name, 0)
        started = self._time(pod.started_at)
        gpus = str(pod.gpus_needed)
        image = f"registry.opsmedic.local/{pod.workload}:latest"
        meta: JSON = {
            "name": pod.name,
            "namespace": self.namespace,
            "uid": _uid("pod", pod.name, inc, pod.started_at),
            "creationTimestamp": started,
            "labels": self.pod_labels(pod),
            "annotations": {**self._pod_annotations.get(pod.name, {}), ANN_GPUS: ",".join(pod.gpus)},
            "ownerReferences": [self._owner_ref(pod.workload)],
        }
        if pod.kind == "training":
            meta["annotations"][ANN_STEP] = str(int(pod.step))
        term = self._terminating.get(pod.name)
        if term is not None:
            meta["deletionTimestamp"] = self._time(term.since + term.grace)
            meta["deletionGracePeriodSeconds"] = term.grace
        spec: JSON = {
            "containers": [
                {
                    "name": pod.workload,  # the `container` label of the exporter's metrics
                    "image": image,
                    "imagePullPolicy": "IfNotPresent",
                    "resources": {"limits": {"nvidia.com/gpu": gpus}, "requests": {"nvidia.com/gpu": gpus}},
                    "terminationMessagePath": "/dev/termination-log",
                    "terminationMessagePolicy": "File",
                }
            ],
            "restartPolicy": "Always",
            "terminationGracePeriodSeconds": 30,
            "dnsPolicy": "ClusterFirst",
            "schedulerName": "default-scheduler",
            "hostname": pod.name,
            "subdomain": pod.workload,
            "securityContext": {},
            "enableServiceLinks": True,
            "priority": 0,
            "preemptionPolicy": "PreemptLowerPriority",
            "tolerations": [
                {
                    "key": "node.kubernetes.io/not-ready",
                    "operator": "Exists",
                    "effect": "NoExecute",
                    "tolerationSeconds": 300,
                },
                {
                    "key": TAINT_UNREACHABLE,
                    "operator": "Exists",
                    "effect": "NoExecute",
                    "tolerationSeconds": 300,
                },
                {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
            ],
        }
        if pod.node:
            spec["nodeName"] = pod.node
        status: JSON = {"phase": snap_phase, "qosClass": "BestEffort"}
        t0 = self._time(pod.started_at)
        scheduled = pod.node is not None
        conds = [
            {
                "type": "PodScheduled",
                "status": "True" if scheduled else "False",
                "lastProbeTime": None,
                "lastTransitionTime": t0,
                **(
                    {}
                    if scheduled
                    else {
                        "reason": "Unschedulable",
                        "message": f"0/{len(self.sim.nodes)} nodes are available: "
                        f"insufficient nvidia.com/gpu.",
                    }
                ),
            }
        ]
        if scheduled:
            rs = "True" if ready else "False"
            extra = (
                {}
                if ready
                else {
                    "reason": "ContainersNotReady",
                    "message": f"containers with unready status: [{pod.workload}]",
                }
            )
            conds += [
                {"type": "Initialized", "status": "True", "lastProbeTime": None, "lastTransitionTime": t0},
                {
                    "type": "ContainersReady",
                    "status": rs,
                    "lastProbeTime": None,
                    "lastTransitionTime": t0,
                    **extra,
                },
                {"type": "Ready", "status": rs, "lastProbeTime": None, "lastTransitionTime": t0, **extra},
            ]
            status["startTime"] = t0
            cs: JSON = {
                "name": pod.workload,  # the `container` label of the exporter's metrics
                "image": image,
                "imageID": f"{image}@sha256:{'0' * 64}",
                "ready": ready,
                "restartCount": max(0, pod.restarts - self._restart_base.get(pod.name, 0)),
                "started": pod.state == "Running",
            }
            if pod.state == "Running":
                cs["state"] = {"running": {"startedAt": t0}}
                cs["containerID"] = f"containerd://{hashlib.sha256(meta['uid'].encode()).hexdigest()}"
                if pod.app_error:
                    cs["lastState"] = {
                        "terminated": {"exitCode": 1, "reason": "Error", "startedAt": t0, "finishedAt": t0}
                    }
            else:
                waiting = reason or "ContainerCreating"
                cs["state"] = {
                    "waiting": {"reason": waiting if waiting != "NodeLost" else "ContainerCreating"}
                }
                if pod.state == "CrashLoop":
                    cs["state"]["waiting"]["message"] = (
                        f"back-off restarting failed container {pod.workload} in pod {pod.name}"
                    )
                    cs["lastState"] = {
                        "terminated": {"exitCode": 1, "reason": "Error", "startedAt": t0, "finishedAt": t0}
                    }
                if reason == "OOMKilled":
                    cs["lastState"] = {
                        "terminated": {
                            "exitCode": 137,
                            "reason": "OOMKilled",
                            "startedAt": t0,
                            "finishedAt": t0,
                        }
                    }
            status["containerStatuses"] = [cs]
        status["conditions"] = conds
        if pod.state == "Unknown":
            # The node lifecycle controller's verdict on pods of an unreachable node.
            status["reason"] = "NodeLost"
            status["message"] = f"Node {pod.node} which was running pod {pod.name} is unresponsive"
        obj = {"kind": "Pod", "apiVersion": "v1", "metadata": meta, "spec": spec, "status": status}
        return self._stamp(f"pod/{pod.name}", obj)

    def _pod_ready(self, pod: SimPod) -> bool:
        return (
            pod.state == "Running"
            and not pod.app_error
            and pod.node is not None
            and self._node_ready(pod.node)
        )

    def _remove_pod(self, pod: SimPod, *, grace: int, evict: bool) -> JSON:
        """Delete (or evict) a pod: the StatefulSet controller re-creates it with the same name."""
        rendered = self.render_pod(pod)
        on_lost_node = pod.node is not None and not self._node_ready(pod.node)
        if on_lost_node and grace > 0:
            # No kubelet confirms the deletion: the pod stays Terminating (kubectl shows it so).
            self._terminating.setdefault(pod.name, _Terminating(self.sim.now, grace))
            return self.render_pod(pod)
        self._terminating.pop(pod.name, None)
        self._event("Normal", "Killing", {"kind": "Pod", "name": pod.name, "namespace": self.namespace},
                    f"Stopping container {pod.workload}" + (" (evicted)" if evict else ""), component="kubelet")
        if on_lost_node:
            self.sim.execute(Action(name="reschedule_pod", target=pod.name, params={"force": True}))
        elif evict:
            self.sim.execute(Action(name="reschedule_pod", target=pod.name))
        else:
            self.sim.execute(Action(name="restart_pod", target=pod.name))
        self._new_incarnation(pod.name)
        return rendered

    def _evict(self, ns: str, name: str, body: Any, dry_run: bool) -> JSON:
        pod = self._pod(ns, name)
        if not isinstance(body, dict) or body.get("kind", "Eviction") != "Eviction":
            raise bad_request("the request body must be a policy/v1 Eviction")
        if body.get("apiVersion") not in (None, "policy/v1", "policy/v1beta1"):
            raise bad_request(f'no kind "Eviction" is registered for version "{body.get("apiVersion")}"')
        if (body.get("metadata") or {}).get("name") not in (None, name):
            raise bad_request("name in URL does not match name in Eviction object")
        opts = body.get("deleteOptions") or {}
        grace = opts.get("gracePeriodSeconds")
        rendered = self.render_pod(pod)
        phase = rendered["status"]["phase"]
        # As the eviction REST handler: pods that are not running (or already going) ignore the budget.
        if phase not in ("Pending", "Succeeded", "Failed") and name not in self._terminating:
            pdbs = [
                p
                for p in self._pdbs(ns)
                if match_labels(self._pdb_selector(p), rendered["metadata"]["labels"])
            ]
            if len(pdbs) > 1:
                raise ApiError(
                    500,
                    "InternalError",
                    "This pod has more than one PodDisruptionBudget, which the eviction subresource "
                    "does not support.",
                )
            if pdbs:
                st = self._pdb_status(pdbs[0])
                if st["disruptionsAllowed"] <= 0:
                    raise ApiError(
                        429,
                        "TooManyRequests",
                        "Cannot evict pod as it would violate the pod's disruption budget.",
                        {
                            "causes": [
                                {
                                    "reason": "DisruptionBudget",
                                    "message": (
                                        f"The disruption budget {pdbs[0]['metadata']['name']} needs "
                                        f"{st['desiredHealthy']} healthy pods and has {st['currentHealthy']} "
                                        "currently"
                                    ),
                                }
                            ]
                        },
                    )
        if not dry_run:
            self._remove_pod(pod, grace=30 if grace is None else int(grace), evict=True)
        return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}

    # --------------------------------------------------------------------------------- workloads

    def _sts_pods(self, w: str) -> list[SimPod]:
        return [p for p in self._live_pods() if p.workload == w]

    def render_sts(self, w: str) -> JSON:
        spec_w = self._workloads[w]
        pods = self._sts_pods(w)
        ready = sum(1 for p in pods if self._pod_ready(p))
        extra = self._sts_meta.get(w, {})
        gen = self._sts_generation[w]
        gpus = str(spec_w.gpus_per_replica)
        labels = self._workload_labels(w)
        obj: JSON = {
            "kind": "StatefulSet",
            "apiVersion": "apps/v1",
            "metadata": self._workload_meta(w, "statefulset", gen, labels, extra),
            "spec": {
                "replicas": self._desired[w],
                "serviceName": w,
                "podManagementPolicy": "Parallel",
                "selector": {"matchLabels": {LABEL_WORKLOAD: w}},
                "template": {
                    "metadata": self._template_meta(w, labels),
                    "spec": {
                        "containers": [
                            {
                                "name": w,
                                "image": f"registry.opsmedic.local/{w}:latest",
                                "resources": {
                                    "limits": {"nvidia.com/gpu": gpus},
                                    "requests": {"nvidia.com/gpu": gpus},
                                },
                            }
                        ]
                    },
                },
                "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"partition": 0}},
                "revisionHistoryLimit": 10,
            },
            "status": {
                "observedGeneration": gen,
                "replicas": len(pods),
                "readyReplicas": ready,
                "currentReplicas": len(pods),
                "updatedReplicas": len(pods),
                "availableReplicas": ready,
                "collisionCount": 0,
            },
        }
        return self._stamp(f"statefulset/{w}", obj)

    def _sts(self, ns: str, name: str) -> str:
        if ns != self.namespace or name not in self._workloads or self._is_rollout(name):
            raise not_found("statefulsets", name, "apps")
        return name

    def _scale_obj(self, obj: JSON, resource: str) -> JSON:
        meta = obj["metadata"]
        return {
            "kind": "Scale",
            "apiVersion": "autoscaling/v1",
            "metadata": {
                "name": meta["name"],
                "namespace": meta["namespace"],
                "uid": meta["uid"],
                "resourceVersion": meta["resourceVersion"],
                "creationTimestamp": meta["creationTimestamp"],
            },
            "spec": {"replicas": obj["spec"].get("replicas", 1)},
            "status": {
                "replicas": obj.get("status", {}).get("replicas", 0),
                "selector": selector_from_match_labels(obj["spec"]["selector"].get("matchLabels", {})),
            },
        }

    def _scale_sts(self, w: str, replicas: int) -> None:
        """What the StatefulSet controller does for a new replica count, on the simulator's pods."""
        current = self._desired[w]
        if replicas == current:
            return
        spec_w = self._workloads[w]
        if spec_w.kind == "inference":
            # The simulator places new replicas by the contract's rule, or refuses (nothing changed, a 422)
            # when the free GPUs cannot hold them.
            live = [p.name for p in self.sim.pods.values() if p.workload == w and p.state != "Deleted"]
            self.sim.scale_workload(w, replicas)
            self._desired[w] = replicas
            self._sts_generation[w] += 1
            for name in live:
                if self.sim.pods[name].state == "Deleted":
                    self._new_incarnation(name)
            return
        self._desired[w] = replicas
        self._sts_generation[w] += 1
        pods = sorted(
            (p for p in self.sim.pods.values() if p.workload == w),
            key=lambda p: int(p.name.rsplit("-", 1)[-1]),
        )
        if spec_w.kind == "training" and replicas == 0:
            self.sim.execute(Action(name="pause_job", target=w))
            return
        if any(p.paused and p.state != "Deleted" for p in pods):
            self.sim.execute(Action(name="resume_job", target=w))
        for i, p in enumerate(pods):
            if i >= replicas and p.state != "Deleted":
                # Scale-down removes the highest ordinals, as the StatefulSet controller does.
                for gid in p.gpus:
                    if self.sim.gpus[gid].pod == p.name:
                        self.sim.gpus[gid].pod = None
                p.node, p.gpus, p.state, p.paused = None, [], "Deleted", True
                self._new_incarnation(p.name)
            elif i < replicas and p.state == "Deleted":
                p.state, p.paused, p.reason = "Pending", False, None
                self._new_incarnation(p.name)
        template = pods[0] if pods else None
        for i in range(len(pods), replicas):
            name = f"{w}-{i}"
            self.sim.pods[name] = SimPod(
                name=name,
                workload=w,
                kind=spec_w.kind,
                gpus_needed=spec_w.gpus_per_replica,
                checkpoint_every=template.checkpoint_every if template else 600.0,
                base_mem_mib=template.base_mem_mib if template else 0.0,
            )  # Pending: the simulator's scheduler binds it on its next tick

    def _scale_write(self, method: str, ctype: str, scale: JSON, body: Any, name: str, plural: str,
                     group: str) -> int:
        """The replica count a PUT or PATCH of a `/scale` subresource asks for, after the optimistic-concurrency
        check a kube-apiserver makes (a stale resourceVersion is a 409)."""
        new = body if method == "PUT" else apply_patch(ctype, scale, body)
        rv = (new.get("metadata") or {}).get("resourceVersion") if isinstance(new, dict) else None
        if rv not in (None, "", scale["metadata"]["resourceVersion"]):
            raise conflict(plural, name, group)
        return self._scale_body(new, name)

    def _scale_body(self, body: Any, name: str) -> int:
        if not isinstance(body, dict):
            raise bad_request("the request body must be an autoscaling/v1 Scale")
        replicas = (body.get("spec") or {}).get("replicas", 0)
        if not isinstance(replicas, int) or isinstance(replicas, bool):
            raise bad_request(
                "json: cannot unmarshal into Go struct field ScaleSpec.spec.replicas of type int32"
            )
        if replicas < 0:
            raise invalid(
                "Scale",
                "autoscaling",
                name,
                [("spec.replicas", f"Invalid value: {replicas}: must be greater than or equal to 0")],
            )
        return replicas

    # ------------------------------------------------------------------- Argo Rollouts (canaries)

    def _is_rollout(self, w: str) -> bool:
        spec_w = self._workloads.get(w)
        return spec_w is not None and spec_w.kind == "inference" and spec_w.rollout is not None

    def _workload_labels(self, w: str) -> dict[str, str]:
        spec_w = self._workloads[w]
        labels = {LABEL_WORKLOAD: w, "app": w, LABEL_KIND: spec_w.kind}
        if spec_w.model_name:
            labels[LABEL_MODEL] = spec_w.model_name
        return labels

    def _workload_meta(self, w: str, kind: str, gen: int, labels: dict[str, str], extra: JSON) -> JSON:
        """A workload object's metadata (a StatefulSet or a Rollout): its labels and any a client patched on."""
        return {
            "name": w,
            "namespace": self.namespace,
            "uid": _uid(kind, w),
            "generation": gen,
            "creationTimestamp": self._time(0.0),
            "labels": {**labels, **extra.get("labels", {})},
            **({"annotations": dict(extra["annotations"])} if extra.get("annotations") else {}),
        }

    def _template_meta(self, w: str, labels: dict[str, str]) -> JSON:
        anns = self._template_anns.get(w)
        return {"labels": labels, **({"annotations": dict(anns)} if anns else {})}

    def _template_patched(self, w: str, before: JSON, after: JSON) -> None:
        """A change to the pod template's annotations (`kubectl rollout restart` sets
        `kubectl.kubernetes.io/restartedAt` there) is a new revision: the controller replaces every pod."""
        tmpl = ((after.get("spec") or {}).get("template") or {}).get("metadata") or {}
        anns = {str(k): str(v) for k, v in (tmpl.get("annotations") or {}).items() if v is not None}
        old = ((before["spec"].get("template") or {}).get("metadata") or {}).get("annotations") or {}
        if anns == old:
            return
        self._template_anns[w] = anns
        self._sts_generation[w] += 1
        self._restart_pods(w)

    def _restart_pods(self, w: str) -> None:
        """Replace every running pod of the workload (the simulator re-creates each in place)."""
        for pod in self._sts_pods(w):
            if pod.name in self._terminating:
                continue
            self.sim.execute(Action(name="restart_pod", target=pod.name))
            self._new_incarnation(pod.name)
        self._event("Normal", "Restarted", {"kind": "Rollout" if self._is_rollout(w) else "StatefulSet",
                                            "name": w, "namespace": self.namespace},
                    f"restarted all pods of {w}", component="statefulset-controller")

    def _owner_ref(self, w: str) -> JSON:
        if self._is_rollout(w):
            api, kind, uid = "argoproj.io/v1alpha1", "Rollout", _uid("rollout", w)
        else:
            api, kind, uid = "apps/v1", "StatefulSet", _uid("statefulset", w)
        return {"apiVersion": api, "kind": kind, "name": w, "uid": uid, "controller": True, "blockOwnerDeletion": True}

    @staticmethod
    def _pod_hash(w: str, version: int) -> str:
        """A pod-template-hash per model version (Argo names a ReplicaSet by it)."""
        return hashlib.sha256(f"{w}/v{version}".encode()).hexdigest()[:10]

    def render_rollout(self, w: str) -> JSON:
        spec_w = self._workloads[w]
        assert spec_w.rollout is not None and spec_w.model_name is not None
        model = self.sim.models[spec_w.model_name]
        pods = self._sts_pods(w)
        ready = sum(1 for p in pods if self._pod_ready(p))
        extra = self._sts_meta.get(w, {})
        gen = self._sts_generation[w]
        gpus = str(spec_w.gpus_per_replica)
        labels = self._workload_labels(w)
        every = int(spec_w.rollout.step_every)
        steps: list[JSON] = []
        for pct in spec_w.rollout.steps:
            steps.append({"setWeight": int(pct)})
            if pct < 100:
                steps.append({"pause": {"duration": f"{every}s"}})
        stable_hash = self._pod_hash(w, model.serving)
        if model.canary is not None:
            self._aborted.pop(w, None)  # a new update: Argo clears the abort of the previous one
        aborted = self._aborted.get(w)
        canary_version = model.canary if model.canary is not None else aborted
        current_hash = self._pod_hash(w, canary_version) if canary_version is not None else stable_hash
        status: JSON = {
            "observedGeneration": str(gen),
            "replicas": len(pods),
            "HPAReplicas": len(pods),
            "readyReplicas": ready,
            "availableReplicas": ready,
            "updatedReplicas": len(pods),
            "selector": selector_from_match_labels({LABEL_WORKLOAD: w}),
            "stableRS": stable_hash,
            "currentPodHash": current_hash,
        }
        if model.canary is not None:
            pct = int(round(self.sim.canary_share(model) * 100))
            status.update(
                phase="Progressing",
                message="more replicas need to be updated",
                currentStepIndex=2 * model.canary_step + 1,
                canary={
                    "weights": {
                        "canary": {"weight": pct, "podTemplateHash": current_hash},
                        "stable": {"weight": 100 - pct, "podTemplateHash": stable_hash},
                    }
                },
            )
        elif aborted is not None:
            status.update(
                abort=True,
                abortedAt=self._time(self._aborted_at[w]),
                phase="Degraded",
                message=f"RolloutAborted: Rollout aborted update to revision {aborted}",
                currentStepIndex=0,
                canary={
                    "weights": {
                        "canary": {"weight": 0, "podTemplateHash": current_hash},
                        "stable": {"weight": 100, "podTemplateHash": stable_hash},
                    }
                },
            )
        else:
            status.update(phase="Healthy", currentStepIndex=len(steps), canary={})
        obj: JSON = {
            "kind": "Rollout",
            "apiVersion": "argoproj.io/v1alpha1",
            "metadata": self._workload_meta(w, "rollout", gen, labels, extra),
            "spec": {
                "replicas": self._desired[w],
                "selector": {"matchLabels": {LABEL_WORKLOAD: w}},
                "template": {
                    # the registry version the pods being rolled out serve (`tools.k8s_models.MODEL_VERSION_KEY`)
                    "metadata": self._template_meta(
                        w, {**labels, "opsmedic.io/model-version": str(canary_version or model.serving)}),
                    "spec": {
                        "containers": [
                            {
                                "name": w,
                                "image": f"registry.opsmedic.local/{w}:v{canary_version or model.serving}",
                                "resources": {
                                    "limits": {"nvidia.com/gpu": gpus},
                                    "requests": {"nvidia.com/gpu": gpus},
                                },
                            }
                        ]
                    },
                },
                "strategy": {"canary": {"steps": steps}},
                "revisionHistoryLimit": 10,
                **({"restartAt": self._restart_at[w]} if w in self._restart_at else {}),
            },
            "status": {**status, **({"restartedAt": self._restart_at[w]} if w in self._restart_at else {})},
        }
        return self._stamp(f"rollout/{w}", obj)

    def _rollout(self, ns: str, name: str) -> str:
        if ns != self.namespace or not self._is_rollout(name):
            raise not_found("rollouts", name, "argoproj.io")
        return name

    def _abort(self, w: str) -> None:
        """What the Argo Rollouts controller does when it sees status.abort: traffic back to stable."""
        spec_w = self._workloads[w]
        assert spec_w.model_name is not None
        model = self.sim.models[spec_w.model_name]
        if model.canary is None:
            return  # nothing rolling out: the controller has nothing to undo
        version = model.canary
        self.sim.abort_rollout(spec_w.model_name)
        self._aborted[w], self._aborted_at[w] = version, self.sim.now

    def _rollout_request(
        self, method: str, ns: str, name: str, sub: str | None, ctype: str, body: Any, dry_run: bool
    ) -> JSON:
        w = self._rollout(ns, name)
        obj = self.render_rollout(w)
        if sub == "scale":
            scale = self._scale_obj(obj, "rollouts")
            scale["status"]["selector"] = obj["status"]["selector"]
            if method == "GET":
                return scale
            if method in ("PUT", "PATCH"):
                replicas = self._scale_write(method, ctype, scale, body, name, "rollouts", "argoproj.io")
                if dry_run:
                    scale["spec"]["replicas"] = replicas
                    return scale
                self._scale_sts(w, replicas)
                out = self._scale_obj(self.render_rollout(w), "rollouts")
                out["status"]["selector"] = obj["status"]["selector"]
                return out
        elif method == "GET":
            return obj
        elif method == "PATCH" and sub == "status":
            after = apply_patch(ctype, obj, body)
            self._check_precondition(obj, after, "rollouts", name, "argoproj.io")
            if dry_run:
                return after
            if (after.get("status") or {}).get("abort") is True and not obj["status"].get("abort"):
                self._abort(w)
            return self.render_rollout(w)
        elif method == "PATCH":
            after = apply_patch(ctype, obj, body)
            self._check_precondition(obj, after, "rollouts", name, "argoproj.io")
            spec = dict(after.get("spec") or {})
            replicas = spec.pop("replicas", obj["spec"]["replicas"])
            self._scale_body({"spec": {"replicas": replicas}}, name)
            restart_at = spec.pop("restartAt", None)
            if restart_at is not None and not isinstance(restart_at, str):
                raise invalid("Rollout", "argoproj.io", name, [("spec.restartAt", "Invalid value: not a time")])
            if isinstance(spec.get("template"), dict):  # the pod template's annotations may change
                spec["template"] = {**spec["template"], "metadata": obj["spec"]["template"]["metadata"]}
            if spec != {k: v for k, v in obj["spec"].items() if k not in ("replicas", "restartAt")}:
                raise invalid(
                    "Rollout",
                    "argoproj.io",
                    name,
                    [("spec", "Forbidden: the opsmedic sandbox changes only spec.replicas, spec.restartAt and "
                              "the pod template's annotations of a Rollout")],
                )
            if dry_run:
                return after
            meta = after.get("metadata") or {}
            base_labels = self._workload_labels(w)
            self._sts_meta[w] = {
                "labels": {k: v for k, v in (meta.get("labels") or {}).items() if base_labels.get(k) != v},
                "annotations": dict(meta.get("annotations") or {}),
            }
            self._scale_sts(w, replicas)  # status in a patch of the main resource is ignored, as upstream
            self._template_patched(w, obj, after)
            if restart_at is not None and restart_at != self._restart_at.get(w):
                # what the Argo Rollouts controller does for spec.restartAt: every pod re-created, then
                # status.restartedAt set to it
                self._restart_at[w] = restart_at
                self._sts_generation[w] += 1
                self._restart_pods(w)
            return self.render_rollout(w)
        raise ApiError(
            405, "MethodNotAllowed", "the server does not allow this method on the requested resource"
        )

    # ------------------------------------------------------------------------------ stored objects

    def _put_stored(self, plural: str, ns: str, obj: JSON) -> JSON:
        obj["metadata"]["resourceVersion"] = str(self._next_rv())
        self._store[(plural, ns, obj["metadata"]["name"])] = obj
        return copy.deepcopy(obj)

    def _new_meta_obj(self, res: Res, ns: str, body: JSON) -> JSON:
        obj = copy.deepcopy(body)
        meta = obj.setdefault("metadata", {})
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = meta["generateName"] + secrets.token_hex(3)[:5]
        name = meta.get("name")
        if not name:
            raise invalid(
                res.kind,
                res.group,
                "",
                [("metadata.name", "Required value: name or generateName is required")],
            )
        if not isinstance(name, str) or len(name) > 253 or not _DNS1123.match(name):
            raise invalid(
                res.kind,
                res.group,
                str(name),
                [
                    (
                        "metadata.name",
                        f'Invalid value: "{name}": a lowercase RFC 1123 subdomain must consist of lower '
                        "case alphanumeric characters, '-' or '.', and must start and end with an "
                        "alphanumeric character",
                    )
                ],
            )
        meta.pop("resourceVersion", None)
        if res.namespaced:
            if meta.get("namespace", ns) != ns:
                raise bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request"
                )
            meta["namespace"] = ns
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = rfc3339(dt.datetime.now(dt.UTC))
        if res.plural in ("deployments", "jobs", "poddisruptionbudgets", "inferenceservices"):
            meta["generation"] = 1
        obj["kind"], obj["apiVersion"] = res.kind, res.api_version
        return obj

    def _validate_stored(self, res: Res, obj: JSON) -> None:
        name = obj["metadata"]["name"]
        spec = obj.get("spec") or {}
        causes: list[tuple[str, str]] = []
        if res.plural == "leases":
            d = spec.get("leaseDurationSeconds")
            if d is not None and (not isinstance(d, int) or d <= 0):
                causes.append(("spec.leaseDurationSeconds", f"Invalid value: {d}: must be greater than 0"))
            for key in ("acquireTime", "renewTime"):
                value = spec.get(key)
                if value is not None and not (isinstance(value, str) and _MICRO_TIME.match(value)):
                    # kube-apiserver decodes MicroTime with the layout 2006-01-02T15:04:05.000000Z07:00
                    raise bad_request(
                        'Lease in version "v1" cannot be handled as a Lease: v1.Lease.Spec: '
                        f"v1.LeaseSpec.{key[0].upper()}{key[1:]}: unmarshalerDecoder: parsing time "
                        f'"{value}" as "2006-01-02T15:04:05.000000Z07:00"'
                    )
            t = spec.get("leaseTransitions")
            if t is not None and (not isinstance(t, int) or t < 0):
                causes.append(
                    ("spec.leaseTransitions", f"Invalid value: {t}: must be greater than or equal to 0")
                )
        elif res.plural == "poddisruptionbudgets":
            if spec.get("minAvailable") is not None and spec.get("maxUnavailable") is not None:
                causes.append(("spec", "Invalid value: minAvailable and maxUnavailable cannot be both set"))
        elif res.plural == "deployments":
            r = spec.get("replicas", 1)
            if not isinstance(r, int) or r < 0:
                causes.append(("spec.replicas", f"Invalid value: {r}: must be greater than or equal to 0"))
            if not (spec.get("selector") or {}).get("matchLabels"):
                causes.append(("spec.selector", "Required value"))
        elif res.plural == "configmaps":
            for k, v in (obj.get("data") or {}).items():
                if not isinstance(v, str):
                    raise bad_request(
                        f"json: cannot unmarshal into Go struct field ConfigMap.data of type string ({k})"
                    )
        if causes:
            raise invalid(res.kind, res.group, name, causes)

    def _storage(self, res: Res) -> str:
        return res.plural  # policy v1 and v1beta1 PDBs share one storage, as in etcd

    def _get_stored(self, res: Res, ns: str, name: str) -> JSON:
        obj = self._store.get((self._storage(res), ns, name))
        if obj is None:
            raise not_found(res.plural, name, res.group)
        out = copy.deepcopy(obj)
        out["kind"], out["apiVersion"] = res.kind, res.api_version
        if res.plural == "poddisruptionbudgets":
            out["status"] = self._pdb_status(out)
        if res.plural == "deployments":
            r = out["spec"].get("replicas", 1)
            out["spec"]["replicas"] = r
            out["status"] = {
                "observedGeneration": out["metadata"].get("generation", 1),
                "replicas": r,
                "readyReplicas": r,
                "availableReplicas": r,
                "updatedReplicas": r,
            }
        return out

    def _pdbs(self, ns: str) -> list[JSON]:
        return [o for (k, n, _), o in self._store.items() if k == "poddisruptionbudgets" and n == ns]

    @staticmethod
    def _pdb_selector(pdb: JSON) -> str:
        sel = (pdb.get("spec") or {}).get("selector") or {}
        return selector_from_match_labels(sel.get("matchLabels") or {}) or "__matches_nothing__"

    def _pdb_status(self, pdb: JSON) -> JSON:
        """The disruption controller's arithmetic (minAvailable / maxUnavailable, ints or percents)."""
        sel = self._pdb_selector(pdb)
        ns = pdb["metadata"].get("namespace", self.namespace)
        pods = [
            p for p in self._live_pods() if ns == self.namespace and match_labels(sel, self.pod_labels(p))
        ]
        expected = len(pods)
        healthy = sum(1 for p in pods if self._pod_ready(p) and p.name not in self._terminating)
        spec = pdb.get("spec") or {}

        def amount(v: Any, round_up: bool) -> int:
            if isinstance(v, str) and v.endswith("%"):
                frac = int(v[:-1]) * expected / 100.0
                return int(-(-frac // 1)) if round_up else int(frac)
            return int(v)

        if spec.get("maxUnavailable") is not None:
            desired = max(0, expected - amount(spec["maxUnavailable"], round_up=True))
        else:
            desired = amount(spec.get("minAvailable", 1), round_up=True)
        return {
            "observedGeneration": pdb["metadata"].get("generation", 1),
            "currentHealthy": healthy,
            "desiredHealthy": desired,
            "expectedPods": expected,
            "disruptionsAllowed": max(0, healthy - desired),
            "conditions": [
                {
                    "type": "DisruptionAllowed",
                    "status": "True" if healthy > desired else "False",
                    "reason": "SufficientPods" if healthy > desired else "InsufficientPods",
                    "message": "",
                    "observedGeneration": pdb["metadata"].get("generation", 1),
                    "lastTransitionTime": self._now(),
                }
            ],
        }

    def _check_precondition(
        self, before: JSON, after: JSON, resource: str, name: str, group: str = ""
    ) -> None:
        rv = (after.get("metadata") or {}).get("resourceVersion")
        if rv not in (None, "", before["metadata"].get("resourceVersion")):
            raise conflict(resource, name, group)

    def _write_stored(
        self, res: Res, ns: str, name: str, new: JSON, dry_run: bool, *, check_rv: bool
    ) -> JSON:
        old = self._store.get((self._storage(res), ns, name))
        if old is None:
            raise not_found(res.plural, name, res.group)
        meta = new.setdefault("metadata", {})
        if meta.get("name", name) != name:
            raise bad_request("the name of the object does not match the name on the URL")
        rv = meta.get("resourceVersion")
        if check_rv and rv not in (None, "") and rv != old["metadata"]["resourceVersion"]:
            raise conflict(res.plural, name, res.group)
        for k in ("uid", "creationTimestamp", "namespace", "generation", "name"):
            if k in old["metadata"]:
                meta[k] = old["metadata"][k]
        new["kind"], new["apiVersion"] = res.kind, res.api_version
        new.pop("status", None) if res.plural in ("poddisruptionbudgets", "deployments") else None
        self._validate_stored(res, new)
        if "generation" in meta and new.get("spec") != old.get("spec"):
            meta["generation"] = int(meta["generation"]) + 1
        new["metadata"]["resourceVersion"] = old["metadata"]["resourceVersion"]
        if dry_run:
            return new
        if new == {**old, "kind": res.kind, "apiVersion": res.api_version}:
            # kube-apiserver skips the write of an update that changes nothing: the resourceVersion stays
            return self._get_stored(res, ns, name)
        self._put_stored(self._storage(res), ns, new)
        return self._get_stored(res, ns, name)

    # ------------------------------------------------------------------------------------- lists

    def _list(self, res: Res, ns: str | None, q: dict[str, str]) -> JSON:
        items: list[JSON] = []
        if res.plural == "nodes":
            items = [self.render_node(n) for n in self.sim.nodes]
        elif res.plural == "pods":
            self._settle_terminating()
            if ns in (None, self.namespace):
                items = [self.render_pod(p) for p in self._live_pods()]
        elif res.plural == "statefulsets":
            if ns in (None, self.namespace):
                items = [self.render_sts(w) for w in self._workloads if not self._is_rollout(w)]
        elif res.plural == "rollouts":
            if ns in (None, self.namespace):
                items = [self.render_rollout(w) for w in self._workloads if self._is_rollout(w)]
        else:
            items = [
                self._get_stored(res, n, name)
                for (k, n, name) in sorted(self._store)
                if k == self._storage(res) and (ns is None or n == ns)
            ]
        self._note_listing(res, ns, items)
        label_sel, field_sel = q.get("labelSelector"), q.get("fieldSelector")
        out = []
        for obj in items:
            meta = obj["metadata"]
            if not match_labels(label_sel, meta.get("labels") or {}):
                continue
            fields = {"metadata.name": meta["name"], "metadata.namespace": meta.get("namespace", "")}
            if res.plural == "pods":
                fields["spec.nodeName"] = obj["spec"].get("nodeName", "")
                fields["status.phase"] = obj["status"].get("phase", "")
            if res.plural == "nodes":
                fields["spec.unschedulable"] = str(obj["spec"].get("unschedulable", False)).lower()
            if res.plural == "events":
                for k in ("kind", "name", "namespace", "uid"):
                    fields[f"involvedObject.{k}"] = (obj.get("involvedObject") or {}).get(k, "")
                fields["reason"], fields["type"] = obj.get("reason", ""), obj.get("type", "")
            if not match_fields(field_sel, fields, res.kind):
                continue
            obj.pop("kind", None)  # list items carry no kind/apiVersion, as kube-apiserver sends them
            obj.pop("apiVersion", None)
            out.append(obj)
        limit = int(q["limit"]) if q.get("limit", "").isdigit() and int(q["limit"]) > 0 else None
        return {
            "kind": f"{res.kind}List",
            "apiVersion": res.api_version,
            "metadata": {"resourceVersion": str(self._rv)},
            "items": out[:limit] if limit else out,
        }

    # ----------------------------------------------------------------------------------- dispatch

    def handle(self, method: str, path: str, q: dict[str, str], ctype: str, body: Any) -> Response:
        """Route one request. Raises ApiError for every failure (the app turns it into a Status)."""
        parts = [p for p in path.split("/") if p]
        if parts in (["healthz"], ["livez"], ["readyz"]):
            return PlainTextResponse("ok")
        if parts == ["version"]:
            return JSONResponse(SERVER_VERSION)
        if parts and parts[0] == "openapi":
            # a 404 (kubectl then suggests --validate=false itself), with a Status that says why
            raise ApiError(404, "NotFound", "the opsmedic sandbox API serves no OpenAPI schema: use "
                                                  "`kubectl apply --validate=false` (client-side apply works)")
        if parts and parts[0] == "api":
            if parts == ["api"]:
                return JSONResponse(
                    {
                        "kind": "APIVersions",
                        "versions": ["v1"],
                        "serverAddressByClientCIDRs": [
                            {"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1"}
                        ],
                    }
                )
            if len(parts) < 2 or parts[1] != "v1":
                raise route_not_found()
            return self._resource(method, "", "v1", parts[2:], q, ctype, body)
        if parts and parts[0] == "apis":
            if parts == ["apis"]:
                return JSONResponse(
                    {
                        "kind": "APIGroupList",
                        "apiVersion": "v1",
                        "groups": [self._group(g) for g in self._groups()],
                    }
                )
            if parts[1] not in self._groups():
                # kube-apiserver's mux answers an unknown group in plain text, not with a Status
                return PlainTextResponse("404 page not found\n", status_code=404)
            if len(parts) == 2:
                return JSONResponse({"kind": "APIGroup", "apiVersion": "v1", **self._group(parts[1])})
            return self._resource(method, parts[1], parts[2], parts[3:], q, ctype, body)
        paths = [
            "/api",
            "/api/v1",
            "/apis",
            *(f"/apis/{g}" for g in self._groups()),
            "/healthz",
            "/livez",
            "/readyz",
            "/version",
        ]
        return JSONResponse({"paths": sorted(paths)}, status_code=404)

    @staticmethod
    def _groups() -> list[str]:
        return sorted({r.group for r in RESOURCES if r.group})

    @staticmethod
    def _group(g: str) -> JSON:
        versions = sorted({r.version for r in RESOURCES if r.group == g}, key=lambda v: (v != "v1", v))
        gv = [{"groupVersion": f"{g}/{v}", "version": v} for v in versions]
        return {"name": g, "versions": gv, "preferredVersion": gv[0]}

    def _discovery(self, group: str, version: str) -> JSON:
        resources = []
        for r in RESOURCES:
            if r.group == group and r.version == version:
                resources.append(
                    {
                        "name": r.plural,
                        "singularName": r.singular,
                        "namespaced": r.namespaced,
                        "kind": r.kind,
                        "verbs": list(r.verbs),
                        **({"shortNames": list(r.short)} if r.short else {}),
                    }
                )
                for sub in r.subresources:
                    kind = {"scale": "Scale", "eviction": "Eviction", "log": "Pod"}.get(sub, r.kind)
                    verbs = {"scale": ["get", "patch", "update"], "eviction": ["create"], "log": ["get"]}.get(
                        sub, ["get"]
                    )
                    sgroup = {"scale": "autoscaling", "eviction": "policy"}.get(sub)
                    entry: JSON = {
                        "name": f"{r.plural}/{sub}",
                        "singularName": "",
                        "namespaced": r.namespaced,
                        "kind": kind,
                        "verbs": verbs,
                    }
                    if sgroup:
                        entry["group"], entry["version"] = sgroup, "v1"
                    resources.append(entry)
        if not resources:
            raise route_not_found()
        gv = f"{group}/{version}" if group else version
        return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources}

    def _resource(
        self, method: str, group: str, version: str, rest: list[str], q: dict[str, str], ctype: str, body: Any
    ) -> Response:
        if not rest:
            if method != "GET":
                raise ApiError(
                    405, "MethodNotAllowed", "the server does not allow this method on the requested resource"
                )
            return JSONResponse(self._discovery(group, version))
        ns: str | None = None
        if rest[0] == "namespaces" and len(rest) >= 3:
            ns, rest = rest[1], rest[2:]
        res = BY_PATH.get((group, version, rest[0]))
        if res is None:
            raise route_not_found()
        name = rest[1] if len(rest) > 1 else None
        sub = rest[2] if len(rest) > 2 else None
        if len(rest) > 3 or (sub is not None and sub not in res.subresources):
            raise route_not_found()
        if res.namespaced and ns is None and (name is not None or method != "GET"):
            raise route_not_found()
        if not res.namespaced and ns is not None:
            raise route_not_found()
        if ns is not None and res.plural != "namespaces" and ("namespaces", "", ns) not in self._store:
            if method in ("POST", "PUT"):
                raise not_found("namespaces", ns)
        dry_run = q.get("dryRun") == "All"
        if q.get("dryRun") not in (None, "", "All"):
            raise bad_request(f'unsupported dry run directive "{q["dryRun"]}": only "All" is supported')
        code = 200
        with self.lock:
            self._sync_fault_events()
            if name is None:
                if method == "GET" and q.get("watch") in ("true", "1"):
                    return self._watch(res, ns, q)
                if method == "GET":
                    return JSONResponse(self._list(res, ns, q))
                if method == "POST":
                    return JSONResponse(self._create(res, ns or "", body, dry_run), status_code=201)
                raise ApiError(
                    405, "MethodNotAllowed", "the server does not allow this method on the requested resource"
                )
            if res.plural == "nodes":
                result = self._node_request(method, name, sub, ctype, body, dry_run)
            elif res.plural == "pods":
                assert ns is not None
                if sub == "log" and method == "GET":
                    pod = self._pod(ns, name)
                    tail = int(q["tailLines"]) if q.get("tailLines", "").isdigit() else None
                    lines = self.pod_log(pod)
                    lines = lines[-tail:] if tail else lines
                    return PlainTextResponse("".join(line + "\n" for line in lines))
                if sub == "eviction":
                    if method != "POST":
                        raise ApiError(
                            405,
                            "MethodNotAllowed",
                            "the server does not allow this method on the requested resource",
                        )
                    return JSONResponse(self._evict(ns, name, body, dry_run), status_code=201)
                result = self._pod_request(method, ns, name, sub, ctype, body, q, dry_run)
            elif res.plural == "statefulsets":
                assert ns is not None
                result = self._sts_request(method, ns, name, sub, ctype, body, dry_run)
            elif res.plural == "rollouts":
                assert ns is not None
                result = self._rollout_request(method, ns, name, sub, ctype, body, dry_run)
            else:
                result, code = self._stored_request(res, method, ns or "", name, sub, ctype, body, q, dry_run)
        return JSONResponse(result, status_code=code)

    def _note_listing(self, res: Res, ns: str | None, items: list[JSON]) -> None:
        """Remember what a listing of `res` (in `ns`, or everywhere) rendered; an object seen before and
        missing now was deleted: it becomes a tombstone with a new resourceVersion (see the module docstring)."""
        seen = self._seen_objects.setdefault(res.plural, {})
        now: set[tuple[str, str]] = set()
        for obj in items:
            meta = obj["metadata"]
            key = (str(meta.get("namespace") or ""), str(meta["name"]))
            now.add(key)
            old = seen.get(key)
            rv = int(meta.get("resourceVersion") or 0)
            seen[key] = (old[0] if old is not None and old[1]["metadata"].get("uid") == meta.get("uid") else rv, obj)
        for key in [k for k in seen if k not in now and (ns is None or k[0] == ns)]:
            self._tombstone(res.plural, key, seen[key][1])

    def _tombstone(self, plural: str, key: tuple[str, str], obj: JSON) -> None:
        self._seen_objects.setdefault(plural, {}).pop(key, None)
        obj = copy.deepcopy(obj)
        obj["metadata"]["resourceVersion"] = str(self._next_rv())
        self._tombstones.append((self._rv, plural, obj))
        if len(self._tombstones) > WATCH_HISTORY:
            dropped = self._tombstones[: len(self._tombstones) - WATCH_HISTORY]
            self._compacted_rv = max(self._compacted_rv, dropped[-1][0])
            del self._tombstones[: len(dropped)]

    def _watch_events(self, res: Res, ns: str | None, q: dict[str, str], since: int | None) -> tuple[list[str], int]:
        """The events of `res` after resourceVersion `since` (None: every current object as ADDED), as
        JSON lines, and the resourceVersion they bring the watcher to."""
        listing = self._list(res, ns, q)
        seen = self._seen_objects.get(res.plural, {})
        events: list[tuple[int, str, JSON]] = []
        for item in listing["items"]:
            meta = item["metadata"]
            rv = int(meta.get("resourceVersion") or 0)
            if since is None:
                events.append((rv, "ADDED", item))
            elif rv > since:
                first = seen.get((str(meta.get("namespace") or ""), str(meta["name"])), (rv, item))[0]
                events.append((rv, "ADDED" if first > since else "MODIFIED", item))
        if since is not None:
            for rv, plural, obj in self._tombstones:
                meta = obj["metadata"]
                if (rv > since and plural == res.plural and (ns is None or meta.get("namespace") == ns)
                        and match_labels(q.get("labelSelector"), meta.get("labels") or {})):
                    events.append((rv, "DELETED", {k: v for k, v in obj.items() if k not in ("kind", "apiVersion")}))
        events.sort(key=lambda e: e[0])
        lines = [json.dumps({"type": kind, "object": {"kind": res.kind, "apiVersion": res.api_version, **obj}}) + "\n"
                 for _, kind, obj in events]
        return lines, self._rv

    def _watch(self, res: Res, ns: str | None, q: dict[str, str]) -> Response:
        """A watch (see the module docstring): changes after `resourceVersion`, polled every `WATCH_POLL_S`,
        until timeoutSeconds (default 60, at most 300); a resourceVersion older than the remembered history
        is answered with an ERROR event carrying 410 Gone, as kube-apiserver answers an expired one."""
        raw_rv = q.get("resourceVersion", "")
        since: int | None = int(raw_rv) if raw_rv.isdigit() and int(raw_rv) > 0 else None
        bookmarks = q.get("allowWatchBookmarks") in ("true", "1")
        raw = q.get("timeoutSeconds", "")
        hold = min(300.0, float(raw)) if raw.isdigit() else 60.0
        if since is not None and since < self._compacted_rv:
            gone = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "code": 410,
                    "reason": "Expired", "message": f"too old resource version: {since} ({self._compacted_rv})"}
            first = [json.dumps({"type": "ERROR", "object": gone}) + "\n"]
            return StreamingResponse(iter([line.encode() for line in first]), media_type="application/json")
        first, at = self._watch_events(res, ns, q, since)
        sel = {k: v for k, v in q.items() if k in ("labelSelector", "fieldSelector")}

        def bookmark(rv: int) -> bytes:
            obj = {"kind": res.kind, "apiVersion": res.api_version, "metadata": {"resourceVersion": str(rv)}}
            return (json.dumps({"type": "BOOKMARK", "object": obj}) + "\n").encode()

        async def stream() -> Any:
            nonlocal at
            for line in first:
                yield line.encode()
            end = time.monotonic() + hold
            marked = time.monotonic()
            while time.monotonic() < end:
                await asyncio.sleep(min(WATCH_POLL_S, max(0.0, end - time.monotonic())))
                with self.lock:
                    lines, now_rv = self._watch_events(res, ns, sel, at)
                at = now_rv
                for line in lines:
                    yield line.encode()
                if bookmarks and time.monotonic() - marked >= WATCH_BOOKMARK_S:
                    marked = time.monotonic()
                    yield bookmark(at)
            if bookmarks:
                yield bookmark(at)

        return StreamingResponse(stream(), media_type="application/json")

    def _create(self, res: Res, ns: str, body: Any, dry_run: bool) -> JSON:
        if res.plural not in STORED:
            raise ApiError(
                405,
                "MethodNotAllowed",
                f"create is not supported for {res.plural} by the opsmedic "
                "sandbox: they belong to the simulated cluster",
            )
        if not isinstance(body, dict):
            raise bad_request(f"the request body must be a {res.kind} object")
        if body.get("kind") not in (None, res.kind):
            raise bad_request(f"the body kind {body.get('kind')!r} does not match {res.kind}")
        if res.plural != "namespaces" and ("namespaces", "", ns) not in self._store:
            raise not_found("namespaces", ns)
        obj = self._new_meta_obj(res, ns, body)
        if (self._storage(res), ns, obj["metadata"]["name"]) in self._store:
            raise already_exists(res.plural, obj["metadata"]["name"], res.group)
        if res.plural == "namespaces":
            obj["spec"], obj["status"] = {"finalizers": ["kubernetes"]}, {"phase": "Active"}
        if res.plural == "deployments":
            obj.setdefault("spec", {}).setdefault("replicas", 1)
        obj.pop("status", None) if res.plural in ("poddisruptionbudgets", "deployments") else None
        self._validate_stored(res, obj)
        if dry_run:
            obj["metadata"]["resourceVersion"] = ""
            return obj
        self._put_stored(self._storage(res), ns, obj)
        if res.plural == "jobs":
            self._kubelet_job(ns, obj)
        return self._get_stored(res, ns, obj["metadata"]["name"])

    def _kubelet_job(self, ns: str, job: JSON) -> None:
        """Play the kubelet for a Job whose container runs an entry point the sandbox knows (`python -m
        tools.train_job`, the retraining Job): its `main` runs for real, on a thread, with the container's
        environment, and the Job's status follows (active, then Complete or Failed) as the Job controller
        would write it. Any other Job is stored only (it has no pods in the simulator)."""
        spec = job.get("spec") or {}
        containers = ((spec.get("template") or {}).get("spec") or {}).get("containers") or []
        if spec.get("suspend") or len(containers) != 1:
            return
        c = containers[0]
        cmd = [str(x) for x in (c.get("command") or []) + (c.get("args") or [])]
        module = cmd[2] if len(cmd) >= 3 and cmd[0].rsplit("/", 1)[-1].startswith("python") and cmd[1] == "-m" \
            else None
        if module not in JOB_ENTRY_POINTS:
            return
        env = {str(e.get("name")): str(e.get("value", "")) for e in c.get("env") or [] if isinstance(e, dict)}
        name = job["metadata"]["name"]
        key = (self._storage(BY_PATH[("batch", "v1", "jobs")]), ns, name)
        self._job_status(key, {"active": 1, "startTime": self._now_wall()})

        def run() -> None:
            import importlib

            lines: list[str] = []
            try:
                code = int(importlib.import_module(module).main(cmd[3:], env, lines.append))
            except Exception as exc:  # the container crashed: its Job fails, the API goes on
                code, lines = 1, [*lines, f"{type(exc).__name__}: {exc}"]
            with self.lock:
                now = self._now_wall()
                if code == 0:
                    cond = {"type": "Complete", "status": "True", "lastProbeTime": now, "lastTransitionTime": now}
                    self._job_status(key, {"active": None, "succeeded": 1, "completionTime": now,
                                           "conditions": [cond]})
                else:
                    cond = {"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded",
                            "message": "Job has reached the specified backoff limit", "lastProbeTime": now,
                            "lastTransitionTime": now}
                    self._job_status(key, {"active": None, "failed": 1, "conditions": [cond]})
                self._event("Normal" if code == 0 else "Warning", "Completed" if code == 0 else "BackoffLimitExceeded",
                            {"kind": "Job", "apiVersion": "batch/v1", "name": name, "namespace": ns},
                            "; ".join(lines)[-1000:] or f"exit code {code}", component="job-controller")

        threading.Thread(target=run, name=f"sandbox-job-{name}", daemon=True).start()

    def _job_status(self, key: tuple[str, str, str], status: JSON) -> None:
        obj = self._store.get(key)
        if obj is None:
            return  # deleted meanwhile
        merged = {**(obj.get("status") or {}), **status}
        obj["status"] = {k: v for k, v in merged.items() if v is not None}
        self._put_stored(key[0], key[1], obj)

    def _now_wall(self) -> str:
        return rfc3339(dt.datetime.now(dt.UTC))

    def _node_request(
        self, method: str, name: str, sub: str | None, ctype: str, body: Any, dry_run: bool
    ) -> JSON:
        if name not in self.sim.nodes:
            raise not_found("nodes", name)
        if method == "GET":
            return self.render_node(name)
        if method == "PATCH" and sub is None:
            return self._patch_node(name, ctype, body, dry_run)
        raise ApiError(
            405, "MethodNotAllowed", "the server does not allow this method on the requested resource"
        )

    def _pod_request(
        self,
        method: str,
        ns: str,
        name: str,
        sub: str | None,
        ctype: str,
        body: Any,
        q: dict[str, str],
        dry_run: bool,
    ) -> JSON:
        self._settle_terminating()
        pod = self._pod(ns, name)
        if method == "GET":
            return self.render_pod(pod)
        if method == "DELETE" and sub is None:
            opts = body if isinstance(body, dict) else {}
            grace_raw = q.get("gracePeriodSeconds", opts.get("gracePeriodSeconds"))
            grace = 30 if grace_raw in (None, "") else int(grace_raw)
            pre = opts.get("preconditions") or {}
            current = self.render_pod(pod)
            if pre.get("uid") not in (None, current["metadata"]["uid"]):
                raise conflict(
                    "pods",
                    name,
                    why=f"Precondition failed: UID in precondition: {pre['uid']}, UID in "
                    f"object meta: {current['metadata']['uid']}",
                )
            if pre.get("resourceVersion") not in (None, current["metadata"]["resourceVersion"]):
                raise conflict(
                    "pods",
                    name,
                    why="Precondition failed: ResourceVersion in precondition: "
                    f"{pre['resourceVersion']}, ResourceVersion in object meta: "
                    f"{current['metadata']['resourceVersion']}",
                )
            if dry_run:
                return current
            return self._remove_pod(pod, grace=grace, evict=False)
        if method == "PATCH" and sub is None:
            before = self.render_pod(pod)
            after = apply_patch(ctype, before, body)
            self._check_precondition(before, after, "pods", name)
            # Only metadata is client-owned on a simulated pod; the rest belongs to the simulator.
            extra_labels = {
                k: v
                for k, v in (after["metadata"].get("labels") or {}).items()
                if before["metadata"]["labels"].get(k) != v
            }
            if extra_labels or after["spec"] != before["spec"]:
                raise invalid(
                    "Pod",
                    "",
                    name,
                    [
                        (
                            "spec",
                            "Forbidden: pod updates may not change fields other than "
                            "metadata annotations in the opsmedic sandbox",
                        )
                    ],
                )
            if dry_run:
                return after
            own = {ANN_GPUS, ANN_STEP}
            self._pod_annotations[name] = {
                k: v for k, v in (after["metadata"].get("annotations") or {}).items() if k not in own
            }
            return self.render_pod(pod)
        raise ApiError(
            405, "MethodNotAllowed", "the server does not allow this method on the requested resource"
        )

    def _sts_request(
        self, method: str, ns: str, name: str, sub: str | None, ctype: str, body: Any, dry_run: bool
    ) -> JSON:
        w = self._sts(ns, name)
        obj = self.render_sts(w)
        if sub == "scale":
            scale = self._scale_obj(obj, "statefulsets")
            if method == "GET":
                return scale
            if method in ("PUT", "PATCH"):
                replicas = self._scale_write(method, ctype, scale, body, name, "statefulsets", "apps")
                if not dry_run:
                    self._scale_sts(w, replicas)
                    return self._scale_obj(self.render_sts(w), "statefulsets")
                scale["spec"]["replicas"] = replicas
                return scale
        elif sub == "status":
            if method == "GET":
                return obj
        elif method == "GET":
            return obj
        elif method == "PATCH":
            after = apply_patch(ctype, obj, body)
            self._check_precondition(obj, after, "statefulsets", name, "apps")
            replicas = (after.get("spec") or {}).get("replicas", obj["spec"]["replicas"])
            self._scale_body({"spec": {"replicas": replicas}}, name)
            meta = after.get("metadata") or {}
            if dry_run:
                return after
            base_labels = self._workload_labels(w)
            self._sts_meta[w] = {
                "labels": {k: v for k, v in (meta.get("labels") or {}).items() if base_labels.get(k) != v},
                "annotations": dict(meta.get("annotations") or {}),
            }
            self._scale_sts(w, replicas)
            self._template_patched(w, obj, after)
            return self.render_sts(w)
        raise ApiError(
            405, "MethodNotAllowed", "the server does not allow this method on the requested resource"
        )

    def _stored_request(
        self,
        res: Res,
        method: str,
        ns: str,
        name: str,
        sub: str | None,
        ctype: str,
        body: Any,
        q: dict[str, str],
        dry_run: bool,
    ) -> tuple[JSON, int]:
        current = self._get_stored(res, ns, name)
        if sub == "scale" and res.plural == "deployments":
            scale = self._scale_obj(current, "deployments")
            if method == "GET":
                return scale, 200
            if method in ("PUT", "PATCH"):
                new = body if method == "PUT" else apply_patch(ctype, scale, body)
                replicas = self._scale_body(new, name)
                patched = copy.deepcopy(self._store[(res.plural, ns, name)])
                patched["spec"]["replicas"] = replicas
                out = self._write_stored(res, ns, name, patched, dry_run, check_rv=False)
                return self._scale_obj(out, "deployments"), 200
        if sub == "status":
            if method == "GET":
                return current, 200
            raise ApiError(405, "MethodNotAllowed", "status is computed by the opsmedic sandbox")
        if sub is not None:
            raise route_not_found()
        if method == "GET":
            return current, 200
        if method == "PUT":
            if not isinstance(body, dict):
                raise bad_request(f"the request body must be a {res.kind} object")
            return self._write_stored(res, ns, name, copy.deepcopy(body), dry_run, check_rv=True), 200
        if method == "PATCH":
            stored = copy.deepcopy(self._store[(self._storage(res), ns, name)])
            stored["kind"], stored["apiVersion"] = res.kind, res.api_version
            after = apply_patch(ctype, stored, body)
            self._check_precondition(stored, after, res.plural, name, res.group)
            after.setdefault("metadata", {})["resourceVersion"] = stored["metadata"]["resourceVersion"]
            return self._write_stored(res, ns, name, after, dry_run, check_rv=True), 200
        if method == "DELETE":
            opts = body if isinstance(body, dict) else {}
            pre = opts.get("preconditions") or {}
            if pre.get("resourceVersion") not in (None, current["metadata"]["resourceVersion"]):
                raise conflict(res.plural, name, res.group)
            if not dry_run:
                del self._store[(self._storage(res), ns, name)]
                self._tombstone(res.plural, (ns, name), current)  # a stored deletion has its moment: now
            if res.plural in ("namespaces",):
                return current, 200
            return {
                "kind": "Status",
                "apiVersion": "v1",
                "metadata": {},
                "status": "Success",
                "details": {
                    "name": name,
                    "group": res.group,
                    "kind": res.plural,
                    "uid": current["metadata"]["uid"],
                },
            }, 200
        raise ApiError(
            405, "MethodNotAllowed", "the server does not allow this method on the requested resource"
        )

    # ---------------------------------------------------------------------------------------- app

    def _build_app(self) -> FastAPI:
        app = FastAPI(
            title="opsmedic sandbox Kubernetes API", docs_url=None, redoc_url=None, openapi_url=None
        )
        methods = ["GET", "POST", "PUT", "PATCH", "DELETE"]

        @app.api_route("/{path:path}", methods=methods)
        async def dispatch(path: str, request: Request) -> Response:
            raw = await request.body()
            ctype = request.headers.get("content-type", "application/json")
            try:
                if "protobuf" in ctype or "cbor" in ctype:
                    raise ApiError(
                        415,
                        "UnsupportedMediaType",
                        "the body of the request was in an unknown format "
                        "- accepted media types include: application/json",
                    )
                try:
                    body = json.loads(raw) if raw else None
                except json.JSONDecodeError as exc:
                    raise bad_request(f"the request body is not valid JSON: {exc}") from None
                q = dict(request.query_params)
                resp = self.handle(request.method, "/" + path, q, ctype, body)
                if (request.method == "GET" and wants_table(request.headers.get("accept", ""))
                        and isinstance(resp, JSONResponse) and resp.status_code == 200):
                    obj = json.loads(bytes(resp.body))
                    if isinstance(obj, dict) and obj.get("kind") not in (None, "Status", "APIResourceList"):
                        with self.lock:
                            now = dt.datetime.fromisoformat(self._now().replace("Z", "+00:00"))
                        return JSONResponse(to_table(obj, now=now, include=q.get("includeObject", "Metadata")))
                return resp
            except ApiError as exc:
                return JSONResponse(exc.status(), status_code=exc.code)
            except ToolError as exc:
                # The simulator refused an action that the API accepted: report it as the server would a
                # failed admission (the object is unchanged).
                return JSONResponse(ApiError(422, "Invalid", str(exc)).status(), status_code=422)

        return app


# ------------------------------------------------------------------------------------- serving


def serve_in_thread(
    sim: Simulator | SandboxKubeAPI, port: int = 0, *, host: str = "127.0.0.1"
) -> tuple[str, Callable[[], None]]:
    """Serve the API for `sim` on 127.0.0.1 in a daemon thread. Returns (base URL, stop function)."""
    api = sim if isinstance(sim, SandboxKubeAPI) else SandboxKubeAPI(sim)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    bound = sock.getsockname()[1]
    # Open watches would hold a graceful shutdown: give them a second.
    config = uvicorn.Config(
        api.app,
        host=host,
        port=bound,
        log_level="warning",
        lifespan="off",
        access_log=False,
        timeout_graceful_shutdown=1,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name=f"k8s-api:{bound}", daemon=True
    )
    thread.start()
    deadline = time.monotonic() + 10.0
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the sandbox Kubernetes API did not start")
        time.sleep(0.01)

    def stop() -> None:
        server.should_exit = True
        thread.join(timeout=5.0)
        with contextlib.suppress(OSError):
            sock.close()

    return f"http://{host}:{bound}", stop


def write_kubeconfig(
    url: str,
    path: str | Path,
    *,
    token: str | None = None,
    context: str = "opsmedic-sandbox",
    namespace: str = "default",
    insecure_skip_tls_verify: bool = False,
    certificate_authority: bytes | None = None,
) -> Path:
    """Write a kubeconfig that points kubectl and the official client at `url`; `certificate_authority` (PEM)
    is the CA the server's certificate is verified against, embedded as `certificate-authority-data`."""
    user: JSON = {"token": token} if token else {}
    cluster: JSON = {"server": url}
    if certificate_authority is not None:
        cluster["certificate-authority-data"] = base64.b64encode(certificate_authority).decode("ascii")
    if insecure_skip_tls_verify:
        cluster["insecure-skip-tls-verify"] = True
    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "preferences": {},
        "current-context": context,
        "clusters": [{"name": context, "cluster": cluster}],
        "users": [{"name": context, "user": user}],
        "contexts": [
            {"name": context, "context": {"cluster": context, "user": context, "namespace": namespace}}
        ],
    }
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    return p


__all__ = ["EPOCH", "SandboxKubeAPI", "micro_time", "serve_in_thread", "write_kubeconfig"]
