"""Hostile input at every edge of the daemon: each endpoint against each malformed class (truncated, deep,
huge, chunked huge, wrong types, NaN, surrogates, control characters, bad encodings, wrong content
types, valid Unicode), wrong and absent tokens, forged, replayed and stale Slack signatures, and forged
alerts of every kind on resources the cluster really has.

The rules: no 5xx ever (a 503 only where it is the documented answer); malformed input is a 4xx; the
daemon is healthy afterwards; every alert answered 202 is stored and processed (nothing lost); no forged
alert is stored; and on a cluster with no fault nothing is done at all (no ledger record, no execution,
no approval). The last test prints the figures (requests tried, 5xx, actions) and writes them to
`$OPSMEDIC_SECURITY_REPORT` when set, for the README.

The tests share one daemon per database backend (SQLite, and Postgres where the server is installed) and
run in file order; each adds to that daemon's tally, which the last one checks.
"""

from __future__ import annotations

import json
import os
import resource
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fakes.fake_slack import FakeSlack
from hostile_kit import (
    ALERT_AUTH,
    ALERT_TOKEN,
    API_TOKEN,
    AUTH,
    BOT_TOKEN,
    CONTENT_TYPES,
    GUESS_ADDRESS,
    MALFORMED,
    HostileDaemon,
    alert,
    chunked_flood,
    slack_click,
    slack_sign,
    webhook,
)

