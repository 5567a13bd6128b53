"""OpenTelemetry on the production path: the daemon (Kubernetes mode) exports its incident's spans over
OTLP/HTTP to a local receiver (decoded with `opentelemetry-proto`), one trace per incident — observation,
diagnosis, plan, decision, approval, action, verification — under one root span, with the incident id on
every span, the steps after a human's approval included. And the CLI switches tracing on from the
environment (`OPSMEDIC_OTEL_EXPORTER`), which nothing did before (issue 17)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from otlp_receiver import OtlpReceiver
from waiting import wait_until

from infra import tracing as otel

REPO = Path(__file__).resolve().parents[2]

# cordoning a node needs a human; the rest of the plan is the default registry's
POLICY = """
version: 1
mode: enforce
defaults: {approvers: [UONCALL]}
actions:
  cordon_node: {approval: true}
  reschedule_pod: {approval: false}
  escalate: {risk: low, approval: false}
"""


@pytest.fixture()
def receiver(monkeypatch: pytest.MonkeyPatch) -> Iterator[OtlpReceiver]:
    r = OtlpReceiver().start()
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", r.endpoint)  # the exporter appends /v1/traces
    monkeypatch.delenv("OPSMEDIC_OTEL_ENDPOINT", raising=False)
    monkeypatch.setenv("OPSMEDIC_OTEL_EXPORTER", "otlp")
    yield r
    otel.shutdown_tracing()
    r.stop()


def test_one_trace_per_incident_across_an_approval(tmp_path: Path, receiver: OtlpReceiver) -> None:
    from core.settings import MonitorSettings, load_settings
    from opsmedic.daemon.config import DaemonConfig
    from opsmedic.daemon.service import DaemonService
    from opsmedic.daemon.world import KubeWorld
    from sandbox.cluster import Simulator
    from sandbox.k8s_api import SandboxKubeAPI, serve_in_thread, write_kubeconfig
    from sandbox.scenario import load_scenario

    assert otel.setup_tracing_from_env() is not None
    sim = Simulator(load_scenario(REPO / "sandbox" / "scenarios" / "node-not-ready.yaml"))
    while sim.now < 240.0:
        sim.step()
    url, stop_api = serve_in_thread(SandboxKubeAPI(sim))
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    settings = load_settings(database_url=f"sqlite:///{tmp_path / 'opsmedic.db'}", retrieval=False,
                             data_dir=tmp_path / "data", policy_file=policy,
                             monitor=MonitorSettings(node_hold_s=0.0, pod_hold_s=0.0, reopen_quiet_s=0.0))
    kubeconfig = write_kubeconfig(url, tmp_path / "kubeconfig")
    config = DaemonConfig.model_validate({"port": 0, "source": "kubernetes", "kubeconfig": kubeconfig,
                                          "poll_interval_s": 0.2, "leader_election": False,
                                          "shutdown_timeout_s": 10.0})
    world = KubeWorld(kubeconfig=kubeconfig, context=None, in_cluster=False, namespace="default",
                      poll_interval_s=0.2, env={})
    service = DaemonService(config, settings, world=world)
    try:
        service.start()
        (req,) = wait_until(lambda: service.pending_approvals(), timeout=60.0, what="the cordon's approval request")
        inc_id = req.incident_id
        service.decide(req.id, "approve", by="UONCALL", digest=req.action.digest())
        # the cordon ran and was verified (the rest of the plan waits on a simulator nobody steps here)
        wait_until(lambda: (s := service.driver.states.get(inc_id)) is not None and s.verifications
                   and any(r.action.name == "cordon_node" and r.ok for r in s.results),
                   timeout=60.0, what="the approved cordon to run and be verified")
    finally:
        service.stop()
        stop_api()
    otel.shutdown_tracing()  # flushes the batch processor to the receiver

    trace_id, root_id = (f"{n:032x}" for n in otel.incident_trace_ids(inc_id))
    root_id = root_id[-16:]
    mine = [s for s in receiver.spans if s.attributes.get("opsmedic.incident_id") == inc_id]
    assert mine and not receiver.bad
    assert {s.trace_id for s in mine} == {trace_id}, "one trace per incident"
    by_id = {s.span_id: s for s in mine}
    (root,) = [s for s in mine if s.name == "incident"]
    assert root.span_id == root_id and root.parent_span_id == "" and root.service == "opsmedic"
    names = [s.name for s in mine]
    for step in ("node.monitor", "node.diagnose", "node.plan", "node.govern", "node.await_approval", "node.act",
                 "node.verify"):
        assert step in names, f"{step} missing from {names}"
    for s in mine:  # every node hangs under the root, every tool call and decision under its node
        if s.name.startswith("node."):
            assert s.parent_span_id == root_id, s.name
        elif s.name in ("tool.execute", "governor.decide"):
            assert by_id[s.parent_span_id].name in ("node.act", "node.govern", "node.escalate"), s.name
    acts = [s for s in mine if s.name == "tool.execute"]
    assert any(s.attributes.get("opsmedic.action") == "cordon_node@node-2" for s in acts)
    # the approval was given between two graph runs: the resumed steps are in the same trace all the same
    approval_waits = [s for s in mine if s.name == "node.await_approval"]
    assert len(approval_waits) >= 2


def test_the_cli_installs_tracing_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from opsmedic.cli import main

    otel.shutdown_tracing()
    cmd = ["policy", "check", str(REPO / "policies" / "default.yaml")]
    monkeypatch.setenv("OPSMEDIC_OTEL_EXPORTER", "console")
    assert main(cmd) == 0
    assert otel._provider is not None  # installed at start-up
    otel.shutdown_tracing()
    monkeypatch.setenv("OPSMEDIC_OTEL_EXPORTER", "zipkin")
    assert main(cmd) == 2  # a bad exporter is a configuration error naming the variable
    assert otel._provider is None
    monkeypatch.setenv("OPSMEDIC_OTEL_EXPORTER", "none")
    assert otel.setup_tracing_from_env() is None
