"""End to end on the production path: `opsmedic daemon --kubeconfig` (Kubernetes mode, as on a cluster) as a
process, against the sandbox world on a real etcd + kube-apiserver (`opsmedic sandbox serve --apiserver
real`), Debian's Prometheus scraping the sandbox's exporter (dcgm-exporter, kube-state-metrics and model
metric names), an `mlflow server` process, and local Slack, PagerDuty and OTLP servers.

- An XID 79: the node is cordoned through kube-apiserver unattended, the drain waits for a Slack approval
  (a signed click through Slack's interactivity endpoint) and then evicts through the Eviction API.
- A bad deploy: the `champion` alias in the MLflow server moves back to the previous version and the model's
  StatefulSet is restarted (`rollout restart`), after which the sandbox serves the alias's version again.

Each run is checked in the daemon's audit chain (`opsmedic audit verify` and the entries of the incident)
and in the spans the OTLP receiver got (one trace, the incident id on the spans). The time from the fault to
the action is printed (`-s` shows it). Every part skips with the reason when its server is absent.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from e2e_stack import MLFLOW, PROMETHEUS, REPO, DaemonRun, MlflowServer, Prometheus, SandboxServe, child_env
from fake_pagerduty import FakePagerDuty
from fakes.fake_slack import FakeSlack
from otlp_receiver import OtlpReceiver
from waiting import wait_until

sys.path.insert(0, str(REPO / "tests" / "daemon"))
from daemon_testkit import (  # noqa: E402  (the daemon tests' Slack signing and button helpers)
    API_TOKENS,
    APPROVER,
    AUTH,
    BOT_TOKEN,
    CHANNEL,
    SECRET,
    approval_messages,
    button_value,
    click_body,
    message_text,
    sign,
)

from sandbox.control_plane import available, missing_reason  # noqa: E402

pytestmark = [pytest.mark.integration, pytest.mark.slow,
              pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning")]

SPEED = 20.0  # simulated seconds per wall second
FAULT_AT = "5m"  # the scenario's fault, moved from 2m so that it comes (15 s of wall time) after the daemon is up
ROUTING_KEY = "e2e00123456789abcdef0123456789ab"  # 32 characters, as an Events v2 integration key
FIGURES: dict[str, float] = {}


def _need_control_plane() -> None:
    if not available():
        pytest.skip(f"no kube-apiserver/etcd: {missing_reason()}")


def _need_prometheus() -> None:
    if PROMETHEUS is None:
        pytest.skip("Prometheus is not installed: apt-get install prometheus (or set PROMETHEUS_BIN)")


# ------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The module's folder; every run needs the control plane and Prometheus, so without them each test skips
    (with the reason) before any server starts."""
    _need_control_plane()
    _need_prometheus()
    return tmp_path_factory.mktemp("e2e")


@pytest.fixture(scope="module")
def slack() -> Iterator[FakeSlack]:
    fake = FakeSlack(BOT_TOKEN)
    fake.start()
    yield fake
    fake.stop()


@pytest.fixture(scope="module")
def pagerduty() -> Iterator[FakePagerDuty]:
    fake = FakePagerDuty().start()
    yield fake
    fake.stop()


@pytest.fixture(scope="module")
def otlp() -> Iterator[OtlpReceiver]:
    r = OtlpReceiver().start()
    yield r
    r.stop()


@pytest.fixture(scope="module")
def mlflow(work: Path) -> Iterator[MlflowServer]:
    if MLFLOW is None:
        pytest.skip("the `mlflow` command is not installed in this environment")
    server = MlflowServer(work / "mlflow").start()
    yield server
    server.stop()


