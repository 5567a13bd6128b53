"""The serving half of the Kubernetes contract: Argo Rollouts `Rollout` and KServe `InferenceService`.

The same cases run against the sandbox API and a real kube-apiserver in which the vendored CRDs
(tests/contract/crds: Argo Rollouts v1.9.1's Rollout, KServe v0.20.0's InferenceService) are installed.
They check the writes opsmedic's abort_rollout and scale_deployment make -- the merge patch
`{"status":{"abort":true}}` on a Rollout's status subresource, the Rollout's scale subresource, an
InferenceService's `canaryTrafficPercent` and `minReplicas` -- and what each server answers.

No Argo Rollouts or KServe controller runs against the real server: it stores and validates the writes,
nothing acts on them. So there an abort is recorded (`status.abort: true`) but no traffic moves, and
opsmedic's verification says it is still waiting for the controller; the sandbox plays the Argo
controller (the simulator sends the canary's traffic back to stable), so there the abort verifies.
Neither target runs a KServe controller, so an InferenceService's traffic split is never reported.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kube_server
import pytest
import yaml
from k8s_targets import NS, Target

from core.domain import Action
from sandbox.k8s_api import write_kubeconfig
from tools.k8s_backend import KubernetesBackend

pytestmark = [
    pytest.mark.integration,
    pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning"),
]
REPO = Path(__file__).resolve().parents[2]
ROLLOUTS = f"/apis/argoproj.io/v1alpha1/namespaces/{NS}/rollouts"
ISVCS = f"/apis/serving.kserve.io/v1beta1/namespaces/{NS}/inferenceservices"


def run(backend: KubernetesBackend, name: str, target: str, key: str = "inc-1:s0", dry_run: bool = False,
        **params: Any) -> Any:
    action = Action(name=name, target=target, params=params)  # type: ignore[arg-type]
    return backend.execute(action, idempotency_key=f"{key}:{action.key}", dry_run=dry_run)


def create_isvc(t: Target, name: str, model: str, canary_pct: int | None) -> None:
    predictor: dict[str, Any] = {
        "minReplicas": 1,
        "maxReplicas": 2,
        "model": {"modelFormat": {"name": "sklearn"}, "storageUri": "s3://models/ranker/v2",
                  "resources": {"limits": {"nvidia.com/gpu": "1"}, "requests": {"nvidia.com/gpu": "1"}}},
    }
    if canary_pct is not None:
        predictor["canaryTrafficPercent"] = canary_pct
    status, body = t.raw("POST", ISVCS, {
        "apiVersion": "serving.kserve.io/v1beta1",
        "kind": "InferenceService",
        "metadata": {"name": name, "labels": {"opsmedic.io/model": model}},
        "spec": {"predictor": predictor},
    })
    assert status == 201, body


# ---------------------------------------------------------------------------------------- discovery


def test_discovery_lists_rollouts_and_inferenceservices(serving_target: Target) -> None:
    t = serving_target
    status, body = t.raw("GET", "/apis/argoproj.io/v1alpha1")
    assert status == 200, body
    names = {r["name"] for r in body["resources"]}
    assert {"rollouts", "rollouts/status", "rollouts/scale"} <= names
    scale = next(r for r in body["resources"] if r["name"] == "rollouts/scale")
    assert (scale["kind"], scale.get("group"), scale.get("version")) == ("Scale", "autoscaling", "v1")
    status, body = t.raw("GET", "/apis/serving.kserve.io/v1beta1")
    assert status == 200 and "inferenceservices" in {r["name"] for r in body["resources"]}


def test_a_model_maps_to_its_labelled_workload(serving_target: Target) -> None:
    serving = serving_target.backend().serving
    ro = serving.for_model("scorer")
    assert (ro.kind, ro.name) == ("rollout", "scorer")
    assert ro.status["canary"]["weights"]["canary"]["weight"] == 10  # the copied status, on both
    plain = serving.for_model("fraud-model")
    assert (plain.kind, plain.name) == ("statefulset", "fraud-model")
    assert serving.free_gpus() == 3  # 12 on Ready nodes - trainer 2x2 - fraud-model 1 - scorer 2x2


# ------------------------------------------------------------------------------------ Argo Rollouts


def test_abort_is_a_merge_patch_of_the_status_subresource(serving_target: Target) -> None:
    t = serving_target
    b = t.backend()
    dry = run(b, "abort_rollout", "scorer", dry_run=True)
    assert dry.ok and dry.detail.startswith("dry run"), dry.detail
    assert "abort" not in t.raw("GET", f"{ROLLOUTS}/scorer")[1]["status"]
    r = run(b, "abort_rollout", "scorer", key="inc-2:s0")
    assert r.ok and r.changed and "status.abort=true" in r.detail, r.detail
    ro = t.raw("GET", f"{ROLLOUTS}/scorer")[1]
    assert ro["status"]["abort"] is True
    check = b.verify(Action(name="abort_rollout", target="scorer"))
    if t.real:
        # kube-apiserver stored the abort; no Argo Rollouts controller is here to move the traffic
        assert not check.ok and "controller has not reported" in check.detail, check.detail
        assert ro["status"]["canary"]["weights"]["canary"]["weight"] == 10
    else:
        assert check.ok and "canary 0 %" in check.detail, check.detail
        assert t.sim.models["scorer"].canary is None
    again = run(b, "abort_rollout", "scorer", key="inc-3:s0")
    assert again.ok and not again.changed and "already aborted" in again.detail


def test_status_in_a_patch_of_the_main_resource_is_ignored(serving_target: Target) -> None:
    """With the status subresource on, kube-apiserver drops status from writes to the main resource:
    that is why the abort goes to /status (and why the sandbox ignores it too)."""
    t = serving_target
    status, body = t.raw(
        "PATCH", f"{ROLLOUTS}/scorer", {"status": {"abort": True}}, "application/merge-patch+json"
    )
    assert status == 200, body
    assert "abort" not in body["status"]
    assert "abort" not in t.raw("GET", f"{ROLLOUTS}/scorer")[1]["status"]


def test_rollout_scale_subresource(serving_target: Target) -> None:
    t = serving_target
    status, scale = t.raw("GET", f"{ROLLOUTS}/scorer/scale")
    assert status == 200, scale
    assert (scale["kind"], scale["apiVersion"]) == ("Scale", "autoscaling/v1")
    assert scale["spec"]["replicas"] == 2 and scale["status"]["replicas"] == 2
    assert scale["status"]["selector"] == "app.kubernetes.io/name=scorer"
    b = t.backend()
    # 4 more GPUs (2 replicas x 2) than the 3 free: refused before any write, on both
    r = run(b, "scale_deployment", "scorer", key="inc-4:s0", replicas=4)
    assert not r.ok and "needs 4 GPU(s) (2 per replica) and only 3 are free" in r.detail
    assert "escalate" in r.detail
    assert t.raw("GET", f"{ROLLOUTS}/scorer")[1]["spec"]["replicas"] == 2
    r = run(b, "scale_deployment", "scorer", key="inc-5:s0", replicas=3)
    assert r.ok and r.changed and r.detail == "rollout scorer scaled from 2 to 3 replica(s)", r.detail
    assert t.raw("GET", f"{ROLLOUTS}/scorer")[1]["spec"]["replicas"] == 3
    capped = t.backend(max_replicas=3)
    r = run(capped, "scale_deployment", "scorer", key="inc-6:s0", replicas=4)
    assert not r.ok and "exceeds the policy maximum of 3" in r.detail
    status, body = t.raw(
        "PATCH", f"{ROLLOUTS}/scorer/scale", {"spec": {"replicas": -1}}, "application/merge-patch+json"
    )
    assert status == 422 and body["reason"] == "Invalid", body


# ------------------------------------------------------------------------------------------ KServe


def test_kserve_abort_and_scale(serving_target: Target) -> None:
    t = serving_target
    create_isvc(t, "ranker", "ranker", canary_pct=20)
    create_isvc(t, "plain", "plain", canary_pct=None)
    b = t.backend()
    dry = run(b, "abort_rollout", "ranker", dry_run=True)
    assert dry.ok and t.raw("GET", f"{ISVCS}/ranker")[1]["spec"]["predictor"]["canaryTrafficPercent"] == 20
    r = run(b, "abort_rollout", "ranker")
    assert r.ok and r.changed and "canaryTrafficPercent 20 -> 0" in r.detail, r.detail
    assert t.raw("GET", f"{ISVCS}/ranker")[1]["spec"]["predictor"]["canaryTrafficPercent"] == 0
    check = b.verify(Action(name="abort_rollout", target="ranker"))
    assert not check.ok and "KServe controller has not reported" in check.detail
    none = run(b, "abort_rollout", "plain")
    assert not none.ok and "no canary rollout to abort" in none.detail
    r = run(b, "scale_deployment", "ranker", key="inc-7:s0", replicas=3)
    assert r.ok and r.changed and "spec.predictor.minReplicas" in r.detail, r.detail
    predictor = t.raw("GET", f"{ISVCS}/ranker")[1]["spec"]["predictor"]
    assert (predictor["minReplicas"], predictor["maxReplicas"]) == (3, 3)
    r = run(b, "scale_deployment", "ranker", key="inc-8:s0", replicas=7)
    assert not r.ok and "needs 4 GPU(s) (1 per replica) and only 3 are free" in r.detail


# -------------------------------------------------------------------------------------- RBAC (real)


def test_rbac_grants_the_serving_actions(serving_target: Target, tmp_path: Path) -> None:
    t = serving_target
    if not t.real:
        pytest.skip("the sandbox API does not authorise: RBAC is checked against kube-apiserver")
    for doc in yaml.safe_load_all((REPO / "deploy" / "rbac.yaml").read_text()):
        if not doc:
            continue
        plural = {"Namespace": "namespaces", "ServiceAccount": "serviceaccounts", "ClusterRole": "clusterroles",
                  "ClusterRoleBinding": "clusterrolebindings", "Role": "roles",
                  "RoleBinding": "rolebindings"}[doc["kind"]]
        group = doc["apiVersion"]
        ns = f"/namespaces/{doc['metadata']['namespace']}" if "namespace" in doc["metadata"] else ""
        status, body = t.raw("POST", f"{'/api/v1' if group == 'v1' else '/apis/' + group}{ns}/{plural}", doc)
        assert status in (201, 409), body
    create_isvc(t, "ranker", "ranker", canary_pct=20)
    kc = write_kubeconfig(t.url, tmp_path / "sa.kubeconfig", token=kube_server.SA_TOKEN,
                          insecure_skip_tls_verify=True)
    sa = KubernetesBackend(kubeconfig=kc, sleep=lambda s: None)
    for name, target, params in [
        ("abort_rollout", "scorer", {}),
        ("scale_deployment", "scorer", {"replicas": 3}),
        ("abort_rollout", "ranker", {}),
        ("scale_deployment", "ranker", {"replicas": 2}),
    ]:
        r = run(sa, name, target, **params)
        assert r.ok and r.changed, (name, target, r.detail)
        check = sa.verify(Action(name=name, target=target, params=params))  # type: ignore[arg-type]
        assert "cannot verify" not in check.detail, (name, check.detail)
    assert t.raw("GET", f"{ROLLOUTS}/scorer")[1]["status"]["abort"] is True
