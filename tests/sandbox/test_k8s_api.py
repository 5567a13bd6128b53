"""The sandbox's Kubernetes API, driven by the unmodified official `kubernetes` client.

Each test serves a fresh simulator on 127.0.0.1 and checks both what the client reads back and what the
simulator now holds: the API is only useful if its writes are the simulator's actions.
"""

from __future__ import annotations

import json
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

SCENARIO: dict[str, Any] = three_node_scenario("k8s-api", 3)


class Env:
    def __init__(self, sim: Simulator, api: SandboxKubeAPI, api_client: Any, url: str) -> None:
        self.sim, self.api, self.client, self.url = sim, api, api_client, url
        self.core = client.CoreV1Api(api_client)
        self.apps = client.AppsV1Api(api_client)
        self.policy = client.PolicyV1Api(api_client)
        self.coord = client.CoordinationV1Api(api_client)


@pytest.fixture()
def env(tmp_path: Path) -> Iterator[Env]:
    sim = Simulator(parse_scenario(SCENARIO))
    api = SandboxKubeAPI(sim)
    url, stop = serve_in_thread(api)
    kubeconfig = write_kubeconfig(url, tmp_path / "kubeconfig")
    api_client = config.new_client_from_config(str(kubeconfig))
    try:
        yield Env(sim, api, api_client, url)
    finally:
        api_client.close()
        stop()


def error(exc: pytest.ExceptionInfo[client.ApiException]) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(exc.value.body)
    return body


def test_discovery_and_version(env: Env) -> None:
    assert client.VersionApi(env.client).get_code().major == "1"
    assert client.CoreApi(env.client).get_api_versions().versions == ["v1"]
    groups = {g.name for g in client.ApisApi(env.client).get_api_versions().groups}
    assert {"apps", "batch", "policy", "coordination.k8s.io"} <= groups
    core = {r.name for r in env.core.get_api_resources().resources}
    assert {"nodes", "pods", "pods/eviction", "events", "configmaps"} <= core
    assert "statefulsets/scale" in {r.name for r in env.apps.get_api_resources().resources}


def test_nodes_map_the_simulator(env: Env) -> None:
    nodes = env.core.list_node().items
    assert [n.metadata.name for n in nodes] == ["node-0", "node-1", "node-2"]
    n0 = nodes[0]
    assert n0.status.capacity["nvidia.com/gpu"] == "4"
    assert {c.type: c.status for c in n0.status.conditions}["Ready"] == "True"
    assert n0.kind is None  # list items carry no kind, as kube-apiserver sends them
    assert env.core.read_node("node-0").kind == "Node"


def test_node_not_ready_reads_unknown_with_unreachable_taints(env: Env) -> None:
    n = env.sim.nodes["node-1"]
    n.kubelet_up, n.down_since = False, env.sim.now
    for _ in range(6):
        env.sim.step()
    node = env.core.read_node("node-1")
    assert {c.type: c.status for c in node.status.conditions}["Ready"] == "Unknown"
    assert {t.key for t in node.spec.taints} == {"node.kubernetes.io/unreachable"}
    pod = env.core.list_namespaced_pod("default", field_selector="spec.nodeName=node-1").items[0]
    assert pod.status.reason == "NodeLost"


def test_cordon_by_strategic_merge_patch_is_the_simulators_cordon(env: Env) -> None:
    node = env.core.patch_node(
        "node-1",
        {
            "spec": {
                "unschedulable": True,
                "taints": [{"key": "opsmedic.io/cordoned", "value": "inc-7", "effect": "NoSchedule"}],
            },
            "metadata": {"labels": {"opsmedic.io/cordoned-by": "inc-7"}},
        },
    )
    assert node.spec.unschedulable is True
    assert {t.key for t in node.spec.taints} == {"opsmedic.io/cordoned", "node.kubernetes.io/unschedulable"}
    assert env.sim.nodes["node-1"].unschedulable and env.sim.nodes["node-1"].cordoned_by == "inc-7"
    assert any(e.kind == "action" and "cordon_node@node-1" in e.detail for e in env.sim.events)
    # merge patch (labels) and JSON patch (remove the cordon) work too
    env.core.patch_node(
        "node-1", {"metadata": {"labels": {"team": "ml"}}}, _content_type="application/merge-patch+json"
    )
    env.core.patch_node("node-1", [{"op": "replace", "path": "/spec/unschedulable", "value": False}])
    node = env.core.read_node("node-1")
    assert not node.spec.unschedulable and node.metadata.labels["team"] == "ml"
    assert not env.sim.nodes["node-1"].unschedulable


