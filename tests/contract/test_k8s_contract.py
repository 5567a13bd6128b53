"""The Kubernetes contract: the same cases against the sandbox API and a real kube-apiserver with etcd.

Each case states what a Kubernetes API server answers (codes, reasons, messages, object fields) and what
opsmedic's KubernetesBackend makes of it, and must hold on both targets. Where the sandbox differed from
kube-apiserver, the sandbox was fixed (plain-text 404 for unknown groups, MicroTime parsing, list items
without kind, the PDB 429 body). What legitimately differs is that the real server runs no controllers
here: evicted pods are not re-created and terminating pods stay Terminating (no kubelet confirms them), so
the cases check "the original pod is gone or going", which both satisfy.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import kube_server
import pytest
import yaml
from k8s_targets import NS, Target
from kubernetes import client

from core.domain import Action
from sandbox.k8s_api import write_kubeconfig
from tools.k8s_backend import KubernetesBackend, KubernetesTelemetry
from tools.k8s_lease import LeaseElector

pytestmark = [
    pytest.mark.integration,
    # the real apiserver's certificate is self-signed (the kubeconfig says insecure-skip-tls-verify)
    pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning"),
]
REPO = Path(__file__).resolve().parents[2]


def run(
    backend: KubernetesBackend,
    name: str,
    target: str,
    key: str = "inc-1:s0",
    dry_run: bool = False,
    **params: Any,
) -> Any:
    action = Action(name=name, target=target, params=params)  # type: ignore[arg-type]
    return backend.execute(action, idempotency_key=f"{key}:{action.key}", dry_run=dry_run)


def gone_or_going(t: Target, pod: str, uid: str) -> bool:
    """The pod with this uid no longer exists, or it is terminating."""
    status, body = t.raw("GET", f"/api/v1/namespaces/{NS}/pods/{pod}")
    if status == 404:
        return True
    return bool(body["metadata"]["uid"] != uid or body["metadata"].get("deletionTimestamp"))


# ---------------------------------------------------------------------------------------- discovery


def test_discovery(target: Target) -> None:
    assert client.VersionApi(target.client).get_code().major == "1"
    core = {r.name for r in target.core.get_api_resources().resources}
    assert {"nodes", "pods", "pods/eviction", "pods/log", "events", "configmaps"} <= core
    apps = {r.name for r in target.apps.get_api_resources().resources}
    assert {"statefulsets", "statefulsets/scale", "deployments/scale"} <= apps
    assert "leases" in {r.name for r in target.coord.get_api_resources().resources}
    groups = {
        g.name: [v.version for v in g.versions]
        for g in client.ApisApi(target.client).get_api_versions().groups
    }
    assert {"apps", "batch", "policy", "coordination.k8s.io"} <= set(groups)


# -------------------------------------------------------------------------------------- object shapes


def test_node_shape(target: Target) -> None:
    status, listing = target.raw("GET", "/api/v1/nodes")
    assert status == 200 and listing["kind"] == "NodeList" and listing["metadata"]["resourceVersion"]
    assert [n["metadata"]["name"] for n in listing["items"]] == ["node-0", "node-1", "node-2"]
    assert "kind" not in listing["items"][0]
    status, node = target.raw("GET", "/api/v1/nodes/node-0")
    assert node["kind"] == "Node" and node["apiVersion"] == "v1"
    assert {"name", "uid", "resourceVersion", "creationTimestamp", "labels"} <= set(node["metadata"])
    assert node["status"]["capacity"]["nvidia.com/gpu"] == "4"
    assert {c["type"]: c["status"] for c in node["status"]["conditions"]}["Ready"] == "True"
    typed = target.core.read_node("node-0")  # the client's strict models accept it
    assert typed.status.allocatable["nvidia.com/gpu"] == "4"


def test_pod_shape_and_field_selector(target: Target) -> None:
    pods = target.core.list_pod_for_all_namespaces(field_selector="spec.nodeName=node-0").items
    assert sorted(p.metadata.name for p in pods) == ["trainer-0", "trainer-1"]
    p = target.core.read_namespaced_pod("trainer-0", NS)
    assert p.metadata.owner_references[0].kind == "StatefulSet" and p.metadata.owner_references[0].controller
    assert p.metadata.annotations["opsmedic.io/gpus"] == "node-0/gpu-0,node-0/gpu-1"
    assert p.spec.containers[0].resources.limits == {"nvidia.com/gpu": "2"}
    assert p.status.phase == "Running" and p.status.container_statuses[0].restart_count == 0
    with pytest.raises(client.ApiException) as exc:
        target.core.list_namespaced_pod(NS, field_selector="spec.color=blue")
    assert exc.value.status == 400


def test_telemetry_reads_the_same_cluster(target: Target) -> None:
    snap = KubernetesTelemetry(target.client, logs=False).snapshot()
    want = target.sim.snapshot()
    assert [(n.name, n.ready, n.unschedulable, n.gpus) for n in snap.nodes] == [
        (n.name, n.ready, n.unschedulable, n.gpus) for n in want.nodes
    ]
    assert sorted((p.name, p.node, p.phase, p.ready, tuple(p.gpus)) for p in snap.pods) == sorted(
        (p.name, p.node, p.phase, p.ready, tuple(p.gpus)) for p in want.pods
    )


# ------------------------------------------------------------------------------------------ errors


def test_not_found_status(target: Target) -> None:
    status, body = target.raw("GET", f"/api/v1/namespaces/{NS}/pods/nope")
    assert (status, body) == (
        404,
        {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": 'pods "nope" not found',
            "reason": "NotFound",
            "details": {"name": "nope", "kind": "pods"},
            "code": 404,
        },
    )
    status, body = target.raw("GET", f"/apis/apps/v1/namespaces/{NS}/statefulsets/nope/scale")
    assert status == 404 and body["message"] == 'statefulsets.apps "nope" not found'
    assert body["details"] == {"name": "nope", "group": "apps", "kind": "statefulsets"}
    status, body = target.raw("GET", "/api/v1/widgets")
    assert status == 404 and body["message"] == "the server could not find the requested resource"
    assert target.raw("GET", "/apis/example.com/v1/widgets") == (404, "404 page not found\n")


def test_stale_resource_version_is_409_conflict(target: Target) -> None:
    rv = target.core.read_node("node-0").metadata.resource_version
    target.core.patch_node("node-0", {"metadata": {"labels": {"a": "b"}}})
    with pytest.raises(client.ApiException) as exc:
        target.core.patch_node("node-0", {"metadata": {"resourceVersion": rv, "labels": {"a": "c"}}})
    assert exc.value.status == 409
    body = exc.value.body
    assert '"reason":"Conflict"' in body.replace(" ", "")
    assert 'Operation cannot be fulfilled on nodes \\"node-0\\": the object has been modified' in body


def test_invalid_taint_is_422(target: Target) -> None:
    status, body = target.raw(
        "PATCH",
        "/api/v1/nodes/node-0",
        {"spec": {"taints": [{"key": "k", "effect": "Sometimes"}]}},
        "application/strategic-merge-patch+json",
    )
    assert status == 422 and body["reason"] == "Invalid"
    # kube-apiserver 1.20 names the field `metadata.taints[0].effect` (an upstream slip, fixed later to
    # `spec.`); the sandbox says `spec.`: both name the taint's effect
    assert body["details"]["causes"][0]["field"].endswith("taints[0].effect")
    assert 'Unsupported value: "Sometimes"' in body["message"]


def test_scale_to_negative_is_422(target: Target) -> None:
    with pytest.raises(client.ApiException) as exc:
        target.apps.patch_namespaced_stateful_set_scale("fraud-model", NS, {"spec": {"replicas": -1}})
    assert exc.value.status == 422
    assert '"field":"spec.replicas"' in exc.value.body.replace(" ", "")


# ------------------------------------------------------------------------------------------- nodes


def test_cordon_uncordon_through_the_backend(target: Target) -> None:
    b = target.backend()
    r = run(b, "cordon_node", "node-1", key="inc-5:s0")
    assert r.ok and r.changed, r.detail
    node = target.core.read_node("node-1")
    assert node.spec.unschedulable is True
    assert ("opsmedic.io/cordoned", "inc-5", "NoSchedule") in {
        (t.key, t.value, t.effect) for t in node.spec.taints
    }
    assert node.metadata.labels["opsmedic.io/cordoned-by"] == "inc-5"
    again = run(b, "cordon_node", "node-1", key="inc-6:s0")
    assert again.ok and not again.changed and "already cordoned" in again.detail
    assert b.verify(Action(name="cordon_node", target="node-1")).ok
    r = run(b, "uncordon_node", "node-1")
    assert r.ok and r.changed
    node = target.core.read_node("node-1")
    assert not node.spec.unschedulable and "opsmedic.io/cordoned-by" not in (node.metadata.labels or {})
    assert "opsmedic.io/cordoned" not in {t.key for t in node.spec.taints or []}
    assert b.verify(Action(name="uncordon_node", target="node-1")).ok
    events = target.core.list_namespaced_event(NS, field_selector="involvedObject.name=node-1").items
    # opsmedic's own events (the sandbox, playing the kubelet, also records NodeNotSchedulable)
    assert {e.reason for e in events if e.source.component == "opsmedic"} == {"OpsmedicCordonNode",
                                                                              "OpsmedicUncordonNode"}



def test_a_nodes_event_goes_to_default_whatever_the_workloads_namespace(target: Target) -> None:
    """A Node is cluster-scoped: kube-apiserver takes its Events only in `default` ("does not match
    event.namespace" anywhere else), also from a daemon that watches another namespace."""
    b = target.backend(namespace="ml-serving")
    r = run(b, "cordon_node", "node-2", key="inc-9:s0")
    assert r.ok and r.changed, r.detail
    events = target.core.list_namespaced_event(NS, field_selector="involvedObject.name=node-2").items
    assert "OpsmedicCordonNode" in {e.reason for e in events if e.source.component == "opsmedic"}

def test_dry_run_changes_nothing(target: Target) -> None:
    rv = target.core.read_node("node-1").metadata.resource_version
    r = run(target.backend(), "cordon_node", "node-1", dry_run=True)
    assert r.ok and r.dry_run and not r.changed
    node = target.core.read_node("node-1")
    assert not node.spec.unschedulable and node.metadata.resource_version == rv
    r = run(target.backend(), "scale_deployment", "fraud-model", dry_run=True, replicas=5)
    assert r.ok and target.apps.read_namespaced_stateful_set_scale("fraud-model", NS).spec.replicas == 2


def test_reset_gpu_request_is_recorded_on_the_node(target: Target) -> None:
    r = run(target.backend(), "reset_gpu", "node-2/gpu-3", key="inc-8:s0")
    assert r.ok and r.changed, r.detail
    anns = target.core.read_node("node-2").metadata.annotations
    assert anns["opsmedic.io/reset-gpu-3"].startswith("inc-8-")
    refused = run(target.backend(), "reset_gpu", "node-0/gpu-0")  # trainer-0 holds it
    assert not refused.ok and "in use by pod trainer-0" in refused.detail


# -------------------------------------------------------------------------------------- evictions


def test_eviction_violating_a_pdb_is_429(target: Target) -> None:
    target.create_pdb("fraud-model", {"app.kubernetes.io/name": "fraud-model"}, min_available=2)
    uid = target.core.read_namespaced_pod("fraud-model-0", NS).metadata.uid
    status, body = target.evict("fraud-model-0")
    assert status == 429, body
    assert body["reason"] == "TooManyRequests" and body["code"] == 429
    assert body["message"] == "Cannot evict pod as it would violate the pod's disruption budget."
    assert body["details"]["causes"][0]["reason"] == "DisruptionBudget"
    pod = target.core.read_namespaced_pod("fraud-model-0", NS)
    assert pod.metadata.uid == uid and pod.metadata.deletion_timestamp is None


def test_drain_blocked_by_a_pdb_escalates_without_deleting(target: Target) -> None:
    target.create_pdb("trainer", {"app.kubernetes.io/name": "trainer"}, min_available=2)
    uids = {p: target.core.read_namespaced_pod(p, NS).metadata.uid for p in ("trainer-0", "trainer-1")}
    r = run(target.backend(), "drain_node", "node-0", deadline_s=3)
    assert not r.ok and "PodDisruptionBudget" in r.detail and "escalate" in r.detail
    for p, uid in uids.items():
        pod = target.core.read_namespaced_pod(p, NS)
        assert pod.metadata.uid == uid and pod.metadata.deletion_timestamp is None
    assert target.core.read_node("node-0").spec.unschedulable  # cordoned before evicting


def test_eviction_without_a_pdb(target: Target) -> None:
    uid = target.core.read_namespaced_pod("fraud-model-1", NS).metadata.uid
    r = run(target.backend(), "reschedule_pod", "fraud-model-1")
    assert r.ok and r.changed, r.detail
    assert gone_or_going(target, "fraud-model-1", uid)


def test_drain_evicts_every_pod(target: Target) -> None:
    uids = {p: target.core.read_namespaced_pod(p, NS).metadata.uid for p in ("trainer-0", "trainer-1")}
    r = run(target.backend(), "drain_node", "node-0")
    assert r.ok and "trainer-0, trainer-1" in r.detail, r.detail
    assert all(gone_or_going(target, p, uid) for p, uid in uids.items())


def test_force_delete_and_restart(target: Target) -> None:
    uid = target.core.read_namespaced_pod("fraud-model-0", NS).metadata.uid
    target.core.delete_namespaced_pod("fraud-model-0", NS, grace_period_seconds=0)
    status, body = target.raw("GET", f"/api/v1/namespaces/{NS}/pods/fraud-model-0")
    assert status == 404 or (body["metadata"]["uid"] != uid and not body["metadata"].get("deletionTimestamp"))
    uid = target.core.read_namespaced_pod("fraud-model-1", NS).metadata.uid
    r = run(target.backend(), "restart_pod", "fraud-model-1")
    assert r.ok and "re-creates it" in r.detail
    assert gone_or_going(target, "fraud-model-1", uid)


# ---------------------------------------------------------------------------------------- workloads


def test_scale_pause_resume(target: Target) -> None:
    b = target.backend()
    r = run(b, "scale_deployment", "fraud-model", replicas=3)
    assert r.ok and r.changed and "from 2 to 3" in r.detail
    assert target.apps.read_namespaced_stateful_set_scale("fraud-model", NS).spec.replicas == 3
    assert not run(b, "scale_deployment", "fraud-model", key="inc-1:s1", replicas=3).changed
    r = run(b, "pause_job", "trainer")
    assert r.ok and r.changed
    sts = target.apps.read_namespaced_stateful_set("trainer", NS)
    assert sts.spec.replicas == 0 and sts.metadata.annotations["opsmedic.io/paused-replicas"] == "2"
    r = run(b, "resume_job", "trainer")
    assert r.ok and r.changed
    sts = target.apps.read_namespaced_stateful_set("trainer", NS)
    assert sts.spec.replicas == 2 and "opsmedic.io/paused-replicas" not in (sts.metadata.annotations or {})


# ------------------------------------------------------------------------------------------ leases


def test_leases(target: Target) -> None:
    t = {"now": dt.datetime(2025, 1, 1, 0, 0, tzinfo=dt.UTC)}
    a = LeaseElector(target.client, identity="a", namespace=NS, now=lambda: t["now"])
    b = LeaseElector(target.client, identity="b", namespace=NS, now=lambda: t["now"])
    assert a.try_acquire_or_renew() and not b.try_acquire_or_renew()
    t["now"] += dt.timedelta(seconds=20)
    assert b.try_acquire_or_renew() and b.holder() == "b"
    lease = target.coord.read_namespaced_lease("opsmedic-leader", NS)
    assert lease.spec.lease_transitions == 1
    stale = lease.metadata.resource_version
    assert b.try_acquire_or_renew()  # a renewal that changes nothing is not a write: same resourceVersion
    assert target.coord.read_namespaced_lease("opsmedic-leader", NS).metadata.resource_version == stale
    t["now"] += dt.timedelta(seconds=5)
    assert b.try_acquire_or_renew()  # a later renewTime moves the resourceVersion on
    status, body = target.raw(
        "PUT",
        f"/apis/coordination.k8s.io/v1/namespaces/{NS}/leases/opsmedic-leader",
        {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": "opsmedic-leader", "resourceVersion": stale},
            "spec": {"holderIdentity": "c"},
        },
    )
    assert status == 409 and body["reason"] == "Conflict"
    status, body = target.raw(
        "POST",
        f"/apis/coordination.k8s.io/v1/namespaces/{NS}/leases",
        {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": "opsmedic-leader"}},
    )
    assert status == 409 and body["reason"] == "AlreadyExists"
    # MicroTime needs its six fractional digits (kube-apiserver's layout); the elector always writes them
    status, body = target.raw(
        "POST",
        f"/apis/coordination.k8s.io/v1/namespaces/{NS}/leases",
        {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": "other"},
            "spec": {"renewTime": "2025-01-01T00:00:00Z"},
        },
    )
    assert status == 400 and body["reason"] == "BadRequest"
    assert b.release() and b.holder() is None


# -------------------------------------------------------------------------------------- RBAC (real)


def _apply(target: Target, doc: dict[str, Any]) -> None:
    kind, meta = doc["kind"], doc["metadata"]
    plural = {
        "Namespace": "namespaces",
        "ServiceAccount": "serviceaccounts",
        "ClusterRole": "clusterroles",
        "ClusterRoleBinding": "clusterrolebindings",
        "Role": "roles",
        "RoleBinding": "rolebindings",
    }[kind]
    group = doc["apiVersion"]
    base = "/api/v1" if group == "v1" else f"/apis/{group}"
    ns = f"/namespaces/{meta['namespace']}" if "namespace" in meta else ""
    status, body = target.raw("POST", f"{base}{ns}/{plural}", doc)
    assert status in (201, 409), body


def test_rbac_manifest_grants_exactly_what_the_backend_needs(target: Target, tmp_path: Path) -> None:
    if not target.real:
        pytest.skip("the sandbox API does not authorise: RBAC is checked against kube-apiserver")
    docs = [d for d in yaml.safe_load_all((REPO / "deploy" / "rbac.yaml").read_text()) if d]
    for doc in docs:
        _apply(target, doc)
    kc = write_kubeconfig(
        target.url, tmp_path / "sa.kubeconfig", token=kube_server.SA_TOKEN, insecure_skip_tls_verify=True
    )
    sa = KubernetesBackend(kubeconfig=kc, sleep=lambda s: None, reset_ack_timeout_s=0.2)
    for name, tgt, params in [
        ("cordon_node", "node-1", {}),
        ("uncordon_node", "node-1", {}),
        ("scale_deployment", "fraud-model", {"replicas": 3}),
        ("pause_job", "trainer", {}),
        ("resume_job", "trainer", {}),
        ("reset_gpu", "node-2/gpu-3", {}),
        ("restart_pod", "fraud-model-0", {}),
        ("reschedule_pod", "fraud-model-1", {}),
        ("drain_node", "node-0", {}),
    ]:
        r = run(sa, name, tgt, **params)
        assert r.ok, (name, r.detail)
        # a 403 while reading back would show as "cannot verify"
        check = sa.verify(Action(name=name, target=tgt, params=params))
        assert "cannot verify" not in check.detail, (name, check.detail)
    reasons = {e.reason for e in target.core.list_namespaced_event(NS).items}
    assert {"OpsmedicCordonNode", "OpsmedicDrainNode", "OpsmedicScaleDeployment"} <= reasons  # events: create
    snap = KubernetesTelemetry(sa.api_client, logs=False).snapshot()
    assert len(snap.nodes) == 3
    assert LeaseElector(sa.api_client, namespace="opsmedic").try_acquire_or_renew()
    sa_client = sa.api_client
    # ... and nothing more: no node deletion, no pod creation, no secrets, no leases elsewhere
    with pytest.raises(client.ApiException) as exc:
        client.CoreV1Api(sa_client).delete_node("node-2")
    assert exc.value.status == 403
    with pytest.raises(client.ApiException) as exc:
        client.CoreV1Api(sa_client).list_namespaced_secret(NS)
    assert exc.value.status == 403
    with pytest.raises(client.ApiException) as exc:
        client.CoreV1Api(sa_client).create_namespaced_pod(
            NS, {"metadata": {"name": "x"}, "spec": {"containers": [{"name": "c", "image": "i"}]}}
        )
    assert exc.value.status == 403
    with pytest.raises(client.ApiException) as exc:
        client.CoordinationV1Api(sa_client).create_namespaced_lease(NS, {"metadata": {"name": "x"}})
    assert exc.value.status == 403