class Stack:
    """One scenario's servers: sandbox serve, Prometheus on its exporter, the daemon pointed at both."""

    def __init__(self, root: Path, scenario: str, slack: FakeSlack, pagerduty: FakePagerDuty, otlp: OtlpReceiver,
                 mlflow: str | None = None, model: str | None = None, env: dict[str, str] | None = None) -> None:
        self.root = root
        self.extra_env = env or {}
        self.serve = SandboxServe(str(self._scenario(scenario, model)), root / "serve", speed=SPEED, mlflow=mlflow)
        self.mlflow = mlflow
        self.slack, self.pagerduty, self.otlp = slack, pagerduty, otlp
        self.prometheus: Prometheus | None = None
        self.daemon: DaemonRun | None = None

    def _scenario(self, name: str, model: str | None) -> Path:
        """The bundled scenario with its fault at FAULT_AT (the fault-to-action figure must not include the
        daemon's own start) and, with `model`, its one model renamed (one MLflow server serves the module)."""
        import yaml

        from sandbox.scenario import bundled_scenarios

        doc = yaml.safe_load(bundled_scenarios()[name].read_text(encoding="utf-8"))
        doc["faults"][0]["at"] = FAULT_AT
        if model is not None:
            (w,) = [w for w in doc["workloads"] if w.get("model")]
            old = w["model"]
            w["name"] = w["model"] = model
            for f in doc["faults"]:
                f["target"] = model if f["target"] == old else f["target"]
            doc["expect"] = {"incident": True, "resource": model}  # what the test itself checks
        self.root.mkdir(parents=True, exist_ok=True)
        path = self.root / f"{name}.yaml"
        path.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
        return path

    def start(self) -> Stack:
        self.serve.start()
        self.prometheus = Prometheus(self.root / "prometheus", self.serve.metrics_target).start()
        wait_until(self.prometheus.has_scraped, 30, 0.2, what="Prometheus's first scrape of the exporter")
        env = child_env(
            OPSMEDIC_DATABASE_URL=f"sqlite:///{self.root / 'daemon' / 'opsmedic.db'}",
            OPSMEDIC_API_TOKENS=API_TOKENS, OPSMEDIC_RETRIEVAL="false", OPSMEDIC_LOG_LEVEL="INFO",
            OPSMEDIC_PROMETHEUS_URL=self.prometheus.url,
            OPSMEDIC_SLACK_SIGNING_SECRET=SECRET, OPSMEDIC_SLACK_BOT_TOKEN=BOT_TOKEN,
            OPSMEDIC_SLACK_CHANNEL=CHANNEL, OPSMEDIC_SLACK_API_URL=self.slack.url,
            OPSMEDIC_PAGERDUTY_ROUTING_KEY=ROUTING_KEY, OPSMEDIC_PAGERDUTY_URL=self.pagerduty.url,
            OPSMEDIC_OTEL_EXPORTER="otlp", OTEL_EXPORTER_OTLP_ENDPOINT=self.otlp.endpoint,
            OTEL_BSP_SCHEDULE_DELAY="500",
            # the sandbox's kubeconfig trusts its fresh self-signed certificate; one warning per request
            # would bury the daemon's log
            PYTHONWARNINGS="ignore:Unverified HTTPS request",
            # holds are wall time on a cluster: a test cannot wait minutes for a breach to count
            OPSMEDIC_MONITOR__NODE_HOLD_S="0", OPSMEDIC_MONITOR__POD_HOLD_S="0",
            OPSMEDIC_MONITOR__SLO_HOLD_S="2", OPSMEDIC_MONITOR__DRIFT_HOLD_S="2",
            OPSMEDIC_MONITOR__REOPEN_QUIET_S="0", **self.extra_env)
        extra = ["--mlflow-tracking-uri", self.mlflow] if self.mlflow else []
        self.daemon = DaemonRun(self.root / "daemon", self.serve.kubeconfig, env, extra).start()
        with self.api() as c:
            wait_until(lambda: c.get("/readyz").status_code == 200, 60, 0.1, what="the daemon's readiness")
        assert self.serve.fault_at() is None, "the fault came before the daemon was ready: raise FAULT_AT"
        return self

    def api(self) -> httpx.Client:
        assert self.daemon is not None
        return httpx.Client(base_url=self.daemon.url, headers=AUTH, timeout=10.0)

    def incidents(self) -> list[dict[str, Any]]:
        with self.api() as c:
            got = c.get("/api/incidents")
            return list(got.json()) if got.status_code == 200 else []

    def stop(self) -> None:
        for part in (self.daemon, self.prometheus, self.serve):
            if part is not None:
                part.stop()


def _kube_reader(stack: Stack) -> Any:
    from tools.k8s_client import build_api_client

    return build_api_client(stack.serve.kubeconfig, context=None, in_cluster=False)


def _get(api_client: Any, path: str) -> dict[str, Any]:
    import json

    method, url, headers, body, _ = api_client.param_serialize("GET", path, header_params={
        "Accept": "application/json"}, auth_settings=["BearerToken"])
    resp = api_client.call_api(method, url, header_params=headers, body=body, _request_timeout=10)
    resp.read()
    assert resp.status == 200, (path, resp.status)
    return dict(json.loads(resp.data))


