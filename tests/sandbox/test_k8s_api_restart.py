"""The sandbox API's `rollout restart`, fresh pods and events, through the official `kubernetes` client.

`kubectl rollout restart` patches the pod template's annotation `kubectl.kubernetes.io/restartedAt`; the
controller then replaces every pod. Here the API plays that controller on the simulator: each pod is
re-created (a new uid, restartCount 0, an empty log) and the workload's generation moves on."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from k8s_world import three_node_scenario
from kubernetes import client, config

from sandbox.cluster import Simulator
from sandbox.k8s_api import SandboxKubeAPI, serve_in_thread, write_kubeconfig
from sandbox.scenario import parse_scenario

pytestmark = pytest.mark.integration
RESTARTED_AT = "kubectl.kubernetes.io/restartedAt"


class Env:
    def __init__(self, sim: Simulator, api: SandboxKubeAPI, api_client: Any) -> None:
        self.sim, self.api, self.client = sim, api, api_client
        self.core = client.CoreV1Api(api_client)
        self.apps = client.AppsV1Api(api_client)
        self.custom = client.CustomObjectsApi(api_client)

    def pods(self, prefix: str) -> dict[str, Any]:
        return {p.metadata.name: p for p in self.core.list_namespaced_pod("default").items
                if p.metadata.name.startswith(prefix)}


def serve(tmp_path: Path, scenario: dict[str, Any]) -> Iterator[Env]:
    sim = Simulator(parse_scenario(scenario))
    for _ in range(3):
        sim.step()
    api = SandboxKubeAPI(sim)
    url, stop = serve_in_thread(api)
    api_client = config.new_client_from_config(str(write_kubeconfig(url, tmp_path / "kubeconfig")))
    try:
        yield Env(sim, api, api_client)
    finally:
        api_client.close()
        stop()


@pytest.fixture()
def env(tmp_path: Path) -> Iterator[Env]:
    yield from serve(tmp_path, three_node_scenario("k8s-restart", 4))


@pytest.fixture()
def canary_env(tmp_path: Path) -> Iterator[Env]:
    sc = three_node_scenario("k8s-restart-ro", 4)
    sc["workloads"][1]["rollout"] = {"strategy": "canary", "steps": [10, 50, 100], "step_every": "5m"}
    yield from serve(tmp_path, sc)


def test_rollout_restart_recreates_every_pod_of_a_statefulset(env: Env) -> None:
    # a pod that restarted before, with a log: its replacement starts from nothing
    env.sim.pods["fraud-model-0"].restarts = 3
    env.sim.pods["fraud-model-0"].log.append("old incarnation")
    before = env.pods("fraud-model")
    assert before["fraud-model-0"].status.container_statuses[0].restart_count == 3
    gen = env.apps.read_namespaced_stateful_set("fraud-model", "default").metadata.generation
    body = {"spec": {"template": {"metadata": {"annotations": {RESTARTED_AT: "2026-12-02T05:00:00Z"}}}}}
    sts = env.apps.patch_namespaced_stateful_set("fraud-model", "default", body)
    assert sts.metadata.generation == gen + 1
    assert sts.spec.template.metadata.annotations[RESTARTED_AT] == "2026-12-02T05:00:00Z"
    after = env.pods("fraud-model")
    assert all(after[n].metadata.uid != p.metadata.uid for n, p in before.items())
    for p in after.values():
        assert p.status.container_statuses[0].restart_count == 0
    assert env.core.read_namespaced_pod_log("fraud-model-0", "default") == ""
    assert set(env.pods("trainer")) == {"trainer-0", "trainer-1"}  # other workloads untouched

    # the same annotation again changes nothing (no new revision)
    again = env.apps.patch_namespaced_stateful_set("fraud-model", "default", body)
    assert again.metadata.generation == gen + 1
    events = env.core.list_namespaced_event("default", field_selector="involvedObject.name=fraud-model").items
    assert [e.reason for e in events] == ["Restarted"]


def test_a_deleted_pod_comes_back_fresh(env: Env) -> None:
    env.sim.pods["trainer-0"].restarts = 2
    env.sim.pods["trainer-0"].log.append("before the delete")
    env.core.delete_namespaced_pod("trainer-0", "default")
    pod = env.core.read_namespaced_pod("trainer-0", "default")
    assert pod.status.container_statuses[0].restart_count == 0
    assert "before the delete" not in env.core.read_namespaced_pod_log("trainer-0", "default")


def test_argo_rollouts_restart_sets_restart_at_and_recreates_pods(canary_env: Env) -> None:
    env = canary_env
    before = env.pods("fraud-model")
    ro = env.custom.patch_namespaced_custom_object(
        "argoproj.io", "v1alpha1", "default", "rollouts", "fraud-model",
        {"spec": {"restartAt": "2026-12-02T05:00:00Z"}})
    assert ro["spec"]["restartAt"] == ro["status"]["restartedAt"] == "2026-12-02T05:00:00Z"
    after = env.pods("fraud-model")
    assert all(after[n].metadata.uid != p.metadata.uid for n, p in before.items())
    # a template annotation (what `kubectl rollout restart` would send) is accepted too
    body = {"spec": {"template": {"metadata": {"annotations": {RESTARTED_AT: "2026-12-02T06:00:00Z"}}}}}
    ro = env.custom.patch_namespaced_custom_object("argoproj.io", "v1alpha1", "default", "rollouts",
                                                   "fraud-model", body)
    assert ro["spec"]["template"]["metadata"]["annotations"][RESTARTED_AT] == "2026-12-02T06:00:00Z"
    # any other spec change is still refused, saying what the sandbox supports
    with pytest.raises(client.ApiException) as exc:
        env.custom.patch_namespaced_custom_object("argoproj.io", "v1alpha1", "default", "rollouts",
                                                  "fraud-model", {"spec": {"revisionHistoryLimit": 3}})
    assert exc.value.status == 422 and "spec.restartAt" in str(exc.value.body)
