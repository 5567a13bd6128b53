"""The daemon's HTTP API over a real uvicorn: health, metrics, incidents, approvals, the Alertmanager webhook."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from daemon_testkit import ALERT_AUTH, API_TOKEN, API_TOKEN_OTHER, APPROVER, wait_until

from core.domain import ApprovalStatus
from opsmedic.daemon.bench import storm_alerts, webhook_body
from policies.audit import AuditLog

AUTH = {"Authorization": f"Bearer {API_TOKEN}"}


def _incident_waiting(d: Any) -> str:
    def waiting() -> str | None:
        for inc_id, w in list(d.service.driver.waiting.items()):
            if w.get("kind") == "approval":
                return str(inc_id)
        return None

    return str(wait_until(waiting, 20.0, what="an incident waiting for approval"))


def test_health_readiness_metrics_and_docs(make_daemon: Any) -> None:
    d = make_daemon()
    with d.client() as c:
        assert c.get("/healthz").json()["ok"] is True
        ready = wait_until(lambda: c.get("/readyz").status_code == 200 and c.get("/readyz").json(), 10.0,
                           what="readiness")
        assert ready["role"] == "leader" and ready["source"]["ok"] is True
        assert ready["leadership"]["mode"] == "sole"
        _incident_waiting(d)
        text = c.get("/metrics").text
        for name in ("opsmedic_incidents_opened_total", 'opsmedic_decisions_total{verdict="allow"}',
                     'opsmedic_decisions_total{verdict="needs_approval"}',
                     'opsmedic_actions_executed_total{action="cordon_node",outcome="ok"}',
                     "opsmedic_approvals_pending 1.0", "opsmedic_monitor_tick_seconds_bucket",
                     "opsmedic_daemon_leader 1.0", "opsmedic_alerts_queue_depth", "opsmedic_incidents_open 1.0",
                     'opsmedic_drift_windows_total{outcome="failed"} 0.0'):
            assert name in text, name
        # the sandbox world measures its models' drift in the background: the fraud model's windows get scored
        assert d.service.world.drift.report("fraud-model") is not None or wait_until(
            lambda: d.service.world.drift.report("fraud-model"), 20.0, what="a drift report")
        assert 'opsmedic_drift_windows_total{outcome="scored"} 0.0' not in c.get("/metrics").text
        spec = c.get("/openapi.json").json()
        for path in ("/healthz", "/readyz", "/metrics", "/alerts/alertmanager", "/slack/events", "/api/incidents",
                     "/api/incidents/{incident_id}", "/api/approvals", "/api/approvals/{request_id}", "/api/chat"):
            assert path in spec["paths"], path
        assert c.get("/docs").status_code == 200


def test_incidents_api_shows_the_whole_state(make_daemon: Any) -> None:
    d = make_daemon()
    inc_id = _incident_waiting(d)
    with d.client() as c:
        listed = c.get("/api/incidents").json()
        assert [x["id"] for x in listed] == [inc_id]
        assert listed[0]["root_cause"] == "gpu_fell_off_bus" and listed[0]["waiting"] == "approval"
        detail = c.get(f"/api/incidents/{inc_id}").json()
        assert detail["diagnosis"]["root_cause"] == "gpu_fell_off_bus"
        assert [s["action"]["name"] for s in detail["plan"]["steps"]][:2] == ["cordon_node", "drain_node"]
        assert [x["verdict"] for x in detail["decisions"]] == ["allow", "needs_approval"]
        assert detail["approvals"][0]["status"] == "pending"
        assert detail["results"][0]["action"]["name"] == "cordon_node"
        assert {e["agent"] for e in detail["timeline"]} >= {"monitor", "diagnostician", "remediator", "governor"}
        assert any("approval_request" in line for line in detail["audit"])
        assert c.get("/api/incidents/nope").status_code == 404
        pending = c.get("/api/approvals").json()
        assert len(pending) == 1 and pending[0]["action"]["name"] == "drain_node"


def test_api_approvals_need_a_token_and_an_allowed_approver(make_daemon: Any) -> None:
    d = make_daemon()
    _incident_waiting(d)
    req = d.pending()[0]
    with d.client(headers={}) as c:  # no token by default: each request says which it sends
        url = f"/api/approvals/{req.id}"
        assert c.post(url, json={"decision": "approve"}).status_code == 401
        assert c.post(url, json={"decision": "approve"}, headers={"Authorization": "Bearer wrong"}).status_code == 401
        r = c.post(url, json={"decision": "approve"}, headers={"Authorization": f"Bearer {API_TOKEN_OTHER}"})
        assert r.status_code == 403 and "not an allowed approver" in r.json()["error"]
        assert c.post(url, json={"decision": "maybe"}, headers=AUTH).status_code == 422
        r = c.post(url, json={"decision": "approve", "digest": "0" * 64}, headers=AUTH)
        assert r.status_code == 409 and "different action" in r.json()["error"]
        assert d.service.driver.approvals.get(req.id).status == ApprovalStatus.pending  # type: ignore[union-attr]
        r = c.post(url, json={"decision": "approve", "digest": req.digest}, headers=AUTH)
        assert r.status_code == 200, r.text
        assert r.json()["request"]["approved_by"] == [APPROVER]
        assert c.post("/api/approvals/apr-unknown", json={"decision": "approve"}, headers=AUTH).status_code == 404

        def drained() -> bool:
            st = d.service.driver.states[req.incident_id]
            return any(x.action.name == "drain_node" and x.ok for x in st.results)

        wait_until(drained, 15.0, what="the approved drain")
        again = c.post(url, json={"decision": "approve"}, headers=AUTH)
        assert again.status_code == 409  # used once
    with AuditLog(d.db) as log:
        assert log.verify().ok
        refused = log.entries(kinds=["approval_refused"])
    assert len(refused) >= 2  # the stranger and the wrong digest were refused on the record


def test_api_reject_escalates(make_daemon: Any) -> None:
    d = make_daemon()
    _incident_waiting(d)
    req = d.pending()[0]
    with d.client() as c:
        r = c.post(f"/api/approvals/{req.id}", json={"decision": "reject", "reason": "node is being replaced"},
                   headers=AUTH)
        assert r.status_code == 200 and r.json()["request"]["status"] == "rejected"
    wait_until(lambda: d.service.driver.states[req.incident_id].outcome == "escalated", 15.0, what="escalation")
    stored = d.service.driver.approvals.get(req.id)
    assert stored is not None and stored.reason == "node is being replaced"


BAD_WEBHOOKS = [
    (b"not json", "body"),
    (b"[]", "body"),
    (json.dumps({"version": "3", "status": "firing", "alerts": []}).encode(), "version"),
    (json.dumps({"version": "4", "groupKey": "k", "status": "firing", "receiver": "r"}).encode(), "alerts"),
    (json.dumps({"version": "4", "groupKey": "k", "status": "firing", "receiver": "r",
                 "alerts": [{"status": "burning", "labels": {"alertname": "X"},
                             "startsAt": "2025-01-01T00:00:00Z"}]}).encode(), "alerts[0].status"),
    (json.dumps({"version": "4", "groupKey": "k", "status": "firing", "receiver": "r",
                 "alerts": [{"status": "firing", "labels": {}, "startsAt": "2025-01-01T00:00:00Z"}]}).encode(),
     "alerts[0].labels"),
]


def test_malformed_webhooks_are_400_naming_the_field_and_the_loop_keeps_running(make_daemon: Any) -> None:
    d = make_daemon()
    with d.client() as c:
        ticks = d.service.ticks
        for body, field in BAD_WEBHOOKS:
            r = c.post("/alerts/alertmanager", content=body, headers=ALERT_AUTH)
            assert r.status_code == 400, body
            assert r.json()["field"] == field, (body, r.json())
        ok = c.post("/alerts/alertmanager", content=webhook_body(storm_alerts(2, 2)), headers=ALERT_AUTH)
        assert ok.status_code == 202 and ok.json()["accepted"] == 4
        wait_until(lambda: d.service.ticks > ticks + 5, 10.0, what="the loop to keep ticking")
        assert c.get("/readyz").status_code == 200
        assert 'opsmedic_alerts_refused_total{reason="malformed"} 6.0' in c.get("/metrics").text


def test_a_full_alert_queue_answers_429_with_retry_after(tmp_path: Any) -> None:
    from daemon_testkit import InProcessDaemon

    from opsmedic.daemon.app import create_app
    from opsmedic.daemon.server import ThreadedServer

    d = InProcessDaemon(tmp_path, None, alerts_queue_max=2)
    server = ThreadedServer(create_app(d.service, manage_lifecycle=False)).start()  # nobody drains the queue
    try:
        with httpx.Client(base_url=server.url) as c:
            codes = [c.post("/alerts/alertmanager", content=webhook_body(storm_alerts(1, 1)),
                            headers=ALERT_AUTH).status_code for _ in range(3)]
            assert codes == [202, 202, 429]
            r = c.post("/alerts/alertmanager", content=webhook_body(storm_alerts(1, 1)), headers=ALERT_AUTH)
            assert r.headers["Retry-After"] == "1" and "full" in r.json()["error"]
    finally:
        server.stop()
        d.service.driver.close()


def test_an_alert_about_a_known_gpu_opens_one_incident(make_daemon: Any) -> None:
    d = make_daemon(speed=20.0)  # slow enough that the scenario's own fault (t=2m) comes later
    alert = {"status": "firing", "labels": {"alertname": "GpuXid", "Hostname": "node-3", "gpu": "5", "xid": "79"},
             "annotations": {"summary": "XID 79 reported by DCGM on node-3 GPU 5"},
             "startsAt": "2025-01-01T00:00:00Z", "fingerprint": "f00d"}
    with d.client() as c:
        for _ in range(3):  # Alertmanager re-notifies: still one incident
            assert c.post("/alerts/alertmanager", content=webhook_body([alert]), headers=ALERT_AUTH).status_code == 202

        def opened() -> list[dict[str, Any]]:
            return [x for x in c.get("/api/incidents").json() if x["source"] == "alertmanager"]

        incs = wait_until(opened, 10.0, what="an incident from the alert")
        assert len(incs) == 1 and incs[0]["resource"] == "node-3/gpu-5"
        wait_until(lambda: c.get(f"/api/incidents/{incs[0]['id']}").json()["diagnosis"], 10.0, what="a diagnosis")
        assert len(opened()) == 1


@pytest.mark.slow
def test_alert_storm_and_50_concurrent_requests_while_an_incident_runs() -> None:
    from opsmedic.daemon.bench import bench_daemon_load

    fig = bench_daemon_load(seconds=3.0, rate=1000, concurrent=50, speed=100.0, retrieval=False)
    assert fig["daemon_alerts_sent"] >= 3000
    assert fig["daemon_alerts_lost"] == 0, fig
    assert fig["daemon_alerts_open_after_resolve"] == 0
    assert fig["daemon_api_errors"] == 0 and fig["daemon_api_requests"] >= 50
    assert fig["daemon_healthz_probes"] >= 20 and fig["daemon_healthz_p99_ms"] < 1000, fig
    assert fig["daemon_ticks_during_load"] >= 5 and fig["daemon_ready_after_load"] == 1.0


def test_chat_answers_and_streams_the_same_reply(make_daemon: Any) -> None:
    d = make_daemon()
    _incident_waiting(d)
    with d.client() as c:
        plain = c.post("/api/chat", json={"question": "pending approvals"}, headers=AUTH)
        assert plain.status_code == 200, plain.text
        text = json.dumps(plain.json())
        assert "drain_node" in text
        with c.stream("POST", "/api/chat/stream", json={"question": "pending approvals"}, headers=AUTH) as r:
            assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
            events = [line.removeprefix("event: ") for line in r.iter_lines() if line.startswith("event: ")]
        assert events[0] == "token" and events[-1] == "done"
