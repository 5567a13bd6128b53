"""The incident graph: monitor -> diagnose -> plan -> govern -> (approval) -> act -> verify -> resolved.

Layer: agents. One LangGraph `StateGraph` per incident (thread id = incident id), checkpointed, so a crash
loses neither an incident nor an approval::

    monitor -> diagnose -> plan -> govern --allow--> act -> verify --ok, more steps--> govern
                                     |  \\--needs approval--> await_approval --approved--> act
                                     |                               \\--rejected/expired--> escalate
                                     \\--deny--> escalate                 verify --failed--> diagnose (bounded)
                                                                        verify --ok, done--> resolved

Nodes are functions from state to a partial update; their dependencies arrive as `Runtime[Deps]`.
LangGraph re-runs a node from its top after `interrupt()`, so nodes that interrupt keep everything before
the interrupt pure, and every side effect after it is idempotent (audit appends carry dedupe keys,
actions carry idempotency keys, approvals are consumed once). The two pauses, `await_approval`'s and
`verify`'s, write their payloads through `agents.interrupts` (`ApprovalWait`, `SettleWait`), whose
`parse_interrupt` and `ready_to_resume` every driver of graphs reads them with; audit payloads are read
back typed through `policies.audit_events`.

Checkpoints go where the stores go: `checkpointer_for` gives a `SqliteSaver` for a SQLite path (the
default) or a `PostgresSaver` for a `postgresql://` URL, both with the msgpack allow-list below.
"""

from __future__ import annotations

import sqlite3
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any, Literal

from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.checkpoint.serde.jsonplus import JsonPlusSerializer
from langgraph.checkpoint.sqlite import SqliteSaver
from langgraph.graph import END, START, StateGraph
from langgraph.graph.state import CompiledStateGraph
from langgraph.runtime import Runtime
from langgraph.types import interrupt

from agents import corroboration, diagnostician, remediator
from agents.governor import decision_context
from agents.interrupts import ApprovalWait, SettleWait
from agents.llm import llm_diagnose, llm_investigate, llm_plan
from agents.state import Deps, IncidentState, TimelineEntry
from core import domain
from core.actions import ACTION_TOOLS
from core.domain import ActionResult, ApprovalStatus, PolicyDecision, Verdict, VerificationResult
from core.errors import ApprovalError, OpsmedicError, PolicyViolation
from infra.db import is_postgres_url, lock_key, postgres_url, redact_url, sqlite_path
from infra.tracing import METRICS, incident_root, span
from knowledge.runbooks import Runbook
from policies.engine import HistoryEntry

POLL_S = 30.0

Agent = Literal["monitor", "diagnostician", "remediator", "governor", "executor", "verifier", "human"]


def _note(state: IncidentState, deps: Deps, agent: Agent, text: str) -> list[TimelineEntry]:
    entry = TimelineEntry(at_s=deps.clock.now(), agent=agent, text=text)
    if deps.narrate is not None:
        deps.narrate(state.incident.id, entry)
    return [*state.timeline, entry]


# What the graph writes before its decision: each commit without an fsync of its own; the decision's
# durable commit, before any action reaches a tool, puts them on disk with it (see `AuditLog.append`).
# Four fsyncs were most of the time from incident to first decision.
_NARRATIVE = frozenset({"observation", "corroboration", "diagnosis", "plan", "llm_diagnosis", "llm_plan",
                        "llm_investigation", "related_runbooks"})


def _audit(deps: Deps, state: IncidentState, kind: str, payload: dict[str, Any], key: str) -> None:
    deps.audit.append(kind, payload, incident_id=state.incident.id, sim_s=deps.clock.now(),
                      dedupe_key=f"{state.incident.id}:{key}", durable=kind not in _NARRATIVE)


def _step_key(state: IncidentState) -> str:
    return f"a{state.attempts}:s{state.cursor}"


# ------------------------------------------------------------------------------------------- nodes


def monitor(state: IncidentState, runtime: Runtime[Deps]) -> dict[str, Any]:
    deps = runtime.context
    inc = state.incident
    _audit(deps, state, "observation", {"resource": inc.resource, "signals": [s.model_dump() for s in inc.signals]},
           "observation")
    return {"timeline": _note(state, deps, "monitor", f"incident {inc.id} on {inc.resource}: {inc.title}")}


