"""The scenarios pass whichever way the monitor reads the cluster and whichever registry serves models."""

from __future__ import annotations

from pathlib import Path

import pytest

from opsmedic.evaluation import run_scenario
from sandbox.scenario import load_scenario

BUNDLED = Path(__file__).resolve().parents[2] / "sandbox" / "scenarios"


@pytest.mark.parametrize("name", ["xid79-fell-off-bus", "xid13-app-error", "node-not-ready", "power-cap-decoy",
                                  "training-stall"])
def test_scenarios_pass_reading_prometheus_format_metrics(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPSMEDIC_TELEMETRY", "prometheus")
    result = run_scenario(load_scenario(BUNDLED / f"{name}.yaml"))
    assert result.passed, result.failures
    assert result.unsafe_actions == 0 and result.policy_bypasses == 0


@pytest.mark.parametrize("name", ["bad-deploy-rollback", "data-drift-retrain"])
def test_model_scenarios_pass_with_mlflow_as_the_registry(name: str, monkeypatch: pytest.MonkeyPatch,
                                                          tmp_path: Path) -> None:
    monkeypatch.setenv("OPSMEDIC_MODEL_REGISTRY", "mlflow")
    db = tmp_path / "eval.db"
    result = run_scenario(load_scenario(BUNDLED / f"{name}.yaml"), db_path=db)
    assert result.passed, result.failures
    assert (tmp_path / "eval-mlflow.db").exists()  # the registry really was MLflow's


def test_sandbox_registry_is_used_when_asked(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("OPSMEDIC_MODEL_REGISTRY", "sandbox")
    result = run_scenario(load_scenario(BUNDLED / "bad-deploy-rollback.yaml"), db_path=tmp_path / "e.db")
    assert result.passed, result.failures
    assert not (tmp_path / "e-mlflow.db").exists()
