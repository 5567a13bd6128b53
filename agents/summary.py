"""One incident in one line of a list: the summary the daemon's `/api/incidents` and the console both serve.

Layer: agents (imports `core.domain` and `agents.state`). Built in one place, from what the incident runtime
holds — the incident, its graph state (None before the first checkpoint) and, while its graph is paused,
the interrupt payload — so that every interface lists an incident with the same keys and meanings.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, Field

from agents.interrupts import ApprovalWait, SettleWait
from agents.state import IncidentState, Outcome
from core.domain import Incident


class IncidentSummary(BaseModel):
    id: str
    title: str  # the incident's title, or its resource when it has none
    resource: str
    resource_kind: str
    opened_at_s: float
    source: str  # "alertmanager" when an Alertmanager alert raised it, else "monitor"
    outcome: Outcome
    waiting: str | None = None  # what the paused graph waits for ("approval", ...), None when it runs or ended
    root_cause: str | None = None
    actions: list[str] = Field(default_factory=list)  # actions that ran and succeeded (dry runs excluded)
    approvals: list[str] = Field(default_factory=list)  # every approval request of the incident
    pending_approvals: list[str] = Field(default_factory=list)  # the requests it waits on now
    updated_at_s: float  # the time of the latest timeline entry (the opening when there is none)
    last: str = ""  # the latest timeline entry's text
    stalled: bool | None = None  # its graph failed to advance and waits for a retry (None: the reader can't tell)


def summarize_incident(inc: Incident, st: IncidentState | None,
                       waiting: ApprovalWait | SettleWait | Mapping[str, Any] | None, *,
                       stalled: bool | None = None) -> IncidentSummary:
    """`waiting` is the paused graph's interrupt: typed (`agents.interrupts`), or as checkpointed."""
    last = st.timeline[-1] if st is not None and st.timeline else None
    if isinstance(waiting, ApprovalWait | SettleWait):
        waits_for: str | None = waiting.kind
    else:
        waits_for = waiting.get("kind") if waiting is not None else None
    return IncidentSummary(
        id=inc.id, title=inc.title or f"{inc.resource_kind} {inc.resource}", resource=inc.resource,
        resource_kind=inc.resource_kind.value, opened_at_s=inc.opened_at_s,
        source="alertmanager" if any(s.source == "alertmanager" for s in inc.signals) else "monitor",
        outcome=st.outcome if st is not None else "open",
        waiting=waits_for,
        root_cause=st.diagnosis.root_cause if st is not None and st.diagnosis is not None else None,
        actions=[r.action.key for r in st.results if r.ok and not r.dry_run] if st is not None else [],
        approvals=[a.id for a in st.approvals] if st is not None else [],
        pending_approvals=[a.id for a in st.approvals] if st is not None and waits_for == "approval" else [],
        updated_at_s=last.at_s if last is not None else inc.opened_at_s,
        last=last.text if last is not None else "",
        stalled=stalled,
    )
