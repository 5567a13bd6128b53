"""Tests for `tools.mlflow_backend` against a REAL MLflow SQLite store (tracking + model registry).

One store per module (a fixture), built from a template in a per-session cache folder, so the ~60 Alembic
migrations run once; every test works on its own registered model, so the tests do not depend on order.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from core.domain import Action
from core.errors import PermanentToolError, TransientToolError
from sandbox.scenario import load_scenario
from tools import mlflow_backend as mb
from tools.mlflow_backend import MlflowModelBackend, ModelSpec
from tools.mlflow_store import call, prepare_sqlite_store, translate

REPO = Path(__file__).resolve().parents[2]
SEED = 21


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path]]:
    root = tmp_path_factory.mktemp("mlflow")
    yield root / "mlflow.db", root / "cache"


@pytest.fixture(scope="module")
def backend(store: tuple[Path, Path]) -> MlflowModelBackend:
    db, cache = store
    return MlflowModelBackend(f"sqlite:///{db}", name_prefix="t.", cache_dir=cache, clock=lambda: 123.0)


def boot(backend: MlflowModelBackend, name: str, current: int = 3) -> None:
    assert backend.bootstrap([ModelSpec(name, current)], seed=SEED) == {name: current}


def act(name: str, target: str, **params: Any) -> Action:
    return Action(name=name, target=target, params=params)


# ----------------------------------------------------------------------------------------- bootstrap


def test_bootstrap_creates_versions_and_serves_current(backend: MlflowModelBackend) -> None:
    boot(backend, "boot-model")
    assert backend.versions("boot-model") == [1, 2, 3]
    assert backend.serving_version("boot-model") == 3
    reg = backend.client.get_registered_model("t.boot-model")
    assert {k: int(v) for k, v in reg.aliases.items()} == {"champion": 3}
    assert reg.tags[mb.T_MODEL] == "boot-model" and json.loads(reg.tags[mb.T_DRIFT]) == {}
    for v in (1, 2, 3):
        tags = backend.version_tags("boot-model", v)
        assert tags[mb.T_ORIGIN] == "bootstrap" and float(tags[mb.T_ACCURACY]) > 0.93
        mv = backend.client.get_model_version("t.boot-model", str(v))
        run = backend.client.get_run(mv.run_id)
        assert run.info.status == "FINISHED" and run.data.metrics["heldout_accuracy"] > 0.93
    assert backend.heldout_accuracy("boot-model") > 0.93
    # Re-running adds nothing and keeps the alias where it is.
    assert backend.bootstrap([("boot-model", 3)], seed=SEED) == {"boot-model": 3}
    assert backend.versions("boot-model") == [1, 2, 3]


def test_bootstrap_from_a_scenario(store: tuple[Path, Path]) -> None:
    db, cache = store
    scenario = load_scenario(REPO / "sandbox" / "scenarios" / "bad-deploy-rollback.yaml")
    b = MlflowModelBackend(f"sqlite:///{db}", name_prefix=f"{scenario.name}.", cache_dir=cache)
    assert mb.specs_from_scenario(scenario) == [ModelSpec("fraud-model", 3)]
    assert b.bootstrap_scenario(scenario) == {"fraud-model": 3}
    assert b.serving_version("fraud-model") == 3
    assert b.client.get_registered_model("bad-deploy-rollback.fraud-model").tags[mb.T_MODEL] == "fraud-model"


def test_models_are_logged_with_explicit_pinned_requirements(backend: MlflowModelBackend) -> None:
    boot(backend, "req-model", current=1)
    mv = backend.client.get_model_version("t.req-model", "1")
    logged = backend.client.get_logged_model(mv.tags[mb.T_LOGGED_MODEL])
    assert logged.source_run_id == mv.run_id and "READY" in str(logged.status)
    assert mv.source == logged.artifact_location
    outputs = backend.client.get_run(mv.run_id).outputs
    assert outputs is not None and [o.model_id for o in outputs.model_outputs] == [logged.model_id]
    folder = Path(logged.artifact_location.removeprefix("file://"))
    reqs = (folder / "requirements.txt").read_text().split()
    assert any(r.startswith("scikit-learn==") for r in reqs) and any(r.startswith("skops==") for r in reqs)
    assert "sklearn" in (folder / "MLmodel").read_text()


# ------------------------------------------------------------------------------------------ rollback


def test_bad_deploy_then_rollback_moves_the_alias_and_records_why(
        backend: MlflowModelBackend, store: tuple[Path, Path]) -> None:
    boot(backend, "rb-model")
    v = backend.register_bad_version("rb-model", 4, accuracy=0.71, latency_p95_ms=80)
    assert v == 4 and backend.serving_version("rb-model") == 4
    assert backend.heldout_accuracy("rb-model") == pytest.approx(0.71, abs=0.03)
    assert backend.version_tags("rb-model", 4)[mb.T_LATENCY] == "80"

    rollback = act("rollback_model", "rb-model")
    result = backend.execute(rollback, idempotency_key="inc-1:rollback")
    assert result.ok and result.changed and "from version 4 to 3" in result.detail
    assert result.at_s == 123.0 and result.idempotency_key == "inc-1:rollback"
    assert backend.serving_version("rb-model") == 3
    assert "inc-1:rollback" in backend.version_tags("rb-model", 4)[mb.T_ROLLED_BACK]
    assert backend.version_tags("rb-model", 3)[mb.T_ROLLBACK_FROM] == "4"
    tags = backend.model_tags("rb-model")
    assert tags[mb.T_PREVIOUS] == "4" and json.loads(tags[mb.T_LAST_ROLLBACK])["to"] == 3
    assert backend.heldout_accuracy("rb-model") > 0.93

    check = backend.verify(rollback)
    assert check.ok and "serves version 3" in check.detail

    # Idempotent: the same key is a no-op, in this process and in a fresh one (recorded in MLflow).
    again = backend.execute(rollback, idempotency_key="inc-1:rollback")
    assert again.ok and not again.changed and again.detail.startswith("already done")
    db, cache = store
    fresh = MlflowModelBackend(f"sqlite:///{db}", name_prefix="t.", cache_dir=cache)
    replay = fresh.execute(rollback, idempotency_key="inc-1:rollback")
    assert replay.ok and not replay.changed and "from version 4 to 3" in replay.detail
    assert fresh.serving_version("rb-model") == 3
    # A new request to be where we already are changes nothing.
    same = backend.execute(act("rollback_model", "rb-model", to_version=3), idempotency_key="inc-2:rollback")
    assert same.ok and not same.changed and "already serves version 3" in same.detail


def test_rollback_to_an_explicit_version_and_skips_rolled_back_ones(backend: MlflowModelBackend) -> None:
    boot(backend, "rb2-model")
    r1 = backend.execute(act("rollback_model", "rb2-model", to_version=1), idempotency_key="k1")
    assert r1.ok and r1.changed and backend.serving_version("rb2-model") == 1
    # The previous holder (3) was rolled back from, so "previous good" is never 3 again: nothing older
    # than 1 exists, and 2 is newer than the serving version.
    r2 = backend.execute(act("rollback_model", "rb2-model"), idempotency_key="k2")
    assert not r2.ok and "no previous good version" in r2.detail
    r3 = backend.execute(act("rollback_model", "rb2-model", to_version=9), idempotency_key="k3")
    assert not r3.ok and "no version 9" in r3.detail


def test_rollback_without_history_fails_cleanly(backend: MlflowModelBackend) -> None:
    boot(backend, "single-model", current=1)
    result = backend.execute(act("rollback_model", "single-model"), idempotency_key="k")
    assert not result.ok and not result.changed and "no previous good version" in result.detail
    assert backend.serving_version("single-model") == 1
    assert not backend.verify(act("rollback_model", "single-model")).ok


def test_dry_run_changes_nothing_and_does_not_stand_in_for_the_action(backend: MlflowModelBackend) -> None:
    boot(backend, "dry-model")
    backend.register_bad_version("dry-model", accuracy=0.75)
    rollback = act("rollback_model", "dry-model")
    dry = backend.execute(rollback, idempotency_key="inc-9", dry_run=True)
    assert dry.ok and dry.dry_run and not dry.changed and "from version 4 to version 3" in dry.detail
    assert backend.serving_version("dry-model") == 4
    real = backend.execute(rollback, idempotency_key="inc-9")
    assert real.ok and real.changed and not real.dry_run and backend.serving_version("dry-model") == 3
    for name in ("retrain_model", "promote_model"):
        plan = backend.execute(act(name, "dry-model"), idempotency_key=f"dry-{name}", dry_run=True)
        assert plan.ok and plan.dry_run and plan.detail.startswith("dry run: would")
    assert backend.versions("dry-model") == [1, 2, 3, 4]


# ------------------------------------------------------------------------------- retrain and promote


@pytest.fixture(scope="module")
def drifted(backend: MlflowModelBackend) -> int:
    """'drift-model' with PSI 0.35 on amount, retrained once; returns the new version."""
    boot(backend, "drift-model")
    before = backend.heldout_accuracy("drift-model")
    backend.set_drift("drift-model", {"amount": 0.35})
    assert backend.heldout_accuracy("drift-model") < min(0.91, before - 0.03)  # drift hurts the served one
    result = backend.execute(act("retrain_model", "drift-model"), idempotency_key="inc-3:retrain")
    assert result.ok and result.changed, result.detail
    return backend.versions("drift-model")[-1]


def test_retrain_logs_a_run_and_registers_an_unserved_version(
        backend: MlflowModelBackend, drifted: int) -> None:
    assert drifted == 4 and backend.serving_version("drift-model") == 3
    tags = backend.version_tags("drift-model", 4)
    assert tags[mb.T_ORIGIN] == "retrain" and tags[mb.T_KEY] == "inc-3:retrain"
    mv = backend.client.get_model_version("t.drift-model", "4")
    run = backend.client.get_run(mv.run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "retrain-drift-model"
    params, metrics = run.data.params, run.data.metrics
    assert params["n_train"] == "4000" and json.loads(params["drift"]) == {"amount": 0.35}
    assert params["serving_version"] == "3" and params["model_kind"].endswith("logistic-regression")
    assert metrics["heldout_accuracy"] > 0.93 and metrics["serving_heldout_accuracy"] < 0.91
    assert metrics["accuracy_gain"] == pytest.approx(
        metrics["heldout_accuracy"] - metrics["serving_heldout_accuracy"])
    verdict = backend.verify(act("retrain_model", "drift-model"))
    assert verdict.ok and "version 4 registered" in verdict.detail
    # The same action again registers nothing new.
    again = backend.execute(act("retrain_model", "drift-model"), idempotency_key="inc-3:retrain")
    assert not again.changed and backend.versions("drift-model") == [1, 2, 3, 4]


def test_promote_serves_a_version_that_beats_the_serving_one(
        backend: MlflowModelBackend, drifted: int) -> None:
    promote = act("promote_model", "drift-model", min_margin=0.01)
    assert not backend.verify(promote).ok  # not promoted yet
    result = backend.execute(promote, idempotency_key="inc-3:promote")
    assert result.ok and result.changed and f"promoted to version {drifted}" in result.detail
    assert backend.serving_version("drift-model") == drifted
    assert backend.version_tags("drift-model", drifted)[mb.T_PROMOTION].startswith("promoted")
    assert backend.model_tags("drift-model")[mb.T_PREVIOUS] == "3"
    assert backend.verify(promote).ok
    assert backend.heldout_accuracy("drift-model") > 0.93
    again = backend.execute(act("promote_model", "drift-model"), idempotency_key="inc-4:promote")
    assert again.ok and not again.changed and "already serves" in again.detail


def test_promote_refuses_a_version_that_is_not_better_by_the_margin(backend: MlflowModelBackend) -> None:
    boot(backend, "flat-model")  # no drift: a retrained version is about as good as the serving one
    assert backend.execute(act("retrain_model", "flat-model"), idempotency_key="r").ok
    promote = act("promote_model", "flat-model", min_margin=0.05)
    result = backend.execute(promote, idempotency_key="p")
    assert not result.ok and not result.changed
    assert "does not beat serving version 3" in result.detail and "escalate" in result.detail
    assert backend.serving_version("flat-model") == 3
    assert backend.version_tags("flat-model", 4)[mb.T_PROMOTION].startswith("refused")
    assert not backend.verify(promote).ok
    # The refusal is the recorded outcome for this key.
    assert backend.execute(promote, idempotency_key="p").detail.startswith("already done")


# ------------------------------------------------------------------------------------- errors


def test_unknown_models_and_non_model_actions(backend: MlflowModelBackend) -> None:
    result = backend.execute(act("rollback_model", "ghost-model"), idempotency_key="g")
    assert not result.ok and "not a registered model" in result.detail
    assert not backend.verify(act("promote_model", "ghost-model")).ok
    with pytest.raises(PermanentToolError, match="only"):
        backend.execute(act("cordon_node", "node-1"), idempotency_key="c")
    with pytest.raises(PermanentToolError, match="invalid parameters"):
        backend.execute(act("rollback_model", "ghost-model", to_version="x"), idempotency_key="x")
    with pytest.raises(PermanentToolError, match="unknown feature"):
        backend.set_drift("boot-model", {"nope": 0.3})


def test_transient_failures_are_retried_and_not_remembered(
        backend: MlflowModelBackend, monkeypatch: pytest.MonkeyPatch) -> None:
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import ErrorCode

    boot(backend, "flaky-model")
    backend.register_bad_version("flaky-model", accuracy=0.7)
    calls = {"n": 0}

    def busy(*args: object, **kwargs: object) -> None:
        calls["n"] += 1
        raise MlflowException("database is locked", error_code=ErrorCode.Value("TEMPORARILY_UNAVAILABLE"))

    monkeypatch.setattr(backend.client, "set_registered_model_alias", busy)
    result = backend.execute(act("rollback_model", "flaky-model"), idempotency_key="f")
    assert not result.ok and "transient" in result.detail and calls["n"] == backend.attempts
    monkeypatch.undo()
    retried = backend.execute(act("rollback_model", "flaky-model"), idempotency_key="f")
    assert retried.ok and retried.changed and backend.serving_version("flaky-model") == 3


def test_translate_maps_mlflow_errors() -> None:
    from mlflow.exceptions import MlflowException, RestException
    from mlflow.protos.databricks_pb2 import ErrorCode

    def t(code: str) -> type:
        return type(translate(MlflowException("x", error_code=ErrorCode.Value(code))))

    assert t("RESOURCE_DOES_NOT_EXIST") is PermanentToolError
    assert t("INVALID_PARAMETER_VALUE") is PermanentToolError
    assert t("PERMISSION_DENIED") is PermanentToolError
    assert t("TEMPORARILY_UNAVAILABLE") is TransientToolError
    assert t("REQUEST_LIMIT_EXCEEDED") is TransientToolError
    assert t("INTERNAL_ERROR") is PermanentToolError  # a local bug, not a busy server
    server = RestException({"error_code": "INTERNAL_ERROR", "message": "boom"})  # type: ignore[no-untyped-call]
    assert isinstance(translate(server), TransientToolError)
    assert isinstance(translate(ConnectionError("refused")), TransientToolError)
    assert isinstance(translate(FileNotFoundError("gone")), PermanentToolError)
    assert isinstance(translate(ValueError("bad")), PermanentToolError)
    missing = MlflowException("no run", error_code=ErrorCode.Value("RESOURCE_DOES_NOT_EXIST"))
    assert "get_run: MLflow RESOURCE_DOES_NOT_EXIST: no run" == str(translate(missing, "get_run"))


def test_call_retries_transient_errors_a_bounded_number_of_times() -> None:
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import ErrorCode

    seen: list[int] = []

    def flaky() -> str:
        seen.append(1)
        if len(seen) < 3:
            raise MlflowException("busy", error_code=ErrorCode.Value("TEMPORARILY_UNAVAILABLE"))
        return "ok"

    assert call(flaky, attempts=3) == "ok" and len(seen) == 3
    seen.clear()
    with pytest.raises(TransientToolError):
        call(flaky, attempts=2)
    assert len(seen) == 2

    def missing() -> None:
        seen.append(1)
        raise MlflowException("nope", error_code=ErrorCode.Value("RESOURCE_DOES_NOT_EXIST"))

    seen.clear()
    with pytest.raises(PermanentToolError) as info:
        call(missing, attempts=5)
    assert len(seen) == 1 and isinstance(info.value.__cause__, MlflowException)


# -------------------------------------------------------------------------------- store plumbing


def test_store_is_copied_from_a_migrated_template_and_tuned(store: tuple[Path, Path], tmp_path: Path) -> None:
    import mlflow

    db, cache = store
    assert (cache / f"empty-{mlflow.__version__}.db").exists()  # built by the first backend
    other = tmp_path / "other.db"
    uri = prepare_sqlite_store(other, cache_dir=cache)
    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    assert client.search_registered_models() == []
    assert [e.name for e in client.search_experiments()] == ["Default"]
    with sqlite3.connect(db) as con:
        assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_importing_the_backend_does_not_import_mlflow() -> None:
    code = ("import sys, tools.mlflow_backend, tools.mlflow_store; "
            "assert not {'mlflow', 'sklearn', 'sqlalchemy'} & set(sys.modules), sorted(sys.modules)")
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, env={"PYTHONPATH": str(REPO)})


def test_telemetry_is_off(backend: MlflowModelBackend) -> None:
    import os

    from mlflow.telemetry.utils import is_telemetry_disabled

    # MLFLOW_DISABLE_TELEMETRY is the switch that counts: MLflow honours DO_NOT_TRACK only when it is
    # "true", and another module (Evidently's drift tool) may already have set it to "1".
    assert os.environ["MLFLOW_DISABLE_TELEMETRY"] == "true" and os.environ.get("DO_NOT_TRACK")
    assert is_telemetry_disabled()