def _audit_and_trace(stack: Stack, incident_id: str, actions: list[str], verified: list[str]) -> None:
    """The audit chain is intact and holds the incident's actions (and the verifications of `verified`);
    its spans reached the OTLP receiver, one trace carrying the incident id."""
    from policies.audit import AuditLog

    assert stack.daemon is not None
    db = stack.daemon.db
    verify = subprocess.run([sys.executable, "-m", "opsmedic", "audit", "verify", "--db", str(db)],
                            env=child_env(), capture_output=True, text=True, timeout=60)
    assert verify.returncode == 0 and "audit chain intact" in verify.stdout, verify.stdout + verify.stderr
    with AuditLog(db) as log:
        entries = log.entries(incident_id)
    kinds = {e.kind for e in entries}
    assert {"observation", "diagnosis", "plan", "decision", "execution"} <= kinds, kinds
    ran = [e.payload["action"]["name"] for e in entries if e.kind == "execution" and e.payload.get("ok")]
    for name in actions:
        assert name in ran, (name, ran)
    checked = [e.payload["action"]["name"] for e in entries if e.kind == "verification" and e.payload.get("ok")]
    for name in verified:
        assert name in checked, (name, checked)
    # the daemon flushes its batch of spans when it stops
    rc = stack.daemon.stop()
    assert rc in (0, -15), stack.daemon.log()[-3000:]
    mine = wait_until(lambda: [s for s in stack.otlp.spans if s.attributes.get("opsmedic.incident_id") == incident_id],
                      20, 0.2, what=f"spans of {incident_id} at the OTLP receiver")
    assert not stack.otlp.bad, stack.otlp.bad
    assert len({s.trace_id for s in mine}) == 1, "one trace per incident"
    names = {s.name for s in mine}
    assert {"incident", "node.monitor", "node.diagnose", "node.plan", "node.govern", "node.act",
            "tool.execute"} <= names, names
    executed = {s.attributes.get("opsmedic.action") for s in mine if s.name == "tool.execute"}
    for name in actions:
        assert any(str(a).startswith(f"{name}@") for a in executed), (name, executed)


# --------------------------------------------------------------------------------------------- tests


def test_xid79_is_cordoned_then_drained_after_a_slack_approval(
        work: Path, slack: FakeSlack, pagerduty: FakePagerDuty, otlp: OtlpReceiver) -> None:
    stack = Stack(work / "xid79", "xid79-fell-off-bus", slack, pagerduty, otlp)
    try:
        stack.start()
        kube = _kube_reader(stack)
        node = wait_until(lambda: (n := _get(kube, "/api/v1/nodes/node-1"))["spec"].get("unschedulable") and n,
                          90, 0.05, what="node-1 cordoned through kube-apiserver")
        cordoned = time.monotonic()
        fault = stack.serve.fault_at()
        assert fault is not None, stack.serve.out and stack.serve.out.text()
        FIGURES["xid79 fault -> cordon (kube-apiserver)"] = cordoned - fault
        assert any(t["key"] == "opsmedic.io/cordoned" for t in node["spec"].get("taints") or []), node

        msg = wait_until(lambda: approval_messages(slack), 60, 0.1, what="the drain's approval message in Slack")[0]
        assert "drain_node" in message_text(msg)
        value = button_value(msg)
        body = click_body(value["r"], value["d"], APPROVER, message_ts=msg["ts"])
        assert stack.daemon is not None
        clicked = time.monotonic()
        r = httpx.post(stack.daemon.url + "/slack/events", content=body, headers=sign(body), timeout=10.0)
        assert r.status_code == 200, r.text

        def drained() -> bool:
            pods = _get(kube, "/api/v1/namespaces/default/pods")["items"]
            on_node = [p for p in pods if p["spec"].get("nodeName") == "node-1"
                       and not p["metadata"].get("deletionTimestamp")]
            return not on_node
        wait_until(drained, 90, 0.1, what="node-1 drained through the Eviction API")
        FIGURES["xid79 Slack approval -> node drained"] = time.monotonic() - clicked
        (inc,) = [i for i in stack.incidents() if i["resource"] == "node-1/gpu-3"]
        wait_until(lambda: "drain_node@node-1" in next(
            (i["actions"] for i in stack.incidents() if i["id"] == inc["id"]), []), 60, 0.2,
            what="the drain recorded on the incident")
        # the drain's verification comes after its settle time, 70 s of wall time on a cluster
        # (agents.graph.SETTLE_S): the suite stops at the action and the cordon's verification
        assert "approved" in message_text(slack.messages[(CHANNEL, msg["ts"])]).lower()
        # the simulated kubelet stops the evicted pod at its next sync and says so in an Event
        wait_until(lambda: any("evicted" in (e.get("message") or "") for e in _get(
            kube, "/api/v1/namespaces/default/events")["items"]), 20, 0.2, what="the eviction's Event")
        kube.close()
        _audit_and_trace(stack, inc["id"], ["cordon_node", "drain_node"], ["cordon_node"])
        assert not pagerduty.refused, pagerduty.refused  # whatever paged was a valid Events v2 request
    finally:
        stack.stop()