def diagnose(state: IncidentState, runtime: Runtime[Deps]) -> dict[str, Any]:
    deps = runtime.context
    snap = deps.telemetry.snapshot()
    # signatures need the whole library; a runbook source without `all` (a test double) offers none
    library: list[Runbook] = getattr(deps.runbooks, "all", list)()
    finding = diagnostician.find(state.incident, snap, library)
    claims = corroboration.assess(state.incident, snap)
    if claims.checks:  # alert claims: the audit and the timeline say what telemetry made of them
        _audit(deps, state, "corroboration", claims.payload(), f"corroboration:{state.attempts}")
        note = _note(state, deps, "diagnostician", f"checked alert claims against telemetry: {claims.summary()}")
        state = state.model_copy(update={"timeline": note})
    cited: list[str] = []
    primary = deps.runbooks.for_cause(finding.root_cause, finding.runbook_hint)
    if primary is not None:
        cited.append(primary.id)
    related: str | None = None
    if finding.root_cause != "healthy" and finding.query:
        if primary is not None and finding.root_cause != "unknown" and deps.llm is None:
            # a known cause with its runbook: the plan needs nothing more, and the runbooks related to it
            # are for the person reading the incident, so they are looked up after the first decision
            # (`_relate`): a retrieval (an embedding and two searches) was most of the time to it
            related = finding.query
        else:
            # `unknown`: no label to filter by; the nearest runbooks by retrieval are what the person gets
            # (and what the model is shown, when one reasons)
            scope = None if finding.root_cause == "unknown" else finding.root_cause
            for rb, _score in deps.runbooks.search(finding.query, top_k=3, root_cause=scope):
                if rb.id not in cited:
                    cited.append(rb.id)
    diag = diagnostician.to_diagnosis(finding, cited)
    llm_note = ""
    if deps.llm is not None:  # optional: a validated proposal, else the deterministic diagnosis stands
        out = llm_diagnose(deps.llm, state.incident, snap, finding, deps.runbooks, deterministic=diag)
        _audit(deps, state, "llm_diagnosis", out.audit_payload(), f"llm_diagnosis:{state.attempts}")
        diag, llm_note = out.chosen(diag), f"; {out.note}"
    _audit(deps, state, "diagnosis", diag.model_dump(), f"diagnosis:{state.attempts}")
    evidence = "; ".join(e.detail for e in diag.evidence[:3])
    text = (f"root cause {diag.root_cause} at {diag.resource} (confidence {diag.confidence:.2f}): {diag.summary}"
            + (f"; evidence: {evidence}" if evidence else "") + (f"; runbooks {', '.join(cited)}" if cited else "")
            + llm_note)
    update: dict[str, Any] = {"diagnosis": diag, "timeline": _note(state, deps, "diagnostician", text),
                              "related_query": related}
    if claims.groundless:
        update["escalation"] = f"unverified alert claim(s), nothing done on them: {claims.summary()}"
    return update


def _relate(state: IncidentState, deps: Deps) -> dict[str, Any]:
    """The runbooks related to a known cause beyond its own (retrieval filtered to the cause), added to the
    diagnosis once the first decision is made: what Slack, the console and the summary show. Nothing when
    there is no pending lookup; the search is cached by the index and the audit entry keyed, so a re-run
    repeats nothing."""
    query, diag = state.related_query, state.diagnosis
    if query is None or diag is None:
        return {}
    cited = list(diag.runbook_ids)
    for rb, _score in deps.runbooks.search(query, top_k=3, root_cause=diag.root_cause):
        if rb.id not in cited:
            cited.append(rb.id)
    update: dict[str, Any] = {"related_query": None}
    if cited != diag.runbook_ids:
        extra = cited[len(diag.runbook_ids):]
        _audit(deps, state, "related_runbooks", {"root_cause": diag.root_cause, "runbook_ids": extra},
               f"related_runbooks:{state.attempts}")
        update["diagnosis"] = diag.model_copy(update={"runbook_ids": cited})
        update["timeline"] = _note(state, deps, "diagnostician", f"related runbooks {', '.join(extra)}")
    return update