def test_patch_errors_are_statuses(env: Env) -> None:
    rv = env.core.read_node("node-0").metadata.resource_version
    env.core.patch_node("node-0", {"metadata": {"labels": {"a": "b"}}})
    with pytest.raises(client.ApiException) as exc:
        env.core.patch_node("node-0", {"metadata": {"resourceVersion": rv, "labels": {"a": "c"}}})
    assert exc.value.status == 409 and error(exc)["reason"] == "Conflict"
    with pytest.raises(client.ApiException) as exc:
        env.core.patch_node("node-0", {"spec": {"taints": [{"key": "k", "effect": "Sometimes"}]}})
    assert exc.value.status == 422 and error(exc)["reason"] == "Invalid"
    with pytest.raises(client.ApiException) as exc:
        env.core.patch_node("node-9", {"spec": {"unschedulable": True}})
    assert exc.value.status == 404
    assert error(exc) == {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": 'nodes "node-9" not found',
        "reason": "NotFound",
        "details": {"name": "node-9", "kind": "nodes"},
        "code": 404,
    }
    # dry run: validated, not applied
    env.core.patch_node("node-0", {"spec": {"unschedulable": True}}, dry_run="All")
    assert not env.sim.nodes["node-0"].unschedulable


def test_pods_carry_gpus_owner_and_restarts(env: Env) -> None:
    pods = env.core.list_pod_for_all_namespaces(field_selector="spec.nodeName=node-0").items
    assert {p.metadata.name for p in pods} == {"trainer-0", "trainer-1"}
    p = env.core.read_namespaced_pod("trainer-0", "default")
    assert p.metadata.owner_references[0].kind == "StatefulSet"
    assert p.metadata.owner_references[0].name == "trainer"
    assert p.metadata.annotations["opsmedic.io/gpus"] == "node-0/gpu-0,node-0/gpu-1"
    assert p.spec.containers[0].resources.limits["nvidia.com/gpu"] == "2"
    assert p.status.phase == "Running" and p.status.container_statuses[0].restart_count == 0
    # a crash-looping pod says so the way kubelet does
    env.sim._crash(env.sim.pods["fraud-model-0"], "CrashLoopBackOff")
    cs = env.core.read_namespaced_pod("fraud-model-0", "default").status.container_statuses[0]
    assert cs.state.waiting.reason == "CrashLoopBackOff" and cs.restart_count == 1
    assert env.core.read_namespaced_pod_log("trainer-0", "default", tail_lines=5) == ""
    with pytest.raises(client.ApiException) as exc:
        env.core.list_namespaced_pod("default", field_selector="spec.color=blue")
    assert exc.value.status == 400


def test_eviction_without_a_pdb_reschedules(env: Env) -> None:
    before = env.core.read_namespaced_pod("fraud-model-1", "default")
    env.core.create_namespaced_pod_eviction(
        "fraud-model-1",
        "default",
        client.V1Eviction(metadata=client.V1ObjectMeta(name="fraud-model-1", namespace="default")),
    )
    after = env.core.read_namespaced_pod("fraud-model-1", "default")
    assert after.metadata.uid != before.metadata.uid  # a new pod, re-created by its controller
    assert env.sim.pods["fraud-model-1"].gpus != [before.metadata.annotations["opsmedic.io/gpus"]]
    assert any("reschedule_pod@fraud-model-1" in e.detail for e in env.sim.events)