def test_a_bad_deploy_is_rolled_back_in_mlflow_and_the_serving_workload_restarted(
        work: Path, slack: FakeSlack, pagerduty: FakePagerDuty, otlp: OtlpReceiver, mlflow: MlflowServer) -> None:
    from tools.mlflow_backend import MlflowModelBackend

    stack = Stack(work / "bad-deploy", "bad-deploy-rollback", slack, pagerduty, otlp, mlflow=mlflow.url)
    try:
        stack.start()
        registry = MlflowModelBackend(mlflow.url)
        assert registry.versions("fraud-model") == [1, 2, 3]  # `sandbox serve` registered the scenario's models
        assert registry.serving_version("fraud-model") == 3
        deployed = wait_until(lambda: registry.serving_version("fraud-model") == 4, 60, 0.2,
                              what="the bad deploy registered and served as version 4 in MLflow")
        assert deployed
        fault = stack.serve.fault_at()
        assert fault is not None
        wait_until(lambda: registry.serving_version("fraud-model") == 3, 120, 0.1,
                   what="`champion` moved back to version 3 by the daemon")
        FIGURES["bad deploy fault -> champion rolled back (MLflow)"] = time.monotonic() - fault
        kube = _kube_reader(stack)
        sts = wait_until(lambda: (s := _get(kube, "/apis/apps/v1/namespaces/default/statefulsets/fraud-model"))[
            "spec"]["template"]["metadata"].get("annotations", {}).get("kubectl.kubernetes.io/restartedAt") and s,
            60, 0.1, what="the serving StatefulSet restarted")
        FIGURES["bad deploy fault -> serving workload restarted"] = time.monotonic() - fault
        assert sts["metadata"]["labels"].get("opsmedic.io/model") == "fraud-model"
        tags = registry.version_tags("fraud-model", 4)
        assert tags.get("opsmedic.rolled_back"), tags
        # the restarted pods load the alias: the exporter, through Prometheus, reports version 3 served
        assert stack.prometheus is not None

        def served() -> str | None:
            r = httpx.get(stack.prometheus.url + "/api/v1/query",  # type: ignore[union-attr]
                          params={"query": 'model_serving_version{model="fraud-model"}'}, timeout=5).json()
            vals = {x["value"][1] for x in r["data"]["result"]}
            return "3" if vals == {"3"} else None
        wait_until(served, 60, 0.2, what="Prometheus to see version 3 served again")
        incs = [i for i in stack.incidents() if i["resource"] == "fraud-model"]
        assert incs, stack.incidents()
        inc = incs[0]
        assert inc["root_cause"] in ("model_quality_regression", "bad_deploy"), inc
        # verification (alias, rollout, served version and SLO in Prometheus) comes after the rollback's
        # settle time, 60 s of wall time on a cluster (agents.graph.SETTLE_S): not waited for here
        kube.close()
        _audit_and_trace(stack, inc["id"], ["rollback_model"], [])
        assert not pagerduty.refused, pagerduty.refused
    finally:
        stack.stop()


RETRAIN_TEMPLATE = """\
apiVersion: batch/v1
kind: Job
spec:
  backoffLimit: 0
  template:
    spec:
      restartPolicy: Never
      containers:
        - name: train
          image: registry.example.com/fraud-trainer:1.4
          command: [python, -m, tools.train_job]
          resources: {limits: {cpu: "2", memory: 4Gi}}
          env:
            - {name: OPSMEDIC_TRAIN_ROWS, value: "1500"}
            - {name: OPSMEDIC_HELDOUT_ROWS, value: "1500"}
"""