def plan(state: IncidentState, runtime: Runtime[Deps]) -> dict[str, Any]:
    deps = runtime.context
    assert state.diagnosis is not None
    snap = deps.telemetry.snapshot()
    runbook = None
    if state.diagnosis.runbook_ids:
        runbook = deps.runbooks.for_cause(state.diagnosis.root_cause, state.diagnosis.runbook_ids[0])
    p = remediator.plan(state.incident, state.diagnosis, runbook, snap)
    llm_note = ""
    if deps.llm is not None and state.diagnosis.root_cause == "unknown":
        # where the rules run out, the model investigates; its plan is marked model-proposed, and the
        # governor then asks a person to approve every step of it
        out = llm_investigate(deps.llm, state.incident, state.diagnosis, snap, p, deps.runbooks)
        _audit(deps, state, "llm_investigation", out.audit_payload(), f"llm_investigation:{state.attempts}")
        p, llm_note = out.chosen(p), f"; {out.note}"
    elif deps.llm is not None:  # the governor still decides every step of whichever plan is chosen
        out = llm_plan(deps.llm, state.incident, state.diagnosis, runbook, snap, p, deps.runbooks)
        _audit(deps, state, "llm_plan", out.audit_payload(), f"llm_plan:{state.attempts}")
        p, llm_note = out.chosen(p), f"; {out.note}"
    _audit(deps, state, "plan", p.model_dump(), f"plan:{state.attempts}")
    if not p.steps:
        deps.mark_decision(state.incident.id)
    steps = ", ".join(s.action.key for s in p.steps) or "nothing"
    text = f"proposes {steps} ({p.rationale}){llm_note}"
    return {"plan": p, "cursor": 0, "timeline": _note(state, deps, "remediator", text)}


def govern(state: IncidentState, runtime: Runtime[Deps]) -> dict[str, Any]:
    deps = runtime.context
    assert state.plan is not None
    step = state.plan.steps[state.cursor]
    now = deps.clock.now()
    ctx = decision_context(
        deps.telemetry.snapshot(), incident_id=state.incident.id, now_s=now, history=deps.history,
        actions_in_incident=sum(1 for r in state.results if r.ok and not r.dry_run), requested_by=deps.requester,
        proposed_by_model=state.plan.proposed_by == "model", action=step.action,
    )
    with span("governor.decide", incident_id=state.incident.id, action=step.action.key) as sp:
        decision = deps.engine.decide(step.action, ctx)
        # never act on alert claims alone, whatever plan was chosen (agents.corroboration)
        decision = corroboration.guard(decision, corroboration.assess(state.incident, deps.telemetry.snapshot()),
                                       deps.engine.policy, deps.requester)
        if sp is not None:
            sp.set_attribute("opsmedic.decision", decision.verdict.value)
    METRICS.decision(decision.verdict.value)
    deps.mark_decision(state.incident.id)
    _audit(deps, state, "decision", decision.model_dump(), f"decision:{_step_key(state)}")
    update: dict[str, Any] = {"decision": decision, "decisions": [*state.decisions, decision], "approval": None}
    text = f"{step.action.key}: {decision.verdict.value} (rule {decision.rule}, risk {decision.risk.value})"
    if decision.verdict == Verdict.needs_approval:
        req = deps.engine.approval_request(decision, ctx, attempt=state.attempts * 1000 + state.cursor)
        req = deps.approvals.request(req, requested_by=deps.requester, audit=deps.audit)
        update["approval"] = req
        update["approvals"] = [*state.approvals, req]
        text += f"; approval {req.id} asked of {', '.join(req.approvers)}"
    elif decision.verdict == Verdict.deny:
        text += f"; {'; '.join(decision.reasons)}"
    update["timeline"] = _note(state, deps, "governor", text)
    update.update(_relate(state.model_copy(update={"timeline": update["timeline"]}), deps))
    return update


