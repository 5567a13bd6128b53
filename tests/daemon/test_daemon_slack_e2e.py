"""End to end through Slack: the daemon on the xid79 sandbox scenario, an approval in (fake) Slack, a signed
click, the drain executed once, the message updated, the story in the thread, the audit chain intact."""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
from daemon_testkit import (
    APPROVER,
    CHANNEL,
    TWO_PERSON_POLICY,
    approval_messages,
    button_value,
    click_body,
    message_text,
    sign,
    wait_until,
)
from fakes.fake_slack import FakeSlack

from core.domain import ApprovalStatus
from policies.audit import AuditLog
from tools.ledger import ExecutionLedger


def _first_approval(fake: FakeSlack) -> dict[str, Any]:
    msgs = wait_until(lambda: approval_messages(fake), 20.0, what="an approval message in Slack")
    return msgs[0]


def _click(client: httpx.Client, body: bytes, headers: dict[str, str] | None = None) -> httpx.Response:
    return client.post("/slack/events", content=body, headers=headers if headers is not None else sign(body))


def _executions(db: Any, action: str) -> list[Any]:
    with AuditLog(db) as log:
        return [e for e in log.entries(kinds=["execution"]) if e.payload["action"]["name"] == action
                and e.payload.get("ok")]


def test_approval_in_slack_end_to_end(make_daemon: Any, fake_slack: FakeSlack) -> None:
    d = make_daemon(fake_slack)
    msg = _first_approval(fake_slack)
    text = message_text(msg)
    # the message says what, where, why, how risky, which rule, until when, and binds the digest
    for needle in ("drain_node@node-1", "gpu_fell_off_bus", "XID 79", "`node-1`", "high",
                   "actions.drain_node.approval", "Expires", "digest"):
        assert needle in text, needle
    value = button_value(msg)
    req = d.service.driver.approvals.get(value["r"])
    assert req is not None and req.status == ApprovalStatus.pending and value["d"] == req.digest

    with d.client() as c:
        r = _click(c, click_body(value["r"], value["d"], APPROVER, message_ts=msg["ts"]))
        assert r.status_code == 200, r.text

    def done() -> bool:
        st = d.service.driver.states.get(req.incident_id)
        return st is not None and st.outcome == "resolved"

    wait_until(done, 20.0, what="the incident to resolve")
    st = d.service.driver.states[req.incident_id]
    assert [r.action.key for r in st.results if r.ok] == ["cordon_node@node-1", "drain_node@node-1"] or \
        [r.action.key for r in st.results if r.ok][:2] == ["cordon_node@node-1", "drain_node@node-1"]
    assert d.service.driver.approvals.get(req.id).status == ApprovalStatus.consumed  # type: ignore[union-attr]

    # the message now says who approved and that it ran and was verified; buttons gone; story in thread
    def updated() -> dict[str, Any] | None:
        m = fake_slack.messages[(CHANNEL, msg["ts"])]
        t = message_text(m)
        return m if "executed" in t and "verified" in t and "resolved" in t else None

    m = wait_until(updated, 15.0, what="the message to be updated")
    assert f"<@{APPROVER}>" in message_text(m)
    assert not any(b.get("type") == "actions" for b in m["blocks"])
    story = wait_until(lambda: fake_slack.thread(CHANNEL, msg["ts"]), 15.0, what="the story in the thread")
    assert "drain_node@node-1" in story[0]["text"] and "diagnostician" in story[0]["text"]

    # exactly once: one execution in the audit log, one done ledger record, one call into the world
    assert len(_executions(d.db, "drain_node")) == 1
    ledger = ExecutionLedger(d.db)
    try:
        drains = [r for r in ledger.records() if r.action.name == "drain_node"]
    finally:
        ledger.close()
    assert len(drains) == 1 and drains[0].status == "done" and drains[0].attempts == 1
    assert len(approval_messages(fake_slack)) == 1  # one message, updated in place
    with AuditLog(d.db) as log:
        v = log.verify()
    assert v.ok, v.reason