def test_drift_is_retrained_by_a_job_that_registers_a_version(
        work: Path, slack: FakeSlack, pagerduty: FakePagerDuty, otlp: OtlpReceiver, mlflow: MlflowServer) -> None:
    """Data drift: the retraining (approved in Slack) runs as a Kubernetes Job from the operator's template;
    the sandbox's kubelet runs its `python -m tools.train_job` for real, which registers a version in the MLflow
    server, not served. Promotion follows the retrain's settle time (300 s of wall time, agents.graph.SETTLE_S),
    past what this suite waits for."""
    from tools.mlflow_backend import MlflowModelBackend

    model = "risk-model"
    template = work / "retrain-job.yaml"
    template.write_text(RETRAIN_TEMPLATE, encoding="utf-8")
    stack = Stack(work / "drift", "data-drift-retrain", slack, pagerduty, otlp, mlflow=mlflow.url, model=model,
                  env={"OPSMEDIC_RETRAIN_JOB_TEMPLATE": str(template)})
    try:
        stack.start()
        registry = MlflowModelBackend(mlflow.url)
        assert registry.versions(model) == [1, 2, 3] and registry.serving_version(model) == 3
        before = {m["ts"] for m in approval_messages(slack)}
        msg = wait_until(lambda: [m for m in approval_messages(slack) if m["ts"] not in before], 120, 0.1,
                         what="the retraining's approval message in Slack")[0]
        fault = stack.serve.fault_at()
        assert fault is not None
        assert "retrain_model" in message_text(msg), message_text(msg)
        FIGURES["data drift fault -> retrain approval asked (Slack)"] = time.monotonic() - fault
        value = button_value(msg)
        body = click_body(value["r"], value["d"], APPROVER, message_ts=msg["ts"])
        assert stack.daemon is not None
        clicked = time.monotonic()
        r = httpx.post(stack.daemon.url + "/slack/events", content=body, headers=sign(body), timeout=10.0)
        assert r.status_code == 200, r.text
        kube = _kube_reader(stack)

        def job() -> dict[str, Any] | None:
            items = _get(kube, "/apis/batch/v1/namespaces/default/jobs")["items"]
            mine = [j for j in items if j["metadata"]["name"].startswith(f"opsmedic-retrain-{model}")]
            return mine[0] if mine else None
        created = wait_until(job, 60, 0.1, what="the retraining Job in kube-apiserver")
        FIGURES["retrain approval -> Job created"] = time.monotonic() - clicked
        container = created["spec"]["template"]["spec"]["containers"][0]
        env = {e["name"] for e in container.get("env") or []}
        assert {"MLFLOW_TRACKING_URI", "OPSMEDIC_MODEL", "OPSMEDIC_MLFLOW_RUN_ID", "OPSMEDIC_IDEMPOTENCY_KEY"} <= env
        assert created["spec"].get("activeDeadlineSeconds")
        done = wait_until(lambda: (j := job()) and (j.get("status") or {}).get("succeeded") and j, 120, 0.2,
                          what="the Job to complete (tools.train_job run by the sandbox's kubelet)")
        assert done["status"]["conditions"][0]["type"] == "Complete"
        FIGURES["retrain approval -> Job complete, version registered"] = time.monotonic() - clicked
        assert registry.versions(model) == [1, 2, 3, 4]
        tags = registry.version_tags(model, 4)
        assert tags.get("opsmedic.origin") == "retrain" and tags.get("opsmedic.idempotency_key"), tags
        assert registry.serving_version(model) == 3  # served only after promote_model's held-out evaluation
        incs = [i for i in stack.incidents() if i["resource"] == model]
        assert incs and incs[0]["root_cause"] == "data_drift", incs
        kube.close()
        _audit_and_trace(stack, incs[0]["id"], ["retrain_model"], [])
        assert not pagerduty.refused, pagerduty.refused
    finally:
        stack.stop()


def test_print_the_fault_to_action_figures() -> None:
    """Last in the module: the figures the runs above measured (wall seconds on this machine)."""
    if not FIGURES:
        pytest.skip("no end-to-end run measured anything")
    print("\nfault -> action on the production path (wall seconds):")
    for what, s in FIGURES.items():
        print(f"  {what:<52} {s:6.2f} s")