def await_approval(state: IncidentState, runtime: Runtime[Deps]) -> dict[str, Any]:
    """Wait for a human. The resume value is only a wake-up call: what counts is the approval store."""
    assert state.approval is not None and state.decision is not None
    req = state.approval
    interrupt(ApprovalWait(request_id=req.id, incident_id=state.incident.id, action=req.action.key,
                           digest=req.digest, expires_at_s=req.expires_at_s).wire())
    deps = runtime.context
    now = deps.clock.now()
    deps.approvals.expire_due(now, audit=deps.audit)
    stored = deps.approvals.get(req.id)
    if stored is not None and stored.status == ApprovalStatus.consumed:
        # we consumed it before a crash and are re-running: the approval stands, once
        return {"approval": stored, "timeline": _note(state, deps, "human", f"approval {req.id} already used")}
    try:
        used = deps.approvals.consume(req.id, digest=state.decision.action.digest(), now_s=now, audit=deps.audit)
    except ApprovalError as exc:
        status = stored.status.value if stored is not None else "unknown"
        reason = f"approval {req.id} for {req.action.key} not granted ({status}): {exc}"
        return {"approval": stored, "escalation": reason, "timeline": _note(state, deps, "human", reason)}
    who = ", ".join(used.approved_by)
    return {"approval": used, "timeline": _note(state, deps, "human", f"{who} approved {req.action.key}")}


def act(state: IncidentState, runtime: Runtime[Deps]) -> dict[str, Any]:
    deps = runtime.context
    assert state.plan is not None and state.decision is not None
    action = state.plan.steps[state.cursor].action
    _require_permission(state, action)
    key = f"{state.incident.id}:{_step_key(state)}:{action.digest()[:16]}"
    with span("tool.execute", incident_id=state.incident.id, action=action.key, decision=state.decision.verdict.value):
        result = _execute_once(deps, state.incident.id, action, key, dry_run=state.decision.dry_run)
    if not result.dry_run:
        METRICS.action_executed(action.name, result.ok)
    if result.ok and not result.dry_run and result.changed:
        deps.history.append(HistoryEntry.of(action, result.at_s, state.incident.id))
    _audit(deps, state, "execution", result.model_dump(), f"execution:{_step_key(state)}")
    verb = "executed" if result.ok else "FAILED"
    return {"results": [*state.results, result], "verify_started_s": None,
            "timeline": _note(state, deps, "executor", f"{verb} {action.key}: {result.detail}")}


def _execute_once(deps: Deps, incident_id: str, action: domain.Action, key: str, *, dry_run: bool) -> ActionResult:
    """Call the backend at most once per key, even across crashes (see tools.ledger)."""
    earlier = deps.ledger.begin(key, incident_id, action)
    if earlier is not None and earlier.status == "done" and earlier.result is not None:
        return earlier.result.model_copy(update={"changed": False})
    if earlier is not None and not dry_run:
        # The process died during the call. Ask the backend whether it saw this key (an effect can take
        # minutes to show, so a verification read alone could call a slow action twice), then read back.
        lookup = getattr(deps.backend, "lookup", None)
        seen = lookup(key) if callable(lookup) else None
        if isinstance(seen, ActionResult):
            result = seen.model_copy(update={"detail": f"completed before a restart: {seen.detail}"})
            deps.ledger.finish(key, result)
            return result
        check = deps.backend.verify(action)
        if check.ok:
            # changed=True: the action did take effect, and cooldowns must count it
            result = ActionResult(action=action, ok=True, changed=True, idempotency_key=key, at_s=deps.clock.now(),
                                  detail=f"completed before a restart: {check.detail}")
            deps.ledger.finish(key, result)
            return result
    result = deps.backend.execute(action, idempotency_key=key, dry_run=dry_run)
    deps.ledger.finish(key, result)
    return result


def _require_permission(state: IncidentState, action: domain.Action) -> None:
    d = state.decision
    assert d is not None
    if d.action.digest() != action.digest():
        raise PolicyViolation(f"{action.key}: the decision on record is for another action")
    if d.verdict == Verdict.allow:
        return
    a = state.approval
    if (d.verdict == Verdict.needs_approval and a is not None and a.status == ApprovalStatus.consumed
            and a.digest == action.digest()):
        return
    raise PolicyViolation(f"{action.key}: no allow and no consumed approval bound to it")


