"""Requests to act from the chat go through the real governor: roles first, then the PolicyEngine; a
needs_approval becomes a stored ApprovalRequest that the requester can never approve; an allow runs only
through a provided backend with the ledger, else it is queued for the daemon. The chat never executes
directly, and the LLM plays no part in requests to act."""

from __future__ import annotations

from pathlib import Path

import pytest
from chat_support import LiveCluster, RecordingBackend

from core.domain import ApprovalStatus
from core.errors import ApprovalError
from opsmedic.chat.actions import execute_approved
from opsmedic.chat.records import Records
from opsmedic.chat.roles import Roles
from opsmedic.chat.service import ChatContext, ChatReply, answer
from policies.approvals import ApprovalStore
from policies.audit import AuditLog
from policies.engine import PolicyEngine
from policies.model import parse_policy_text
from tools.ledger import ExecutionLedger

OPS = Roles(operators=frozenset({"alice"}))


def ask(db: Path, text: str, user: str = "alice", **kw: object) -> ChatReply:
    return answer(text, user, ChatContext(db_path=db, roles=OPS, **kw))  # type: ignore[arg-type]


def test_viewers_cannot_request_actions(xid79_db: Path) -> None:
    reply = ask(xid79_db, "drain node-3", user="bob")
    assert reply.status == "refused" and "OPSMEDIC_CHAT_OPERATORS" in reply.text
    with Records(xid79_db) as r:
        assert r.pending_approvals() == []
        last = r.entries()[-1]
    assert last.kind == "chat_action_request" and last.payload["status"] == "refused"


def test_drain_needs_approval_and_the_requester_cannot_approve(xid79_db: Path, live: LiveCluster) -> None:
    reply = ask(xid79_db, "please drain node-3", telemetry=live)
    assert reply.status == "needs_approval", reply.text
    assert reply.action == "drain_node@node-3" and reply.approval_id
    assert "rule actions.drain_node.approval" in reply.text and "cannot approve it yourself" in reply.text
    with ApprovalStore(xid79_db) as store, AuditLog(xid79_db) as audit:
        req = store.get(reply.approval_id)
        assert req is not None and req.status == ApprovalStatus.pending and req.incident_id.startswith("chat-")
        assert store.requester(req.id) == "alice"
        with pytest.raises(ApprovalError, match="cannot approve"):
            store.approve(req.id, by="alice", now_s=req.requested_at_s, audit=audit)
        kinds = [e.kind for e in audit.entries(incident_id=req.incident_id)]
        assert kinds == ["decision", "approval_request", "approval_refused"]
        action_entry = audit.entries(kinds=["chat_action_request"])[-1]
        assert action_entry.payload["verdict"] == "needs_approval"
        assert action_entry.payload["approval_id"] == req.id and action_entry.payload["user"] == "alice"
        assert audit.verify().ok


def test_a_requester_who_is_an_approver_still_cannot_approve(xid79_db: Path, live: LiveCluster) -> None:
    policy = parse_policy_text("""
version: 1
defaults: {approvers: [alice, carol]}
actions:
  drain_node: {risk: high, approval: true, approvers: [alice, carol]}
""")
    reply = ask(xid79_db, "drain node-3", telemetry=live, engine=PolicyEngine(policy))
    assert reply.status == "needs_approval"
    with ApprovalStore(xid79_db) as store:
        req = store.get(reply.approval_id or "")
        assert req is not None and req.approvers == ["carol"]  # the engine drops the requester
        with pytest.raises(ApprovalError):
            store.approve(req.id, by="alice", now_s=req.requested_at_s)


def test_an_approved_chat_request_runs_once_through_the_daemon_path(xid79_db: Path, live: LiveCluster,
                                                                    backend: RecordingBackend) -> None:
    reply = ask(xid79_db, "drain node-3", telemetry=live)
    assert reply.approval_id
    ledger = ExecutionLedger(xid79_db)
    ctx = ChatContext(db_path=xid79_db, roles=OPS, telemetry=live, backend=backend, ledger=ledger)
    with Records(xid79_db) as records:
        with pytest.raises(ApprovalError, match="not approved yet"):
            execute_approved(reply.approval_id, records, ctx)
        req = records.approvals.get(reply.approval_id)
        assert req is not None
        records.approvals.approve(req.id, by="eval-approver", now_s=req.requested_at_s, audit=records.audit)
        result = execute_approved(reply.approval_id, records, ctx)
        assert result.ok and backend.calls == [("drain_node@node-3", backend.calls[0][1])]
        with pytest.raises(ApprovalError, match="already used"):
            execute_approved(reply.approval_id, records, ctx)
    ledger.close()
    assert len(backend.calls) == 1


def test_without_live_telemetry_the_breaker_errs_on_the_safe_side(xid79_db: Path) -> None:
    """node-1 is already out (the run cordoned it); with the cluster size unknown, a second node is refused."""
    reply = ask(xid79_db, "drain node-3")
    assert reply.status == "denied" and "circuit_breaker.nodes" in reply.text
    assert "no live view of the cluster" in reply.text


def test_cooldown_is_enforced_from_the_audit_history(xid79_db: Path, live: LiveCluster) -> None:
    reply = ask(xid79_db, "drain node-1", telemetry=live)
    assert reply.status == "denied" and "actions.drain_node.cooldown" in reply.text


def test_allowed_actions_are_queued_without_an_executor(xid79_db: Path, backend: RecordingBackend) -> None:
    reply = ask(xid79_db, "uncordon node-1")
    assert reply.status == "queued" and "rule default.allow" in reply.text and backend.calls == []


def test_allowed_actions_run_through_the_backend_and_ledger(xid79_db: Path, live: LiveCluster,
                                                            backend: RecordingBackend) -> None:
    ledger = ExecutionLedger(xid79_db)
    reply = ask(xid79_db, "uncordon node-1", telemetry=live, backend=backend, ledger=ledger)
    ledger.close()
    assert reply.status == "executed", reply.text
    assert [c[0] for c in backend.calls] == ["uncordon_node@node-1"]
    with AuditLog(xid79_db) as audit:
        kinds = [e.kind for e in audit.entries()[-3:]]
    assert kinds == ["decision", "execution", "chat_action_request"]


@pytest.mark.parametrize(("text", "expect"), [
    ("drain node-1/gpu-3", "acts on a node"),
    ("reset node-1", "acts on a GPU"),
    ("restart unicorn-pod-7", "I don't know 'unicorn-pod-7'"),
    ("drain", "on what?"),
])
def test_invalid_requests_request_nothing(xid79_db: Path, text: str, expect: str) -> None:
    reply = ask(xid79_db, text)
    assert reply.status == "invalid" and expect in reply.text
    with Records(xid79_db) as r:
        assert r.pending_approvals() == []


def test_rollback_with_live_telemetry_targets_the_previous_version(xid79_db: Path, live: LiveCluster) -> None:
    reply = ask(xid79_db, "roll back fraud-model", telemetry=live)
    assert reply.action == "rollback_model@fraud-model" and reply.status == "queued"


def test_the_chat_cannot_approve(xid79_db: Path, paused_db: Path) -> None:
    with Records(paused_db) as r:
        pending = r.pending_approvals()[0]
    reply = ask(paused_db, f"approve {pending.id}")
    assert reply.status == "refused" and "can't approve" in reply.text
    with Records(paused_db) as r:
        assert r.approvals.get(pending.id).status == ApprovalStatus.pending  # type: ignore[union-attr]
