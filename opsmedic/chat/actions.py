"""Requests to act from the chat ("drain node-3", "roll back fraud-model"): decided by the governor.

Layer: interfaces. A request becomes a typed `Action` that the real `PolicyEngine` decides exactly as it
decides the daemon's own proposals — same policy file, same rules, same approval store:

- deny → refused, with the rule and the reasons;
- needs_approval → an `ApprovalRequest` in the store, with the chat user as the requester, who therefore
  can never approve it (the engine drops them from the approvers, and the store refuses them);
- allow → executed only through an `ActionBackend` with the execution ledger when the caller provides
  both (the daemon), else recorded as queued for the daemon.

The chat never calls a backend without an allow (or, in `execute_approved`, a consumed approval bound
to the action's digest), and the LLM plays no part here: requests are parsed deterministically.
Every request is audited (`decision`, `approval_request`, `execution`, and one `chat_action_request`).
"""

from __future__ import annotations

import functools
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from core.actions import ACTION_TOOLS, validate_action
from core.domain import Action, ActionResult, ResourceKind, Verdict
from core.errors import ApprovalError, PolicyViolation, ToolError
from opsmedic.chat.intents import Intent
from opsmedic.chat.records import Records, node_of
from policies.engine import DecisionContext, PolicyEngine

if TYPE_CHECKING:
    from opsmedic.chat.context import ChatContext


@dataclass
class ActionOutcome:
    text: str
    status: str  # invalid | denied | needs_approval | executed | failed | queued
    action: Action | None = None
    verdict: str | None = None
    rule: str | None = None
    approval_id: str | None = None
    request_id: str | None = None
    cites: tuple[int, ...] = ()


@functools.lru_cache(maxsize=1)
def default_engine() -> PolicyEngine:
    """The bundled policy's engine when the caller gives none, parsed once per process (parsing the policy
    YAML costs more than answering a question)."""
    return PolicyEngine()


def target_problem(action_name: str, target: str, records: Records, ctx: ChatContext) -> str | None:
    """Is the target of the right kind, and does it exist (live, or at least in the records)?"""
    kind = ACTION_TOOLS[action_name].target_kind
    is_gpu, is_node = "/gpu-" in target, node_of(target) == target
    if kind == ResourceKind.node and not is_node:
        return f"{action_name} acts on a node (like node-3), and {target} is not one"
    if kind == ResourceKind.gpu and not is_gpu:
        return f"{action_name} acts on a GPU (like node-1/gpu-3), and {target} is not one"
    if kind in (ResourceKind.pod, ResourceKind.model, ResourceKind.workload) and (is_gpu or is_node):
        return f"{action_name} acts on a {kind.value}, and {target} is hardware"
    snap = ctx.snapshot()
    if snap is not None:
        from agents.llm import resource_exists

        return None if resource_exists(target, snap) else f"{target} does not exist in the cluster"
    if is_gpu or is_node or kind == ResourceKind.cluster or target in records.known_names():
        return None
    return f"I don't know {target!r}: it is in no record and no live telemetry is attached to check it"


def decision_context_for(records: Records, ctx: ChatContext, request_id: str, user: str) -> DecisionContext:
    """What the governor weighs a chat request against (also used to explain one, `opsmedic.chat.oncall`)."""
    snap = ctx.snapshot()
    now = ctx.clock.now() if ctx.clock is not None else records.now_s()
    history = records.history()
    if snap is not None:
        from agents.governor import decision_context

        return decision_context(snap, incident_id=request_id, now_s=now, history=history,
                                actions_in_incident=0, requested_by=user)
    # No live view of the cluster: its size is unknown, so the circuit breaker sees only what opsmedic
    # itself took out of service and its floor (at least one node). That errs on the side of refusing.
    return DecisionContext(incident_id=request_id, now_s=now, requested_by=user,
                           nodes_out_of_service=records.nodes_out_of_service(), history=history)