def verify(state: IncidentState, runtime: Runtime[Deps]) -> dict[str, Any]:
    deps = runtime.context
    assert state.plan is not None
    result = state.results[-1]
    action = result.action
    spec = ACTION_TOOLS[action.name]  # how long the effect takes to show, and how long we wait for it at most
    scale = deps.settle_scale  # < 1 only on test clusters and in demos (Settings.settle_scale)
    settle, deadline = spec.settle_s * scale, spec.deadline_s * scale
    if result.ok and not result.dry_run and settle > 0:
        started = state.verify_started_s if state.verify_started_s is not None else result.at_s
        waited = deps.clock.now() - started
        due = started + (settle if waited < settle else waited + POLL_S * scale)
        interrupt(SettleWait(until_s=due, incident_id=state.incident.id, action=action.key).wire())
    else:
        started = result.at_s
    now = deps.clock.now()
    if result.dry_run:
        check = VerificationResult(action=action, ok=True, detail="dry run: nothing to verify", at_s=now)
    elif not result.ok:
        check = VerificationResult(action=action, ok=False, detail=result.detail, at_s=now)
    else:
        check = deps.backend.verify(action)
        if not check.ok and now - started < deadline:
            return {"verify_started_s": started}  # not yet: poll again
    _audit(deps, state, "verification", check.model_dump(), f"verification:{_step_key(state)}")
    mark = "ok" if check.ok else "FAILED"
    update: dict[str, Any] = {"verifications": [*state.verifications, check], "verify_started_s": None,
                              "timeline": _note(state, deps, "verifier", f"{action.key} {mark}: {check.detail}")}
    step = state.plan.steps[state.cursor]
    if check.ok or step.optional:
        update["cursor"] = state.cursor + 1
    else:
        update["attempts"] = state.attempts + 1
        update["escalation"] = f"{action.key} did not take effect: {check.detail}"
    return update


def skip(state: IncidentState, runtime: Runtime[Deps]) -> dict[str, Any]:
    """A denied optional step (a notification) does not stop the plan."""
    deps = runtime.context
    return {"cursor": state.cursor + 1, "timeline": _note(state, deps, "governor", "optional step skipped")}


def escalate(state: IncidentState, runtime: Runtime[Deps]) -> dict[str, Any]:
    deps = runtime.context
    reason = state.escalation or (
        f"denied: {'; '.join(state.decision.reasons)}" if state.decision is not None else "needs a human")
    params: dict[str, Any] = {"message": f"{state.incident.id}: {reason}"[:4000]}
    severity = deps.engine.policy.action_policy("escalate").severity  # the pager's severity, from the policy
    if severity is not None:
        params["severity"] = severity
    if state.diagnosis is not None and state.diagnosis.evidence:  # what the human paged reads first
        params["evidence"] = [f"{e.resource}: {e.detail}"[:500] for e in state.diagnosis.evidence[:20]]
    page = domain.Action(name="escalate", target=state.incident.resource, params=params)
    ctx = decision_context(deps.telemetry.snapshot(), incident_id=state.incident.id, now_s=deps.clock.now(),
                           history=deps.history, actions_in_incident=0, requested_by=deps.requester)
    decision = deps.engine.decide(page, ctx)
    _audit(deps, state, "decision", decision.model_dump(), "decision:escalate")
    results = list(state.results)
    if decision.verdict == Verdict.allow:
        res = _execute_once(deps, state.incident.id, page, f"{state.incident.id}:escalate", dry_run=decision.dry_run)
        results.append(res)
        if res.ok and not res.dry_run and res.changed:
            # a page counts against the escalation limits now, not only after a restart rebuilds the history
            deps.history.append(HistoryEntry.of(page, res.at_s, state.incident.id))
        _audit(deps, state, "execution", res.model_dump(), "execution:escalate")
    _audit(deps, state, "escalation", {"reason": reason}, "escalation")
    update: dict[str, Any] = {"outcome": "escalated", "escalation": reason, "results": results,
                              "timeline": _note(state, deps, "governor", f"escalated to a human: {reason}")}
    update.update(_relate(state.model_copy(update={"timeline": update["timeline"]}), deps))
    return update


