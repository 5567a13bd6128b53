"""One summary of an incident, built in one place and served by the daemon and the console alike."""

from __future__ import annotations

from agents.state import IncidentState, TimelineEntry
from agents.summary import IncidentSummary, summarize_incident
from core.domain import Action, ActionResult, ApprovalRequest, Diagnosis, Incident, ResourceKind, Risk, Signal
from opsmedic.console.views import incident_summary

GPU = "node-1/gpu-3"


def _incident(*, title: str = "node-1/gpu-3 XID 79", source: str = "sandbox") -> Incident:
    sig = Signal(kind="gpu_xid", resource=GPU, resource_kind=ResourceKind.gpu, at_s=120.0, value=79.0, source=source)
    return Incident(id="inc-1", resource=GPU, resource_kind=ResourceKind.gpu, opened_at_s=125.0, signals=[sig],
                    title=title)


def _waiting_state(inc: Incident) -> IncidentState:
    cordon = Action(name="cordon_node", target="node-1")
    drain = Action(name="drain_node", target="node-1")
    return IncidentState(
        incident=inc,
        diagnosis=Diagnosis(root_cause="gpu_fell_off_bus", resource=GPU, confidence=0.9, summary="fell off the bus"),
        results=[ActionResult(action=cordon, ok=True, at_s=130.0),
                 ActionResult(action=drain, ok=True, at_s=131.0, dry_run=True)],
        approvals=[ApprovalRequest(id="apr-1", incident_id="inc-1", action=drain, digest="d", risk=Risk.high,
                                   rule="r", requested_at_s=131.0, expires_at_s=1931.0)],
        timeline=[TimelineEntry(at_s=131.0, agent="governor", text="drain_node needs approval")],
    )


def test_an_incident_waiting_for_approval() -> None:
    inc = _incident()
    s = summarize_incident(inc, _waiting_state(inc), {"kind": "approval"}, stalled=False)
    assert s == IncidentSummary(
        id="inc-1", title="node-1/gpu-3 XID 79", resource=GPU, resource_kind="gpu", opened_at_s=125.0,
        source="monitor", outcome="open", waiting="approval", root_cause="gpu_fell_off_bus",
        actions=["cordon_node@node-1"], approvals=["apr-1"], pending_approvals=["apr-1"], updated_at_s=131.0,
        last="drain_node needs approval", stalled=False)


def test_an_incident_before_its_first_checkpoint() -> None:
    inc = _incident(title="", source="alertmanager")
    s = summarize_incident(inc, None, None)
    assert (s.title, s.source, s.outcome, s.waiting, s.updated_at_s, s.last) == (
        "gpu node-1/gpu-3", "alertmanager", "open", None, 125.0, "")
    assert s.actions == s.approvals == s.pending_approvals == [] and s.stalled is None


def test_approvals_are_pending_only_while_the_graph_waits_for_them() -> None:
    inc = _incident()
    s = summarize_incident(inc, _waiting_state(inc), None)
    assert s.approvals == ["apr-1"] and s.pending_approvals == []


def test_the_console_serves_the_same_summary() -> None:
    inc = _incident()
    st = _waiting_state(inc)
    assert incident_summary(inc, st, {"kind": "approval"}) == \
        summarize_incident(inc, st, {"kind": "approval"}).model_dump(mode="json")
