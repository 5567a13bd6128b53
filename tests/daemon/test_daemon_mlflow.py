"""`--mlflow-tracking-uri` / `OPSMEDIC_MLFLOW_TRACKING_URI`: in Kubernetes mode the daemon rolls a model back
on the MLflow registry eval uses (a SQLite tracking store here), instead of "no backend for this action is
configured" (issue 17)."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.domain import Action
from core.errors import ConfigError
from opsmedic.daemon import add_parser
from opsmedic.daemon.config import load_daemon_config

REPO = Path(__file__).resolve().parents[2]


def test_the_tracking_uri_comes_from_the_flag_or_the_environment() -> None:
    import argparse

    args = add_parser(argparse.ArgumentParser().add_subparsers()).parse_args(
        ["--mlflow-tracking-uri", "http://mlflow:5000"])
    assert args.mlflow_tracking_uri == "http://mlflow:5000"
    assert load_daemon_config({"mlflow_tracking_uri": "http://mlflow:5000"}, {}).mlflow_tracking_uri == \
        "http://mlflow:5000"
    env = {"OPSMEDIC_MLFLOW_TRACKING_URI": "sqlite:///tmp/mlflow.db"}
    assert load_daemon_config({}, env).mlflow_tracking_uri == "sqlite:///tmp/mlflow.db"
    with pytest.raises(ConfigError, match="OPSMEDIC_MLFLOW_TRACKING_URI"):
        load_daemon_config({}, {"OPSMEDIC_MLFLOW_TRACKING_URI": "mlflow:5000"})


def test_a_kubernetes_world_rolls_a_model_back_in_mlflow(tmp_path: Path) -> None:
    from opsmedic.daemon.world import KubeWorld
    from sandbox.cluster import Simulator
    from sandbox.k8s_api import SandboxKubeAPI, serve_in_thread, write_kubeconfig
    from sandbox.scenario import load_scenario
    from tools.mlflow_backend import MlflowModelBackend

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    registry = MlflowModelBackend(uri, n_bootstrap=400, n_heldout=400)
    registry.bootstrap([("fraud-model", 2)], seed=7)
    bad = registry.register_bad_version("fraud-model", accuracy=0.7)
    assert registry.serving_version("fraud-model") == bad == 3

    sim = Simulator(load_scenario(REPO / "sandbox" / "scenarios" / "node-not-ready.yaml"))
    api = SandboxKubeAPI(sim)
    url, stop_api = serve_in_thread(api)
    world = KubeWorld(kubeconfig=write_kubeconfig(url, tmp_path / "kubeconfig"), context=None, in_cluster=False,
                      namespace="default", poll_interval_s=1.0, env={}, mlflow_tracking_uri=uri)
    try:
        assert world.describe()["mlflow"] is True
        rollback = Action(name="rollback_model", target="fraud-model", params={})
        res = world.backend.execute(rollback, idempotency_key="inc-1:rollback")
        assert res.ok and res.changed, res.detail
        assert registry.serving_version("fraud-model") == 2  # `champion` moved back on the registry
        # serving follows the registry: the model's StatefulSet was rolled, and verification waits for it
        assert "StatefulSet fraud-model in default restarted" in res.detail
        check = world.backend.verify(rollback)
        assert not check.ok and "updated replica(s) ready" in check.detail
        for _ in range(5):
            with api.lock:
                sim.step()
        check = world.backend.verify(rollback)
        assert check.ok, check.detail
        assert "rolled out" in check.detail
        again = world.backend.execute(rollback, idempotency_key="inc-1:rollback")
        assert again.ok and not again.changed
    finally:
        world.close()
        stop_api()


def test_without_a_registry_model_actions_fail_plainly(tmp_path: Path) -> None:
    from opsmedic.daemon.world import NotifyBackend

    b = NotifyBackend(lambda: 0.0)
    res = b.execute(Action(name="rollback_model", target="fraud-model", params={}), idempotency_key="k")
    assert not res.ok and "no backend for this action is configured" in res.detail


def test_with_a_job_template_the_daemon_retrains_in_a_kubernetes_job(tmp_path: Path) -> None:
    import yaml
    from waiting import wait_until

    from opsmedic.daemon.world import KubeWorld
    from sandbox.cluster import Simulator
    from sandbox.k8s_api import SandboxKubeAPI, serve_in_thread, write_kubeconfig
    from sandbox.scenario import load_scenario
    from tools.mlflow_backend import MlflowModelBackend

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    registry = MlflowModelBackend(uri, n_bootstrap=300, n_heldout=300)
    registry.bootstrap([("fraud-model", 2)], seed=7)
    template = tmp_path / "retrain.yaml"
    template.write_text(yaml.safe_dump({"kind": "Job", "spec": {"template": {"spec": {"containers": [{
        "name": "train", "image": "trainer:1", "command": ["python", "-m", "tools.train_job"],
        "env": [{"name": "OPSMEDIC_TRAIN_ROWS", "value": "300"}, {"name": "OPSMEDIC_HELDOUT_ROWS", "value": "300"}],
    }]}}}}), encoding="utf-8")
    sim = Simulator(load_scenario(REPO / "sandbox" / "scenarios" / "node-not-ready.yaml"))
    url, stop_api = serve_in_thread(SandboxKubeAPI(sim))
    kubeconfig = write_kubeconfig(url, tmp_path / "kubeconfig")
    with pytest.raises(ConfigError, match="OPSMEDIC_RETRAIN_JOB_TEMPLATE"):
        KubeWorld(kubeconfig=kubeconfig, context=None, in_cluster=False, namespace="default", poll_interval_s=1.0,
                  env={"OPSMEDIC_RETRAIN_JOB_TEMPLATE": str(tmp_path / "nope.yaml")}, mlflow_tracking_uri=uri)
    world = KubeWorld(kubeconfig=kubeconfig, context=None, in_cluster=False, namespace="default",
                      poll_interval_s=1.0, env={"OPSMEDIC_RETRAIN_JOB_TEMPLATE": str(template)},
                      mlflow_tracking_uri=uri)
    try:
        assert world.describe()["retrain_jobs"] is True
        retrain = Action(name="retrain_model", target="fraud-model", params={})
        res = world.backend.execute(retrain, idempotency_key="inc-9:retrain")
        assert res.ok and res.changed and "Job default/opsmedic-retrain-fraud-model-" in res.detail, res.detail
        check = wait_until(lambda: (v := world.backend.verify(retrain)).ok and v, timeout=120, what="the Job")
        assert "version 3 registered (READY)" in check.detail
        assert registry.serving_version("fraud-model") == 2
    finally:
        world.close()
        stop_api()
