"""The daemon's escalation path on the production code path (Kubernetes mode, `NotifyBackend`): an incident
the policy will not let opsmedic fix is escalated — logged, and paged through PagerDuty's Events API v2
(a local server that checks the documented schema) with the policy's severity and the diagnosis's
evidence — and the page is resolved once the incident is over.

Regression (issue 17): the first escalation crashed the graph with `KeyError: "Attempt to overwrite
'message' in LogRecord"` because the log call passed `extra={"message": ...}`."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fake_pagerduty import FakePagerDuty
from waiting import wait_until

from core.domain import Action
from opsmedic.daemon.world import NotifyBackend

REPO = Path(__file__).resolve().parents[2]
KEY = "0123456789abcdef0123456789ABCDEF"

# cordoning is switched off, so a node that stops reporting can only be escalated; pages are `error`
POLICY = """
version: 1
mode: enforce
defaults: {approvers: [UONCALL]}
actions:
  cordon_node: {enabled: false}
  drain_node: {enabled: false}
  reschedule_pod: {enabled: false}
  escalate: {risk: low, approval: false, severity: error}
"""


@pytest.fixture()
def pd() -> Iterator[FakePagerDuty]:
    fake = FakePagerDuty().start()
    yield fake
    fake.stop()


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_notify_and_escalate_log_without_clobbering_the_log_record() -> None:
    """The regression itself, at the unit: the warning carries the text under a non-reserved key."""
    handler = Records()
    logger = logging.getLogger("opsmedic.daemon.world")
    logger.addHandler(handler)
    sent: list[tuple[str, str]] = []
    try:
        b = NotifyBackend(lambda: 5.0, lambda kind, text: sent.append((kind, text)))
        for name in ("notify", "escalate"):
            res = b.execute(Action(name=name, target="node-1", params={"message": "inc-1: why"}),  # type: ignore[arg-type]
                            idempotency_key=f"inc-1:{name}")
            assert res.ok and res.changed
    finally:
        logger.removeHandler(handler)
    warned = [r for r in handler.records if r.levelno == logging.WARNING]
    assert [r.getMessage() for r in warned] == ["notify", "escalate"]
    assert all(getattr(r, "text", None) == "inc-1: why" for r in warned)
    assert sent == [("notify", "node-1: inc-1: why"), ("escalate", "node-1: inc-1: why")]


def _daemon(tmp_path: Path, pd: FakePagerDuty) -> tuple[Any, Any, Any]:
    from core.settings import MonitorSettings, load_settings
    from opsmedic.daemon.config import DaemonConfig
    from opsmedic.daemon.service import DaemonService
    from opsmedic.daemon.world import KubeWorld
    from sandbox.cluster import Simulator
    from sandbox.k8s_api import SandboxKubeAPI, serve_in_thread, write_kubeconfig
    from sandbox.scenario import load_scenario

    sim = Simulator(load_scenario(REPO / "sandbox" / "scenarios" / "node-not-ready.yaml"))
    while sim.now < 240.0:  # past the fault (2m) and the node controller's grace period
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
    env = {"OPSMEDIC_PAGERDUTY_ROUTING_KEY": KEY, "OPSMEDIC_PAGERDUTY_URL": pd.url,
           "OPSMEDIC_PAGERDUTY_SOURCE": "opsmedic-test"}
    world = KubeWorld(kubeconfig=kubeconfig, context=None, in_cluster=False, namespace="default",
                      poll_interval_s=0.2, env=env)
    service = DaemonService(config, settings, world=world)
    return service, sim, stop_api


def test_the_daemon_escalates_pages_and_resolves_on_a_kubernetes_cluster(tmp_path: Path, pd: FakePagerDuty) -> None:
    service, sim, stop_api = _daemon(tmp_path, pd)
    handler = Records()
    logging.getLogger("opsmedic").addHandler(handler)
    try:
        service.start()
        wait_until(lambda: pd.alerts, timeout=60.0, what="a PagerDuty trigger")
        (inc_id, state), = pd.alerts.items()
        assert state == "triggered"
        st = wait_until(lambda: (s := service.driver.states.get(inc_id)) is not None and s.outcome == "escalated"
                        and s, timeout=30.0, what="the incident's graph to end escalated")
        page = next(r for r in st.results if r.action.name == "escalate")
        assert page.ok and "paged PagerDuty (error" in page.detail
        trigger = pd.events[0]
        assert trigger["event_action"] == "trigger" and trigger["dedup_key"] == inc_id
        p = trigger["payload"]
        assert p["severity"] == "error" and p["source"] == "opsmedic-test" and p["component"] == "node-2"
        assert p["custom_details"]["incident_id"] == inc_id and "node-2" in p["summary"]
        assert p["custom_details"]["evidence"] and not pd.refused
        # the graph never crashed on the way (the KeyError of issue 17 would be a loop error and a retry)
        errors = [r for r in handler.records if r.levelno >= logging.ERROR]
        assert not errors, [r.getMessage() for r in errors]
        kinds = [e.kind for e in service.driver.audit.entries(inc_id)]
        assert "escalation" in kinds and "execution" in kinds

        sim.nodes["node-2"].kubelet_up = True  # a human fixed the node: the incident is over
        wait_until(lambda: pd.alerts.get(inc_id) == "resolved", timeout=60.0, what="the page to be resolved")
        assert [e["event_action"] for e in pd.events] == ["trigger", "resolve"]
    finally:
        logging.getLogger("opsmedic").removeHandler(handler)
        service.stop()
        stop_api()
