"""`--drift-windows-from` / `OPSMEDIC_DRIFT_WINDOWS_FROM`: with an MLflow registry the Kubernetes world takes
each model's reference window from its serving version's MLflow run (the rows it was trained on), falling
back to the `--drift-windows` files; `files` keeps the files alone (issue 17, the production path)."""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd  # type: ignore[import-untyped,unused-ignore]
import pytest

from core.domain import ClusterSnapshot, ModelStatus
from core.errors import ConfigError
from opsmedic.daemon import add_parser
from opsmedic.daemon.config import load_daemon_config
from opsmedic.daemon.world import _window_source
from tools.drift_feed import DirectoryWindowSource
from tools.mlflow_windows import MlflowRunWindowSource

REPO = Path(__file__).resolve().parents[2]


def test_the_setting_comes_from_the_flag_or_the_environment_and_mlflow_needs_a_registry() -> None:
    args = add_parser(argparse.ArgumentParser().add_subparsers()).parse_args(["--drift-windows-from", "files"])
    assert args.drift_windows_from == "files"
    assert load_daemon_config({}, {}).drift_windows_from == "auto"
    env = {"OPSMEDIC_DRIFT_WINDOWS_FROM": "mlflow", "OPSMEDIC_MLFLOW_TRACKING_URI": "http://mlflow:5000"}
    assert load_daemon_config({}, env).drift_windows_from == "mlflow"
    assert load_daemon_config({"drift_windows_from": "files"}, env).drift_windows_from == "files"
    with pytest.raises(ConfigError, match="OPSMEDIC_DRIFT_WINDOWS_FROM.*needs an MLflow registry"):
        load_daemon_config({}, {"OPSMEDIC_DRIFT_WINDOWS_FROM": "mlflow"})
    with pytest.raises(ConfigError, match="OPSMEDIC_DRIFT_WINDOWS_FROM"):
        load_daemon_config({}, {"OPSMEDIC_DRIFT_WINDOWS_FROM": "s3"})


def test_which_source_each_setting_builds(tmp_path: Path) -> None:
    registry = object()  # the MLflow source keeps it; nothing is read until a tick asks for windows
    assert _window_source(None, "auto", None) is None
    assert _window_source(None, "files", registry) is None
    assert isinstance(_window_source(tmp_path, "auto", None), DirectoryWindowSource)
    assert isinstance(_window_source(tmp_path, "files", registry), DirectoryWindowSource)
    auto = _window_source(tmp_path, "auto", registry)
    assert isinstance(auto, MlflowRunWindowSource) and auto.fallback_reference
    assert isinstance(auto.files, DirectoryWindowSource) and auto.files.root == tmp_path
    strict = _window_source(None, "mlflow", registry)
    assert isinstance(strict, MlflowRunWindowSource) and not strict.fallback_reference and strict.files is None
    auto_alone = _window_source(None, "auto", registry)  # a registry alone: MLflow's windows, no files
    assert isinstance(auto_alone, MlflowRunWindowSource) and auto_alone.files is None


def test_a_kubernetes_world_with_mlflow_measures_drift_against_the_champions_training_rows(tmp_path: Path) -> None:
    from opsmedic.daemon.world import KubeWorld
    from sandbox import model_data
    from sandbox.cluster import Simulator
    from sandbox.k8s_api import SandboxKubeAPI, serve_in_thread, write_kubeconfig
    from sandbox.scenario import load_scenario
    from tools.mlflow_backend import MlflowModelBackend

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    registry = MlflowModelBackend(uri, n_bootstrap=1500, n_heldout=400)
    registry.bootstrap([("fraud-model", 2)], seed=7)
    seed = model_data.data_seed(7, "fraud-model")
    # only the current window is a file; there is no reference file at all
    (tmp_path / "windows" / "fraud-model").mkdir(parents=True)
    drifted = model_data.current(seed, 1500, {"merchant_risk": 0.5}, window=40)
    pd.DataFrame(drifted.X, columns=list(drifted.features)).to_csv(
        tmp_path / "windows" / "fraud-model" / "current.csv", index=False)

    sim = Simulator(load_scenario(REPO / "sandbox" / "scenarios" / "node-not-ready.yaml"))
    url, stop_api = serve_in_thread(SandboxKubeAPI(sim))
    world = KubeWorld(kubeconfig=write_kubeconfig(url, tmp_path / "kubeconfig"), context=None, in_cluster=False,
                      namespace="default", poll_interval_s=1.0, env={}, mlflow_tracking_uri=uri,
                      drift_windows=tmp_path / "windows")  # drift_windows_from: auto
    try:
        assert world.drift is not None and world.telemetry is world.drift
        assert isinstance(world.drift.source, MlflowRunWindowSource)
        cluster = world.drift.inner

        class WithModel:
            def snapshot(self) -> ClusterSnapshot:
                snap = cluster.snapshot()
                return snap.model_copy(update={"models": [ModelStatus(name="fraud-model", serving_version=2,
                                                                      versions=[1, 2])]})

        world.drift.inner = WithModel()
        world.drift.wait = True
        model = world.telemetry.snapshot().models[0]
        assert model.drift_psi["merchant_risk"] > 0.3 and model.drift_psi["amount"] < 0.1
        drift = world.describe()["drift"]
        assert drift["models"] == ["fraud-model"] and drift["failed"] == 0 and "window_errors" not in drift
    finally:
        world.close()
        stop_api()

    # `files`: the same world reads the directory alone, which has no reference for the model: skipped, said why
    url, stop_api = serve_in_thread(SandboxKubeAPI(sim))
    world = KubeWorld(kubeconfig=write_kubeconfig(url, tmp_path / "kubeconfig2"), context=None, in_cluster=False,
                      namespace="default", poll_interval_s=1.0, env={}, mlflow_tracking_uri=uri,
                      drift_windows=tmp_path / "windows", drift_windows_from="files")
    try:
        assert world.drift is not None and isinstance(world.drift.source, DirectoryWindowSource)
        assert world.drift.source.windows(["fraud-model"]) == []
        assert "no reference.parquet or reference.csv" in world.drift.source.errors["fraud-model"]
    finally:
        world.close()
        stop_api()
