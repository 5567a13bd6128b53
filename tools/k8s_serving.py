"""Which Kubernetes object serves a model, how many GPUs are free for it, and how each kind is scaled.

Layer: tools (imports `core.errors` and `tools.k8s_client`; never the sandbox). Used by
`tools.k8s_backend` for `abort_rollout` and `scale_deployment`, and by `tools.k8s_models` to roll a model's
serving workload after the registry moves.

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

After the registry's serving alias moves (`rollback_model`, `promote_model`), `ServingApi.restart` rolls the
workload so that its pods load the new version: `kubectl rollout restart` for a Deployment or StatefulSet
(the pod template's `kubectl.kubernetes.io/restartedAt`), `kubectl argo rollouts restart` for a Rollout
(`spec.restartAt`, no new canary); an InferenceService is refused (KServe resolves its storage URI itself).
`rollout_status` says when the controller has finished, by `kubectl rollout status`'s rules. With the
namespace `*` the lookups span every namespace and each workload is addressed in its own.

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

from core.errors import PermanentToolError
from tools.k8s_client import KubeCaller, KubePermanentError

LABEL_MODEL = "opsmedic.io/model"
ANN_RESTARTED_AT = "kubectl.kubernetes.io/restartedAt"
ANN_RESTARTED_FOR = "opsmedic.io/restarted-for"
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

    @property
    def namespace(self) -> str:
        return str((self.obj.get("metadata") or {}).get("namespace") or "default")

    @property
    def template_annotations(self) -> dict[str, str]:
        return dict(((self.spec.get("template") or {}).get("metadata") or {}).get("annotations") or {})


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

    @property
    def every_namespace(self) -> bool:
        return self.namespace in ("*", "")

    def _list(self, kind: ServingKind, selector: str) -> list[dict[str, Any]]:
        ns = self.namespace
        try:
            if kind in ("statefulset", "deployment"):
                if self.every_namespace:
                    fn: Any = (
                        self.apps.list_stateful_set_for_all_namespaces
                        if kind == "statefulset"
                        else self.apps.list_deployment_for_all_namespaces
                    )
                    got: Any = self.caller.call(f"list {kind}s", fn, label_selector=selector)
                else:
                    fn = (
                        self.apps.list_namespaced_stateful_set
                        if kind == "statefulset"
                        else self.apps.list_namespaced_deployment
                    )
                    got = self.caller.call(f"list {kind}s", fn, ns, label_selector=selector)
                return [self._json(o) for o in got.items or []]
            group, version, plural = ARGO_ROLLOUTS if kind == "rollout" else KSERVE_ISVC
            if self.every_namespace:
                listing: Any = self.caller.call(
                    f"list {plural}", self.custom.list_cluster_custom_object, group, version, plural,
                    label_selector=selector,
                )
            else:
                listing = self.caller.call(
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
            where = "any namespace" if self.every_namespace else self.namespace
            raise PermanentToolError(
                f"no Deployment, StatefulSet, Rollout or InferenceService in {where} is labelled "
                f"{selector}: opsmedic does not know which workload serves model {model!r}"
            )
        if len(found) > 1:
            raise PermanentToolError(
                f"several workloads are labelled {selector} ({', '.join(w.title for w in found)}): "
                "opsmedic acts on one serving workload per model and will not guess"
            )
        return found[0]

    def restart(self, w: ServingWorkload, *, at: str, cause: str, dry_run: bool = False) -> str:
        """Roll the workload so that every pod starts again (and loads what the registry serves now):
        `kubectl rollout restart` for a Deployment or StatefulSet (the pod template's annotation
        `kubectl.kubernetes.io/restartedAt`, a new revision the controller rolls out under its update
        strategy), `kubectl argo rollouts restart` for an Argo Rollout (`spec.restartAt`: pods are replaced
        without a new canary, which a template change would start). `cause` goes in the template
        annotation `opsmedic.io/restarted-for` (which action rolled it). A KServe InferenceService has no
        pod template to restart: refused, since its predictor resolves the model itself."""
        ns = w.namespace
        opts: dict[str, Any] = {"dry_run": "All"} if dry_run else {}
        anns = {ANN_RESTARTED_AT: at, ANN_RESTARTED_FOR: cause}
        if w.kind in ("statefulset", "deployment"):
            fn = (self.apps.patch_namespaced_stateful_set if w.kind == "statefulset"
                  else self.apps.patch_namespaced_deployment)
            body: dict[str, Any] = {"spec": {"template": {"metadata": {"annotations": anns}}}}
            self.caller.call(f"restart {w.title}", fn, w.name, ns, body, **opts)
            return f"{w.title} in {ns} restarted (pod template annotation {ANN_RESTARTED_AT}={at})"
        if w.kind == "rollout":
            group, version, plural = ARGO_ROLLOUTS
            body = {"spec": {"restartAt": at}, "metadata": {"annotations": {ANN_RESTARTED_FOR: cause}}}
            self.caller.call(f"restart {w.title}", self.custom.patch_namespaced_custom_object, group, version,
                             ns, plural, w.name, body, _content_type="application/merge-patch+json", **opts)
            return f"{w.title} in {ns} restarted (spec.restartAt={at})"
        raise PermanentToolError(
            f"{w.title} is a KServe InferenceService: it has no pod template to restart; point its "
            "storageUri at the registry alias so that KServe serves the alias's version")

    def restarted_for(self, w: ServingWorkload) -> str | None:
        """The cause recorded by the last `restart` (None when opsmedic never restarted it)."""
        if w.kind == "rollout":
            return w.annotations.get(ANN_RESTARTED_FOR)
        return w.template_annotations.get(ANN_RESTARTED_FOR)

    def refresh(self, w: ServingWorkload) -> ServingWorkload:
        """The workload read again from its own namespace."""
        again = ServingApi(self.api_client, self.caller, w.namespace).get(w.kind, w.name)
        if again is None:
            raise PermanentToolError(f"{w.title} in {w.namespace} no longer exists")
        return again


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


def _int(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0


def rollout_status(w: ServingWorkload) -> tuple[bool, str]:
    """Whether the workload's rollout is complete, by the rules of `kubectl rollout status` (and of
    `kubectl argo rollouts status`): the controller has seen the latest spec (observedGeneration), every
    replica runs the new revision (updatedReplicas), no old replica is left, and all are ready/available."""
    st, spec = w.status, w.spec
    want = _int(spec.get("replicas", 1))
    gen = _int((w.obj.get("metadata") or {}).get("generation"))
    seen = _int(st.get("observedGeneration"))  # a string in Argo's status
    if w.kind == "inferenceservice":
        up = any(c.get("type") == "Ready" and c.get("status") == "True" for c in st.get("conditions") or [])
        return up, f"{w.title}: Ready={up}"
    if gen and seen < gen:
        return False, f"{w.title}: waiting for the controller to observe generation {gen} (seen {seen})"
    updated = _int(st.get("updatedReplicas"))
    total = _int(st.get("replicas"))
    ready = _int(st.get("availableReplicas" if w.kind == "deployment" else "readyReplicas"))
    if w.kind == "statefulset":
        cur, upd = st.get("currentRevision"), st.get("updateRevision")
        if cur and upd and cur != upd and updated < want:
            return False, f"{w.title}: {updated} of {want} pod(s) on the new revision"
    if w.kind == "rollout":
        restart_at = spec.get("restartAt")
        if restart_at and st.get("restartedAt") != restart_at:
            return False, f"{w.title}: restart to {restart_at} not finished by the controller"
        if st.get("phase") in ("Degraded", "Paused", "Progressing"):
            return False, f"{w.title}: phase {st.get('phase')} ({st.get('message') or 'no message'})"
    if updated < want:
        return False, f"{w.title}: {updated} of {want} updated replica(s)"
    if total > updated:
        return False, f"{w.title}: {total - updated} old replica(s) pending termination"
    if ready < want:
        return False, f"{w.title}: {ready} of {want} updated replica(s) ready"
    return True, f"{w.title}: rolled out, {ready}/{want} ready"
