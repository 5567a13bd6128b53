"""The per-incident graph state and the dependencies nodes receive through LangGraph's runtime context.

Layer: agents. State is a pydantic model (checkpointed after every node); dependencies are not state:
they arrive as `Runtime[Deps]` so tests and the eval swap the clock, the telemetry, the backends and the
stores without globals.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from pydantic import BaseModel, Field

from core.clock import Clock as Clock  # re-exported: `Deps.clock` and `agents.recovery` type a clock with it
from core.domain import (
    ActionPlan,
    ActionResult,
    ApprovalRequest,
    Diagnosis,
    Incident,
    PolicyDecision,
    VerificationResult,
)
from knowledge.runbooks import Runbook
from policies.approvals import ApprovalStore
from policies.audit import AuditLog
from policies.engine import HistoryEntry, PolicyEngine
from tools.backend import ActionBackend, TelemetrySource
from tools.ledger import ExecutionLedger

Outcome = Literal["open", "resolved", "escalated", "failed"]


class TimelineEntry(BaseModel):
    at_s: float
    agent: Literal["monitor", "diagnostician", "remediator", "governor", "executor", "verifier", "human"]
    text: str


class IncidentState(BaseModel):
    incident: Incident
    diagnosis: Diagnosis | None = None
    plan: ActionPlan | None = None
    cursor: int = 0
    decision: PolicyDecision | None = None
    decisions: list[PolicyDecision] = Field(default_factory=list)
    approval: ApprovalRequest | None = None
    approvals: list[ApprovalRequest] = Field(default_factory=list)
    results: list[ActionResult] = Field(default_factory=list)
    verifications: list[VerificationResult] = Field(default_factory=list)
    verify_started_s: float | None = None
    attempts: int = 0
    outcome: Outcome = "open"
    escalation: str | None = None
    timeline: list[TimelineEntry] = Field(default_factory=list)
    # the query for the runbooks related to a known cause beyond its own, looked up once the first decision
    # is made (`agents.graph._relate`); None when done or not needed
    related_query: str | None = None


class RunbookSource(Protocol):
    def for_cause(self, root_cause: str, hint: str | None = None) -> Runbook | None: ...

    def search(self, query: str, *, top_k: int = 3, root_cause: str | None = None) -> list[tuple[Runbook, float]]:
        ...


@dataclass
class Deps:
    """What every node may use. Built once per process (daemon) or per scenario (eval)."""

    clock: Clock
    telemetry: TelemetrySource
    backend: ActionBackend
    engine: PolicyEngine
    approvals: ApprovalStore
    audit: AuditLog
    runbooks: RunbookSource
    ledger: ExecutionLedger
    history: list[HistoryEntry] = field(default_factory=list)
    requester: str = "opsmedic"
    max_attempts: int = 2
    # multiplies each action's settle and deadline time and the verify poll interval (Settings.settle_scale):
    # 1 in production; a test cluster or demo shortens the wall seconds it waits for effects to show
    settle_scale: float = 1.0
    # Optional LLM reasoning (agents.llm): proposes a Diagnosis / ActionPlan that is validated against the
    # deterministic result and the registry before use; None = deterministic only (the default).
    llm: Any | None = None
    narrate: Callable[[str, TimelineEntry], None] | None = None
    # wall-clock seconds of the first governed decision per incident (decision latency)
    first_decision_wall: dict[str, float] = field(default_factory=dict)
    started_wall: dict[str, float] = field(default_factory=dict)

    def mark_decision(self, incident_id: str) -> None:
        self.first_decision_wall.setdefault(incident_id, time.perf_counter())
