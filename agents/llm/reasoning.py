"""The entry points the graph calls: `llm_diagnose`, `llm_plan`, `llm_investigate` — ask, validate,
record the verdict. Never raise; anything unusable falls back to the deterministic result.

Layer: agents (`agents.llm`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from agents import prompts
from agents.llm.client import Llm
from agents.llm.metrics import LLM_PROPOSALS
from agents.llm.outcomes import LlmOutcome, LlmUsage
from agents.llm.proposals import DiagnosisProposal, InvestigationProposal, PlanProposal
from agents.llm.read_tools import RunbookSourceLike, read_tools
from agents.llm.tool_loop import run_tool_loop
from agents.llm.validation import validate_diagnosis, validate_investigation, validate_plan
from core.domain import (
    ActionPlan,
    ClusterSnapshot,
    Diagnosis,
    Incident,
)
from knowledge.runbooks import Runbook

if TYPE_CHECKING:
    from agents.diagnostician import Finding



def llm_investigate(llm: Llm | None, incident: Incident, diagnosis: Diagnosis, snapshot: ClusterSnapshot,
                    deterministic_plan: ActionPlan, runbooks: RunbookSourceLike | None = None
                    ) -> LlmOutcome[ActionPlan]:
    """For an `unknown` incident: the model investigates with the read tools and proposes a hypothesis and a
    plan of whitelisted actions. Validated here; the governor then requires approval for every step (the
    plan is `proposed_by="model"`). Never raises; anything unusable falls back to the deterministic plan."""
    if llm is None:
        return LlmOutcome("investigation", "-", False, "no LLM configured")
    usage = LlmUsage()
    nearest, _ = _cited_runbooks(runbooks, diagnosis.runbook_ids, diagnosis.root_cause)
    result = run_tool_loop(
        llm, purpose="investigation", system=prompts.investigate_system(llm.config.max_steps),
        user=prompts.investigate_user(incident, diagnosis, snapshot, nearest),
        tools=read_tools(snapshot, runbooks), submit_name="submit_investigation", schema=InvestigationProposal,
        usage=usage)
    if result.proposal is None:
        return _record(LlmOutcome("investigation", llm.model, False, result.error or "no answer", raw=result.raw,
                                  error=result.error, usage=usage))
    plan, reason = validate_investigation(result.proposal, deterministic_plan, snapshot, incident, llm.model)
    return _record(LlmOutcome("investigation", llm.model, plan is not None, reason, proposed=plan,
                              raw=result.raw, usage=usage))


def _record(outcome: LlmOutcome[Any]) -> LlmOutcome[Any]:
    LLM_PROPOSALS.labels(outcome.purpose, outcome.verdict).inc()
    return outcome


def _cited_runbooks(runbooks: RunbookSourceLike | Sequence[Runbook] | None, ids: Sequence[str],
                    root_cause: str) -> tuple[list[Runbook], set[str] | None]:
    """The runbooks to show the model, and the ids it may cite (None: cannot tell, accept any)."""
    if runbooks is None:
        return [], None
    if isinstance(runbooks, Sequence):
        return list(runbooks), {r.id for r in runbooks}
    shown: list[Runbook] = []
    primary = runbooks.for_cause(root_cause, ids[0] if ids else None)
    if primary is not None:
        shown.append(primary)
    known: set[str] | None = None
    all_fn = getattr(runbooks, "all", None)
    if callable(all_fn):
        catalogue = list(all_fn())
        known = {r.id for r in catalogue}
        by_id = {r.id: r for r in catalogue}
        shown.extend(by_id[i] for i in ids if i in by_id and by_id[i] not in shown)
    return shown, known


def llm_diagnose(llm: Llm | None, incident: Incident, snapshot: ClusterSnapshot, finding: Finding,
                 runbooks: RunbookSourceLike | Sequence[Runbook] | None,
                 deterministic: Diagnosis | None = None) -> LlmOutcome[Diagnosis]:
    """Ask the LLM for a diagnosis and validate it against the deterministic one. Never raises.

    `runbooks` is the graph's runbook source (`deps.runbooks`) or a list of runbooks; `deterministic` is
    the diagnosis the rules made from `finding` (built here with the primary runbook when not given).
    """
    if deterministic is None:
        from agents.diagnostician import to_diagnosis

        primary = None
        if runbooks is not None and not isinstance(runbooks, Sequence):
            primary = runbooks.for_cause(finding.root_cause, finding.runbook_hint)
        deterministic = to_diagnosis(finding, [primary.id] if primary is not None else [])
    if llm is None:
        return LlmOutcome("diagnosis", "-", False, "no LLM configured")
    usage = LlmUsage()
    shown, known = _cited_runbooks(runbooks, deterministic.runbook_ids, deterministic.root_cause)
    source = runbooks if runbooks is not None and not isinstance(runbooks, Sequence) else None
    result = run_tool_loop(
        llm, purpose="diagnosis", system=prompts.diagnose_system(llm.config.max_steps),
        user=prompts.diagnose_user(incident, snapshot, deterministic, shown),
        tools=read_tools(snapshot, source), submit_name="submit_diagnosis", schema=DiagnosisProposal,
        usage=usage)
    if result.proposal is None:
        return _record(LlmOutcome("diagnosis", llm.model, False, result.error or "no answer", raw=result.raw,
                                  error=result.error, usage=usage))
    diag, reason = validate_diagnosis(result.proposal, deterministic, snapshot, incident, known)
    return _record(LlmOutcome("diagnosis", llm.model, diag is not None, reason, proposed=diag, raw=result.raw,
                              usage=usage))


def llm_plan(llm: Llm | None, incident: Incident, diagnosis: Diagnosis, runbook: Runbook | None,
             snapshot: ClusterSnapshot, deterministic_plan: ActionPlan,
             runbooks: RunbookSourceLike | None = None) -> LlmOutcome[ActionPlan]:
    """Ask the LLM for a plan and validate it against the runbook and the deterministic plan. Never raises."""
    if llm is None:
        return LlmOutcome("plan", "-", False, "no LLM configured")
    usage = LlmUsage()
    result = run_tool_loop(
        llm, purpose="plan", system=prompts.plan_system(llm.config.max_steps),
        user=prompts.plan_user(incident, diagnosis, runbook, snapshot, deterministic_plan),
        tools=read_tools(snapshot, runbooks), submit_name="submit_plan", schema=PlanProposal, usage=usage)
    if result.proposal is None:
        return _record(LlmOutcome("plan", llm.model, False, result.error or "no answer", raw=result.raw,
                                  error=result.error, usage=usage))
    plan, reason = validate_plan(result.proposal, deterministic_plan, runbook, snapshot, incident)
    return _record(LlmOutcome("plan", llm.model, plan is not None, reason, proposed=plan, raw=result.raw,
                              usage=usage))