def resolved(state: IncidentState, runtime: Runtime[Deps]) -> dict[str, Any]:
    deps = runtime.context
    assert state.plan is not None and state.diagnosis is not None
    done = [r.action.key for r in state.results if r.ok]
    if state.diagnosis.root_cause == "unknown":
        # nothing known was fixed: the incident is a person's now, not resolved
        reason = f"unknown cause handed to a person ({', '.join(done) or 'no page delivered'})"
        _audit(deps, state, "escalation", {"reason": reason}, "escalation")
        return {"outcome": "escalated", "escalation": reason, "timeline": _note(state, deps, "verifier", reason)}
    text = ("no action needed" if not state.plan.steps else f"resolved after {', '.join(done)}")
    _audit(deps, state, "resolution", {"outcome": "resolved", "actions": done}, "resolution")
    return {"outcome": "resolved", "timeline": _note(state, deps, "verifier", text)}


# ------------------------------------------------------------------------------------------ routing


def _after_plan(state: IncidentState) -> str:
    assert state.plan is not None and state.diagnosis is not None
    if state.plan.steps:
        return "govern"
    return "resolved" if state.diagnosis.root_cause == "healthy" else "escalate"


def _after_govern(state: IncidentState) -> str:
    assert state.decision is not None and state.plan is not None
    v = state.decision.verdict
    if v == Verdict.allow:
        return "act"
    if v == Verdict.needs_approval:
        return "await_approval"
    return "skip" if state.plan.steps[state.cursor].optional else "escalate"


def _after_approval(state: IncidentState) -> str:
    a = state.approval
    return "act" if a is not None and a.status == ApprovalStatus.consumed else "escalate"


def _after_verify(state: IncidentState, runtime: Runtime[Deps]) -> str:
    assert state.plan is not None
    if state.verify_started_s is not None:
        return "verify"
    last = state.verifications[-1]
    if not last.ok and not state.plan.steps[state.cursor if state.cursor < len(state.plan.steps) else -1].optional:
        if state.cursor < len(state.plan.steps) and state.attempts < runtime.context.max_attempts:
            return "diagnose"
        return "escalate"
    return _next_step(state)


def _next_step(state: IncidentState) -> str:
    assert state.plan is not None
    return "govern" if state.cursor < len(state.plan.steps) else "resolved"


def _traced(name: str, fn: Any) -> Any:
    """A span per graph node, carrying the incident id (a no-op until tracing is configured)."""

    def node(state: IncidentState, runtime: Runtime[Deps]) -> dict[str, Any]:
        # the incident's trace begins with its observation: the root span every later step hangs under
        inc = state.incident
        root: AbstractContextManager[Any] = (
            incident_root(inc.id, resource=inc.resource, title=inc.title) if name == "monitor" else nullcontext())
        with root, span(f"node.{name}", incident_id=state.incident.id, resource=state.incident.resource):
            out: dict[str, Any] = fn(state, runtime)
            return out

    node.__name__ = name
    return node


def build_graph() -> StateGraph[IncidentState, Deps, IncidentState, IncidentState]:
    g: StateGraph[IncidentState, Deps, IncidentState, IncidentState] = StateGraph(
        IncidentState, context_schema=Deps)
    for name, fn in [("monitor", monitor), ("diagnose", diagnose), ("plan", plan), ("govern", govern),
                     ("await_approval", await_approval), ("act", act), ("verify", verify), ("skip", skip),
                     ("escalate", escalate), ("resolved", resolved)]:
        g.add_node(name, _traced(name, fn))
    g.add_edge(START, "monitor")
    g.add_edge("monitor", "diagnose")
    g.add_edge("diagnose", "plan")
    g.add_conditional_edges("plan", _after_plan, ["govern", "resolved", "escalate"])
    g.add_conditional_edges("govern", _after_govern, ["act", "await_approval", "skip", "escalate"])
    g.add_conditional_edges("await_approval", _after_approval, ["act", "escalate"])
    g.add_edge("act", "verify")
    g.add_conditional_edges("verify", _after_verify, ["verify", "diagnose", "escalate", "govern", "resolved"])
    g.add_conditional_edges("skip", _next_step, ["govern", "resolved"])
    g.add_edge("escalate", END)
    g.add_edge("resolved", END)
    return g


