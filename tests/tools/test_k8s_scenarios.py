"""The example and held-out scenarios with the Kubernetes backend in the loop.

The eval runner acts through `tools.sandbox_backend.SandboxBackend`; here that name is swapped for a
`KubernetesBackend` talking HTTP to the sandbox's Kubernetes API over the same simulator (model and
notification actions fall through to the sandbox backend). Every scenario must pass exactly as it does
with the sandbox backend: the code that heals the sandbox heals a cluster.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

import tools.sandbox_backend as sandbox_backend
from opsmedic.evaluation import run_scenario
from sandbox.scenario import load_scenario

pytestmark = pytest.mark.integration
SandboxBackend = sandbox_backend.SandboxBackend


@pytest.fixture()
def k8s_in_the_loop(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("OPSMEDIC_CLUSTER_BACKEND", "kubernetes")
    yield


def test_every_scenario_passes_through_the_kubernetes_api(
    example_files: list[Path], heldout_files: list[Path], k8s_in_the_loop: None
) -> None:
    failed = {}
    for path in [*example_files, *heldout_files]:
        result = run_scenario(load_scenario(path))
        # `passed` covers the contract: root cause, expected and forbidden actions, recovery
        if not result.passed:
            failed[path.stem] = result.failures
    assert failed == {}