def test_bad_signatures_are_refused_and_change_nothing(make_daemon: Any, fake_slack: FakeSlack) -> None:
    d = make_daemon(fake_slack)
    msg = _first_approval(fake_slack)
    value = button_value(msg)
    body = click_body(value["r"], value["d"], APPROVER, message_ts=msg["ts"])
    stale = int(time.time()) - 6 * 60
    with d.client() as c:
        cases = {
            "unsigned": {"Content-Type": "application/x-www-form-urlencoded"},
            "wrong secret": sign(body, secret="not-the-secret"),
            "older than 5 minutes": sign(body, ts=stale),
            "signature of another body": sign(body + b"&x=1"),
            "garbage timestamp": {**sign(body), "X-Slack-Request-Timestamp": "yesterday"},
        }
        for what, headers in cases.items():
            r = _click(c, body, headers)
            assert r.status_code == 401, (what, r.status_code, r.text)
        good = sign(body)
        # a replay of a correctly signed request is refused too
        first = _click(c, body, good)
        assert first.status_code == 200
        again = _click(c, body, good)
        assert again.status_code == 401 and "replay" in again.json()["error"]
    # Bolt acknowledges a click at once and handles it on its own thread: wait for the store to show it
    def decided() -> Any:
        r = d.service.driver.approvals.get(value["r"])
        return r if r is not None and (r.status != ApprovalStatus.pending or r.approved_by) else None

    req = wait_until(decided, 10.0, what="the one good click to be recorded")
    assert req.status != ApprovalStatus.pending or req.approved_by == [APPROVER]
    # only the one good click counted: the refused ones changed nothing in the store or the audit log
    with AuditLog(d.db) as log:
        decided = [e for e in log.entries(kinds=["approval", "approval_refused", "rejection"])
                   if e.payload.get("request_id") == value["r"]]
    assert [e.kind for e in decided] == ["approval"]
    assert d.service.slack is not None
    assert d.service.slack.counters.refused_signature == 5 and d.service.slack.counters.refused_replay == 1


def test_a_click_from_someone_else_is_refused_with_an_ephemeral_reason(make_daemon: Any,
                                                                        fake_slack: FakeSlack) -> None:
    d = make_daemon(fake_slack)
    msg = _first_approval(fake_slack)
    value = button_value(msg)
    with d.client() as c:
        r = _click(c, click_body(value["r"], value["d"], "UINTRUDER", message_ts=msg["ts"]))
        assert r.status_code == 200
        eph = wait_until(lambda: fake_slack.calls_of("chat.postEphemeral"), 10.0, what="an ephemeral refusal")
        assert eph[0].params["user"] == "UINTRUDER" and "not an allowed approver" in eph[0].params["text"]
        # a click carrying a different digest (a forged or stale button) is refused as well
        r = _click(c, click_body(value["r"], "0" * 64, APPROVER, message_ts=msg["ts"]))
        assert r.status_code == 200
        wait_until(lambda: len(fake_slack.calls_of("chat.postEphemeral")) >= 2, 10.0, what="a second refusal")
        assert "different action" in fake_slack.calls_of("chat.postEphemeral")[1].params["text"]
    req = d.service.driver.approvals.get(value["r"])
    assert req is not None and req.status == ApprovalStatus.pending and req.approved_by == []


def test_reject_in_slack_updates_the_message_and_escalates(make_daemon: Any, fake_slack: FakeSlack) -> None:
    d = make_daemon(fake_slack)
    msg = _first_approval(fake_slack)
    value = button_value(msg)
    with d.client() as c:
        r = _click(c, click_body(value["r"], value["d"], APPROVER, action="opsmedic_reject", message_ts=msg["ts"]))
        assert r.status_code == 200

    def rejected() -> bool:
        t = message_text(fake_slack.messages[(CHANNEL, msg["ts"])])
        return "Rejected by" in t and "escalated" in t

    wait_until(rejected, 15.0, what="the message to show the rejection")
    req = d.service.driver.approvals.get(value["r"])
    assert req is not None and req.status == ApprovalStatus.rejected
    assert _executions(d.db, "drain_node") == []


def test_two_person_rule_needs_two_different_approvers(make_daemon: Any, fake_slack: FakeSlack) -> None:
    d = make_daemon(fake_slack, policy=TWO_PERSON_POLICY)
    msg = _first_approval(fake_slack)
    value = button_value(msg)
    with d.client() as c:
        assert _click(c, click_body(value["r"], value["d"], "UALICE", message_ts=msg["ts"])).status_code == 200
        wait_until(lambda: "1 more approval" in message_text(fake_slack.messages[(CHANNEL, msg["ts"])]), 10.0,
                   what="the message to show one of two approvals")
        assert _click(c, click_body(value["r"], value["d"], "UALICE", message_ts=msg["ts"])).status_code == 200
        eph = wait_until(lambda: fake_slack.calls_of("chat.postEphemeral"), 10.0, what="a refusal of the same person")
        assert "different approver" in eph[0].params["text"]
        req = d.service.driver.approvals.get(value["r"])
        assert req is not None and req.status == ApprovalStatus.pending and req.approved_by == ["UALICE"]
        assert _click(c, click_body(value["r"], value["d"], "UBOB", message_ts=msg["ts"])).status_code == 200
    wait_until(lambda: len(_executions(d.db, "drain_node")) == 1, 15.0, what="the drain after two approvals")
    req = d.service.driver.approvals.get(value["r"])
    assert req is not None and req.approved_by == ["UALICE", "UBOB"]


