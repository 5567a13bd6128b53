"""The small cluster the Kubernetes API, backend and contract tests share (a module with a unique name, so
that it imports from any test folder)."""

from __future__ import annotations

from typing import Any


def three_node_scenario(name: str, seed: int) -> dict[str, Any]:
    """Three nodes of four GPUs, a two-replica training job and a two-replica inference service."""
    return {
        "name": name,
        "description": "three nodes, a training job and an inference service",
        "seed": seed,
        "cluster": {"nodes": 3, "gpus_per_node": 4},
        "workloads": [
            {"name": "trainer", "kind": "training", "replicas": 2, "gpus_per_replica": 2},
            {"name": "fraud-model", "kind": "inference", "replicas": 2, "gpus_per_replica": 1,
             "model": "fraud-model", "current_version": 2},
        ],
        "faults": [],
        "duration": "30m",
        "expect": {"incident": False},
    }