def request_action(intent: Intent, user: str, records: Records, ctx: ChatContext) -> ActionOutcome:
    """Hand a parsed request to the governor; never executes without its allow."""
    name = intent.action or ""
    if name not in ACTION_TOOLS:
        return ActionOutcome(f"{name!r} is not an action opsmedic knows.", "invalid")
    if not intent.subject:
        return ActionOutcome(f"{name} on what? e.g. '{_example(name)}'.", "invalid")
    params = dict(intent.params)
    snap = ctx.snapshot()
    if name == "rollback_model" and "to_version" not in params and snap is not None:
        m = snap.model(intent.subject)
        if m is not None and m.previous_version is not None:
            params["to_version"] = m.previous_version
    if name in ("notify", "escalate"):
        params = {"message": f"from {user} via chat: {intent.text}"[:4000]}
    problem = target_problem(name, intent.subject, records, ctx)
    if problem is not None:
        return ActionOutcome(problem + "; nothing was requested.", "invalid")
    try:
        action = validate_action(Action(name=name, target=intent.subject, params=params))  # type: ignore[arg-type]
    except ToolError as exc:
        return ActionOutcome(f"{exc}; nothing was requested.", "invalid")

    engine = ctx.engine or default_engine()
    request_id = f"chat-{uuid.uuid4().hex[:10]}"
    dctx = decision_context_for(records, ctx, request_id, user)
    decision = engine.decide(action, dctx)
    audit = records.audit
    dec_entry = audit.append("decision", {**decision.model_dump(mode="json"), "requested_by": user,
                                          "channel": ctx.channel},
                             incident_id=request_id, sim_s=dctx.now_s, dedupe_key=f"{request_id}:decision")
    cites = [dec_entry.seq]
    head = (f"I asked the governor about {action.key} for you ({request_id}): {decision.verdict.value} "
            f"(rule {decision.rule}, risk {decision.risk.value}, audit #{dec_entry.seq}).")
    if decision.verdict == Verdict.deny:
        text = f"{head} Refused: {' '.join(decision.reasons)}"
        if snap is None and decision.rule.startswith("circuit_breaker"):
            text += (" (This chat has no live view of the cluster, so the breaker counts only what opsmedic took "
                     "out of service against its floor; the daemon decides with live telemetry.)")
        return ActionOutcome(text, "denied", action, "deny", decision.rule, request_id=request_id,
                             cites=tuple(cites))
    if decision.verdict == Verdict.needs_approval:
        req = engine.approval_request(decision, dctx)
        try:
            req = records.approvals.request(req, requested_by=user, audit=audit)
        except ApprovalError as exc:
            return ActionOutcome(f"{head} But the approval request was refused: {exc}", "denied", action,
                                 "needs_approval", decision.rule, request_id=request_id, cites=tuple(cites))
        return ActionOutcome(
            f"{head} It needs {req.approvals_required} approval(s) from {', '.join(req.approvers)}: request "
            f"{req.id}, expires {_clock(req.expires_at_s)}. You asked for it, so you cannot approve it yourself; "
            f"an approver runs `opsmedic approve {req.id} --as THEIR_ID` or uses the Slack button. Nothing has "
            f"been executed.", "needs_approval", action, "needs_approval", decision.rule, approval_id=req.id,
            request_id=request_id, cites=tuple(cites))
    if ctx.backend is None or ctx.ledger is None:
        return ActionOutcome(
            f"{head} Allowed by the policy. This chat has no executor attached, so the request is queued for "
            f"the daemon, which carries it out through the governor.", "queued", action, "allow", decision.rule,
            request_id=request_id, cites=tuple(cites))
    result = _execute(ctx, records, request_id, action, dry_run=decision.dry_run, now=dctx.now_s)
    done = "Executed" if result.ok else "It FAILED"
    return ActionOutcome(f"{head} {done}: {result.detail}.", "executed" if result.ok else "failed", action,
                         "allow", decision.rule, request_id=request_id, cites=tuple(cites))


def _execute(ctx: ChatContext, records: Records, request_id: str, action: Action, *, dry_run: bool,
             now: float) -> ActionResult:
    """Run an allowed (or approved) action once, through the ledger, as the graph's `act` node does."""
    assert ctx.backend is not None and ctx.ledger is not None
    key = f"{request_id}:{action.digest()[:16]}"
    earlier = ctx.ledger.begin(key, request_id, action)
    if earlier is not None and earlier.status == "done" and earlier.result is not None:
        done: ActionResult = earlier.result.model_copy(update={"changed": False})
        return done
    result: ActionResult = ctx.backend.execute(action, idempotency_key=key, dry_run=dry_run)
    ctx.ledger.finish(key, result)
    records.audit.append("execution", result.model_dump(mode="json"), incident_id=request_id, sim_s=now,
                         dedupe_key=f"{request_id}:execution")
    return result


def execute_approved(approval_id: str, records: Records, ctx: ChatContext) -> ActionResult:
    """For the daemon: carry out a chat request once a *different* person approved it. The approval is
    consumed (bound to the action's digest, used once) and the deny rules are checked again first, so
    that an approval can never launder a cooldown or a circuit breaker that tripped meanwhile."""
    req = records.approvals.get(approval_id)
    if req is None or not req.incident_id.startswith("chat-"):
        raise ApprovalError(f"{approval_id} is not a chat request")
    if ctx.backend is None or ctx.ledger is None:
        raise PolicyViolation("no executor attached: only the daemon carries out approved chat requests")
    requester = records.approvals.requester(approval_id) or "chat"
    dctx = decision_context_for(records, ctx, req.incident_id, requester)
    decision = (ctx.engine or default_engine()).decide(req.action, dctx)
    if decision.verdict == Verdict.deny:
        raise PolicyViolation(f"{req.action.key} is now denied by {decision.rule}: {'; '.join(decision.reasons)}")
    used = records.approvals.consume(approval_id, digest=req.action.digest(), now_s=dctx.now_s, audit=records.audit)
    return _execute(ctx, records, req.incident_id, used.action, dry_run=decision.dry_run, now=dctx.now_s)


def _example(name: str) -> str:
    kind = ACTION_TOOLS[name].target_kind
    target = {ResourceKind.node: "node-3", ResourceKind.gpu: "node-1/gpu-3", ResourceKind.pod: "llama-ft-0",
              ResourceKind.model: "fraud-model", ResourceKind.workload: "llama-ft"}.get(kind, "node-3")
    return f"{name.replace('_', ' ').replace(' node', '').replace(' model', '').replace(' pod', '')} {target}"


def _clock(s: float) -> str:
    from opsmedic.chat.records import clock

    return clock(s)


def audit_payload(o: ActionOutcome) -> dict[str, Any]:
    return {"action": o.action.model_dump(mode="json") if o.action else None,
            "action_key": o.action.key if o.action else None, "verdict": o.verdict, "rule": o.rule,
            "status": o.status, "approval_id": o.approval_id, "request_id": o.request_id}