def test_slack_500s_are_retried_and_never_repeat_an_action(make_daemon: Any, fake_slack: FakeSlack) -> None:
    fake_slack.fail_next("chat.postMessage", count=3, status=500)
    fake_slack.fail_next("chat.update", count=2, status=503)
    d = make_daemon(fake_slack)
    msg = _first_approval(fake_slack)  # posted despite three 500s: slack-sdk's retry handler
    assert len([c for c in fake_slack.calls_of("chat.postMessage") if c.status == 500]) == 3
    value = button_value(msg)
    with d.client() as c:
        assert _click(c, click_body(value["r"], value["d"], APPROVER, message_ts=msg["ts"])).status_code == 200
    wait_until(lambda: "executed" in message_text(fake_slack.messages[(CHANNEL, msg["ts"])]), 20.0,
               what="the update after 503s")
    inc = req_incident(d, value["r"])
    wait_until(lambda: d.service.driver.states[inc].outcome == "resolved", 20.0, what="the incident to resolve")
    assert len(_executions(d.db, "drain_node")) == 1
    assert len(approval_messages(fake_slack)) == 1


def test_slack_down_for_longer_than_the_retries_does_not_block_the_loop(make_daemon: Any,
                                                                      fake_slack: FakeSlack) -> None:
    fake_slack.fail_next(None, count=12, status=500)  # every call fails, beyond one sync's retries
    d = make_daemon(fake_slack)
    wait_until(lambda: d.pending(), 20.0, what="an approval request")
    ticks = d.service.ticks
    wait_until(lambda: d.service.ticks > ticks + 5, 10.0, what="the loop to keep ticking while Slack is down")
    # the API is another way in: approve there while Slack still fails; the action runs once
    req = d.pending()[0]
    with d.client() as c:
        r = c.post(f"/api/approvals/{req.id}", json={"decision": "approve"},
                   headers={"Authorization": "Bearer tok-approver-0123456789abcdef"})
        assert r.status_code == 200, r.text
    wait_until(lambda: len(_executions(d.db, "drain_node")) == 1, 20.0, what="the drain")
    # once Slack answers again, the (single) message arrives with the outcome
    m = wait_until(lambda: approval_messages(fake_slack) or None, 60.0, what="the message after the outage")
    assert len(m) == 1
    assert len(_executions(d.db, "drain_node")) == 1


def req_incident(d: Any, request_id: str) -> str:
    req = d.service.driver.approvals.get(request_id)
    assert req is not None
    return str(req.incident_id)


def test_url_verification_and_a_mention_answered_by_the_chat(make_daemon: Any, fake_slack: FakeSlack) -> None:
    d = make_daemon(fake_slack)
    with d.client() as c:
        challenge = json.dumps({"type": "url_verification", "token": "t", "challenge": "c0ffee"}).encode()
        r = c.post("/slack/events", content=challenge, headers={**sign(challenge), "Content-Type": "application/json"})
        assert r.status_code == 200 and "c0ffee" in r.text
        _first_approval(fake_slack)
        event = {"type": "event_callback", "team_id": "T0OPSMEDIC", "api_app_id": "A0OPSMEDIC",
                 "event_id": "Ev1", "event_time": int(time.time()),
                 "event": {"type": "app_mention", "user": APPROVER, "text": "<@U0OPSBOT> pending approvals",
                           "ts": "1700000000.000900", "channel": CHANNEL, "event_ts": "1700000000.000900"}}
        body = json.dumps(event).encode()
        r = c.post("/slack/events", content=body, headers={**sign(body), "Content-Type": "application/json"})
        assert r.status_code == 200
    if not d.service.chat_available():
        return
    replies = wait_until(lambda: fake_slack.thread(CHANNEL, "1700000000.000900"), 20.0, what="the chat's answer")
    assert "drain_node" in replies[0]["text"]
