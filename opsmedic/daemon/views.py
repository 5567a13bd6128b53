"""The daemon's read models: incidents, approvals and their stories, as the HTTP API, Slack and the console
show them.

Layer: interfaces (`opsmedic.daemon`); may import agents and tools. Called from HTTP handlers and Slack's
threads: every view reads copies of the driver's dictionaries and never takes the driver's lock, so reads
answer while a graph step runs.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from core.domain import ApprovalRequest, ApprovalStatus

if TYPE_CHECKING:
    from agents.driver import IncidentDriver
    from agents.state import IncidentState
    from opsmedic.daemon.graphs import IncidentGraphs
    from opsmedic.daemon.slack import ApprovalView, EscalationView
    from opsmedic.daemon.world import World


def clock_str(s: float) -> str:
    """A wall time as a UTC date and time, a simulated one as hours:minutes:seconds since the start."""
    if s > 1e9:
        return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(s))
    n = int(s)
    return f"{n // 3600:d}:{n % 3600 // 60:02d}:{n % 60:02d}"


class ReadModels:
    def __init__(self, driver: IncidentDriver, world: World, graphs: IncidentGraphs) -> None:
        self.driver = driver
        self.world = world
        self.graphs = graphs

    def story(self, st: IncidentState) -> list[str]:
        return [f"[{clock_str(e.at_s)}] {e.agent:<13} {e.text}" for e in st.timeline]

    def pending_approvals(self) -> list[ApprovalRequest]:
        """Pending requests of this world's incidents (a standby knows them from the checkpointer) and of
        chat requests; not those of other runs that share the database file."""
        prefix = self.world.thread_prefix
        known = set(self.driver.incidents) | {t[len(prefix):] for t in self.graphs.thread_ids()}
        return [r for r in self.driver.approvals.list(status="pending")
                if r.incident_id in known or r.incident_id.startswith("chat-")]

    def approval_view(self, request_id: str) -> ApprovalView | None:
        from opsmedic.daemon.slack import ApprovalView

        d = self.driver
        req = d.approvals.get(request_id)
        if req is None:
            return None
        st = d.states.get(req.incident_id)
        if st is None:
            return None
        executed = next((r for r in reversed(st.results) if r.action.digest() == req.digest), None)
        verified = None
        if executed is not None:
            verified = next((v for v in reversed(st.verifications)
                             if v.action is not None and v.action.digest() == req.digest and v.at_s >= executed.at_s),
                            None)
        rejected_by = None
        if req.status == ApprovalStatus.rejected:
            for e in d.audit.entries(incident_id=req.incident_id, kinds=["rejection"]):
                if e.payload.get("request_id") == request_id:
                    rejected_by = str(e.payload.get("by") or "") or None
        return ApprovalView(request=req, incident=st.incident, diagnosis=st.diagnosis, outcome=st.outcome,
                            executed=executed, verified=verified, rejected_by=rejected_by,
                            escalation=st.escalation, now_s=self.world.clock.now(),
                            wall_clock=self.world.kind != "sandbox", story=self.story(st))

    def escalation_view(self, incident_id: str) -> EscalationView | None:
        from opsmedic.daemon.slack import EscalationView

        st = self.driver.states.get(incident_id)
        if st is None or st.outcome != "escalated":
            return None
        return EscalationView(incident=st.incident, reason=st.escalation or "needs a human", story=self.story(st))

    def incident_summaries(self) -> list[dict[str, Any]]:
        from agents.summary import summarize_incident

        d = self.driver
        states, waiting, stalled = dict(d.states), dict(d.waiting), self.graphs.stalled
        out = [summarize_incident(inc, states.get(inc_id), waiting.get(inc_id),
                                  stalled=inc_id in stalled).model_dump(mode="json")
               for inc_id, inc in list(d.incidents.items())]
        out.sort(key=lambda x: float(x["opened_at_s"]), reverse=True)
        return out

    def incident_detail(self, inc_id: str) -> dict[str, Any] | None:
        d = self.driver
        inc = d.incidents.get(inc_id)
        if inc is None:
            return None
        st = d.states.get(inc_id)
        w = d.waiting.get(inc_id)
        approvals = []
        for a in (st.approvals if st is not None else []):
            fresh = d.approvals.get(a.id)
            approvals.append((fresh or a).model_dump(mode="json"))
        return {
            "id": inc_id,
            "incident": inc.model_dump(mode="json"),
            "outcome": st.outcome if st is not None else "open",
            "waiting": w,
            "diagnosis": st.diagnosis.model_dump(mode="json") if st is not None and st.diagnosis else None,
            "plan": st.plan.model_dump(mode="json") if st is not None and st.plan else None,
            "decisions": [x.model_dump(mode="json") for x in st.decisions] if st is not None else [],
            "approvals": approvals,
            "results": [x.model_dump(mode="json") for x in st.results] if st is not None else [],
            "verifications": [x.model_dump(mode="json") for x in st.verifications] if st is not None else [],
            "escalation": st.escalation if st is not None else None,
            "timeline": [x.model_dump(mode="json") for x in st.timeline] if st is not None else [],
            "audit": d.audit.story(inc_id),
        }
