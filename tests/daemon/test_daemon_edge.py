"""The daemon's edge over a real uvicorn: alert and read tokens, the per-address throttle, public reads, the
alert port, and the Edge middleware's pieces (token parsing, strict JSON) on their own."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from daemon_testkit import ALERT_AUTH, ALERT_TOKEN, API_TOKEN, AUTH, wait_until

from infra.json_hygiene import JsonRefused, load_json
from opsmedic.daemon.bench import storm_alerts, webhook_body
from opsmedic.daemon.edge import Throttle, match_token
from opsmedic.daemon.tokens import parse_alert_tokens


def _client_from(url: str, address: str, **kw: Any) -> httpx.Client:
    """A client whose connections leave from `address` (any 127.0.0.0/8 address is this machine)."""
    return httpx.Client(base_url=url, timeout=10.0, transport=httpx.HTTPTransport(local_address=address), **kw)


def test_the_alert_route_needs_an_alert_token(make_daemon: Any) -> None:
    d = make_daemon()
    body = webhook_body(storm_alerts(1, 1))
    with d.client(headers={}) as c:
        assert c.post("/alerts/alertmanager", content=body).status_code == 401
        api = c.post("/alerts/alertmanager", content=body, headers=AUTH)  # an API token is not an alert token
        assert api.status_code == 401 and api.json()["error"] == "unknown token"
        assert c.post("/alerts/alertmanager", content=body,
                      headers={"Authorization": f"Basic {ALERT_TOKEN}"}).status_code == 401
        ok = c.post("/alerts/alertmanager", content=body, headers=ALERT_AUTH)
        assert ok.status_code == 202 and ok.json()["accepted"] == 1
    assert d.service.intake.counts()["stored"] == 1  # the 202 came after the row was committed


def test_without_alert_tokens_the_intake_answers_503(make_daemon: Any) -> None:
    d = make_daemon(alert_tokens=[])
    with d.client() as c:
        r = c.post("/alerts/alertmanager", content=webhook_body(storm_alerts(1, 1)), headers=ALERT_AUTH)
        assert r.status_code == 503 and "alert intake is not configured" in r.json()["error"]
    assert d.service.intake.counts()["stored"] == 0


def test_reads_need_a_token_health_does_not(make_daemon: Any) -> None:
    d = make_daemon()
    with d.client(headers={}) as c:
        for path in ("/api/incidents", "/api/approvals", "/api/status", "/openapi.json", "/docs",
                     "/console/api/incidents", "/console/api/audit", "/console/api/overview", "/console/events"):
            r = c.get(path)
            assert r.status_code == 401, path
            assert "audit" not in r.text.lower() or "error" in r.json()
        for path in ("/healthz", "/metrics", "/console/fleet", "/console/api/session"):
            assert c.get(path).status_code == 200, path
        assert c.get("/api/incidents", headers=AUTH).status_code == 200
        assert c.get("/console/api/audit", headers=AUTH).status_code == 200
        assert c.get("/api/incidents", headers={"Authorization": f"Bearer {ALERT_TOKEN}"}).status_code == 401
        assert 'opsmedic_edge_refused_total{status="401"}' in c.get("/metrics").text


def test_a_console_session_reads_the_console(make_daemon: Any) -> None:
    d = make_daemon()
    with d.client(headers={}) as c:
        assert c.get("/console/fleet").status_code == 200
        csrf = str(c.cookies.get("opsmedic_csrf"))
        assert c.get("/console/api/overview").status_code == 401
        r = c.post("/console/api/session", json={"token": API_TOKEN}, headers={"X-CSRF-Token": csrf})
        assert r.status_code == 200
        assert c.get("/console/api/overview").status_code == 200


def test_public_read_opens_reads_only(make_daemon: Any) -> None:
    d = make_daemon(public_read=True)
    with d.client(headers={}) as c:
        assert c.get("/api/incidents").status_code == 200
        assert c.get("/console/api/audit").status_code == 200
        assert c.post("/alerts/alertmanager", content=webhook_body(storm_alerts(1, 1))).status_code == 401
        assert c.post("/api/approvals/x", json={"decision": "approve"}).status_code == 401


def test_wrong_tokens_are_throttled_per_address(make_daemon: Any) -> None:
    d = make_daemon()
    wrong = {"Authorization": "Bearer not-a-token-0123456789"}
    with _client_from(d.url, "127.0.0.1") as good, _client_from(d.url, "127.0.0.2") as bad, \
            _client_from(d.url, "127.0.0.3") as other:
        assert good.get("/api/incidents", headers=AUTH).status_code == 200  # a token known to work from here
        codes = [bad.get("/api/incidents", headers=wrong).status_code for _ in range(12)]
        assert codes[:10] == [401] * 10 and codes[10:] == [429, 429]
        # locked: even the right token is not checked from the guessing address (no oracle)...
        assert bad.get("/api/incidents", headers=AUTH).status_code == 429
        assert bad.post("/alerts/alertmanager", content=b"{}", headers=ALERT_AUTH).status_code == 429
        # ...while nobody else is locked out by its failures
        assert other.get("/api/incidents", headers=AUTH).status_code == 200
        assert good.get("/api/incidents", headers=AUTH).status_code == 200
        # the same address as the guesser, with a token that already worked there: not locked out either
        for _ in range(10):
            good.get("/api/incidents", headers=wrong)
        assert good.get("/api/incidents", headers=wrong).status_code == 429
        assert good.get("/api/incidents", headers=AUTH).status_code == 200
    assert d.service.ticks >= 0 and d.service.liveness()[0]


def test_the_alert_port_takes_alerts_and_only_alerts(make_daemon: Any) -> None:
    d = make_daemon(alerts_port=0)
    aurl = d._server.alerts_url
    assert aurl is not None and aurl != d.url
    body = webhook_body(storm_alerts(1, 1))
    with d.client() as main, httpx.Client(base_url=aurl, timeout=10.0) as alerts:
        assert main.post("/alerts/alertmanager", content=body, headers=ALERT_AUTH).status_code == 404
        assert alerts.post("/alerts/alertmanager", content=body, headers=ALERT_AUTH).status_code == 202
        assert alerts.get("/api/incidents", headers=AUTH).status_code == 404
        assert alerts.get("/console/fleet").status_code == 404
        assert alerts.get("/healthz").status_code == 200
        assert main.get("/api/incidents").status_code == 200
    wait_until(lambda: d.service.ingestor.stats()["accepted"] == 1, 10.0, what="the alert ingested")


def test_processed_alerts_are_marked_once(make_daemon: Any) -> None:
    d = make_daemon()
    with d.client() as c:
        for _ in range(3):
            assert c.post("/alerts/alertmanager", content=webhook_body(storm_alerts(1, 2)),
                          headers=ALERT_AUTH).status_code == 202
    wait_until(lambda: d.service.intake.counts()["processed"] == 3, 10.0, what="the rows marked processed")
    assert d.service.intake.pending() == []
    assert d.service.ingestor.stats()["accepted"] == 2 and d.service.ingestor.stats()["duplicate"] == 4


# ------------------------------------------------------------------------------------------ pieces


def test_alert_tokens_parse_and_compare() -> None:
    assert parse_alert_tokens(" a" * 0 + "tok-0123456789abcdef, tok-fedcba9876543210 ,") == [
        "tok-0123456789abcdef", "tok-fedcba9876543210"]
    with pytest.raises(ValueError, match="at least"):
        parse_alert_tokens("short")
    with pytest.raises(ValueError, match="twice"):
        parse_alert_tokens("tok-0123456789abcdef,tok-0123456789abcdef")
    assert match_token("tok-0123456789abcdef", ["x" * 20, "tok-0123456789abcdef"]) == "tok-0123456789abcdef"
    assert match_token("tok-0123456789abcde", ["tok-0123456789abcdef"]) is None
    assert match_token("\ud800", ["tok-0123456789abcdef"]) is None  # never an encoding error


def test_the_throttle_unlocks_after_its_minute() -> None:
    now = [0.0]
    t = Throttle(limit=3, window_s=60.0, lock_s=60.0, clock=lambda: now[0])
    for _ in range(3):
        assert not t.locked("a", "guess")
        t.failed("a")
    assert t.locked("a", "guess") and not t.locked("b", "guess")
    now[0] = 61.0
    assert not t.locked("a", "guess")


@pytest.mark.parametrize("raw,why", [
    (b'{"a": NaN}', "NaN"), (b'{"a": -Infinity}', "Infinity"), (b'{"a": 1e999}', "not finite"),
    (b'{"a": "\\ud800"}', "surrogate"), (b'{"\\udfff": 1}', "surrogate"), (b'{"a": "\\u0000"}', "control"),
    (b'{"a": "\xff"}', "UTF-8"), (b'{"a": ', "not JSON"), (b"[" * 40 + b"]" * 40, "deeper"),
    (b"[" * 100_000, "deeper"),
])
def test_strict_json_refuses_what_cannot_be_stored(raw: bytes, why: str) -> None:
    with pytest.raises(JsonRefused) as exc:
        load_json(raw)
    assert why in str(exc.value)


def test_strict_json_accepts_unicode() -> None:
    assert load_json('{"q": "Grüße 🚀 — 東京", "t": "a\\tb\\nc"}'.encode()) == {"q": "Grüße 🚀 — 東京", "t": "a\tb\nc"}