def test_eviction_that_violates_a_pdb_is_429(env: Env) -> None:
    env.policy.create_namespaced_pod_disruption_budget(
        "default",
        client.V1PodDisruptionBudget(
            metadata=client.V1ObjectMeta(name="fraud-model"),
            spec=client.V1PodDisruptionBudgetSpec(
                min_available=2,
                selector=client.V1LabelSelector(match_labels={"app.kubernetes.io/name": "fraud-model"}),
            ),
        ),
    )
    pdb = env.policy.read_namespaced_pod_disruption_budget("fraud-model", "default")
    assert pdb.status.disruptions_allowed == 0 and pdb.status.current_healthy == 2
    uid = env.core.read_namespaced_pod("fraud-model-0", "default").metadata.uid
    with pytest.raises(client.ApiException) as exc:
        env.core.create_namespaced_pod_eviction(
            "fraud-model-0",
            "default",
            {"apiVersion": "policy/v1", "kind": "Eviction", "metadata": {"name": "fraud-model-0"}},
        )
    assert exc.value.status == 429
    body = error(exc)
    assert body["reason"] == "TooManyRequests"
    assert body["message"] == "Cannot evict pod as it would violate the pod's disruption budget."
    assert body["details"]["causes"][0]["reason"] == "DisruptionBudget"
    assert env.core.read_namespaced_pod("fraud-model-0", "default").metadata.uid == uid
    # with room in the budget (minAvailable 1) the first eviction passes, the second waits
    env.policy.patch_namespaced_pod_disruption_budget("fraud-model", "default", {"spec": {"minAvailable": 1}})
    env.core.create_namespaced_pod_eviction(
        "fraud-model-0", "default", {"metadata": {"name": "fraud-model-0"}}
    )
    with pytest.raises(client.ApiException) as exc:
        env.core.create_namespaced_pod_eviction(
            "fraud-model-1", "default", {"metadata": {"name": "fraud-model-1"}}
        )
    assert exc.value.status == 429


def test_delete_restarts_and_force_delete_moves_off_a_lost_node(env: Env) -> None:
    restarts = env.sim.pods["fraud-model-0"].restarts
    env.core.delete_namespaced_pod("fraud-model-0", "default")
    assert env.sim.pods["fraud-model-0"].restarts == restarts + 1
    # a graceful delete on a NotReady node stays Terminating: no kubelet confirms it
    lost = env.sim.pods["trainer-0"].node
    assert lost is not None
    n = env.sim.nodes[lost]
    n.kubelet_up, n.down_since = False, env.sim.now
    for _ in range(5):
        env.sim.step()
    env.core.delete_namespaced_pod("trainer-0", "default")
    pod = env.core.read_namespaced_pod("trainer-0", "default")
    assert pod.metadata.deletion_timestamp is not None and env.sim.pods["trainer-0"].node == lost
    env.core.delete_namespaced_pod("trainer-0", "default", grace_period_seconds=0)
    assert env.sim.pods["trainer-0"].node != lost
    assert env.core.read_namespaced_pod("trainer-0", "default").metadata.deletion_timestamp is None


def test_scale_statefulsets(env: Env) -> None:
    scale = env.apps.read_namespaced_stateful_set_scale("trainer", "default")
    assert scale.spec.replicas == 2 and scale.status.selector == "app.kubernetes.io/name=trainer"
    env.apps.patch_namespaced_stateful_set_scale("trainer", "default", {"spec": {"replicas": 0}})
    assert all(p.paused for p in env.sim.pods.values() if p.workload == "trainer")
    assert (
        env.core.list_namespaced_pod("default", label_selector="app.kubernetes.io/name=trainer").items == []
    )
    env.apps.patch_namespaced_stateful_set_scale("trainer", "default", {"spec": {"replicas": 2}})
    assert not any(p.paused for p in env.sim.pods.values() if p.workload == "trainer")
    env.apps.patch_namespaced_stateful_set_scale("fraud-model", "default", {"spec": {"replicas": 3}})
    env.sim.step()
    assert env.sim.pods["fraud-model-2"].node is not None
    sts = env.apps.read_namespaced_stateful_set("fraud-model", "default")
    assert sts.spec.replicas == 3 and sts.status.replicas == 3
    env.apps.patch_namespaced_stateful_set_scale("fraud-model", "default", {"spec": {"replicas": 1}})
    assert [
        p.metadata.name
        for p in env.core.list_namespaced_pod(
            "default", label_selector="app.kubernetes.io/name=fraud-model"
        ).items
    ] == ["fraud-model-0"]
    with pytest.raises(client.ApiException) as exc:
        env.apps.patch_namespaced_stateful_set_scale("fraud-model", "default", {"spec": {"replicas": -1}})
    assert exc.value.status == 422 and error(exc)["details"]["causes"][0]["field"] == "spec.replicas"
    with pytest.raises(client.ApiException) as exc:
        env.apps.read_namespaced_stateful_set_scale("nope", "default")
    assert exc.value.status == 404