from opsmedic.daemon.edge import MAX_ALERT_BODY, MAX_BODY, MAX_SLACK_BODY
from tools.alertmanager import ALERT_KINDS


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def daemon(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[HostileDaemon]:
    database = None
    if request.param == "postgres":
        server = request.getfixturevalue("pg_server")  # skips without a Postgres installation
        database = server.create_database()
    fake = FakeSlack(BOT_TOKEN)
    fake.start()
    d = HostileDaemon(tmp_path_factory.mktemp("hostile"), fake.url, database=database).start()
    with d.client() as c:  # both tokens known good from the honest address before anyone guesses
        deadline = time.monotonic() + 20.0
        while c.get("/readyz").status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert c.get("/api/status", headers=AUTH).status_code == 200
    yield d
    d.stop()
    fake.stop()


def _csrf_client(d: HostileDaemon) -> tuple[httpx.Client, dict[str, str]]:
    c = d.client()
    c.get("/console/fleet")
    return c, {"X-CSRF-Token": str(c.cookies.get("opsmedic_csrf"))}


def _send(d: HostileDaemon, c: httpx.Client, what: str, method: str, path: str, *, four_xx: bool = False,
          expect: tuple[int, ...] | None = None, **kw: Any) -> httpx.Response | None:
    tally = d.tally
    try:
        r = c.request(method, path, **kw)
    except httpx.LocalProtocolError:  # our own HTTP client would not send it: not a request tried
        return None
    except httpx.HTTPError as exc:  # the server closing on us is an answer too, never a 5xx
        tally.note(what, 499, None)
        tally.violations.append(f"{what}: connection error {type(exc).__name__}") if not four_xx else None
        return None
    tally.note(what, r.status_code, expect, four_xx=four_xx)
    if r.status_code == 202 and path == "/alerts/alertmanager":
        tally.accepted_alerts += int(r.json().get("accepted", 0))
    return r


def _body_endpoints(d: HostileDaemon) -> list[tuple[str, str, dict[str, str], httpx.Client]]:
    plain = d.client()
    console, csrf = _csrf_client(d)
    return [
        ("POST", "/alerts/alertmanager", ALERT_AUTH, plain),
        ("POST", "/api/approvals/apr-nope", AUTH, plain),
        ("POST", "/api/chat", AUTH, plain),
        ("POST", "/api/chat/stream", AUTH, plain),
        ("POST", "/console/api/session", csrf, console),
        ("POST", "/console/api/logout", csrf, console),
        ("POST", "/console/api/approvals/apr-nope", {**csrf, **AUTH}, console),
        ("GET", "/api/incidents", AUTH, plain),
        ("GET", "/console/api/audit", AUTH, plain),
    ]


def test_every_body_endpoint_refuses_every_malformed_class(daemon: HostileDaemon) -> None:
    for method, path, headers, c in _body_endpoints(daemon):
        for cls, body in MALFORMED.items():
            if method == "GET" and cls not in ("deep", "nan", "huge-string", "latin1"):
                continue
            valid_anyway = (path.startswith("/api/chat") and cls == "duplicate-keys") or (
                method == "GET" and cls != "huge-string") or (path.endswith("/logout") and cls == "empty")
            _send(daemon, c, f"{cls} {method} {path}", method, path, content=body,
                  headers={**headers, "Content-Type": "application/json"}, four_xx=not valid_anyway)
        for ctype in CONTENT_TYPES:
            _send(daemon, c, f"content-type {method} {path} {ctype}", method, path,
                  content=b'{"decision": "approve", "question": "hi", "token": "x"}',
                  headers={**headers, "Content-Type": ctype})
    # the specific answers: too deep is a 400, NaN is a 400, too big is a 413, on the JSON API
    with daemon.client() as c:
        assert _send(daemon, c, "deep-specific", "POST", "/api/chat", content=MALFORMED["deep"],
                     headers={**AUTH, "Content-Type": "application/json"}, expect=(400,)) is not None
        assert _send(daemon, c, "nan-specific", "POST", "/api/chat", content=b'{"question": NaN}',
                     headers={**AUTH, "Content-Type": "application/json"}, expect=(400,)) is not None
        _send(daemon, c, "huge-specific", "POST", "/api/chat", content=b"x" * (MAX_BODY + 1), headers=AUTH,
              expect=(413,))
        _send(daemon, c, "huge-declared", "POST", "/alerts/alertmanager", content=b" " * (MAX_ALERT_BODY + 1),
              headers=ALERT_AUTH, expect=(413,))
        _send(daemon, c, "bad-content-length", "POST", "/api/chat", content=b"{}",
              headers={**AUTH, "Content-Length": "-1"}, four_xx=True)
    assert not daemon.tally.violations, daemon.tally.violations


def test_chunked_floods_stop_at_the_limit(daemon: HostileDaemon) -> None:
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for path, headers, limit in (("/alerts/alertmanager", ALERT_AUTH, MAX_ALERT_BODY),
                                 ("/slack/events", slack_sign(b"x"), MAX_SLACK_BODY),
                                 ("/api/chat", AUTH, MAX_BODY),
                                 ("/console/api/session", {}, MAX_BODY)):
        status, sent = chunked_flood(daemon.host, daemon.port, path, headers, total=300 * 1024 * 1024)
        daemon.tally.note(f"chunked-flood POST {path}", status or 499, (413,))
        assert status == 413, (path, status)
        assert sent < limit + 16 * 1024 * 1024, (path, sent)  # refused as it arrived, not after 300 MB
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mb < 100, f"peak memory grew by {grown_mb:.0f} MB during the floods"


def test_tokens_absent_wrong_and_guessed(daemon: HostileDaemon) -> None:
    reads = ["/api/incidents", "/api/incidents/x", "/api/approvals", "/api/status", "/openapi.json", "/docs",
             "/console/api/overview", "/console/api/fleet", "/console/api/incidents", "/console/api/approvals",
             "/console/api/models", "/console/api/audit", "/console/events"]
    writes = [("POST", "/alerts/alertmanager"), ("POST", "/api/approvals/apr-1"), ("POST", "/api/chat")]
    body = json.dumps(webhook([alert()])).encode()
    with daemon.client(GUESS_ADDRESS) as c:
        for path in reads:
            _send(daemon, c, f"token-absent GET {path}", "GET", path, expect=(401,))
        for method, path in writes:
            _send(daemon, c, f"token-absent {method} {path}", method, path, content=body, expect=(401,))
        guesses: list[str | bytes] = ["Bearer wrong-token-0123456789abcdef", "Bearer", "Basic " + API_TOKEN, API_TOKEN,
                   "Bearer " + API_TOKEN[:-1], "Bearer " + API_TOKEN + "x", "bearer  " + "z" * 8000,
                   "Bearer \u00e9\u00e9\u00e9-latin1-0123456789".encode("latin-1")]
        for i, g in enumerate(guesses * 2):
            for method, path in [("GET", "/api/incidents"), *writes]:
                _send(daemon, c, f"token-wrong {method} {path} #{i}", method, path, content=body,
                      headers={"Authorization": g}, expect=(401, 429))
        # locked out by now: 429 without even checking, for any token new to this address
        _send(daemon, c, "token-locked GET /api/incidents", "GET", "/api/incidents", headers=AUTH, expect=(429,))
    with daemon.client() as c:  # the honest client, elsewhere, is not locked out by those failures
        _send(daemon, c, "token-valid-elsewhere GET /api/incidents", "GET", "/api/incidents", headers=AUTH,
              expect=(200,))
        _send(daemon, c, "token-alert-as-api GET /api/incidents", "GET", "/api/incidents",
              headers={"Authorization": f"Bearer {ALERT_TOKEN}"}, expect=(401,))
    assert not daemon.tally.violations, daemon.tally.violations


def test_forged_alerts_of_every_kind_are_never_stored(daemon: HostileDaemon) -> None:
    stored_before = daemon.service.intake.counts()["stored"]
    real = [("node-0", "1"), ("node-1", "0")]
    kinds = sorted(set(ALERT_KINDS))
    alerts = [alert(name, real[i % 2], labels={"model": "fraud-model"} if name.startswith("Model") else {})
              for i, name in enumerate(kinds)]
    body = json.dumps(webhook(alerts)).encode()
    forgeries = [{}, {"Authorization": "Bearer forged-0123456789abcdef"}, AUTH,
                 {"Authorization": f"Basic {ALERT_TOKEN}"}, {"Authorization": f"Bearer {ALERT_TOKEN} extra"}]
    with daemon.client("127.0.0.3") as c:
        for i, headers in enumerate(forgeries):
            for a in alerts:  # one at a time too: each kind on its own
                _send(daemon, c, f"forged-alert {a['labels']['alertname']} #{i}", "POST", "/alerts/alertmanager",
                      content=json.dumps(webhook([a])).encode(), headers=headers, expect=(401, 429))
            _send(daemon, c, f"forged-alert batch #{i}", "POST", "/alerts/alertmanager", content=body, headers=headers,
                  expect=(401, 429))
    assert daemon.service.intake.counts()["stored"] == stored_before
    assert not daemon.tally.violations, daemon.tally.violations


def test_hostile_text_in_valid_alerts_is_stored_clean_and_unicode_kept(daemon: HostileDaemon) -> None:
    texts = {"surrogate": "\ud800 lone", "control": "bell\u0007 esc\u001b[31m nul\u0000", "nan": "NaN",
             "inf": "-inf", "unicode": "Grüße 🚀 東京 مرحبا \u200f", "long": "x" * 100_000}
    with daemon.client() as c:
        for name, text in texts.items():
            a = alert("GpuTempHigh", ("node-88", "1"), labels={"case": name})
            a["annotations"] = {"summary": text, "value": text}
            raw = json.dumps(webhook([a]), ensure_ascii=True).encode()  # \ud800 travels as its JSON escape
            r = _send(daemon, c, f"hostile-text {name}", "POST", "/alerts/alertmanager", content=raw,
                      headers=ALERT_AUTH, expect=(202,))
            assert r is not None
            if name in ("surrogate", "control"):
                assert r.json()["sanitized"] >= 1
            else:
                assert "sanitized" not in r.json()
        # a raw NaN literal is not JSON at all: refused whole, naming the body
        raw = json.dumps(webhook([alert()])).replace('"79"', "NaN").encode()
        _send(daemon, c, "hostile-text nan-literal", "POST", "/alerts/alertmanager", content=raw, headers=ALERT_AUTH,
              expect=(400,))
    rows = daemon.service.intake.pending(limit=100_000)
    for r in rows:
        r.body.encode("utf-8")  # never a lone surrogate in storage
        assert "\u0000" not in json.loads(r.body).__repr__()
    deadline = time.monotonic() + 15.0
    while daemon.service.ingestor.stats()["accepted"] < 6 and time.monotonic() < deadline:
        time.sleep(0.1)
    sigs = [s for s in daemon.service.ingestor.active_signals() if s.resource == "node-88/gpu-1"]
    assert len(sigs) >= 6 and all(s.value is None for s in sigs)  # "NaN" and "-inf" are no numbers
    assert any("🚀" in s.detail for s in sigs) and all("\ud800" not in s.detail for s in sigs)


def test_slack_signatures_forged_stale_and_replayed(daemon: HostileDaemon) -> None:
    body = slack_click("apr-nope", "0" * 64)
    now = int(time.time())
    with daemon.client() as c:
        _send(daemon, c, "slack unsigned", "POST", "/slack/events", content=body,
              headers={"Content-Type": "application/x-www-form-urlencoded"}, expect=(401,))
        _send(daemon, c, "slack forged", "POST", "/slack/events", content=body,
              headers=slack_sign(body, secret="not-the-secret"), expect=(401,))
        _send(daemon, c, "slack stale", "POST", "/slack/events", content=body, headers=slack_sign(body, now - 400),
              expect=(401,))
        _send(daemon, c, "slack future", "POST", "/slack/events", content=body, headers=slack_sign(body, now + 400),
              expect=(401,))
        bad_ts = {**slack_sign(body), "X-Slack-Request-Timestamp": "soon"}
        _send(daemon, c, "slack ts-not-a-number", "POST", "/slack/events", content=body, headers=bad_ts, expect=(401,))
        _send(daemon, c, "slack body-swapped", "POST", "/slack/events", content=body + b"&x=1",
              headers=slack_sign(body), expect=(401,))
        skewed = slack_sign(body, now + 250)  # valid (clock skew), then replayed
        first = _send(daemon, c, "slack skewed-first", "POST", "/slack/events", content=body, headers=skewed)
        assert first is not None and first.status_code != 401
        _send(daemon, c, "slack replay", "POST", "/slack/events", content=body, headers=skewed, expect=(401,))
        for cls, raw in MALFORMED.items():  # signed garbage reaches Bolt: still never a 5xx
            if len(raw) <= MAX_SLACK_BODY:
                _send(daemon, c, f"slack signed-{cls}", "POST", "/slack/events", content=raw, headers=slack_sign(raw))
    # the replay key outlives its timestamp's window, not the receipt: 6 minutes later it is still refused
    store = daemon.service.slack.store  # type: ignore[union-attr]
    t0 = time.time()
    assert store.first_seen("skew-key", now=t0, ts=t0 + 300)
    assert not store.first_seen("skew-key", now=t0 + 400, ts=t0 + 300)  # the prune at +400 s keeps it
    assert not daemon.tally.violations, daemon.tally.violations


def test_odd_paths_and_queries_are_4xx(daemon: HostileDaemon) -> None:
    paths = ["/api/incidents/%ED%A0%80", "/api/incidents/..%2F..%2Fetc%2Fpasswd", "/api/incidents/" + "x" * 4000,
             "/api/incidents/%00", "/console/api/incidents/%F0%9F%9A%80", "/console/api/audit?limit=NaN",
             "/console/api/audit?limit=-1", "/console/api/audit?offset=1e999", "/console/api/audit?q=%ED%A0%80",
             "/console/api/audit?q=" + "q" * 5000, "/console/api/audit?kind=%00&incident=%ff",
             "/console/incidents/%3Cscript%3E", "/console/nope", "/api/nope", "/alerts/alertmanager?x=%ff"]
    with daemon.client() as c:
        for p in paths:
            method = "POST" if p.startswith("/alerts") else "GET"
            r = _send(daemon, c, f"odd-path {method} {p[:60]}", method, p,
                      headers=AUTH if method == "GET" else ALERT_AUTH)
            assert r is None or r.status_code < 500, p
    assert not daemon.tally.violations, daemon.tally.violations


def test_a_stored_row_never_breaks_a_view(daemon: HostileDaemon) -> None:
    """Rows written before the edge refused such values (or by another path) still render: replaced, not 500."""
    from core.domain import Incident, ResourceKind, Signal

    d = daemon.service.driver
    sig = Signal(kind="gpu_temp_high", resource="node-99/gpu-9", resource_kind=ResourceKind.gpu, at_s=1.0,
                 value=float("nan"), detail="\ud800 broken \u0000", labels={"x": "\udfff"})
    inc = Incident(id="hostile-row", resource="node-99/gpu-9", resource_kind=ResourceKind.gpu,
                   opened_at_s=float("inf"), signals=[sig], title="\ud800 title")
    d.incidents[inc.id] = inc
    try:
        with daemon.client() as c:
            for p in ("/api/incidents", f"/api/incidents/{inc.id}", "/console/api/incidents",
                      f"/console/api/incidents/{inc.id}", "/console/api/overview", "/console/api/fleet"):
                r = _send(daemon, c, f"stored-row GET {p}", "GET", p, headers=AUTH, expect=(200,))
                assert r is not None and r.status_code == 200, (p, r.text[:300] if r is not None else None)
                r.content.decode("utf-8")
    finally:
        del d.incidents[inc.id]
    assert not daemon.tally.violations, daemon.tally.violations


def test_afterwards_healthy_nothing_lost_nothing_done(daemon: HostileDaemon) -> None:
    from policies.audit import AuditLog
    from tools.ledger import ExecutionLedger

    s = daemon.service
    ticks = s.ticks
    with daemon.client() as c:
        assert _send(daemon, c, "after healthz", "GET", "/healthz", expect=(200,)) is not None
        deadline = time.monotonic() + 20.0
        while (s.ticks <= ticks + 1 or s.intake.counts()["unprocessed"]) and time.monotonic() < deadline:
            time.sleep(0.1)
        _send(daemon, c, "after readyz", "GET", "/readyz", expect=(200,))
        incidents = c.get("/api/incidents", headers=AUTH).json()
    counts = s.intake.counts()
    stats = s.ingestor.stats()
    assert s.ticks > ticks + 1, "the loop stopped ticking"
    assert counts["unprocessed"] == 0, counts  # every stored alert was processed...
    assert stats["received"] == daemon.tally.accepted_alerts, stats  # ...and none was lost
    ledger = ExecutionLedger(daemon.database)
    try:
        records = ledger.records()
    finally:
        ledger.close()
    with AuditLog(daemon.database) as log:
        executions = log.entries(kinds=["execution"])
        assert log.verify().ok
    actions = len(records) + len(executions)
    t = daemon.tally
    figures = {"backend": daemon.backend, "requests_tried": t.tried, "five_xx": t.five_xx, "actions_taken": actions,
               "alerts_accepted": t.accepted_alerts, "alerts_lost": t.accepted_alerts - stats["received"],
               "forged_alerts_stored": 0, "incidents": len(incidents),
               "answers": dict(sorted((str(k), v) for k, v in t.codes.items())),
               "classes": dict(sorted(t.by_class.items()))}
    print(f"\nhostile-input suite ({daemon.backend}):", json.dumps(figures, sort_keys=True))
    out = os.environ.get("OPSMEDIC_SECURITY_REPORT")
    if out:
        path = Path(out)
        report = json.loads(path.read_text()) if path.exists() else {}
        report[daemon.backend] = figures
        path.write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
    assert daemon.tally.five_xx == 0 and not daemon.tally.violations, daemon.tally.violations
    assert actions == 0 and incidents == [] and s.pending_approvals() == []
    assert daemon.tally.tried >= 400
