"""Two targets for the same Kubernetes contract cases: the sandbox API and a real kube-apiserver.

`target` is parametrised over both. Each test gets a fresh simulated cluster served by the sandbox API;
for the real target, the same cluster is copied into kube-apiserver (nodes, StatefulSets and pods bound
to nodes, with the sandbox's statuses written through the status subresources), so both targets start
from the same objects and the cases can compare what each answers. The real target is skipped with
`kube-apiserver not built: run scripts/build-kube-apiserver.sh` when the cache has no binary.

The real server also gets the vendored Argo Rollouts and KServe CRDs (tests/contract/crds) once per
session, and `serving_target` starts both targets from a cluster with a Rollout mid-canary (its status
copied through the status subresource). Only the API types are installed: no Argo Rollouts or KServe
controller runs, so nothing acts on the writes there.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kube_server
import pytest
import yaml
from k8s_targets import CRDS, NS, SCENARIO, SERVING_SCENARIO, SERVING_START_S, Target

from sandbox.cluster import Simulator
from sandbox.k8s_api import SandboxKubeAPI, serve_in_thread, write_kubeconfig
from sandbox.scenario import parse_scenario


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "integration: needs a real server (Prometheus, kube-apiserver, ...)")


def _sandbox(scenario: dict[str, Any] = SCENARIO, start_s: float = 0.0) -> tuple[Simulator, str, Any]:
    sim = Simulator(parse_scenario(scenario))
    while sim.now < start_s:
        sim.step()
    url, stop = serve_in_thread(SandboxKubeAPI(sim))
    return sim, url, stop


def _for_1_20(crd: dict[str, Any]) -> dict[str, Any]:
    """The vendored CRD as kube-apiserver 1.20 accepts it. The Rollout's embedded pod template schema
    (spec.template.spec, the PodSpec of Kubernetes 1.3x) has `default: ""` on list-map keys, which 1.20's
    validation of defaults reads as null and rejects; it becomes an object with unknown fields preserved,
    as in Argo Rollouts' own CRDs before v1.0. Everything opsmedic touches (metadata, spec.replicas,
    spec.strategy, status, the scale and status subresources) keeps its upstream schema, and the files stay
    byte-identical to upstream."""
    for version in crd["spec"]["versions"]:
        props = version["schema"]["openAPIV3Schema"]["properties"]["spec"].get("properties") or {}
        template = (props.get("template") or {}).get("properties") or {}
        if "spec" in template:
            template["spec"] = {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
    return crd


def _install_crds(server: kube_server.KubeApiServer) -> None:
    """The vendored Argo Rollouts and KServe CRDs (tests/contract/crds), created and waited on until
    Established. Only the API types: no Argo Rollouts or KServe controller runs in the contract tests."""
    import json
    import ssl
    import time
    import urllib.error
    import urllib.request

    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    headers = {"Authorization": f"Bearer {kube_server.ADMIN_TOKEN}", "Content-Type": "application/json"}
    base = server.url + "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"
    names = []
    for path in sorted(CRDS.glob("*.yaml")):
        crd = _for_1_20(yaml.safe_load(path.read_text(encoding="utf-8")))
        names.append(crd["metadata"]["name"])
        req = urllib.request.Request(base, json.dumps(crd).encode(), headers, method="POST")
        try:
            with urllib.request.urlopen(req, context=ctx, timeout=30) as resp:
                assert resp.status == 201
        except urllib.error.HTTPError as exc:
            raise AssertionError(f"{path.name}: {exc.code} {exc.read().decode()[:2000]}") from None
    deadline = time.monotonic() + 30
    for name in names:
        while True:
            req = urllib.request.Request(f"{base}/{name}", headers=headers)
            with urllib.request.urlopen(req, context=ctx, timeout=10) as resp:
                conds = json.loads(resp.read()).get("status", {}).get("conditions") or []
            if any(c["type"] == "Established" and c["status"] == "True" for c in conds):
                break
            assert time.monotonic() < deadline, f"CRD {name} not Established"
            time.sleep(0.2)


@pytest.fixture(scope="session")
def real_apiserver() -> Iterator[kube_server.KubeApiServer]:
    if not kube_server.available():
        pytest.skip(kube_server.SKIP_REASON)
    server = kube_server.KubeApiServer()
    server.start()
    try:
        _install_crds(server)
        yield server
    finally:
        server.stop()


def _copy_cluster(src: Target, dst: Target) -> None:
    """Empty the real server's namespace and nodes, then create the sandbox's objects in it."""
    for path in (
        f"/api/v1/namespaces/{NS}/pods?gracePeriodSeconds=0",
        f"/apis/apps/v1/namespaces/{NS}/statefulsets",
        f"/apis/apps/v1/namespaces/{NS}/deployments",
        f"/apis/argoproj.io/v1alpha1/namespaces/{NS}/rollouts",
        f"/apis/serving.kserve.io/v1beta1/namespaces/{NS}/inferenceservices",
        f"/apis/policy/v1beta1/namespaces/{NS}/poddisruptionbudgets",
        f"/apis/coordination.k8s.io/v1/namespaces/{NS}/leases",
        f"/api/v1/namespaces/{NS}/events",
        f"/api/v1/namespaces/{NS}/configmaps",
        "/api/v1/nodes",
    ):
        status, body = dst.raw("DELETE", path)
        assert status in (200, 404), (path, body)

    def meta(obj: dict[str, Any], *keys: str) -> dict[str, Any]:
        return {k: obj["metadata"][k] for k in ("name", *keys) if k in obj["metadata"]}

    def put_status(path: str, obj: dict[str, Any]) -> None:
        status, body = dst.raw(
            "PATCH", path + "/status", {"status": obj["status"]}, "application/merge-patch+json"
        )
        assert status == 200, (path, body)

    for node in src.raw("GET", "/api/v1/nodes")[1]["items"]:
        name = node["metadata"]["name"]
        status, body = dst.raw(
            "POST",
            "/api/v1/nodes",
            {
                "kind": "Node",
                "apiVersion": "v1",
                "metadata": meta(node, "labels", "annotations"),
                "spec": node["spec"],
            },
        )
        assert status == 201, body
        # admission adds node.kubernetes.io/not-ready on create: set the sandbox's taints back
        dst.raw(
            "PATCH",
            f"/api/v1/nodes/{name}",
            {"spec": {"taints": node["spec"].get("taints")}},
            "application/merge-patch+json",
        )
        put_status(f"/api/v1/nodes/{name}", node)
    base = f"/apis/apps/v1/namespaces/{NS}/statefulsets"
    for sts in src.raw("GET", base)[1]["items"]:
        status, body = dst.raw(
            "POST",
            base,
            {
                "kind": "StatefulSet",
                "apiVersion": "apps/v1",
                "metadata": meta(sts, "labels", "annotations"),
                "spec": sts["spec"],
            },
        )
        assert status == 201, body
        put_status(f"{base}/{sts['metadata']['name']}", sts)
    base = f"/apis/argoproj.io/v1alpha1/namespaces/{NS}/rollouts"
    for ro in src.raw("GET", base)[1]["items"]:
        status, body = dst.raw(
            "POST",
            base,
            {
                "kind": "Rollout",
                "apiVersion": "argoproj.io/v1alpha1",
                "metadata": meta(ro, "labels", "annotations"),
                "spec": ro["spec"],
            },
        )
        assert status == 201, body
        put_status(f"{base}/{ro['metadata']['name']}", ro)
    base = f"/api/v1/namespaces/{NS}/pods"
    for pod in src.raw("GET", base)[1]["items"]:
        status, body = dst.raw(
            "POST",
            base,
            {
                "kind": "Pod",
                "apiVersion": "v1",
                "metadata": meta(pod, "labels", "annotations", "ownerReferences"),
                "spec": pod["spec"],
            },
        )
        assert status == 201, body
        put_status(f"{base}/{pod['metadata']['name']}", pod)


@pytest.fixture(params=["sandbox", "kube-apiserver"])
def target(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Target]:
    yield from _targets(request, tmp_path, SCENARIO, 0.0)


@pytest.fixture(params=["sandbox", "kube-apiserver"])
def serving_target(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Target]:
    """Both targets with SERVING_SCENARIO at SERVING_START_S: a Rollout mid-canary, copied to the real
    server with its status (the Rollout CRD is installed there; no Argo controller runs)."""
    yield from _targets(request, tmp_path, SERVING_SCENARIO, SERVING_START_S)


def _targets(
    request: pytest.FixtureRequest, tmp_path: Path, scenario: dict[str, Any], start_s: float
) -> Iterator[Target]:
    sim, url, stop = _sandbox(scenario, start_s)
    try:
        sandbox = Target("sandbox", url, write_kubeconfig(url, tmp_path / "sandbox.kubeconfig"), None, sim)
        if request.param == "sandbox":
            yield sandbox
            return
        server: kube_server.KubeApiServer = request.getfixturevalue("real_apiserver")
        kc = write_kubeconfig(
            server.url,
            tmp_path / "real.kubeconfig",
            token=kube_server.ADMIN_TOKEN,
            insecure_skip_tls_verify=True,
        )
        real = Target("kube-apiserver", server.url, kc, kube_server.ADMIN_TOKEN, sim)
        _copy_cluster(sandbox, real)
        yield real
    finally:
        stop()
