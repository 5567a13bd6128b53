"""The console's routes over HTTP (no browser): pages, sign-in, sessions, CSRF, approvals through the store,
the heatmap at 10,000 GPUs, models, audit search and verification, the event stream."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest
from console_testkit import (
    API_TOKEN,
    API_TOKEN_OTHER,
    APPROVER,
    FakeSource,
    fleet_snapshot,
    fraud_model,
    make_app,
    sign_in,
)
from fastapi.testclient import TestClient

from core.domain import Action, ActionResult, ApprovalStatus
from opsmedic.console import views
from opsmedic.console.auth import TokenAuthenticator, csrf_ok
from opsmedic.console.source import DaemonSource, as_source


@pytest.fixture
def client(fake_source: FakeSource) -> Any:
    fake_source.snap = fleet_snapshot(4, 8, failed="node-1/gpu-3", cordoned={"node-1": "inc-t-1"},
                                      models=[fraud_model()])
    fake_source.clock = 100.0
    fake_source.add_incident()
    with TestClient(make_app(fake_source)) as c:
        yield c


def _csrf(c: TestClient) -> str:
    c.get("/console/fleet").raise_for_status()
    token = c.cookies.get("opsmedic_csrf")
    assert token
    return str(token)


# ------------------------------------------------------------------------------------------- pages


def test_pages_are_served_with_security_headers_and_a_csrf_cookie(client: TestClient) -> None:
    r = client.get("/console", follow_redirects=False)
    assert r.status_code == 307 and r.headers["location"] == "/console/fleet"
    for page in ("fleet", "incidents", "approvals", "models", "audit", "incidents/inc-t-1"):
        r = client.get(f"/console/{page}")
        assert r.status_code == 200, page
        assert r.headers["content-type"].startswith("text/html")
        assert "script-src 'self'" in r.headers["content-security-policy"]
        assert r.headers["x-frame-options"] == "DENY"
        assert '<html lang="en"' in r.text and 'aria-label="Console sections"' in r.text
    assert 'aria-current="page">Incidents' in client.get("/console/incidents").text
    cookie = client.get("/console/fleet").headers["set-cookie"]
    assert "opsmedic_csrf=" in cookie and "samesite=strict" in cookie.lower() and "httponly" not in cookie.lower()
    assert client.get("/console/nope").status_code == 404
    js = client.get("/console/static/1/vendor/uplot/uPlot.iife.min.js")
    assert js.status_code == 200 and "uPlot" in js.text
    for asset in ("app.js", "charts.js", "console.css", "theme.js", "pages/fleet.js", "pages/incidents.js",
                  "pages/approvals.js", "pages/models.js", "pages/audit.js", "vendor/uplot/LICENSE"):
        assert client.get(f"/console/static/any-version/{asset}").status_code == 200, asset


def test_injected_text_is_escaped_in_the_shell(client: TestClient) -> None:
    r = client.get('/console/incidents/"><img src=x onerror=alert(1)>')
    assert r.status_code == 200 and "<img src=x" not in r.text
    assert "&lt;img src=x onerror=alert(1)&gt;" in r.text


# -------------------------------------------------------------------------------------- sign-in, CSRF


def test_sign_in_needs_csrf_and_a_known_token(client: TestClient) -> None:
    csrf = _csrf(client)
    assert client.post("/console/api/session", json={"token": API_TOKEN}).status_code == 403  # no header
    r = client.post("/console/api/session", json={"token": API_TOKEN}, headers={"X-CSRF-Token": "x" * 43})
    assert r.status_code == 403 and "CSRF" in r.json()["detail"]
    r = client.post("/console/api/session", json={"token": "wrong-token-0123456789"}, headers={"X-CSRF-Token": csrf})
    assert r.status_code == 401
    assert client.get("/console/api/session").json()["signed_in"] is False
    r = client.post("/console/api/session", json={"token": API_TOKEN}, headers={"X-CSRF-Token": csrf})
    assert r.status_code == 200 and r.json()["user"] == APPROVER
    cookies = r.headers.get_list("set-cookie")
    session_cookie = next(c for c in cookies if c.startswith("opsmedic_session="))
    low = session_cookie.lower()
    assert "httponly" in low and "samesite=strict" in low and "path=/console" in low
    assert client.cookies.get("opsmedic_csrf") != csrf  # rotated at sign-in
    assert client.get("/console/api/session").json() == {"signed_in": True, "user": APPROVER, "method": "token",
                                                         "sign_in_available": True}


def test_cross_origin_and_throttled_sign_ins_are_refused(client: TestClient) -> None:
    csrf = _csrf(client)
    r = client.post("/console/api/session", json={"token": API_TOKEN},
                    headers={"X-CSRF-Token": csrf, "Origin": "http://evil.example"})
    assert r.status_code == 403
    for _ in range(10):
        client.post("/console/api/session", json={"token": "nope-nope-nope-nope"}, headers={"X-CSRF-Token": csrf})
    r = client.post("/console/api/session", json={"token": API_TOKEN}, headers={"X-CSRF-Token": csrf})
    assert r.status_code == 429


def test_approve_needs_a_session_and_the_sessions_csrf_token(client: TestClient, fake_source: FakeSource) -> None:
    req = fake_source.request_approval()
    url = f"/console/api/approvals/{req.id}"
    body = {"decision": "approve", "digest": req.digest}
    pre = _csrf(client)
    assert client.post(url, json=body, headers={"X-CSRF-Token": pre}).status_code == 401  # not signed in
    csrf = sign_in(client)  # type: ignore[arg-type]
    assert client.post(url, json=body).status_code == 403  # missing token
    assert client.post(url, json=body, headers={"X-CSRF-Token": pre}).status_code == 403  # the pre-sign-in one
    client.cookies.set("opsmedic_csrf", "forged-forged-forged-forged-forged-x", path="/console")
    forged = client.post(url, json=body, headers={"X-CSRF-Token": "forged-forged-forged-forged-forged-x"})
    assert forged.status_code == 403  # cookie and header agree, but not with the session
    client.cookies.set("opsmedic_csrf", csrf, path="/console")
    wrong = client.post(url, json={**body, "digest": "0" * 64}, headers={"X-CSRF-Token": csrf})
    assert wrong.status_code == 409 and "different action" in wrong.json()["error"]
    assert fake_source.approvals.get(req.id).status == ApprovalStatus.pending  # type: ignore[union-attr]
    ok = client.post(url, json=body, headers={"X-CSRF-Token": csrf})
    assert ok.status_code == 200, ok.text
    assert ok.json()["request"]["approved_by"] == [APPROVER] and ok.json()["by"] == APPROVER
    again = client.post(url, json=body, headers={"X-CSRF-Token": csrf})
    assert again.status_code == 409  # approving twice is refused
    kinds = [e.kind for e in fake_source.audit.entries()]
    assert "approval" in kinds and kinds.count("approval_refused") >= 2  # the refusals are on the record
    assert fake_source.audit.verify().ok
    assert client.post("/console/api/approvals/apr-nope", json=body, headers={"X-CSRF-Token": csrf}).status_code == 404


def test_a_non_approver_cannot_act_and_sees_no_buttons(client: TestClient, fake_source: FakeSource) -> None:
    req = fake_source.request_approval()
    csrf = sign_in(client, API_TOKEN_OTHER)  # type: ignore[arg-type]
    listed = client.get("/console/api/approvals").json()
    assert listed["user"] == "UNOBODY" and listed["pending"][0]["can_act"] is False
    r = client.post(f"/console/api/approvals/{req.id}", json={"decision": "approve", "digest": req.digest},
                    headers={"X-CSRF-Token": csrf})
    assert r.status_code == 403 and "not an allowed approver" in r.json()["error"]


def test_reject_records_the_reason_and_sign_out_ends_the_session(client: TestClient, fake_source: FakeSource) -> None:
    req = fake_source.request_approval()
    csrf = sign_in(client)  # type: ignore[arg-type]
    assert client.get("/console/api/approvals").json()["pending"][0]["can_act"] is True
    r = client.post(f"/console/api/approvals/{req.id}",
                    json={"decision": "reject", "digest": req.digest, "reason": "node is being replaced"},
                    headers={"X-CSRF-Token": csrf})
    assert r.status_code == 200 and r.json()["request"]["status"] == "rejected"
    stored = fake_source.approvals.get(req.id)
    assert stored is not None and stored.reason == "node is being replaced"
    recent = client.get("/console/api/approvals").json()["recent"]
    assert recent[0]["id"] == req.id and recent[0]["status"] == "rejected"
    assert client.post("/console/api/logout", json={}).status_code == 403  # CSRF here too
    assert client.post("/console/api/logout", json={}, headers={"X-CSRF-Token": csrf}).status_code == 200
    assert client.get("/console/api/session").json()["signed_in"] is False


def test_csrf_and_token_helpers() -> None:
    auth = TokenAuthenticator({"a" * 20: "alice", "b" * 20: "bob"})
    assert auth.authenticate("b" * 20) is not None and auth.authenticate("b" * 20).user == "bob"  # type: ignore[union-attr]
    assert auth.authenticate("c" * 20) is None and auth.authenticate("") is None
    assert not csrf_ok(None, "x", None) and not csrf_ok("x", None, None) and not csrf_ok("x", "y", None)
    assert csrf_ok("x", "x", None)


def test_reads_can_require_sign_in(fake_source: FakeSource) -> None:
    from fastapi import FastAPI

    from opsmedic.console import mount_console

    app = FastAPI()
    mount_console(app, fake_source, public_read=False)
    with TestClient(app) as c:
        assert c.get("/console/api/incidents").status_code == 401
        sign_in(c)  # type: ignore[arg-type]
        assert c.get("/console/api/incidents").status_code == 200


# ------------------------------------------------------------------------------------------- fleet


def test_fleet_marks_the_failed_gpu_and_the_node_opsmedic_cordoned(client: TestClient,
                                                                   fake_source: FakeSource) -> None:
    f = client.get("/console/api/fleet").json()
    assert f["gpus_per_node"] == 8 and [n["name"] for n in f["nodes"]] == ["node-0", "node-1", "node-2", "node-3"]
    assert f["counts"]["failed"] == 1 and f["counts"]["cordoned"] == 1 and f["counts"]["gpus"] == 32
    i = 1 * 8 + 3
    assert f["ids"][i] == "node-1/gpu-3" and f["health"][i] == 2 and f["metrics"]["temp"][i] is None
    assert "fell off the bus" in f["reasons"][str(i)]
    assert f["marked"] == [{"name": "node-1", "ready": True, "cordoned": True, "cordoned_by": "inc-t-1",
                            "incidents": ["inc-t-1"], "actions": [], "incident_title": "XID 79 on node-1/gpu-3",
                            "incident_outcome": "open"}]


def test_fleet_payload_for_10000_gpus_is_fast_and_compact(fake_source: FakeSource) -> None:
    snap = fleet_snapshot(1250, 8, failed="node-700/gpu-5", cordoned={"node-700": "inc-big"})
    fake_source.snap = snap
    t0 = time.perf_counter()
    payload = views.fleet_payload(snap, {}, {})
    build_ms = (time.perf_counter() - t0) * 1000
    assert len(payload["health"]) == 10_000 and len(payload["metrics"]["temp"]) == 10_000
    assert payload["counts"]["gpus"] == 10_000 and payload["counts"]["failed"] == 1
    assert build_ms < 1500, f"building the 10,000-GPU heatmap took {build_ms:.0f} ms"
    with TestClient(make_app(fake_source)) as c:
        t0 = time.perf_counter()
        r = c.get("/console/api/fleet")
        http_ms = (time.perf_counter() - t0) * 1000
    assert r.status_code == 200
    assert http_ms < 3000, f"GET /console/api/fleet at 10,000 GPUs took {http_ms:.0f} ms"
    assert len(r.content) < 1_500_000, f"{len(r.content)} bytes"
    body = r.json()
    assert body["ids"][700 * 8 + 5] == "node-700/gpu-5" and body["health"][700 * 8 + 5] == 2
    assert body["marked"][0]["name"] == "node-700"


def test_node_actions_name_the_incident_that_did_them(fake_source: FakeSource) -> None:
    fake_source.add_incident("inc-a")
    st = fake_source.sts["inc-a"]
    st.results.append(ActionResult(action=Action(name="drain_node", target="node-2"), ok=True, at_s=5.0))
    snap = fleet_snapshot(3, 2, cordoned={"node-2": "opsmedic"})
    out = views.fleet_payload(snap, fake_source.incidents(), fake_source.states())
    node2 = next(n for n in out["marked"] if n["name"] == "node-2")
    assert node2["incidents"] == ["inc-a"] and node2["actions"] == ["drain_node"] and node2["cordoned_by"] == "opsmedic"


# ------------------------------------------------------------------------------------ models, audit


def test_models_show_slo_status_and_rollback_history(client: TestClient, fake_source: FakeSource) -> None:
    fake_source.snap = fleet_snapshot(2, 2, models=[fraud_model(accuracy=0.71, serving_version=4, versions=[3, 4],
                                                                previous_version=3, drift_psi={"amount": 0.35})])
    rb = ActionResult(action=Action(name="rollback_model", target="fraud-model", params={"to_version": 3}), ok=True,
                      detail="serving v3", at_s=130.0)
    fake_source.audit.append("execution", rb.model_dump(mode="json"), incident_id="inc-t-1", sim_s=130.0)
    data = client.get("/console/api/models").json()
    m = data["models"][0]
    assert m["name"] == "fraud-model" and m["serving_version"] == 4
    assert m["slo"]["ok"] is False
    checks = {c["name"]: c["ok"] for c in m["slo"]["checks"]}
    assert checks == {"accuracy": False, "latency p95": True, "drift": False}
    assert m["history"][0]["action"] == "rollback_model" and m["history"][0]["params"] == {"to_version": 3}
    assert "series" in m


def test_models_judge_drift_by_the_monitors_thresholds(client: TestClient, fake_source: FakeSource) -> None:
    from core.settings import MonitorSettings

    fake_source.snap = fleet_snapshot(2, 2, models=[fraud_model(drift_psi={"amount": 0.35})])

    def drift() -> dict[str, Any]:
        checks = client.get("/console/api/models").json()["models"][0]["slo"]["checks"]
        return dict(next(c for c in checks if c["name"] == "drift"))

    assert drift()["ok"] is False and drift()["target"] == "PSI <= 0.2, KL <= 0.15"  # the monitor's defaults
    fake_source.monitor = MonitorSettings(drift_psi=0.4, drift_kl=0.3)  # what OPSMEDIC_MONITOR__DRIFT_PSI sets
    assert drift()["ok"] is True and drift()["target"] == "PSI <= 0.4, KL <= 0.3"


def _canary_model(at_s: float, *, canary_pct: float | None, canary_err: float = 0.08, **kw: Any) -> Any:
    from core.domain import ModelTrack

    stable_pct = 100.0 - (canary_pct or 0.0)
    tracks = {"stable": ModelTrack(version=3, traffic_pct=stable_pct, accuracy=0.95, latency_p95_ms=27.0,
                                   error_rate=0.0, requests_per_s=stable_pct)}
    if canary_pct is not None:
        tracks["canary"] = ModelTrack(version=4, traffic_pct=canary_pct, accuracy=0.95, latency_p95_ms=27.0,
                                      error_rate=canary_err, requests_per_s=canary_pct)
    return fleet_snapshot(2, 2, at_s=at_s, models=[fraud_model(
        versions=[1, 2, 3, 4], error_rate=0.0, slo_error_rate_max=0.01, requests_per_s=100.0, tracks=tracks,
        workload="fraud-model", **kw)])


def test_the_model_page_shows_both_tracks_the_abort_and_the_retrain_block(client: TestClient,
                                                                          fake_source: FakeSource) -> None:
    from core.domain import PolicyDecision, Risk
    from opsmedic.console.source import FaultMark

    console = client.app.state.console  # type: ignore[attr-defined]
    fake_source.faults = [FaultMark(at_s=120.0, type="model_canary", target="fraud-model")]
    # before the rollout, the canary's first step (it fails one request in twelve), the abort, after it
    for t, pct in ((110.0, None), (130.0, 10.0), (160.0, 10.0), (190.0, None), (220.0, None)):
        fake_source.snap = _canary_model(t, canary_pct=pct)
        console.step()
    fake_source.audit.append("observation", {"resource": "fraud-model", "signals": [{
        "kind": "canary_analysis_failed", "resource": "fraud-model", "at_s": 180.0,
        "detail": "fraud-model canary v4 at 10 % fails analysis over 60s and 700 requests: error rate 8.00% vs "
                  "stable 0.00%", "labels": {"canary_error_rate": "0.08", "slo_error_rate_max": "0.01"}}]},
        incident_id="inc-c-1", sim_s=180.0)
    abort = ActionResult(action=Action(name="abort_rollout", target="fraud-model"), ok=True,
                         detail="Rollout fraud-model status.abort=true", at_s=180.0)
    fake_source.audit.append("execution", abort.model_dump(mode="json"), incident_id="inc-c-1", sim_s=180.0)
    # a broken pipeline later: the current window fails validation, and the governor refuses a retrain
    fake_source.snap = _canary_model(250.0, canary_pct=None, data_issues={"amount": "null share 0.31 > 0.05"})
    console.step()
    denied = PolicyDecision(action=Action(name="retrain_model", target="fraud-model"), verdict="deny", risk=Risk.high,
                            rule="data_validation.retrain_blocked", reasons=["its current window failed validation"])
    fake_source.audit.append("decision", denied.model_dump(mode="json"), incident_id="inc-c-2", sim_s=250.0)

    r = client.get("/console/api/models", headers={"Authorization": f"Bearer {API_TOKEN}"})
    assert r.status_code == 200, r.text
    m = r.json()["models"][0]
    assert {c["name"]: c["ok"] for c in m["slo"]["checks"]}["error rate"] is True
    assert m["tracks"]["stable"]["traffic_pct"] == 100.0 and "canary" not in m["tracks"]
    tracks = m["series"]["tracks"]
    # the fixture's first snapshot (t=100, no model-operations readings) has no point here
    assert tracks["t"] == [110.0, 130.0, 160.0, 190.0, 220.0, 250.0]
    by = {g["name"]: {ln["track"]: ln["values"] for ln in g["lines"]} for g in tracks["metrics"]}
    assert by["traffic_pct"]["stable"] == [100.0, 90.0, 90.0, 100.0, 100.0, 100.0]
    assert by["traffic_pct"]["canary"] == [0.0, 10.0, 10.0, 0.0, 0.0, 0.0]
    assert by["error_rate_pct"]["canary"] == [None, 8.0, 8.0, None, None, None]  # in percent; none without a canary
    assert by["requests_per_s"]["canary"][1] == 10.0
    marks = [(x["at_s"], x["kind"], x["label"]) for x in m["marks"]]
    assert marks == [(120.0, "fault", "fault: model_canary"), (180.0, "action", "abort_rollout")]
    assert m["history"][0]["action"] == "abort_rollout" and m["history"][0]["incident_id"] == "inc-c-1"
    assert m["canary_analysis"]["seq"] == 1 and "8.00% vs stable 0.00%" in m["canary_analysis"]["detail"]
    v = m["validation"]
    assert v["ok"] is False and v["failed"] == [{"feature": "amount", "check": "null share 0.31 > 0.05"}]
    block = v["retrain_block"]
    assert block["blocked"] is True and block["rule"] == "data_validation.retrain_blocked"
    assert [d["seq"] for d in block["denials"]] == [3] and block["denials"][0]["incident_id"] == "inc-c-2"


def test_a_model_without_model_operations_readings_has_no_track_plots(client: TestClient,
                                                                      fake_source: FakeSource) -> None:
    fake_source.snap = fleet_snapshot(2, 2, at_s=300.0, models=[fraud_model()])
    client.app.state.console.step()  # type: ignore[attr-defined]
    m = client.get("/console/api/models").json()["models"][0]
    assert m["series"]["tracks"] is None and m["series"]["t"]
    assert m["validation"]["ok"] is True and m["validation"]["retrain_block"]["blocked"] is False
    assert m["canary_analysis"] is None and m["marks"] == []


def test_audit_search_and_a_broken_chain(client: TestClient, fake_source: FakeSource, tmp_path: Path) -> None:
    fake_source.request_approval()
    for i in range(5):
        fake_source.audit.append("observation", {"resource": f"node-{i}", "detail": "hot"}, incident_id="inc-t-1",
                                 sim_s=float(i))
    d = client.get("/console/api/audit").json()
    assert d["verification"]["ok"] is True and d["total"] == 6 and d["entries"][0]["seq"] == 6  # newest first
    assert d["kinds"] == {"approval_request": 1, "observation": 5}
    assert client.get("/console/api/audit", params={"q": "NODE-3"}).json()["matched"] == 1
    assert client.get("/console/api/audit", params={"kind": "approval_request"}).json()["matched"] == 1
    assert client.get("/console/api/audit", params={"incident": "inc-x"}).json()["matched"] == 0
    page = client.get("/console/api/audit", params={"limit": 2, "offset": 2}).json()
    assert [e["seq"] for e in page["entries"]] == [4, 3]
    with sqlite3.connect(str(tmp_path / "console.db")) as conn:  # edit entry 3 behind the log's back
        conn.execute("UPDATE opsmedic_audit SET payload = ? WHERE seq = 3",
                     (json.dumps({"resource": "node-9", "detail": "cool"}),))
    fake_source.audit.append("observation", {"resource": "node-x"}, sim_s=9.0)  # a new count: verified again
    v = client.get("/console/api/audit").json()["verification"]
    assert v["ok"] is False and v["first_bad_seq"] == 3


@pytest.mark.parametrize("edit", [
    "UPDATE opsmedic_audit SET payload = payload || ' ' WHERE seq = 2",  # bytes only: the value is the same
    "UPDATE opsmedic_audit SET payload = replace(payload, 'hot', 'cold') WHERE seq = 2",
])
def test_chain_status_is_recomputed_after_an_in_place_edit(client: TestClient, fake_source: FakeSource,
                                                           tmp_path: Path, edit: str) -> None:
    # an in-place edit changes neither the entry count nor the head hash: the status must still turn
    for i in range(3):
        fake_source.audit.append("observation", {"resource": f"node-{i}", "detail": "hot"}, sim_s=float(i))
    assert client.get("/console/api/audit").json()["verification"]["ok"] is True
    with sqlite3.connect(str(tmp_path / "console.db")) as conn:
        conn.execute(edit)
    v = client.get("/console/api/audit").json()["verification"]
    assert (v["ok"], v["first_bad_seq"], v["count"]) == (False, 2, 1)
    assert "entry 2" in v["reason"]


# ------------------------------------------------------------------------------------ incidents, stream


def test_incident_detail_has_plots_and_marks(client: TestClient, fake_source: FakeSource) -> None:
    from opsmedic.console.source import FaultMark

    fake_source.faults = [FaultMark(at_s=140.0, type="gpu_xid", target="node-1/gpu-3"),
                          FaultMark(at_s=50.0, type="gpu_xid", target="node-3/gpu-0")]
    console = client.app.state.console  # type: ignore[attr-defined]
    for t in range(110, 180, 10):  # the recorder has the first snapshot (t=100) already
        fake_source.snap = fleet_snapshot(4, 8, at_s=float(t), failed="node-1/gpu-3" if t >= 140 else None)
        console.step()
    d = client.get("/console/api/incidents/inc-t-1").json()
    assert d["summary"]["outcome"] == "open" and d["incident"]["resource"] == "node-1/gpu-3"
    s = d["series"]
    assert s["kind"] == "gpu" and s["t"] == [100.0, 110.0, 120.0, 130.0, 140.0, 150.0, 160.0, 170.0]
    temp = next(m for m in s["metrics"] if m["name"] == "temp_c")["values"]
    assert temp[3] is not None and temp[4] is None  # gone from NVML at the fault
    kinds = [m["kind"] for m in d["marks"]]
    assert "fault" in kinds and "opened" in kinds and sum(k == "fault" for k in kinds) == 1  # only its own fault
    assert client.get("/console/api/incidents/nope").status_code == 404
    listed = client.get("/console/api/incidents").json()["incidents"]
    assert listed[0]["id"] == "inc-t-1"


def test_event_stream_announces_changes(client: TestClient, fake_source: FakeSource) -> None:
    console = client.app.state.console  # type: ignore[attr-defined]
    console.stream_max_s = 0.5
    with client.stream("GET", "/console/events") as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        text = "".join(r.iter_text())
    assert text.startswith("retry: ")
    events = [json.loads(line[len("data: "):]) for line in text.splitlines() if line.startswith("data: ")]
    assert events and events[0]["state_changed"] is True and events[0]["snap_at"] == 100.0


def test_sources_adapt_what_they_are_given(fake_source: FakeSource) -> None:
    assert as_source(fake_source) is fake_source

    class Service:
        driver = object()
        world = object()

    assert isinstance(as_source(Service()), DaemonSource)
    with pytest.raises(TypeError):
        as_source(object())
