"""What each kind of audit entry says: the payloads of the audit log, typed, with one parser.

Layer: engines (`policies`; imports core only). The audit log (`policies.audit`) stores an entry's payload
as canonical JSON and hashes those bytes; this module never writes and never changes what is stored. It
reads a payload back as the model of its entry's `kind`:

    observation, observation_recorded          the monitor's signals (agents.graph, agents.driver)
    corroboration                              alert claims checked against telemetry (agents.corroboration)
    diagnosis, plan, decision                  the agents' and the governor's outputs (agents.graph, chat)
    llm_diagnosis, llm_investigation, llm_plan what an LLM proposed and whether it was accepted (agents.llm)
    approval_request, approval, rejection,     the approval store's transitions (policies.approvals)
    approval_consumed, approval_refused, approval_expired
    execution, verification                    the backend's call and its check (agents.graph, chat)
    escalation, resolution                     how an incident ended (agents.graph)
    chat_question, chat_action_request         the chat's traffic (opsmedic.chat.service)

`parse_payload(kind, payload)` never raises: a kind this version does not know, or a payload that does not
fit its kind's model (an old or hand-edited log), parses to `UnknownPayload`, which keeps every field, so
that any log, however old, stays readable. Every model keeps fields it does not declare (`extra="allow"`),
and every declared field is optional: writers have added fields over time, and readers must not care.
Numbers keep the type they were stored with (an integer stays an integer), so that a read model built from
a payload shows the same JSON as the stored one.

`event_of(entry)` is `parse_payload` for an `AuditEntry`, remembered per payload: readers that walk the
whole log for every question (the chat, the console) pay for each entry's parse once.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any, ClassVar, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from core.domain import AuditEntry

Number = int | float  # a smart union: the stored type survives the parse


class _Record(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)


class ActionRef(_Record):
    """An action as a payload records it (`core.domain.Action` dumped): name, target and parameters."""

    name: str
    target: str | None = None
    params: dict[str, Any] = Field(default_factory=dict)

    @property
    def key(self) -> str:
        return f"{self.name}@{self.target}"


class SignalRecord(_Record):
    """A detector's signal as an observation records it (`core.domain.Signal` dumped)."""

    kind: str | None = None
    resource: str | None = None
    resource_kind: str | None = None
    at_s: Number | None = None
    value: Number | None = None
    threshold: Number | None = None
    detail: str | None = None
    labels: dict[str, Any] = Field(default_factory=dict)
    source: str | None = None


class PlanStepRecord(_Record):
    action: ActionRef | None = None


class AuditPayload(_Record):
    """The payload of one audit entry; `KINDS` are the entry kinds it is the model of."""

    KINDS: ClassVar[tuple[str, ...]] = ()

    @property
    def action_ref(self) -> ActionRef | None:
        """The action this entry is about, if it names one."""
        return None


class _ActionPayload(AuditPayload):
    action: ActionRef | None = None

    @property
    def action_ref(self) -> ActionRef | None:
        return self.action


class ObservationPayload(AuditPayload):
    KINDS = ("observation",)
    resource: str | None = None
    signals: list[SignalRecord] = Field(default_factory=list)


class ObservationRecordedPayload(AuditPayload):
    """A signal below an incident's threshold: recorded, not acted on."""

    KINDS = ("observation_recorded",)
    resource: str | None = None
    signal: SignalRecord | None = None


class CorroborationPayload(AuditPayload):
    KINDS = ("corroboration",)
    groundless: bool | None = None
    claims: list[dict[str, Any]] = Field(default_factory=list)
    trusted_signals: list[str] = Field(default_factory=list)


class DiagnosisPayload(AuditPayload):
    KINDS = ("diagnosis",)
    root_cause: str | None = None
    resource: str | None = None
    confidence: Number | None = None
    summary: str | None = None
    evidence: list[dict[str, Any]] = Field(default_factory=list)
    runbook_ids: list[str] = Field(default_factory=list)
    source: str | None = None


class RelatedRunbooksPayload(AuditPayload):
    """The runbooks related to a known cause beyond its own, found after the first decision."""

    KINDS = ("related_runbooks",)
    root_cause: str = ""
    runbook_ids: list[str] = Field(default_factory=list)


class PlanPayload(AuditPayload):
    KINDS = ("plan",)
    steps: list[PlanStepRecord] = Field(default_factory=list)
    rationale: str | None = None


class DecisionPayload(_ActionPayload):
    """The governor's decision (the chat adds who asked for it)."""

    KINDS = ("decision",)
    verdict: str | None = None
    rule: str | None = None
    risk: str | None = None
    reasons: list[str] = Field(default_factory=list)
    dry_run: bool | None = None
    requested_by: str | None = None


class LlmPayload(AuditPayload):
    KINDS = ("llm_diagnosis", "llm_investigation", "llm_plan")
    purpose: str | None = None
    model: str | None = None
    verdict: str | None = None
    accepted: bool | None = None
    reason: str | None = None
    error: str | None = None
    usage: dict[str, Any] | None = None


class ApprovalRequestPayload(_ActionPayload):
    KINDS = ("approval_request",)
    request_id: str | None = None
    digest: str | None = None
    risk: str | None = None
    rule: str | None = None
    approvers: list[str] = Field(default_factory=list)
    approvals_required: int | None = None
    expires_at_s: Number | None = None
    by: str | None = None


