"""Fixtures shared by the whole test tree: where the scenarios live, scenario builders, a throw-away
working directory, and the markers (`integration`, `gpu`, `slow`).

The example scenarios are in the `shared` folder beside the repository (`../shared/scenarios`); the package
ships a copy of each in `sandbox/scenarios` (what `opsmedic demo --list` offers), and the tests use that copy
when the shared folder is absent, so a plain clone runs every scenario test (a test checks that the copies are
byte-identical to the shared originals whenever both are present). The held-out scenarios live in
`tests/scenarios` and ship with the repository.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
SHARED_SCENARIOS = Path(__file__).resolve().parents[2] / "shared" / "scenarios"
BUNDLED_SCENARIOS = REPO / "sandbox" / "scenarios"
HELDOUT_SCENARIOS = REPO / "tests" / "scenarios"


def example_scenarios_dir() -> Path:
    """`../shared/scenarios` when it is there, else the package's copy of the same files."""
    if SHARED_SCENARIOS.is_dir() and _yaml_files(SHARED_SCENARIOS):
        return SHARED_SCENARIOS
    return BUNDLED_SCENARIOS


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "integration: needs a real server (Prometheus, kube-apiserver, ...)")
    config.addinivalue_line("markers", "gpu: needs a real NVIDIA GPU through NVML")
    config.addinivalue_line("markers", "slow: takes more than a few seconds")


def _yaml_files(folder: Path) -> list[Path]:
    return sorted([*folder.glob("*.yaml"), *folder.glob("*.yml")])


@pytest.fixture(scope="session")
def examples_dir() -> Path:
    """The example scenarios of the contract (`../shared/scenarios`, or the package's copy of them)."""
    return example_scenarios_dir()


@pytest.fixture(scope="session")
def heldout_dir() -> Path:
    """The held-out scenarios (`tests/scenarios`)."""
    if not HELDOUT_SCENARIOS.is_dir() or not _yaml_files(HELDOUT_SCENARIOS):
        pytest.skip(f"the held-out scenarios are not here: {HELDOUT_SCENARIOS} is absent")
    return HELDOUT_SCENARIOS


@pytest.fixture(scope="session")
def example_files(examples_dir: Path) -> list[Path]:
    return _yaml_files(examples_dir)


@pytest.fixture(scope="session")
def heldout_files(heldout_dir: Path) -> list[Path]:
    return _yaml_files(heldout_dir)


@pytest.fixture(scope="session")
def scenario_path() -> Callable[[str], Path]:
    """`scenario_path("xid79-fell-off-bus")`: an example or held-out scenario file by name."""

    def find(name: str) -> Path:
        for folder in (example_scenarios_dir(), HELDOUT_SCENARIOS):
            p = folder / f"{name}.yaml"
            if p.exists():
                return p
        raise FileNotFoundError(f"scenario {name}.yaml is in neither {example_scenarios_dir()} nor {HELDOUT_SCENARIOS}")

    return find


@pytest.fixture(scope="session")
def scenario_raw(scenario_path: Callable[[str], Path]) -> Callable[[str], dict[str, Any]]:
    """A scenario's parsed YAML (a fresh deep copy each call), to derive variants from."""
    cache: dict[str, dict[str, Any]] = {}

    def load(name: str) -> dict[str, Any]:
        if name not in cache:
            cache[name] = yaml.safe_load(scenario_path(name).read_text(encoding="utf-8"))
        return copy.deepcopy(cache[name])

    return load


def minimal_scenario(**overrides: Any) -> dict[str, Any]:
    """A small valid scenario as a dict: 2 nodes x 4 GPUs, one inference workload of 2 x 1 GPU."""
    raw: dict[str, Any] = {
        "name": "t",
        "description": "a test scenario",
        "seed": 1,
        "cluster": {"nodes": 2, "gpus_per_node": 4},
        "workloads": [
            {
                "name": "fraud-model",
                "kind": "inference",
                "replicas": 2,
                "gpus_per_replica": 1,
                "model": "fraud-model",
                "current_version": 3,
                "slo": {"latency_p95_ms": 50, "accuracy_min": 0.90},
            }
        ],
        "faults": [],
        "duration": "10m",
        "expect": {"incident": False},
    }
    raw.update(overrides)
    return raw


@pytest.fixture()
def make_raw() -> Callable[..., dict[str, Any]]:
    """`make_raw(**top_level_overrides)`: a minimal valid scenario dict."""
    return minimal_scenario


@pytest.fixture()
def write_scenario(tmp_path: Path) -> Callable[..., Path]:
    """`write_scenario(raw, name=None)`: dump a scenario dict (or raw YAML text) to a file under tmp_path."""
    counter = iter(range(10_000))

    def write(raw: dict[str, Any] | str, name: str | None = None) -> Path:
        stem = name or (raw.get("name") if isinstance(raw, dict) else None) or f"scenario-{next(counter)}"
        path = tmp_path / f"{stem}.yaml"
        path.write_text(
            raw if isinstance(raw, str) else yaml.safe_dump(raw, sort_keys=False), encoding="utf-8"
        )
        return path

    return write


@pytest.fixture()
def tmp_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Run in an empty temporary directory with no OPSMEDIC_* settings from the caller's environment."""
    for var in list(os.environ):
        if var.startswith("OPSMEDIC_"):
            monkeypatch.delenv(var, raising=False)
    monkeypatch.chdir(tmp_path)
    yield tmp_path


@pytest.fixture(scope="session")
def eval_results(example_files: list[Path], heldout_files: list[Path]) -> dict[str, Any]:
    """Every example and held-out scenario run once by opsmedic (shared: the runs take ~10 s in all)."""
    from opsmedic.evaluation import run_scenario
    from sandbox.scenario import load_scenario

    with pytest.MonkeyPatch.context() as mp:
        for var in list(os.environ):
            if var.startswith("OPSMEDIC_"):
                mp.delenv(var, raising=False)
        return {p.stem: run_scenario(load_scenario(p)) for p in [*example_files, *heldout_files]}


@pytest.fixture(scope="session")
def baseline_results(example_files: list[Path], heldout_files: list[Path]) -> dict[str, Any]:
    """Every example and held-out scenario run once by the baseline agent."""
    from opsmedic.evaluation import run_scenario
    from sandbox.scenario import load_scenario

    return {
        p.stem: run_scenario(load_scenario(p), agent="baseline") for p in [*example_files, *heldout_files]
    }
