"""policies.audit_events: every payload the writers put in the audit log reads back as its kind's model;
an unknown kind or an odd payload reads as `UnknownPayload`, never an exception; reading never changes
what is stored or hashed."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.domain import (
    ROOT_CAUSES,
    Action,
    ActionPlan,
    ActionResult,
    ApprovalRequest,
    Diagnosis,
    PlannedAction,
    PolicyDecision,
    ResourceKind,
    Risk,
    Signal,
    Verdict,
    VerificationResult,
)
from core.errors import ApprovalError
from policies import ApprovalStore, AuditLog
from policies.audit_events import (
    MODELS,
    ApprovalDecisionPayload,
    ApprovalExpiredPayload,
    ApprovalRequestPayload,
    DecisionPayload,
    DiagnosisPayload,
    EscalationPayload,
    ExecutionPayload,
    ObservationPayload,
    PlanPayload,
    ResolutionPayload,
    UnknownPayload,
    VerificationPayload,
    event_of,
    parse_payload,
    payload_as,
)

DRAIN = Action(name="drain_node", target="node-2")


def _request(id_: str, expiry: float = 1700.0) -> ApprovalRequest:
    return ApprovalRequest(id=id_, incident_id="inc-1", action=DRAIN, digest=DRAIN.digest(), risk=Risk.high,
                           rule="actions.drain_node.approval", approvers=["U1", "U2"], requested_at_s=100.0,
                           expires_at_s=100.0 + expiry)


@pytest.fixture()
def log(tmp_path: Path) -> AuditLog:
    return AuditLog(tmp_path / "opsmedic.db")


def test_the_approval_stores_entries_read_back_typed(tmp_path: Path, log: AuditLog) -> None:
    store = ApprovalStore(tmp_path / "opsmedic.db")
    try:
        store.request(_request("apr-1"), requested_by="opsmedic", audit=log)
        store.approve("apr-1", by="U1", digest=DRAIN.digest(), now_s=200.0, audit=log)
        store.consume("apr-1", digest=DRAIN.digest(), now_s=210.0, audit=log)
        store.request(_request("apr-2"), requested_by="opsmedic", audit=log)
        with pytest.raises(ApprovalError):
            store.approve("apr-2", by="opsmedic", digest=DRAIN.digest(), now_s=220.0, audit=log)
        store.reject("apr-2", by="U2", reason="not now", digest=DRAIN.digest(), now_s=230.0, audit=log)
        store.request(_request("apr-3", expiry=10.0), requested_by="opsmedic", audit=log)
        store.expire_due(5000.0, audit=log)
    finally:
        store.close()
    events = {e.kind: event_of(e) for e in log.entries()}
    assert set(events) == {"approval_request", "approval", "approval_consumed", "approval_refused", "rejection",
                           "approval_expired"}
    req = events["approval_request"]
    assert isinstance(req, ApprovalRequestPayload) and req.approvers == ["U1", "U2"] and req.by == "opsmedic"
    assert req.action is not None and req.action.key == "drain_node@node-2"
    approval, rejection = events["approval"], events["rejection"]
    assert isinstance(approval, ApprovalDecisionPayload) and approval.by == "U1" and approval.approved_by == ["U1"]
    assert isinstance(rejection, ApprovalDecisionPayload) and rejection.by == "U2" and rejection.status == "rejected"
    refused = events["approval_refused"]
    assert isinstance(refused, ApprovalDecisionPayload) and refused.op == "approve" and refused.reason
    assert isinstance(events["approval_expired"], ApprovalExpiredPayload)


def test_the_graphs_payloads_read_back_typed(log: AuditLog) -> None:
    sig = Signal(kind="gpu_xid", resource="node-2/gpu-0", resource_kind=ResourceKind.gpu, at_s=12.0, value=79.0,
                 detail="XID 79", labels={"xid": "79"})
    diag = Diagnosis(root_cause=ROOT_CAUSES[0], resource="node-2/gpu-0", confidence=0.9, summary="gone",
                     runbook_ids=["gpu-xid-79"])
    plan = ActionPlan(incident_id="inc-1", steps=[PlannedAction(action=DRAIN)], rationale="runbook gpu-xid-79")
    decision = PolicyDecision(action=DRAIN, verdict=Verdict.needs_approval, risk=Risk.high, rule="r1", reasons=["high"])
    result = ActionResult(action=DRAIN, ok=True, detail="drained", idempotency_key="k", at_s=30.0)
    check = VerificationResult(action=DRAIN, ok=True, detail="no pods", at_s=40.0)
    written = [("observation", {"resource": sig.resource, "signals": [sig.model_dump()]}),
               ("diagnosis", diag.model_dump()), ("plan", plan.model_dump()), ("decision", decision.model_dump()),
               ("execution", result.model_dump()), ("verification", check.model_dump()),
               ("escalation", {"reason": "rejected"}), ("resolution", {"outcome": "resolved", "actions": ["a"]})]
    for kind, payload in written:
        log.append(kind, payload, incident_id="inc-1", sim_s=1.0)
    entries = log.entries()
    obs = payload_as(entries[0], ObservationPayload)
    assert obs.signals[0].labels == {"xid": "79"} and obs.signals[0].at_s == 12.0
    assert payload_as(entries[1], DiagnosisPayload).runbook_ids == ["gpu-xid-79"]
    steps = payload_as(entries[2], PlanPayload).steps
    assert [s.action.key for s in steps if s.action is not None] == ["drain_node@node-2"]
    assert payload_as(entries[3], DecisionPayload).verdict == "needs_approval"
    assert payload_as(entries[4], ExecutionPayload).ok is True
    assert payload_as(entries[5], VerificationPayload).detail == "no pods"
    assert payload_as(entries[6], EscalationPayload).reason == "rejected"
    assert payload_as(entries[7], ResolutionPayload).actions == ["a"]
    assert not any(isinstance(event_of(e), UnknownPayload) for e in entries)


def test_unknown_kinds_and_odd_payloads_read_as_unknown_with_every_field_kept() -> None:
    odd = parse_payload("leader_elected", {"holder": "pod-a", "term": 3})
    assert isinstance(odd, UnknownPayload) and odd.model_extra == {"holder": "pod-a", "term": 3}
    broken = parse_payload("execution", {"action": "drain_node@node-1", "ok": "maybe"})
    assert isinstance(broken, UnknownPayload) and broken.action_ref is None
    legacy = parse_payload("approval_granted", {"action": {"name": "drain_node", "target": "node-1"}})
    assert legacy.action_ref is not None and legacy.action_ref.key == "drain_node@node-1"
    assert isinstance(parse_payload("diagnosis", {}), DiagnosisPayload)  # every field optional


def test_numbers_keep_their_stored_type() -> None:
    obs = parse_payload("observation", {"signals": [{"at_s": 5, "value": 1.5}]})
    assert isinstance(obs, ObservationPayload)
    assert type(obs.signals[0].at_s) is int and type(obs.signals[0].value) is float


def test_every_model_is_registered_once() -> None:
    assert len(MODELS) == sum(len(m.KINDS) for m in set(MODELS.values()))


def test_reading_changes_nothing_stored_or_hashed(log: AuditLog) -> None:
    log.append("decision", PolicyDecision(action=DRAIN, verdict=Verdict.allow, risk=Risk.low, rule="r").model_dump(),
               incident_id="inc-1", sim_s=1.0)
    log.append("mystery", {"x": [1, 2.5, None]}, incident_id="inc-1", sim_s=2.0)
    before = [(e.payload, e.hash) for e in log.entries()]
    for e in log.entries():
        event_of(e)
    assert [(e.payload, e.hash) for e in log.entries()] == before
    assert log.verify().ok