class ApprovalDecisionPayload(_ActionPayload):
    """A transition of an approval request: approved (by one approver), rejected, used, or refused."""

    KINDS = ("approval", "rejection", "approval_consumed", "approval_refused")
    op: str | None = None
    request_id: str | None = None
    by: str | None = None
    digest: str | None = None
    status: str | None = None
    approved_by: list[str] = Field(default_factory=list)
    approvals_required: int | None = None
    reason: str | None = None


class ApprovalExpiredPayload(_ActionPayload):
    KINDS = ("approval_expired",)
    request_id: str | None = None
    digest: str | None = None
    approved_by: list[str] = Field(default_factory=list)


class ExecutionPayload(_ActionPayload):
    KINDS = ("execution",)
    ok: bool | None = None
    changed: bool | None = None
    detail: str | None = None
    idempotency_key: str | None = None
    at_s: Number | None = None
    dry_run: bool | None = None


class VerificationPayload(_ActionPayload):
    KINDS = ("verification",)
    ok: bool | None = None
    detail: str | None = None
    at_s: Number | None = None


class EscalationPayload(AuditPayload):
    KINDS = ("escalation",)
    reason: str | None = None


class ResolutionPayload(AuditPayload):
    KINDS = ("resolution",)
    outcome: str | None = None
    actions: list[str] = Field(default_factory=list)


class ChatPayload(_ActionPayload):
    """A chat question, or an action requested in chat (with the governor's verdict on it)."""

    KINDS = ("chat_question", "chat_action_request")
    user: str | None = None
    role: str | None = None
    channel: str | None = None
    conversation: str | None = None
    question: str | None = None
    intent: str | None = None
    status: str | None = None
    answered_by: str | None = None
    cites: list[int] = Field(default_factory=list)
    action_key: str | None = None
    verdict: str | None = None


class UnknownPayload(AuditPayload):
    """A kind this version does not know, or a payload that does not fit its kind's model: every field kept."""

    @property
    def action_ref(self) -> ActionRef | None:
        a = (self.model_extra or {}).get("action")
        if isinstance(a, Mapping) and "name" in a:
            try:
                return ActionRef.model_validate(a)
            except ValidationError:
                return None
        return None


MODELS: dict[str, type[AuditPayload]] = {
    kind: model
    for model in (ObservationPayload, ObservationRecordedPayload, CorroborationPayload, DiagnosisPayload,
                  RelatedRunbooksPayload, PlanPayload, DecisionPayload, LlmPayload, ApprovalRequestPayload,
                  ApprovalDecisionPayload, ApprovalExpiredPayload, ExecutionPayload, VerificationPayload,
                  EscalationPayload, ResolutionPayload, ChatPayload)
    for kind in model.KINDS
}


def parse_payload(kind: str, payload: Mapping[str, Any]) -> AuditPayload:
    """The typed payload of an audit entry of `kind`; `UnknownPayload` when it does not fit. Never raises."""
    model = MODELS.get(kind)
    if model is not None:
        try:
            return model.model_validate(payload)
        except ValidationError:
            pass
    try:
        return UnknownPayload.model_validate(payload)
    except ValidationError:  # keys that are not strings: nothing a JSON log can hold
        return UnknownPayload()


# id(payload) -> (payload, its parse): holding the payload keeps its id from being reused, and an entry's
# payload is never mutated once read (the log is append-only)
_PARSED: dict[int, tuple[dict[str, Any], str, AuditPayload]] = {}
_PARSED_LOCK = threading.Lock()
MAX_REMEMBERED = 200_000


def event_of(entry: AuditEntry) -> AuditPayload:
    """`parse_payload(entry.kind, entry.payload)`, parsed once per payload object."""
    key = id(entry.payload)
    hit = _PARSED.get(key)
    if hit is not None and hit[0] is entry.payload and hit[1] == entry.kind:
        return hit[2]
    parsed = parse_payload(entry.kind, entry.payload)
    with _PARSED_LOCK:
        if len(_PARSED) >= MAX_REMEMBERED:
            _PARSED.clear()
        _PARSED[key] = (entry.payload, entry.kind, parsed)
    return parsed


P = TypeVar("P", bound=AuditPayload)


def payload_as(entry: AuditEntry, model: type[P]) -> P:
    """`entry`'s payload as `model`: its parse when that is a `model`, else an empty `model` (every field
    unset), so that a reader of an odd entry sees absent facts, never an exception."""
    event = event_of(entry)
    return event if isinstance(event, model) else model()


__all__ = ["MODELS", "ActionRef", "ApprovalDecisionPayload", "ApprovalExpiredPayload", "ApprovalRequestPayload",
           "AuditPayload", "ChatPayload", "CorroborationPayload", "DecisionPayload", "DiagnosisPayload",
           "EscalationPayload", "ExecutionPayload", "LlmPayload", "ObservationPayload", "ObservationRecordedPayload",
           "PlanPayload", "PlanStepRecord", "ResolutionPayload", "SignalRecord", "UnknownPayload",
           "VerificationPayload", "event_of", "parse_payload", "payload_as"]
