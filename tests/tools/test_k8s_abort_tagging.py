"""tools.k8s_models.AbortTagging: on a cluster, aborting a canary (an Argo Rollout in the sandbox's Kubernetes
API, through the official client) also tags the registry version that canary served `opsmedic.aborted=true`
in a real MLflow registry, as the eval's registry bridge does, so that nobody promotes it by mistake."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import config

from core.domain import Action
from sandbox.cluster import Simulator
from sandbox.k8s_api import serve_in_thread, write_kubeconfig
from sandbox.scenario import parse_scenario
from tools.k8s_backend import KubernetesBackend
from tools.k8s_client import KubeCaller
from tools.k8s_models import ABORTED_TAG, AbortTagging, canary_version
from tools.k8s_serving import ServingApi
from tools.mlflow_backend import MlflowModelBackend

pytestmark = pytest.mark.integration

CANARY = {
    "name": "abort-tagging", "description": "a canary that fails", "seed": 3,
    "cluster": {"nodes": 2, "gpus_per_node": 4},
    "workloads": [{"name": "fraud-model", "kind": "inference", "replicas": 2, "gpus_per_replica": 1,
                   "model": "fraud-model", "current_version": 3,
                   "slo": {"latency_p95_ms": 50, "accuracy_min": 0.9, "error_rate_max": 0.01},
                   "rollout": {"strategy": "canary", "steps": [10, 50, 100], "step_every": "5m"}}],
    "faults": [{"at": "30s", "type": "model_canary", "target": "fraud-model",
                "params": {"version": 4, "error_rate": 0.08}}],
    "duration": "20m", "expect": {"incident": True},
}


@pytest.fixture()
def cluster(tmp_path: Path) -> Iterator[tuple[Simulator, Any]]:
    sim = Simulator(parse_scenario(CANARY))
    while sim.now < 60:
        sim.step()
    url, stop = serve_in_thread(sim)
    api_client = config.new_client_from_config(str(write_kubeconfig(url, tmp_path / "kubeconfig")))
    try:
        yield sim, api_client
    finally:
        api_client.close()
        stop()


def test_an_aborted_canary_is_tagged_in_the_registry(cluster: tuple[Simulator, Any], tmp_path: Path) -> None:
    sim, api_client = cluster
    registry = MlflowModelBackend(f"sqlite:///{tmp_path / 'mlflow.db'}", n_bootstrap=300, n_heldout=300,
                                  n_recent=300)
    registry.bootstrap([("fraud-model", 4)], seed=3)
    serving = ServingApi(api_client, KubeCaller(), "default")
    assert canary_version(serving.for_model("fraud-model")) == 4  # the Rollout's template names the canary
    backend = AbortTagging(KubernetesBackend(api_client, namespace="default"), serving, registry)
    result = backend.execute(Action(name="abort_rollout", target="fraud-model"), idempotency_key="inc-1:abort")
    assert result.ok, result.detail
    assert sim.models["fraud-model"].canary is None  # traffic is back on stable
    assert registry.version_tags("fraud-model", 4).get(ABORTED_TAG) == "true"
    assert ABORTED_TAG not in registry.version_tags("fraud-model", 3)


def test_a_dry_run_tags_nothing(cluster: tuple[Simulator, Any], tmp_path: Path) -> None:
    _, api_client = cluster
    registry = MlflowModelBackend(f"sqlite:///{tmp_path / 'mlflow.db'}", n_bootstrap=300, n_heldout=300,
                                  n_recent=300)
    registry.bootstrap([("fraud-model", 4)], seed=3)
    backend = AbortTagging(KubernetesBackend(api_client, namespace="default"),
                           ServingApi(api_client, KubeCaller(), "default"), registry)
    backend.execute(Action(name="abort_rollout", target="fraud-model"), idempotency_key="k", dry_run=True)
    assert ABORTED_TAG not in registry.version_tags("fraud-model", 4)
