"""The contract tests' view of an API server (`Target`) and the simulated cluster both targets start from.

A helper module (not a conftest) so that the test module can import it by name.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from k8s_world import three_node_scenario
from kubernetes import client, config

from sandbox.cluster import Simulator
from tools.k8s_backend import KubernetesBackend

SCENARIO: dict[str, Any] = three_node_scenario("contract", 11)
NS = "default"
CRDS = Path(__file__).resolve().parent / "crds"


def serving_scenario() -> dict[str, Any]:
    """The contract cluster plus `scorer`, a canary-rolled model (an Argo Rollout in the sandbox API) whose
    version 4 starts its canary at 1m. 12 GPUs: trainer 2x2, fraud-model 1, scorer 2x2 -> 3 free."""
    s = three_node_scenario("contract-serving", 11)
    s["workloads"][1]["replicas"] = 1
    s["workloads"].append(
        {"name": "scorer", "kind": "inference", "replicas": 2, "gpus_per_replica": 2, "model": "scorer",
         "current_version": 3, "slo": {"latency_p95_ms": 50, "accuracy_min": 0.9},
         "rollout": {"strategy": "canary", "steps": [10, 50, 100], "step_every": "5m"}}
    )
    s["faults"] = [{"at": "1m", "type": "model_canary", "target": "scorer", "params": {"version": 4}}]
    return s


SERVING_SCENARIO: dict[str, Any] = serving_scenario()
SERVING_START_S = 90.0  # the serving cases start with the canary at its first step (10 %)


class Target:
    """One API server to run a contract case against, reached through the official client."""

    def __init__(self, name: str, url: str, kubeconfig: Path, token: str | None, sim: Simulator) -> None:
        self.name = name
        self.real = name == "kube-apiserver"
        self.url = url
        self.kubeconfig = kubeconfig
        self.token = token
        self.sim = sim  # the simulated cluster the objects came from (the sandbox target serves it live)
        self.client = config.new_client_from_config(str(kubeconfig))
        self.core = client.CoreV1Api(self.client)
        self.apps = client.AppsV1Api(self.client)
        self.coord = client.CoordinationV1Api(self.client)
        self.custom = client.CustomObjectsApi(self.client)

    def backend(self, **kw: Any) -> KubernetesBackend:
        kw.setdefault("sleep", lambda s: None)
        kw.setdefault("reset_ack_timeout_s", 0.3)
        return KubernetesBackend(self.client, **kw)

    def raw(
        self, method: str, path: str, body: Any = None, ctype: str = "application/json"
    ) -> tuple[int, Any]:
        """A request without the client's models: the status and the JSON (or text) answered."""
        headers = {"Content-Type": ctype, "Accept": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        resp = self.client.call_api(method, self.url + path, headers, body)
        data = resp.read()
        try:
            return resp.status, json.loads(data)
        except json.JSONDecodeError:
            return resp.status, data.decode()

    def create_pdb(self, name: str, selector: dict[str, str], min_available: int) -> None:
        """A PodDisruptionBudget in whichever policy version the server has (v1, or v1beta1 before 1.21)."""
        body = {
            "kind": "PodDisruptionBudget",
            "metadata": {"name": name},
            "spec": {"minAvailable": min_available, "selector": {"matchLabels": selector}},
        }
        for version in ("v1", "v1beta1"):
            status, _ = self.raw(
                "POST",
                f"/apis/policy/{version}/namespaces/{NS}/poddisruptionbudgets",
                {**body, "apiVersion": f"policy/{version}"},
            )
            if status == 201:
                return
        raise AssertionError(f"{self.name}: could not create a PodDisruptionBudget")

    def evict(self, pod: str, grace: int | None = None) -> tuple[int, Any]:
        """POST an Eviction in whichever policy version the server accepts."""
        status, body = 0, None
        for version in ("v1", "v1beta1"):
            ev: dict[str, Any] = {
                "apiVersion": f"policy/{version}",
                "kind": "Eviction",
                "metadata": {"name": pod, "namespace": NS},
            }
            if grace is not None:
                ev["deleteOptions"] = {"gracePeriodSeconds": grace}
            status, body = self.raw("POST", f"/api/v1/namespaces/{NS}/pods/{pod}/eviction", ev)
            if status != 400:
                break
        return status, body
