"""tools.k8s_models: on a cluster, serving follows the registry and verification waits for the SLO.

A real MLflow registry (SQLite) and the sandbox's Kubernetes API behind the official client; the metrics
source is a small `TelemetrySource` that reports what Prometheus would (the Prometheus source itself is
tested against a real Prometheus in tests/integration)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from k8s_world import three_node_scenario
from kubernetes import client, config

from core.domain import Action, ClusterSnapshot, ModelStatus
from sandbox.cluster import Simulator
from sandbox.k8s_api import SandboxKubeAPI, serve_in_thread, write_kubeconfig
from sandbox.scenario import parse_scenario
from tools.k8s_client import KubeCaller
from tools.k8s_models import ClusterModelBackend, slo_holds
from tools.k8s_serving import ANN_RESTARTED_AT, ServingApi, ServingWorkload, rollout_status
from tools.mlflow_backend import MlflowModelBackend

pytestmark = pytest.mark.integration


class Metrics:
    """What the Prometheus source would report for the model: set `model` to change it."""

    def __init__(self) -> None:
        self.model: ModelStatus | None = None

    def snapshot(self) -> ClusterSnapshot:
        return ClusterSnapshot(at_s=0.0, gpus=[], nodes=[], pods=[], models=[self.model] if self.model else [])


class World:
    def __init__(self, sim: Simulator, api: SandboxKubeAPI, api_client: Any, registry: MlflowModelBackend,
                 metrics: Metrics) -> None:
        self.sim, self.api, self.client, self.registry, self.metrics = sim, api, api_client, registry, metrics
        self.serving = ServingApi(api_client, KubeCaller(), "default")
        self.backend = ClusterModelBackend(registry, self.serving, metrics=metrics)
        self.core = client.CoreV1Api(api_client)

    def step(self, n: int = 5) -> None:
        for _ in range(n):
            with self.api.lock:
                self.sim.step()

    def workload(self) -> ServingWorkload:
        return self.serving.refresh(self.serving.for_model("fraud-model"))

    def pods(self) -> dict[str, Any]:
        return {p.metadata.name: p for p in self.core.list_namespaced_pod("default").items
                if p.metadata.name.startswith("fraud-model")}


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> str:
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


@pytest.fixture()
def world(store: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[World]:
    registry = MlflowModelBackend(store, name_prefix=f"{request.node.name[:40]}.", n_bootstrap=300,
                                  n_heldout=300, n_recent=300)
    registry.bootstrap([("fraud-model", 2)], seed=5)
    registry.register_bad_version("fraud-model", accuracy=0.7)
    sim = Simulator(parse_scenario(three_node_scenario("k8s-models", 5)))
    for _ in range(3):
        sim.step()
    api = SandboxKubeAPI(sim)
    url, stop = serve_in_thread(api)
    api_client = config.new_client_from_config(str(write_kubeconfig(url, tmp_path / "kubeconfig")))
    try:
        yield World(sim, api, api_client, registry, Metrics())
    finally:
        api_client.close()
        stop()


def served(version: int, accuracy: float) -> ModelStatus:
    return ModelStatus(name="fraud-model", serving_version=version, versions=[1, 2, 3], accuracy=accuracy,
                       slo_accuracy_min=0.9, latency_p95_ms=20.0, slo_latency_p95_ms=50.0)


def test_rollback_rolls_the_serving_workload_and_waits_for_rollout_and_slo(world: World) -> None:
    before = {name: p.metadata.uid for name, p in world.pods().items()}
    gen = world.workload().obj["metadata"]["generation"]
    rollback = Action(name="rollback_model", target="fraud-model")
    res = world.backend.execute(rollback, idempotency_key="inc-7:rollback:1")
    assert res.ok and res.changed, res.detail
    assert world.registry.serving_version("fraud-model") == 2
    assert "StatefulSet fraud-model in default restarted" in res.detail
    w = world.workload()
    assert ANN_RESTARTED_AT in w.template_annotations and w.obj["metadata"]["generation"] == gen + 1
    after = world.pods()
    assert all(after[n].metadata.uid != uid for n, uid in before.items())  # every pod is a new pod
    assert all(p.status.container_statuses[0].restart_count == 0 for p in after.values())

    # pods are starting: the alias moved, but the rollout has not finished
    check = world.backend.verify(rollback)
    assert not check.ok and "alias 'champion'" in check.detail and "ready" in check.detail
    world.step()
    # rolled out, but the pods still report the bad version: not yet
    world.metrics.model = served(3, 0.71)
    check = world.backend.verify(rollback)
    assert not check.ok and "pods still report version 3" in check.detail
    world.metrics.model = served(2, 0.85)  # loaded, but the label-delayed accuracy has not recovered
    check = world.backend.verify(rollback)
    assert not check.ok and "SLO broken (accuracy)" in check.detail
    world.metrics.model = served(2, 0.95)
    check = world.backend.verify(rollback)
    assert check.ok, check.detail
    assert "rolled out" in check.detail and "accuracy 0.950" in check.detail

    # the same action again (a retry after a crash): no second restart
    again = world.backend.execute(rollback, idempotency_key="inc-7:rollback:1")
    assert again.ok and not again.changed
    assert world.workload().obj["metadata"]["generation"] == gen + 1


def test_a_restart_lost_to_a_crash_is_done_once_on_the_retry(world: World) -> None:
    rollback = Action(name="rollback_model", target="fraud-model")
    # the registry moved (this process then died before restarting the workload)
    first = world.registry.execute(rollback, idempotency_key="inc-8:rollback:1")
    assert first.ok and first.changed
    gen = world.workload().obj["metadata"]["generation"]
    retry = world.backend.execute(rollback, idempotency_key="inc-8:rollback:1")
    assert retry.ok and "restarted" in retry.detail
    assert world.workload().obj["metadata"]["generation"] == gen + 1
    world.backend.execute(rollback, idempotency_key="inc-8:rollback:1")
    assert world.workload().obj["metadata"]["generation"] == gen + 1


def test_dry_run_restarts_nothing(world: World) -> None:
    gen = world.workload().obj["metadata"]["generation"]
    res = world.backend.execute(Action(name="rollback_model", target="fraud-model"), idempotency_key="d",
                                dry_run=True)
    assert res.ok and res.dry_run and "would restart StatefulSet fraud-model" in res.detail
    assert world.workload().obj["metadata"]["generation"] == gen
    assert world.registry.serving_version("fraud-model") == 3


def test_a_model_without_a_labelled_workload_is_still_rolled_back(world: World) -> None:
    world.registry.bootstrap([("churn-model", 1)], seed=5)
    world.registry.register_bad_version("churn-model", accuracy=0.7)
    res = world.backend.execute(Action(name="rollback_model", target="churn-model"), idempotency_key="c")
    assert res.ok and "serving not restarted" in res.detail and "opsmedic.io/model=churn-model" in res.detail
    check = ClusterModelBackend(world.registry, world.serving).verify(res.action)
    assert check.ok and "no serving workload to wait for" in check.detail


def test_slo_judgement() -> None:
    ok, text = slo_holds(served(2, 0.95))
    assert ok and "p95 20 ms" in text
    bad = served(2, 0.95).model_copy(update={"latency_p95_ms": 80.0})
    assert slo_holds(bad) == (False, "fraud-model SLO broken (latency): accuracy 0.950 (min 0.9), "
                                     "p95 80 ms (max 50)")
    assert not slo_holds(ModelStatus(name="m", serving_version=1, versions=[1]))[0]  # nothing measured


def test_rollout_status_rules() -> None:
    def sts(**status: Any) -> ServingWorkload:
        return ServingWorkload("statefulset", "s", {"metadata": {"generation": 2}, "spec": {"replicas": 2},
                                                    "status": status})

    assert not rollout_status(sts(observedGeneration=1))[0]
    assert not rollout_status(sts(observedGeneration=2, updatedReplicas=1, replicas=2, readyReplicas=2))[0]
    assert rollout_status(sts(observedGeneration=2, updatedReplicas=2, replicas=2, readyReplicas=2))[0]
    dep = ServingWorkload("deployment", "d", {"metadata": {"generation": 3}, "spec": {"replicas": 2}, "status": {
        "observedGeneration": 3, "updatedReplicas": 2, "replicas": 3, "availableReplicas": 2}})
    assert rollout_status(dep) == (False, "Deployment d: 1 old replica(s) pending termination")
    ro = ServingWorkload("rollout", "r", {"metadata": {"generation": 4}, "spec": {
        "replicas": 1, "restartAt": "2026-01-01T00:00:00Z"}, "status": {
        "observedGeneration": "4", "updatedReplicas": 1, "replicas": 1, "readyReplicas": 1, "phase": "Healthy"}})
    assert "restart to" in rollout_status(ro)[1]
