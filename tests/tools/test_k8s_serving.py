"""tools.k8s_serving's pure parts: GPU quantities and the GPUs one replica of each serving kind requests.
(The lookups against an API server are in test_k8s_backend.py and tests/contract/test_serving_contract.py.)"""

from __future__ import annotations

from tools.k8s_serving import ServingWorkload, gpus_per_replica, pod_gpus, quantity


def test_quantities() -> None:
    assert [quantity(v) for v in ("4", 4, None, "", "500m", "1Gi", " 2 ")] == [4, 4, 0, 0, 0, 0, 2]


def test_gpus_per_replica_by_kind() -> None:
    container = {"name": "c", "resources": {"limits": {"nvidia.com/gpu": "2"}}}
    template = {"template": {"spec": {"containers": [container, {"name": "sidecar"}]}}}
    for kind in ("statefulset", "deployment", "rollout"):
        assert gpus_per_replica(ServingWorkload(kind, "w", {"spec": template})) == 2  # type: ignore[arg-type]
    isvc = {"spec": {"predictor": {"model": {"resources": {"requests": {"nvidia.com/gpu": 1},
                                                             "limits": {"nvidia.com/gpu": 1}}}}}}
    assert gpus_per_replica(ServingWorkload("inferenceservice", "r", isvc)) == 1
    custom = {"spec": {"predictor": {"containers": [container]}}}
    assert gpus_per_replica(ServingWorkload("inferenceservice", "r", custom)) == 2
    assert pod_gpus({}) == 0