def test_leases_with_resource_version_conflicts(env: Env) -> None:
    lease = client.V1Lease(
        metadata=client.V1ObjectMeta(name="leader"),
        spec=client.V1LeaseSpec(holder_identity="a", lease_duration_seconds=15),
    )
    created = env.coord.create_namespaced_lease("default", lease)
    with pytest.raises(client.ApiException) as exc:
        env.coord.create_namespaced_lease("default", lease)
    assert exc.value.status == 409 and error(exc)["reason"] == "AlreadyExists"
    created.spec.holder_identity = "b"
    updated = env.coord.replace_namespaced_lease("leader", "default", created)
    assert updated.spec.holder_identity == "b"
    assert int(updated.metadata.resource_version) > int(created.metadata.resource_version)
    created.spec.holder_identity = "c"  # stale resourceVersion
    with pytest.raises(client.ApiException) as exc:
        env.coord.replace_namespaced_lease("leader", "default", created)
    assert exc.value.status == 409 and error(exc)["reason"] == "Conflict"
    bad = client.V1Lease(
        metadata=client.V1ObjectMeta(name="bad"), spec=client.V1LeaseSpec(lease_duration_seconds=0)
    )
    with pytest.raises(client.ApiException) as exc:
        env.coord.create_namespaced_lease("default", bad)
    assert exc.value.status == 422


def test_events_and_configmaps(env: Env) -> None:
    env.core.create_namespaced_event(
        "default",
        {
            "metadata": {"name": "node-0.opsmedic"},
            "involvedObject": {"kind": "Node", "name": "node-0"},
            "reason": "Cordoned",
            "message": "opsmedic cordoned node-0",
            "type": "Normal",
        },
    )
    events = env.core.list_namespaced_event("default", field_selector="involvedObject.name=node-0").items
    assert [e.reason for e in events] == ["Cordoned"]
    env.core.create_namespaced_config_map("default", {"metadata": {"name": "cfg"}, "data": {"a": "1"}})
    assert env.core.read_namespaced_config_map("cfg", "default").data == {"a": "1"}
    with pytest.raises(client.ApiException) as exc:
        env.core.create_namespaced_config_map("nowhere", {"metadata": {"name": "cfg"}})
    assert exc.value.status == 404 and error(exc)["details"]["kind"] == "namespaces"


def test_reset_gpu_request_annotation_is_honoured(env: Env) -> None:
    env.core.patch_node("node-2", {"metadata": {"annotations": {"opsmedic.io/reset-gpu-3": "req-1"}}})
    assert env.sim.gpus["node-2/gpu-3"].reset_until is not None
    status = env.core.read_node("node-2").metadata.annotations["opsmedic.io/reset-gpu-3-status"]
    assert status == "req-1:in-progress"
    for _ in range(3):
        env.sim.step()
    assert env.core.read_node("node-2").metadata.annotations["opsmedic.io/reset-gpu-3-status"] == "req-1:done"
    # a GPU in use is refused by the node agent, and the refusal is published
    env.core.patch_node("node-0", {"metadata": {"annotations": {"opsmedic.io/reset-gpu-0": "req-2"}}})
    status = env.core.read_node("node-0").metadata.annotations["opsmedic.io/reset-gpu-0-status"]
    assert status.startswith("req-2:failed:") and "in use by pod trainer-0" in status


def test_unknown_paths_and_watch(env: Env) -> None:
    with pytest.raises(client.ApiException) as exc:
        env.core.read_namespaced_pod("nope", "default")
    assert error(exc)["message"] == 'pods "nope" not found'
    resp = env.client.call_api("GET", env.url + "/api/v1/widgets")
    assert resp.status == 404
    assert json.loads(resp.read())["message"] == "the server could not find the requested resource"
    resp = env.client.call_api("GET", env.url + "/apis/example.com/v1/widgets")
    assert resp.status == 404 and resp.read() == b"404 page not found\n"  # plain text, as the real mux


def test_a_watch_without_a_resource_version_starts_with_every_object_added(env: Env) -> None:
    from kubernetes import watch

    events = list(watch.Watch().stream(env.core.list_node, timeout_seconds=1))
    assert [(e["type"], e["object"].metadata.name) for e in events] == [
        ("ADDED", "node-0"),
        ("ADDED", "node-1"),
        ("ADDED", "node-2"),
    ]


def _lease(name: str) -> Any:
    return client.V1Lease(metadata=client.V1ObjectMeta(name=name), spec=client.V1LeaseSpec(holder_identity="a"))


