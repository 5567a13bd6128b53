"""Two targets for the same Kubernetes contract cases: the sandbox API and a real kube-apiserver.

`target` is parametrised over both. Each test gets a fresh simulated cluster served by the sandbox API;
for the real target, the same cluster is copied into kube-apiserver (nodes, StatefulSets and pods bound
to nodes, with the sandbox's statuses written through the status subresources), so both targets start
from the same objects and the cases can compare what each answers. The real target is skipped with
`kube-apiserver not built: run scripts/build-kube-apiserver.sh` when the cache has no binary.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kube_server
import pytest
from k8s_targets import NS, SCENARIO, Target

from sandbox.cluster import Simulator
from sandbox.k8s_api import SandboxKubeAPI, serve_in_thread, write_kubeconfig
from sandbox.scenario import parse_scenario


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "integration: needs a real server (Prometheus, kube-apiserver, ...)")


def _sandbox() -> tuple[Simulator, str, Any]:
    sim = Simulator(parse_scenario(SCENARIO))
    url, stop = serve_in_thread(SandboxKubeAPI(sim))
    return sim, url, stop


@pytest.fixture(scope="session")
def real_apiserver() -> Iterator[kube_server.KubeApiServer]:
    if not kube_server.available():
        pytest.skip(kube_server.SKIP_REASON)
    server = kube_server.KubeApiServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()


def _copy_cluster(src: Target, dst: Target) -> None:
    """Empty the real server's namespace and nodes, then create the sandbox's objects in it."""
    for path in (
        f"/api/v1/namespaces/{NS}/pods?gracePeriodSeconds=0",
        f"/apis/apps/v1/namespaces/{NS}/statefulsets",
        f"/apis/apps/v1/namespaces/{NS}/deployments",
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
    sim, url, stop = _sandbox()
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
