"""Which Kubernetes object serves a model, how many GPUs are free for it, and how each kind is scaled.

Layer: tools (imports `opsmedic.errors` and `tools.k8s_client`; never the sandbox). Used by
`tools.k8s_backend` for `abort_rollout` and `scale_deployment`.

The model -> serving workload mapping: a model is served by the one object in the backend's namespace that
carries the label `opsmedic.io/model: <model>`, among

=====================  =======================================  ==========================================
kind                   API                                      abort / scale
=====================  =======================================  ==========================================
Deployment             apps/v1                                  no canary to abort / `/scale`
StatefulSet            apps/v1                                  no canary to abort / `/scale`
Rollout                argoproj.io/v1alpha1 (Argo Rollouts)     `status.abort: true` / `/scale`
InferenceService       serving.kserve.io/v1beta1 (KServe)       `spec.predictor.canaryTrafficPercent: 0` /
                                                                `spec.predictor.minReplicas`
=====================  =======================================  ==========================================

No label, or the label on several objects, is an error naming the model and the objects: opsmedic acts on
one workload it can name, never on a guess. A cluster without Argo Rollouts or KServe answers 404 for
their group; that kind is then simply absent.

Free GPUs: the sum over schedulable nodes (Ready, not cordoned) of allocatable `nvidia.com/gpu`, minus
what the non-terminated pods bound there request, minus what pending unbound pods request (the scheduler
will place them first) -- the arithmetic the scheduler's NodeResourcesFit plugin does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from kubernetes import client

from opsmedic.errors import PermanentToolError
from tools.k8s_client import KubeCaller, KubePermanentError

LABEL_MODEL = "opsmedic.io/model"
GPU = "nvidia.com/gpu"
ARGO_ROLLOUTS = ("argoproj.io", "v1alpha1", "rollouts")
KSERVE_ISVC = ("serving.kserve.io", "v1beta1", "inferenceservices")
ServingKind = Literal["statefulset", "deployment", "rollout", "inferenceservice"]
KIND_NAMES: dict[str, str] = {
    "statefulset": "StatefulSet",
    "deployment": "Deployment",
    "rollout": "Rollout",
    "inferenceservice": "InferenceService",
}


@dataclass(frozen=True)
class ServingWorkload:
    """One workload as plain JSON (the API's own field names, whichever kind it is)."""

    kind: ServingKind
    name: str
    obj: dict[str, Any]

    @property
    def title(self) -> str:
        return f"{KIND_NAMES[self.kind]} {self.name}"

    @property
    def spec(self) -> dict[str, Any]:
        return dict(self.obj.get("spec") or {})

    @property
    def status(self) -> dict[str, Any]:
        return dict(self.obj.get("status") or {})

    @property
    def annotations(self) -> dict[str, str]:
        return dict((self.obj.get("metadata") or {}).get("annotations") or {})


class ServingApi:
    """Reads of the four serving kinds through the official client, as JSON."""

    def __init__(self, api_client: Any, caller: KubeCaller, namespace: str) -> None:
        self.api_client = api_client
        self.apps = client.AppsV1Api(api_client)
        self.core = client.CoreV1Api(api_client)
        self.custom = client.CustomObjectsApi(api_client)
        self.caller = caller
        self.namespace = namespace

    def _json(self, obj: Any) -> dict[str, Any]:
        return dict(self.api_client.sanitize_for_serialization(obj))

    def _list(self, kind: ServingKind, selector: str) -> list[dict[str, Any]]:
        ns = self.namespace
        try:
            if kind in ("statefulset", "deployment"):
                fn: Any = (
                    self.apps.list_namespaced_stateful_set
                    if kind == "statefulset"
                    else self.apps.list_namespaced_deployment
                )
                got: Any = self.caller.call(f"list {kind}s", fn, ns, label_selector=selector)
                return [self._json(o) for o in got.items or []]
            group, version, plural = ARGO_ROLLOUTS if kind == "rollout" else KSERVE_ISVC
            listing: Any = self.caller.call(
                f"list {plural}",
                self.custom.list_namespaced_custom_object,
                group,
                version,
                ns,
                plural,
                label_selector=selector,
            )
            return list(listing.get("items") or [])
        except KubePermanentError as exc:
            if exc.status == 404:  # the CRD (Argo Rollouts, KServe) is not installed
                return []
            raise

    def get(self, kind: ServingKind, name: str) -> ServingWorkload | None:
        ns = self.namespace
        try:
            if kind == "statefulset":
                obj = self._json(
                    self.caller.call(f"get statefulset {name}", self.apps.read_namespaced_stateful_set, name, ns)
                )
            elif kind == "deployment":
                obj = self._json(
                    self.caller.call(f"get deployment {name}", self.apps.read_namespaced_deployment, name, ns)
                )
            else:
                group, version, plural = ARGO_ROLLOUTS if kind == "rollout" else KSERVE_ISVC
                raw: Any = self.caller.call(
                    f"get {kind} {name}",
                    self.custom.get_namespaced_custom_object,
                    group,
                    version,
                    ns,
                    plural,
                    name,
                )
                obj = dict(raw)
        except KubePermanentError as exc:
            if exc.status == 404:
                return None
            raise
        return ServingWorkload(kind, name, obj)

    def by_name(self, name: str) -> ServingWorkload | None:
        """The workload of that name, looked up in the order StatefulSet, Deployment, Rollout, InferenceService."""
        for kind in ("statefulset", "deployment", "rollout", "inferenceservice"):
            found = self.get(kind, name)  # type: ignore[arg-type]
            if found is not None:
                return found
        return None

    def for_model(self, model: str) -> ServingWorkload:
        """The one workload labelled `opsmedic.io/model: <model>`; PermanentToolError if none or several."""
        selector = f"{LABEL_MODEL}={model}"
        found: list[ServingWorkload] = []
        for kind in ("statefulset", "deployment", "rollout", "inferenceservice"):
            for obj in self._list(kind, selector):  # type: ignore[arg-type]
                found.append(ServingWorkload(kind, obj["metadata"]["name"], obj))  # type: ignore[arg-type]
        if not found:
            raise PermanentToolError(
                f"no Deployment, StatefulSet, Rollout or InferenceService in {self.namespace} is labelled "
                f"{selector}: opsmedic does not know which workload serves model {model!r}"
            )
        if len(found) > 1:
            raise PermanentToolError(
                f"several workloads are labelled {selector} ({', '.join(w.title for w in found)}): "
                "opsmedic acts on one serving workload per model and will not guess"
            )
        return found[0]

    def free_gpus(self) -> int:
        """Allocatable GPUs on schedulable nodes minus what pods there (and pending unbound pods) request."""
        nodes: list[Any] = self.caller.call("list nodes", self.core.list_node).items or []
        usable: dict[str, int] = {}
        for n in nodes:
            ready = any(c.type == "Ready" and c.status == "True" for c in (n.status.conditions or []))
            if not ready or (n.spec is not None and n.spec.unschedulable):
                continue
            usable[n.metadata.name] = quantity((n.status.allocatable or {}).get(GPU))
        pods: list[Any] = self.caller.call("list pods", self.core.list_pod_for_all_namespaces).items or []
        taken = 0
        for p in pods:
            if p.status is not None and p.status.phase in ("Succeeded", "Failed"):
                continue
            node = p.spec.node_name if p.spec else None
            if node is not None and node not in usable:
                continue  # its GPUs are on a node we do not count
            taken += pod_gpus(self._json(p.spec) if p.spec else {})
        return max(0, sum(usable.values()) - taken)


def quantity(value: Any) -> int:
    """An extended-resource quantity ("4", 4) as an int; anything else counts as 0."""
    text = str(value if value is not None else "0").strip()
    return int(text) if text.isdigit() else 0


def _container_gpus(containers: list[dict[str, Any]]) -> int:
    total = 0
    for c in containers or []:
        res = c.get("resources") or {}
        total += max(quantity((res.get("requests") or {}).get(GPU)), quantity((res.get("limits") or {}).get(GPU)))
    return total


def pod_gpus(pod_spec: dict[str, Any]) -> int:
    """GPUs one pod of this spec requests (an extended resource: requests equal limits)."""
    return _container_gpus(pod_spec.get("containers") or [])


def gpus_per_replica(w: ServingWorkload) -> int:
    """GPUs one replica of the workload requests, from its pod template (KServe: the predictor)."""
    spec = w.spec
    if w.kind == "inferenceservice":
        predictor = spec.get("predictor") or {}
        model = predictor.get("model")
        containers = list(predictor.get("containers") or []) + ([model] if isinstance(model, dict) else [])
        return _container_gpus(containers)
    return pod_gpus((spec.get("template") or {}).get("spec") or {})
