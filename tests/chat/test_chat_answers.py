"""Read questions, answered from the real state of a database that a scenario run produced: incidents and
their story, why an action was taken (rules and audit entries cited), health, approvals, runbooks."""

from __future__ import annotations

import re
from pathlib import Path

from chat_support import LiveCluster

from opsmedic.chat.records import Records
from opsmedic.chat.roles import Roles
from opsmedic.chat.service import ChatContext, answer
from opsmedic.chat.store import ConversationStore
from policies.audit import AuditLog


def ask(db: Path, question: str, user: str = "bob", **kw: object) -> str:
    ctx = ChatContext(db_path=db, roles=Roles(), **kw)  # type: ignore[arg-type]
    return answer(question, user, ctx).text


def cited(text: str) -> set[int]:
    return {int(n) for n in re.findall(r"#(\d+)", text)}


def entry_kinds(db: Path) -> dict[int, str]:
    with AuditLog(db) as log:
        return {e.seq: e.kind for e in log.entries()}


def test_incidents_and_story(xid79_db: Path, incident_id: str) -> None:
    text = ask(xid79_db, "open incidents")
    assert text.startswith("No open incidents.") and incident_id in text and "gpu_fell_off_bus -> resolved" in text
    story = ask(xid79_db, f"what happened to {incident_id}?")
    kinds = entry_kinds(xid79_db)
    for seq in cited(story):
        assert seq in kinds  # every citation is a real audit entry
    assert "diagnosed gpu_fell_off_bus at node-1/gpu-3" in story
    assert "eval-approver approved drain_node@node-1" in story
    # a unique prefix is enough, and with no id the latest incident is told
    assert ask(xid79_db, f"what happened to {incident_id[:10]}") .startswith(incident_id)
    assert ask(xid79_db, "what happened to inc-nope-9").startswith("I find no incident")


def test_why_is_node_cordoned_cites_the_rule_and_the_entries(xid79_db: Path) -> None:
    text = ask(xid79_db, "why is node-1 cordoned?")
    kinds = entry_kinds(xid79_db)
    assert "rule default.allow" in text and "gpu_fell_off_bus" in text
    assert {kinds[s] for s in cited(text)} >= {"execution", "diagnosis", "decision", "plan", "verification"}


def test_why_drained_names_the_approval(xid79_db: Path) -> None:
    text = ask(xid79_db, "why was node-1 drained?")
    assert "rule actions.drain_node.approval" in text and "eval-approver approved" in text
    assert "was used (once)" in text


def test_why_not(xid79_db: Path) -> None:
    text = ask(xid79_db, "why wasn't node-1/gpu-3 reset?")
    assert "has not done reset_gpu" in text and "never proposed" in text
    assert "no such action" in ask(xid79_db, "why is node-3 cordoned?")


def test_status_from_the_audit_log_and_live(xid79_db: Path, live: LiveCluster) -> None:
    node = ask(xid79_db, "status of node-1")
    assert "out of service" in node and "cordon_node@node-1" in node and "No live telemetry" in node
    model = ask(xid79_db, "status of fraud-model")
    assert "No incident in the audit log involves fraud-model" in model
    live_model = ask(xid79_db, "status of fraud-model", telemetry=live)
    assert "live: fraud-model serves v3" in live_model and "within its SLO" in live_model
    assert "live: node-2 is Ready" in ask(xid79_db, "how is node-2?", telemetry=live)


def test_pending_approvals(xid79_db: Path, paused_db: Path) -> None:
    assert ask(xid79_db, "pending approvals").startswith("No approval is pending. Earlier requests: 1 consumed")
    text = ask(paused_db, "pending approvals")
    assert "1 approval(s) pending" in text and "drain_node@node-1" in text and "requested by opsmedic" in text
    story = ask(paused_db, "what happened?")
    assert "waiting for approval of drain_node@node-1" in story
    assert "Now: its graph is paused until approval apr-" in story  # read from the LangGraph checkpoint


def test_runbooks(xid79_db: Path) -> None:
    text = ask(xid79_db, "what does the runbook for XID 79 say?")
    assert text.startswith("Runbook gpu-xid79-fell-off-bus") and "drain_node on the node (risk high)" in text
    assert ask(xid79_db, "runbook for thermal throttling").startswith("Runbook gpu-thermal-throttle")
    assert ask(xid79_db, "runbook for data_drift").startswith("Runbook data-drift-retrain")


def test_unknown_without_llm_asks_a_clarifying_question_not_the_help(xid79_db: Path) -> None:
    from opsmedic.chat.intents import HELP_TEXT

    text = ask(xid79_db, "tell me a joke")
    assert text.startswith("I'm not sure what you're asking. Did you mean '") and HELP_TEXT not in text


def test_questions_are_audited_and_stored(xid79_db: Path) -> None:
    before = len(entry_kinds(xid79_db))
    ctx = ChatContext(db_path=xid79_db, roles=Roles(), channel="slack", conversation="slack:C1:t1")
    reply = answer("why is node-1 cordoned?", "U42", ctx)
    with AuditLog(xid79_db) as log:
        entries = log.entries()
        assert log.verify().ok
    assert len(entries) == before + 1
    last = entries[-1]
    assert last.kind == "chat_question" and last.seq == reply.audit_seq
    assert last.payload["user"] == "U42" and last.payload["intent"] == "why" and last.payload["channel"] == "slack"
    assert last.payload["cites"] == reply.cites and reply.cites
    store = ConversationStore(xid79_db)
    turns = store.history("slack:C1:t1")
    store.close()
    assert [t.role for t in turns] == ["user", "assistant"] and turns[1].meta["audit_seq"] == reply.audit_seq


def test_unknown_users_are_refused_when_viewers_are_listed(xid79_db: Path) -> None:
    ctx = ChatContext(db_path=xid79_db, roles=Roles(viewers=frozenset({"bob"})))
    reply = answer("open incidents", "mallory", ctx)
    assert reply.status == "refused" and "not allowed" in reply.text
    with Records(xid79_db) as r:
        assert r.entries()[-1].payload["status"] == "refused"
