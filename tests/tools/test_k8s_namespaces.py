"""KubernetesBackend over every namespace (`OPSMEDIC_NAMESPACE=*`): a pod or workload action goes to the
namespace its object is in, or the one its target names (`team-a/trainer-0`); a name in several namespaces
is refused rather than guessed. The sandbox API serves its cluster in `team-a` here."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from k8s_world import three_node_scenario
from kubernetes import client, config

from core.domain import Action
from core.errors import PermanentToolError
from sandbox.cluster import Simulator
from sandbox.k8s_api import SandboxKubeAPI, serve_in_thread, write_kubeconfig
from sandbox.scenario import parse_scenario
from tools.k8s_backend import KubernetesBackend

pytestmark = pytest.mark.integration


@pytest.fixture()
def api_client(tmp_path: Path) -> Iterator[Any]:
    sim = Simulator(parse_scenario(three_node_scenario("k8s-ns", 6)))
    for _ in range(3):
        sim.step()
    url, stop = serve_in_thread(SandboxKubeAPI(sim, namespace="team-a"))
    c = config.new_client_from_config(str(write_kubeconfig(url, tmp_path / "kubeconfig")))
    try:
        yield c
    finally:
        c.close()
        stop()


def act(name: str, target: str, **params: Any) -> Action:
    return Action(name=name, target=target, params=params)  # type: ignore[arg-type]


def test_actions_find_the_namespace_of_their_object(api_client: Any) -> None:
    every = KubernetesBackend(api_client, namespace="*", sleep=lambda s: None)
    res = every.execute(act("restart_pod", "trainer-0"), idempotency_key="inc-1:restart")
    assert res.ok and res.changed, res.detail
    events = client.CoreV1Api(api_client).list_namespaced_event("team-a").items
    assert any(e.reason == "OpsmedicRestartPod" and e.involved_object.namespace == "team-a" for e in events)
    scaled = every.execute(act("scale_deployment", "team-a/fraud-model", replicas=3), idempotency_key="s")
    assert scaled.ok and scaled.changed, scaled.detail
    assert client.AppsV1Api(api_client).read_namespaced_stateful_set("fraud-model", "team-a").spec.replicas == 3
    # a backend bound to one namespace behaves as before: `default` has no such pod
    one = KubernetesBackend(api_client, namespace="default", sleep=lambda s: None)
    res = one.execute(act("restart_pod", "trainer-1"), idempotency_key="inc-2:restart")
    assert not res.ok and "not found in namespace default" in res.detail


def test_a_name_in_two_namespaces_is_refused_unless_qualified(api_client: Any) -> None:
    core, apps = client.CoreV1Api(api_client), client.AppsV1Api(api_client)
    for ns in ("a", "b"):
        core.create_namespace({"metadata": {"name": ns}})
        apps.create_namespaced_deployment(ns, {
            "metadata": {"name": "web"}, "spec": {
                "replicas": 2, "selector": {"matchLabels": {"app": "web"}},
                "template": {"metadata": {"labels": {"app": "web"}},
                             "spec": {"containers": [{"name": "web", "image": "web:1"}]}}}})
    every = KubernetesBackend(api_client, namespace="*", sleep=lambda s: None)
    res = every.execute(act("pause_job", "web"), idempotency_key="p1")
    assert not res.ok and "exists in namespaces a, b" in res.detail and "namespace/web" in res.detail
    res = every.execute(act("pause_job", "b/web"), idempotency_key="p2")
    assert res.ok and res.changed, res.detail
    assert apps.read_namespaced_deployment("web", "b").spec.replicas == 0
    assert apps.read_namespaced_deployment("web", "a").spec.replicas == 2
    assert every.verify(act("pause_job", "b/web")).ok
    missing = every.execute(act("restart_pod", "ghost-0"), idempotency_key="g")
    assert not missing.ok and "no pod named 'ghost-0' in any namespace" in missing.detail


def test_serving_lookups_span_every_namespace_and_restart_in_the_workloads_own(api_client: Any) -> None:
    from tools.k8s_client import KubeCaller
    from tools.k8s_serving import ServingApi, rollout_status

    serving = ServingApi(api_client, KubeCaller(), "*")
    w = serving.for_model("fraud-model")
    assert (w.title, w.namespace) == ("StatefulSet fraud-model", "team-a")
    assert "in team-a restarted" in serving.restart(w, at="2026-12-02T05:00:00Z", cause="inc-5:rollback")
    again = serving.refresh(w)
    assert serving.restarted_for(again) == "inc-5:rollback"
    assert not rollout_status(again)[0]  # its pods were re-created and are starting
    with pytest.raises(PermanentToolError, match="in any namespace is labelled"):
        serving.for_model("churn-model")
