"""tools.mlflow_windows against a REAL MLflow SQLite store: reference windows from the serving version's run.

One store per module (built from the migrated template in a per-module cache folder); each test works on
its own registered model. The versions are opsmedic's own (bootstrap, retrain), which log the rows they were
trained on as the run's `training` dataset; the tests read them back through the window source, score them
with `tools.drift_feed.DriftTelemetry`, and check what a model without such a dataset gets: a reason, never
an exception.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd  # type: ignore[import-untyped,unused-ignore]
import pytest
from waiting import wait_until

from core.domain import ClusterSnapshot, ModelStatus
from sandbox import model_data
from tools import mlflow_training, train_job
from tools.drift_feed import DirectoryWindowSource, DriftTelemetry
from tools.mlflow_backend import T_MODEL, MlflowModelBackend, ModelSpec
from tools.mlflow_windows import CONTEXT_TAG, TRAINING, MlflowRunWindowSource, log_dataset, source_uri

SEED = 5
ROWS = 1500


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path]]:
    root = tmp_path_factory.mktemp("mlflow-windows")
    yield root / "mlflow.db", root / "cache"


@pytest.fixture(scope="module")
def backend(store: tuple[Path, Path]) -> MlflowModelBackend:
    db, cache = store
    return MlflowModelBackend(f"sqlite:///{db}", name_prefix="w.", cache_dir=cache, n_bootstrap=ROWS,
                              n_recent=ROWS, n_heldout=ROWS)


class _Models:
    """The inner telemetry: a snapshot naming the models (as Prometheus would), no drift of its own."""

    def __init__(self, *names: str) -> None:
        self.names = names

    def snapshot(self) -> ClusterSnapshot:
        models = [ModelStatus(name=n, serving_version=1, versions=[1]) for n in self.names]
        return ClusterSnapshot(at_s=0.0, gpus=[], nodes=[], pods=[], models=models)


class _Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def _frame(data: model_data.Dataset) -> Any:
    return pd.DataFrame(data.X, columns=list(data.features))


def _serving_run(backend: MlflowModelBackend, model: str, frame: Any, *, context: str = "serving") -> str:
    """What a serving logger records: a run tagged with the model and its recent inputs as a dataset."""
    exp = backend.client.get_experiment_by_name(backend.experiment)
    run = backend.client.create_run(exp.experiment_id, run_name=f"serving-{model}", tags={T_MODEL: model})
    log_dataset(backend.client, run.info.run_id, frame, name=f"{model}-serving", context=context)
    backend.client.set_terminated(run.info.run_id, "FINISHED")
    return str(run.info.run_id)


def _write(folder: Path, stem: str, frame: Any) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    frame.to_csv(folder / f"{stem}.csv", index=False)


# ------------------------------------------------------------------------------------------ reference


def test_the_serving_versions_training_rows_are_the_reference_window(
        backend: MlflowModelBackend, tmp_path: Path) -> None:
    backend.bootstrap([ModelSpec("ref-model", 2)], seed=SEED)
    seed = model_data.data_seed(SEED, "ref-model")
    # every version's run logged the rows it was fitted on, with context "training", at a source MLflow reads
    mv = backend.client.get_model_version_by_alias("w.ref-model", "champion")
    inputs = backend.client.get_run(mv.run_id).inputs.dataset_inputs
    assert [next(t.value for t in di.tags if t.key == CONTEXT_TAG) for di in inputs] == [TRAINING]
    uri = source_uri(inputs[0].dataset)
    assert uri is not None and uri.startswith("file://") and uri.endswith(".parquet")
    assert json.loads(inputs[0].dataset.profile)["num_rows"] == ROWS

    _write(tmp_path / "ref-model", "current", _frame(model_data.reference(seed, ROWS, window=50)))
    source = MlflowRunWindowSource(backend, files=DirectoryWindowSource(tmp_path), refresh_s=0.0)
    (window,) = source.windows(["ref-model"])
    assert window.key.startswith(f"mlflow:v2:{mv.run_id}:{inputs[0].dataset.digest}|file:")
    reference, current = window.load()
    expected = mlflow_training.frame(model_data.reference(seed, ROWS, window=2))  # what version 2 was fitted on
    pd.testing.assert_frame_equal(reference, expected)
    assert list(current.columns) == list(model_data.FEATURES) and source.errors == {} and source.notes == {}
    # the same windows on the next tick: the same key, so DriftTelemetry neither reloads nor rescores them
    assert [w.key for w in source.windows(["ref-model"])] == [window.key]


def test_a_drifted_current_window_gives_a_drift_report_and_a_broken_one_a_validation_issue(
        backend: MlflowModelBackend) -> None:
    backend.bootstrap([ModelSpec("drift-model", 1)], seed=SEED)
    seed = model_data.data_seed(SEED, "drift-model")
    source = MlflowRunWindowSource(backend, refresh_s=0.0)  # no files: the current window is MLflow's too
    tel = DriftTelemetry(_Models("drift-model"), source, engine="numpy", wait=True)
    try:
        snap = tel.snapshot()  # nothing logged as serving yet: skipped, with the reason
        assert snap.models[0].drift_psi == {} and "no current window" in source.errors["drift-model"]
        assert tel.describe()["window_errors"] == source.errors

        _serving_run(backend, "drift-model", _frame(model_data.current(seed, ROWS, {"amount": 0.5}, window=60)))
        model = tel.snapshot().models[0]
        assert model.drift_psi["amount"] > 0.3 and model.drift_psi["hour"] < 0.1
        assert model.data_issues == {} and source.errors == {}
        report = tel.report("drift-model")
        assert report is not None and report.drifted_features == ["amount"]

        broken = _frame(model_data.current(seed, ROWS, {}, window=61))
        broken.loc[: ROWS // 2, "velocity_1h"] = np.nan  # a pipeline that drops half of a feature
        _serving_run(backend, "drift-model", broken, context="current")
        model = tel.snapshot().models[0]
        assert list(model.data_issues) == ["velocity_1h"] and "null share" in model.data_issues["velocity_1h"]
        loads = source.loads
        assert tel.snapshot().models[0].data_issues == model.data_issues and source.loads == loads
    finally:
        tel.close()


def test_a_reference_is_downloaded_once_however_often_the_current_file_changes(
        backend: MlflowModelBackend, tmp_path: Path) -> None:
    backend.bootstrap([ModelSpec("cache-model", 1)], seed=SEED)
    seed = model_data.data_seed(SEED, "cache-model")
    source = MlflowRunWindowSource(backend, files=DirectoryWindowSource(tmp_path), refresh_s=0.0)
    keys = []
    for window in (70, 71, 72):
        _write(tmp_path / "cache-model", "current", _frame(model_data.current(seed, 500 + window, {}, window=window)))
        (w,) = source.windows(["cache-model"])
        w.load()
        keys.append(w.key)
    assert len(set(keys)) == 3 and len({k.split("|")[0] for k in keys}) == 1
    assert source.loads == 1  # the reference's rows, read from the artifact store once


# --------------------------------------------------------------------------------- missing, broken


def test_a_model_without_a_training_dataset_is_reported_not_raised(
        backend: MlflowModelBackend, tmp_path: Path) -> None:
    # a version registered by somebody else's training, which logged no dataset
    client = backend.client
    client.create_registered_model("w.bare-model")
    exp = client.get_experiment_by_name(backend.experiment).experiment_id
    run = client.create_run(exp, run_name="theirs")
    client.set_terminated(run.info.run_id, "FINISHED")
    mv = client.create_model_version("w.bare-model", f"{run.info.artifact_uri}/model", run_id=run.info.run_id)
    client.set_registered_model_alias("w.bare-model", "champion", mv.version)
    seed = model_data.data_seed(SEED, "bare-model")
    _write(tmp_path / "bare-model", "current", _frame(model_data.current(seed, ROWS, {"hour": 0.6}, window=80)))

    strict = MlflowRunWindowSource(backend, files=DirectoryWindowSource(tmp_path), fallback_reference=False,
                                   refresh_s=0.0)
    tel = DriftTelemetry(_Models("bare-model", "unknown-model"), strict, engine="numpy", wait=True)
    try:
        snap = tel.snapshot()  # never raises into the snapshot
        assert [m.drift_psi for m in snap.models] == [{}, {}]
        assert "logged no dataset with context 'training'" in strict.errors["bare-model"]
        assert f"run {run.info.run_id}" in strict.errors["bare-model"]
        assert "no version behind alias 'champion'" in strict.errors["unknown-model"]
        assert tel.failures == 0
    finally:
        tel.close()

    # auto: the reference falls back to the directory's file for that model, and `notes` says why
    _write(tmp_path / "bare-model", "reference", _frame(model_data.reference(seed, ROWS, window=1)))
    auto = MlflowRunWindowSource(backend, files=DirectoryWindowSource(tmp_path), refresh_s=0.0)
    tel = DriftTelemetry(_Models("bare-model"), auto, engine="numpy", wait=True)
    try:
        model = tel.snapshot().models[0]
        assert model.drift_psi["hour"] > 0.3 and auto.errors == {}
        assert "reference from" in auto.notes["bare-model"] and "logged no dataset" in auto.notes["bare-model"]
        assert tel.describe()["window_notes"] == auto.notes
    finally:
        tel.close()


def test_an_unreadable_dataset_costs_that_models_scores_and_is_retried_later(
        backend: MlflowModelBackend, tmp_path: Path) -> None:
    backend.bootstrap([ModelSpec("gone-model", 1)], seed=SEED)
    seed = model_data.data_seed(SEED, "gone-model")
    _write(tmp_path / "gone-model", "current", _frame(model_data.current(seed, ROWS, {}, window=90)))
    mv = backend.client.get_model_version_by_alias("w.gone-model", "champion")
    (di,) = backend.client.get_run(mv.run_id).inputs.dataset_inputs
    uri = source_uri(di.dataset)
    assert uri is not None
    artifact = Path(uri.removeprefix("file://"))
    rows = artifact.read_bytes()
    artifact.unlink()  # the artifact store lost it

    clock = _Clock()
    source = MlflowRunWindowSource(backend, files=DirectoryWindowSource(tmp_path), refresh_s=30.0, clock=clock)
    tel = DriftTelemetry(_Models("gone-model"), source, engine="numpy", wait=True)
    try:
        assert tel.snapshot().models[0].drift_psi == {}
        assert tel.failures == 1 and "does not exist" in source.errors["gone-model"]
        clock.t = 10.0
        assert source.windows(["gone-model"]) == []  # not before the retry time
        artifact.write_bytes(rows)
        clock.t = 31.0
        model = tel.snapshot().models[0]
        assert model.drift_psi and source.errors == {} and tel.failures == 1
    finally:
        tel.close()


# ------------------------------------------------------------------------------------------- retrain


def test_a_retrain_logs_its_dataset_and_the_new_champion_is_measured_against_it(
        backend: MlflowModelBackend, store: tuple[Path, Path], tmp_path: Path) -> None:
    backend.bootstrap([ModelSpec("retrain-model", 1)], seed=SEED)
    backend.set_drift("retrain-model", {"amount": 0.5})
    seed = model_data.data_seed(SEED, "retrain-model")
    _write(tmp_path / "retrain-model", "current", _frame(model_data.current(seed, ROWS, {"amount": 0.5}, window=95)))
    source = MlflowRunWindowSource(backend, files=DirectoryWindowSource(tmp_path), refresh_s=0.0)
    tel = DriftTelemetry(_Models("retrain-model"), source, engine="numpy", wait=True)
    try:
        assert tel.snapshot().models[0].drift_psi["amount"] > 0.3  # against what version 1 was trained on

        # the retraining Job's entry point, as the Kubernetes Job runs it, into the run opsmedic opened
        run_id = backend.new_run("retrain-model", key="k-retrain", run_name="retrain-retrain-model-job")
        db, _ = store
        said: list[str] = []
        env = {"MLFLOW_TRACKING_URI": f"sqlite:///{db}", "OPSMEDIC_MODEL": "retrain-model",
               "OPSMEDIC_MODEL_PREFIX": "w.", "OPSMEDIC_MLFLOW_RUN_ID": run_id, "OPSMEDIC_IDEMPOTENCY_KEY": "k-retrain",
               "OPSMEDIC_TRAIN_ROWS": str(ROWS), "OPSMEDIC_HELDOUT_ROWS": str(ROWS)}
        assert train_job.main([], env=env, say=said.append) == 0, said
        (di,) = backend.client.get_run(run_id).inputs.dataset_inputs
        assert next(t.value for t in di.tags if t.key == CONTEXT_TAG) == TRAINING
        assert json.loads(di.dataset.profile)["num_rows"] == ROWS

        version = backend.version_for_key("retrain-model", "k-retrain")
        assert version is not None
        backend.serve("retrain-model", version[0], "promoted in the test")
        (window,) = source.windows(["retrain-model"])
        assert window.key.startswith(f"mlflow:v{version[0]}:{run_id}:{di.dataset.digest}|")
        reference, _ = window.load()
        # the rows the retrain fitted on: the model's recent, drifted traffic
        assert reference["amount"].median() > mlflow_training.frame(model_data.reference(seed, ROWS))["amount"].median()
        assert tel.snapshot().models[0].drift_psi["amount"] < 0.1  # the new champion knows this traffic
    finally:
        tel.close()


def test_importing_the_window_source_does_not_import_mlflow() -> None:
    code = "import sys, tools.mlflow_windows; print('mlflow' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[2])
    assert out.stdout.strip() == "False"


# ----------------------------------------------------------------------------- a real tracking server

MLFLOW = shutil.which("mlflow", path=str(Path(sys.executable).parent)) or shutil.which("mlflow")


@pytest.fixture
def tracking_server(tmp_path: Path) -> Iterator[str]:
    """`mlflow server` on 127.0.0.1 with proxied artifacts (`mlflow-artifacts:/`, the server's default)."""
    if MLFLOW is None:
        pytest.skip("no mlflow executable")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPSMEDIC_", "MLFLOW_"))}
    env.update({"DO_NOT_TRACK": "true", "MLFLOW_DISABLE_TELEMETRY": "true"})
    with (tmp_path / "mlflow.log").open("w") as log:
        proc = subprocess.Popen(
            [MLFLOW, "server", "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}", "--artifacts-destination",
             str(tmp_path / "artifacts"), "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
            cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"mlflow server exited: {(tmp_path / 'mlflow.log').read_text()[-2000:]}")
        try:
            return httpx.get(url + "/health", timeout=1.0).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_until(up, 120.0, 0.25, what="mlflow server's /health")
        yield url
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)  # the server and its uvicorn worker: the group we started
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


@pytest.mark.integration
@pytest.mark.slow
def test_through_a_tracking_server_the_rows_come_back_through_its_artifact_proxy(
        tracking_server: str, tmp_path: Path) -> None:
    b = MlflowModelBackend(tracking_server, name_prefix="s.", n_bootstrap=600, n_heldout=400)
    b.bootstrap([ModelSpec("served-model", 1)], seed=SEED)
    mv = b.client.get_model_version_by_alias("s.served-model", "champion")
    (di,) = b.client.get_run(mv.run_id).inputs.dataset_inputs
    uri = source_uri(di.dataset)
    # MLflow's own dataset sources leave `mlflow-artifacts:` out; opsmedic's source keeps the URI
    assert uri is not None and uri.startswith("mlflow-artifacts:/") and di.dataset.source_type == "mlflow_artifact"
    seed = model_data.data_seed(SEED, "served-model")
    _write(tmp_path / "served-model", "current", _frame(model_data.current(seed, 600, {}, window=30)))
    source = MlflowRunWindowSource(b, files=DirectoryWindowSource(tmp_path), refresh_s=0.0)
    (window,) = source.windows(["served-model"])
    reference, _ = window.load()
    pd.testing.assert_frame_equal(reference, mlflow_training.frame(model_data.reference(seed, 600, window=1)))