def test_a_watch_from_a_list_streams_what_changed_with_resource_versions(env: Env) -> None:
    from kubernetes import watch

    nodes = env.core.list_node()
    env.coord.create_namespaced_lease("default", _lease("gone-soon"))
    leases = env.coord.list_namespaced_lease("default")
    env.core.patch_node("node-1", {"spec": {"unschedulable": True}})
    env.coord.delete_namespaced_lease("gone-soon", "default")
    env.coord.create_namespaced_lease("default", _lease("new"))
    node_events = list(watch.Watch().stream(env.core.list_node, resource_version=nodes.metadata.resource_version,
                                            timeout_seconds=1))
    assert [(e["type"], e["object"].metadata.name) for e in node_events] == [("MODIFIED", "node-1")]
    assert node_events[0]["object"].spec.unschedulable is True
    assert int(node_events[0]["object"].metadata.resource_version) > int(nodes.metadata.resource_version)
    lease_events = list(watch.Watch().stream(env.coord.list_namespaced_lease, "default", timeout_seconds=1,
                                             resource_version=leases.metadata.resource_version))
    assert [(e["type"], e["object"].metadata.name) for e in lease_events] == [("DELETED", "gone-soon"),
                                                                             ("ADDED", "new")]
    rvs = [int(e["object"].metadata.resource_version) for e in lease_events]
    assert rvs == sorted(rvs) and len(set(rvs)) == 2


def test_an_open_watch_streams_changes_as_they_happen_and_bookmarks(env: Env) -> None:
    import threading

    from kubernetes import watch

    nodes = env.core.list_node()
    w = watch.Watch()
    got: list[tuple[str, str | None]] = []

    def watcher() -> None:
        for e in w.stream(env.core.list_node, resource_version=nodes.metadata.resource_version,
                          allow_watch_bookmarks=True, timeout_seconds=2):
            got.append((e["type"], e["object"].metadata.name if e["type"] != "BOOKMARK" else None))

    t = threading.Thread(target=watcher)
    t.start()
    env.core.patch_node("node-2", {"spec": {"unschedulable": True}})
    t.join(timeout=10)
    assert ("MODIFIED", "node-2") in got
    assert got[-1] == ("BOOKMARK", None)  # the watch ends with a bookmark: where to resume from


def test_a_watch_from_a_forgotten_resource_version_is_gone(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    from kubernetes import watch

    import sandbox.k8s_api as k8s_api

    monkeypatch.setattr(k8s_api, "WATCH_HISTORY", 1)
    start = env.coord.list_namespaced_lease("default").metadata.resource_version
    for name in ("a", "b"):
        env.coord.create_namespaced_lease("default", _lease(name))
        env.coord.list_namespaced_lease("default")
        env.coord.delete_namespaced_lease(name, "default")
        env.coord.list_namespaced_lease("default")
    with pytest.raises(client.ApiException) as exc:
        list(watch.Watch().stream(env.coord.list_namespaced_lease, "default", resource_version=start,
                                  timeout_seconds=1))
    assert exc.value.status == 410


def test_kubeconfig_loads_with_the_official_loader(env: Env, tmp_path: Path) -> None:
    path = write_kubeconfig(env.url, tmp_path / "kc", namespace="default")
    cfg = client.Configuration()
    config.load_kube_config(config_file=str(path), client_configuration=cfg)
    assert cfg.host == env.url


def test_pod_annotations_persist_and_labels_are_refused(env: Env) -> None:
    env.core.patch_namespaced_pod("trainer-0", "default", {"metadata": {"annotations": {"team": "ml"}}})
    anns = env.core.read_namespaced_pod("trainer-0", "default").metadata.annotations
    assert anns["team"] == "ml" and anns["opsmedic.io/gpus"] == "node-0/gpu-0,node-0/gpu-1"
    with pytest.raises(client.ApiException) as exc:
        env.core.patch_namespaced_pod("trainer-0", "default", {"metadata": {"labels": {"x": "y"}}})
    assert exc.value.status == 422


def test_scaling_an_inference_workload_past_the_free_gpus_is_refused_whole(env: Env) -> None:
    free = sum(1 for g in env.sim.gpus.values() if g.pod is None and g.healthy)
    want = len([p for p in env.sim.pods.values() if p.workload == "fraud-model" and p.state != "Deleted"]) + free + 1
    before = sorted(env.sim.pods)
    with pytest.raises(client.ApiException) as exc:
        env.apps.patch_namespaced_stateful_set_scale("fraud-model", "default", {"spec": {"replicas": want}})
    assert exc.value.status == 422 and "escalate for capacity" in error(exc)["message"]
    assert sorted(env.sim.pods) == before
    assert env.apps.read_namespaced_stateful_set_scale("fraud-model", "default").spec.replicas == 2