# Types the checkpointer may rebuild from msgpack: ours, and nothing else.
_ALLOWED = [
    ("core.domain", n) for n in (
        "Action", "ActionPlan", "ActionResult", "ApprovalRequest", "ApprovalStatus", "Diagnosis", "Evidence",
        "Incident", "PlannedAction", "PolicyDecision", "ResourceKind", "Risk", "Signal", "Verdict",
        "VerificationResult")
] + [("core.actions", "ResourceKind"), ("core.actions", "Risk")] + [  # declared in the catalogue since #14
    ("agents.state", "IncidentState"), ("agents.state", "TimelineEntry")]


def _serde() -> JsonPlusSerializer:
    return JsonPlusSerializer(allowed_msgpack_modules=_ALLOWED)


def _checkpoint_connection(path: str) -> sqlite3.Connection:
    """The checkpointer's SQLite connection: WAL with synchronous=NORMAL. SQLite's default synchronous=FULL
    fsyncs on every commit (the file is in WAL already when the stores share it; alone, a rollback journal
    fsyncs twice) -- with `durability="sync"` a checkpoint per LangGraph step, which was most of the time
    from incident to first decision and the daemon's slow tick, the one that opens an incident. Under
    WAL, NORMAL still makes every committed checkpoint survive a crash of the process (the commit is in the
    WAL file before the call returns); only a power cut may lose the last few, and then the graph re-runs
    those steps from the previous checkpoint, which is safe because every side effect of a node is
    idempotent (audit dedupe keys, action idempotency keys in the execution ledger, whose store keeps
    synchronous=FULL)."""
    conn = sqlite3.connect(path, check_same_thread=False)
    if path != ":memory:":
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")
    return conn


def checkpointer_for(url_or_path: str | Path) -> BaseCheckpointSaver[str]:
    """A checkpointer on the database opsmedic's stores use: `SqliteSaver` for a path or `sqlite:///` URL,
    `PostgresSaver` (tables created by `.setup()` on first use) for a `postgresql://` URL. Both use the
    serializer with our msgpack allow-list. The caller owns the connection: close it with
    `saver.conn.close()`."""
    if not is_postgres_url(url_or_path):
        path = sqlite_path(url_or_path, OpsmedicError)
        if path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        return SqliteSaver(_checkpoint_connection(path), serde=_serde())
    import psycopg
    from langgraph.checkpoint.postgres import PostgresSaver
    from psycopg.rows import dict_row

    url = postgres_url(url_or_path)
    try:
        # what PostgresSaver requires of a connection: autocommit, dict rows, no prepared statements
        conn: psycopg.Connection[dict[str, Any]] = psycopg.connect(
            url, autocommit=True, prepare_threshold=0, row_factory=dict_row, connect_timeout=30)
    except psycopg.Error as exc:
        raise OpsmedicError(f"cannot open the checkpoint database {redact_url(url)}: {exc}") from exc
    saver = PostgresSaver(conn, serde=_serde())
    try:
        # .setup() runs migrations; two processes starting at once must not run them together
        conn.execute("SELECT pg_advisory_lock(%s)", (lock_key("checkpoints"),))
        try:
            saver.setup()
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (lock_key("checkpoints"),))
    except psycopg.Error as exc:
        conn.close()
        raise OpsmedicError(f"cannot create the checkpoint tables in {redact_url(url)}: {exc}") from exc
    return saver


def compile_graph(
    conn: sqlite3.Connection | BaseCheckpointSaver[str],
) -> CompiledStateGraph[IncidentState, Deps, IncidentState, IncidentState]:
    """The incident graph with a checkpointer: a SQLite connection (wrapped in `SqliteSaver`, as before),
    or a saver from `checkpointer_for` (SQLite or Postgres)."""
    saver = conn if isinstance(conn, BaseCheckpointSaver) else SqliteSaver(conn, serde=_serde())
    return build_graph().compile(checkpointer=saver)


__all__ = ["PolicyDecision", "build_graph", "checkpointer_for", "compile_graph"]
