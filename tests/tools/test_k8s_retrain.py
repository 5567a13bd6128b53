"""tools.k8s_retrain: `retrain_model` as a Kubernetes Job from the operator's template, followed to the
registered version. The sandbox API's kubelet runs the Job's entry point (`python -m tools.train_job`) for
real against a real MLflow registry (SQLite), so the path is the one a cluster takes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from k8s_world import three_node_scenario
from kubernetes import client, config
from waiting import wait_until

from core.domain import Action
from core.errors import ConfigError
from sandbox.cluster import Simulator
from sandbox.k8s_api import SandboxKubeAPI, serve_in_thread, write_kubeconfig
from sandbox.scenario import parse_scenario
from tools.k8s_client import KubeCaller
from tools.k8s_models import ClusterModelBackend
from tools.k8s_retrain import RetrainJobs
from tools.k8s_serving import ServingApi
from tools.mlflow_backend import MlflowModelBackend

pytestmark = pytest.mark.integration

TEMPLATE: dict[str, Any] = {
    "apiVersion": "batch/v1",
    "kind": "Job",
    "metadata": {"name": "ignored", "labels": {"team": "ml"}},
    "spec": {"template": {"spec": {
        "containers": [{
            "name": "train", "image": "registry.example/fraud-train:1.4",
            "command": ["python", "-m", "tools.train_job"], "args": ["--model", "{model}", "--run", "{run_id}"],
            "resources": {"limits": {"nvidia.com/gpu": "1"}},
            "env": [{"name": "OPSMEDIC_TRAIN_ROWS", "value": "300"}, {"name": "OPSMEDIC_HELDOUT_ROWS", "value": "300"}],
        }],
        "restartPolicy": "Never",
    }}},
}


class Env:
    def __init__(self, api_client: Any, registry: MlflowModelBackend, tmp: Path) -> None:
        self.client, self.registry, self.tmp = api_client, registry, tmp
        self.batch = client.BatchV1Api(api_client)
        self.core = client.CoreV1Api(api_client)

    def jobs(self, template: str) -> RetrainJobs:
        return RetrainJobs(self.client, template, tracking_uri=self.registry.tracking_uri, namespace="default",
                           registry=self.registry)

    def template_file(self, body: dict[str, Any]) -> str:
        path = self.tmp / "retrain-job.yaml"
        path.write_text(yaml.safe_dump(body), encoding="utf-8")
        return str(path)


@pytest.fixture()
def env(tmp_path: Path) -> Iterator[Env]:
    registry = MlflowModelBackend(f"sqlite:///{tmp_path / 'mlflow.db'}", n_bootstrap=300, n_heldout=300,
                                  n_recent=300)
    registry.bootstrap([("fraud-model", 2)], seed=9)
    sim = Simulator(parse_scenario(three_node_scenario("k8s-retrain", 9)))
    url, stop = serve_in_thread(SandboxKubeAPI(sim))
    api_client = config.new_client_from_config(str(write_kubeconfig(url, tmp_path / "kubeconfig")))
    try:
        yield Env(api_client, registry, tmp_path)
    finally:
        api_client.close()
        stop()


def test_a_job_from_the_template_trains_and_registers_an_unserved_version(env: Env) -> None:
    jobs = env.jobs(env.template_file(TEMPLATE))
    retrain = Action(name="retrain_model", target="fraud-model")
    dry = jobs.execute(retrain, idempotency_key="inc-3:retrain:1", dry_run=True)
    assert dry.ok and dry.dry_run and "would create Job default/opsmedic-retrain-fraud-model-" in dry.detail
    res = jobs.execute(retrain, idempotency_key="inc-3:retrain:1")
    assert res.ok and res.changed, res.detail
    job = env.batch.read_namespaced_job(jobs.job_name("fraud-model", "inc-3:retrain:1"), "default")
    c = job.spec.template.spec.containers[0]
    env_vars = {e.name: e.value for e in c.env}
    assert env_vars["OPSMEDIC_MODEL"] == "fraud-model" and env_vars["OPSMEDIC_TRAIN_ROWS"] == "300"
    assert env_vars["OPSMEDIC_MLFLOW_RUN_ID"] in res.detail and env_vars["OPSMEDIC_DATA_WINDOW_END"]
    assert c.args == ["--model", "fraud-model", "--run", env_vars["OPSMEDIC_MLFLOW_RUN_ID"]]
    assert c.image == "registry.example/fraud-train:1.4" and c.resources.limits == {"nvidia.com/gpu": "1"}
    assert job.metadata.labels["team"] == "ml" and job.metadata.labels["opsmedic.io/model"] == "fraud-model"
    assert job.spec.active_deadline_seconds == 3600 and job.spec.backoff_limit == 0

    check = wait_until(lambda: (v := jobs.verify(retrain)).ok and v, timeout=120, what="the Job's version")
    assert "fraud-model version 3 registered (READY)" in check.detail
    assert env.registry.serving_version("fraud-model") == 2  # not served: promotion is gated elsewhere
    tags = env.registry.version_tags("fraud-model", 3)
    assert tags["opsmedic.origin"] == "retrain" and tags["opsmedic.idempotency_key"] == "inc-3:retrain:1"
    run = env.registry.client.get_run(env_vars["OPSMEDIC_MLFLOW_RUN_ID"])
    assert "heldout_accuracy" in run.data.metrics  # logged into the run opsmedic opened
    again = jobs.execute(retrain, idempotency_key="inc-3:retrain:1")
    assert again.ok and not again.changed
    # a new process (after a restart) adopts the Job instead of creating a second one
    fresh = env.jobs(env.template_file(TEMPLATE))
    adopted = fresh.execute(retrain, idempotency_key="inc-3:retrain:1")
    assert adopted.ok and not adopted.changed and "already trains" in adopted.detail
    assert fresh.verify(retrain).ok
    events = env.core.list_namespaced_event("default", field_selector=f"involvedObject.name={job.metadata.name}")
    assert [e.reason for e in events.items] == ["Completed"]


def test_a_failing_job_fails_verification_and_promotion_stays_gated(env: Env) -> None:
    broken = yaml.safe_load(yaml.safe_dump(TEMPLATE))
    broken["spec"]["template"]["spec"]["containers"][0]["env"].append(
        {"name": "OPSMEDIC_TRAIN_ROWS", "value": "many"})  # the entry point cannot parse it
    models = ClusterModelBackend(env.registry, ServingApi(env.client, KubeCaller(), "default"),
                                 retrain=env.jobs(env.template_file(broken)))
    retrain = Action(name="retrain_model", target="fraud-model")
    res = models.execute(retrain, idempotency_key="inc-4:retrain:1")
    assert res.ok and res.changed and "Job default/" in res.detail
    check = wait_until(lambda: "failed" in (v := models.verify(retrain)).detail and v, timeout=60,
                       what="the Job to fail")
    assert not check.ok and "BackoffLimitExceeded" in check.detail
    assert env.registry.versions("fraud-model") == [1, 2]


def test_templates_are_checked_and_can_live_in_a_configmap(env: Env) -> None:
    with pytest.raises(ConfigError, match="not a file"):
        env.jobs(str(env.tmp / "missing.yaml"))
    with pytest.raises(ConfigError, match="container with a name and an image"):
        env.jobs(env.template_file({"kind": "Job", "spec": {"template": {"spec": {"containers": []}}}}))
    env.core.create_namespaced_config_map("default", {"metadata": {"name": "retrain-template"},
                                                      "data": {"job.yaml": yaml.safe_dump(TEMPLATE)}})
    jobs = env.jobs("configmap:retrain-template")
    assert jobs.template()["spec"]["template"]["spec"]["containers"][0]["name"] == "train"
    missing = env.jobs("configmap:default/nope").execute(Action(name="retrain_model", target="fraud-model"),
                                                         idempotency_key="k")
    assert not missing.ok and "ConfigMap default/nope cannot be read" in missing.detail
