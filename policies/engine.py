"""The governor's rule engine: one proposed action + the situation -> allow / needs_approval / deny.

Where this sits: the engines layer (`policies`). The governor agent calls `PolicyEngine.decide` for every
action that any agent (or a chat user) proposes; nothing reaches a tool without an allow, or a consumed
approval for a needs_approval. The engine is pure and deterministic: no clock reads, no I/O — time, the
cluster's state and the action history all arrive in `DecisionContext`, so the same inputs always give
the same decision (replays, tests and the audit log depend on that).

Rules run in a fixed order (their ids are what `PolicyDecision.rule` names):

    whitelist -> actions.<a>.enabled -> limits.max_actions_per_incident -> circuit_breaker.nodes
    -> circuit_breaker.gpus -> freeze_windows.<name> -> actions.<a>.cooldown -> actions.<a>.rate_limit[.<per>]
    -> actions.<a>.approval -> actions.<a>.conditions[i] -> default.allow

The first rule that denies decides. Otherwise, the first rule that asks for approval decides (later deny
rules are still checked, so an approval can never launder a cooldown or a rate limit). Otherwise allow.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from core.actions import ACTION_TOOLS, ScaleParams, validate_action
from core.domain import Action, ActionName, ApprovalRequest, PolicyDecision, ResourceKind, Risk, Verdict
from core.errors import ToolError
from policies.model import Condition, Policy, format_duration, load_policy

Outcome = Literal["pass", "deny", "needs_approval", "skip"]


class HistoryEntry(BaseModel):
    """One action that was executed (not merely proposed): what cooldowns and rate limits count."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    action: ActionName
    target: str
    at_s: float
    incident_id: str | None = None

    @classmethod
    def of(cls, action: Action, at_s: float, incident_id: str | None = None) -> HistoryEntry:
        return cls(action=action.name, target=action.target, at_s=at_s, incident_id=incident_id)


class DecisionContext(BaseModel):
    """Everything a decision may depend on besides the action and the policy."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    incident_id: str | None = None
    now_s: float  # simulated or epoch seconds; the same clock as `history[].at_s`
    requested_by: str = "opsmedic"  # who proposed the action; never counts as its approver
    total_nodes: int = Field(default=0, ge=0)
    total_gpus: int = Field(default=0, ge=0)
    nodes_out_of_service: list[str] = Field(default_factory=list)  # cordoned, drained or NotReady
    gpus_out_of_service: list[str] = Field(default_factory=list)  # resetting, off the bus, on nodes out
    history: list[HistoryEntry] = Field(default_factory=list)
    actions_in_incident: int = Field(default=0, ge=0)
    node_labels: dict[str, str] | None = None  # None: unknown (conditions then match, to stay safe)
    namespace: str | None = None
    model_stage: str | None = None
    emergency_override: bool = False
    proposed_by_model: bool = False  # the step comes from an LLM investigation, not from a runbook
    now_wall: datetime | None = None  # for freeze windows; None: `now_s` read as epoch seconds (UTC)
    # model -> why its input data fails validation: retraining it would learn the breakage
    retrain_blocked: dict[str, str] = Field(default_factory=dict)


@dataclass(frozen=True)
class RuleCheck:
    """The result of one rule for one action: what `explain` prints and `decide` folds into a verdict."""

    rule: str
    outcome: Outcome
    reason: str


class PolicyEngine:
    """Decides proposed actions against one policy. Cheap to build; safe to share between threads."""

    def __init__(self, policy: Policy | None = None) -> None:
        self._policy = policy if policy is not None else load_policy()

    @property
    def policy(self) -> Policy:
        return self._policy

    @property
    def dry_run(self) -> bool:
        return self._policy.mode == "dry_run"

    # ------------------------------------------------------------------------------------------------
    # Public API
    # ------------------------------------------------------------------------------------------------

    def decide(self, action: Action, ctx: DecisionContext) -> PolicyDecision:
        checks = self.evaluate(action, ctx)
        risk = self._risk(action)
        denies = [c for c in checks if c.outcome == "deny"]
        approvals = [c for c in checks if c.outcome == "needs_approval"]
        fired = denies + approvals
        if denies:
            return PolicyDecision(action=action, verdict=Verdict.deny, risk=risk, rule=denies[0].rule,
                                  reasons=[c.reason for c in fired], dry_run=self.dry_run)
        if approvals:
            name = action.name
            approvers = [u for u in self._policy.approvers_for(name) if u != ctx.requested_by]
            required = self._policy.approvals_required_for(name)
            if len(approvers) < required:
                # an approval nobody may give is a deny, said plainly, rather than a request that hangs
                why = (f"{name} needs {required} approval(s) but the policy names "
                       f"{len(approvers)} approver(s) other than the requester {ctx.requested_by}.")
                return PolicyDecision(action=action, verdict=Verdict.deny, risk=risk,
                                      rule=f"actions.{name}.approvers",
                                      reasons=[why, *(c.reason for c in fired)], dry_run=self.dry_run)
            return PolicyDecision(action=action, verdict=Verdict.needs_approval, risk=risk,
                                  rule=approvals[0].rule, reasons=[c.reason for c in fired],
                                  approvers=approvers, approvals_required=required, dry_run=self.dry_run)
        return PolicyDecision(action=action, verdict=Verdict.allow, risk=risk, rule="default.allow",
                              reasons=[checks[-1].reason], dry_run=self.dry_run)

    def explain(self, action: Action, ctx: DecisionContext) -> str:
        """A human-readable account of every rule checked, which fired, and the resulting decision."""
        decision = self.decide(action, ctx)
        marks = {"pass": "ok  ", "skip": "--  ", "deny": "DENY", "needs_approval": "APPR"}
        head = (f"{action.key} -> {decision.verdict.value} (rule {decision.rule}, "
                f"risk {decision.risk.value}, mode {self._policy.mode})")
        lines = [head]
        for c in self.evaluate(action, ctx):
            lines.append(f"  [{marks[c.outcome]}] {c.rule}: {c.reason}")
        if decision.verdict == Verdict.needs_approval:
            lines.append(f"  approval: {decision.approvals_required} of {', '.join(decision.approvers)}; "
                         f"expires after {format_duration(self._policy.approval_expiry_for(action.name))}")
        if decision.rule.endswith(".approvers"):
            lines.append(f"  {decision.reasons[0]}")
        if decision.dry_run:
            lines.append("  dry_run: the decision is recorded but nothing will be executed")
        return "\n".join(lines)

    def approval_request(self, decision: PolicyDecision, ctx: DecisionContext, *,
                         request_id: str | None = None, attempt: int = 0) -> ApprovalRequest:
        """The approval request for a needs_approval decision, bound to the action's digest.

        The default id is derived from (incident, digest, attempt), so re-running a graph node after a
        resume asks for the same request again instead of a second one (the store is idempotent on id).
        """
        if decision.verdict != Verdict.needs_approval:
            raise ValueError(f"{decision.action.key}: only needs_approval decisions get approval requests")
        digest = decision.action.digest()
        incident = ctx.incident_id or "no-incident"
        if request_id is None:
            seed = f"{incident}|{digest}|{attempt}".encode()
            request_id = "apr-" + hashlib.sha256(seed).hexdigest()[:20]
        return ApprovalRequest(
            id=request_id, incident_id=incident, action=decision.action, digest=digest, risk=decision.risk,
            rule=decision.rule, approvers=list(decision.approvers),
            approvals_required=decision.approvals_required, requested_at_s=ctx.now_s,
            expires_at_s=ctx.now_s + self._policy.approval_expiry_for(decision.action.name),
        )

    # ------------------------------------------------------------------------------------------------
    # Rules
    # ------------------------------------------------------------------------------------------------

    def _risk(self, action: Action) -> Risk:
        # an action that is not whitelisted has no registry entry; call it critical, it is denied anyway
        return self._policy.risk_of(action.name) if action.name in ACTION_TOOLS else Risk.critical

    def evaluate(self, action: Action, ctx: DecisionContext) -> list[RuleCheck]:
        """Every rule's outcome for this action, in rule order (the last entry is `default.allow`)."""
        name = action.name
        if name not in ACTION_TOOLS:
            return [RuleCheck("whitelist", "deny", f"{name!r} is not a whitelisted action; it is refused.")]
        try:
            validate_action(action)
        except ToolError as exc:
            return [RuleCheck("whitelist", "deny", f"{exc}.")]
        checks = [RuleCheck("whitelist", "pass", f"{name} is whitelisted and its parameters are valid.")]
        p = self._policy
        ap = p.action_policy(name)
        prefix = f"actions.{name}"

        if ap.enabled:
            checks.append(RuleCheck(f"{prefix}.enabled", "pass", f"{name} is enabled."))
        else:
            checks.append(RuleCheck(f"{prefix}.enabled", "deny", f"{name} is disabled by the policy."))

        exempt = name in p.limits.exempt_actions
        checks.append(self._max_actions(action, ctx, exempt))
        checks.extend(self._circuit_breaker(action, ctx))
        checks.extend(self._freeze(action, ctx, exempt))
        checks.append(self._cooldown(action, ctx))
        checks.extend(self._rate_limit(action, ctx))
        if name == "scale_deployment" and ap.max_replicas is not None:
            checks.append(self._max_replicas(action, ap.max_replicas, prefix))
        if name == "retrain_model" and action.target in ctx.retrain_blocked:
            checks.append(RuleCheck(
                "data_validation.retrain_blocked", "deny",
                f"retraining {action.target} is blocked: its current input data fails validation "
                f"({ctx.retrain_blocked[action.target][:300]}); a model retrained on it would learn the "
                f"breakage. The block lifts when the data validates again."))

        if p.approval_needed(name):
            checks.append(RuleCheck(f"{prefix}.approval", "needs_approval",
                                    f"{name} is {p.risk_of(name).value} risk and needs human approval."))
        else:
            checks.append(RuleCheck(f"{prefix}.approval", "pass", f"{name} needs no approval by itself."))
        for i, cond in enumerate(ap.conditions):
            checks.append(self._condition(f"{prefix}.conditions[{i}]", name, cond, ctx))
        if ctx.proposed_by_model:
            # not configurable: a plan no runbook prescribes is a person's call, whatever each step's risk
            if exempt:
                checks.append(RuleCheck("model_proposed.approval", "pass",
                                        f"proposed by a model, but {name} only tells a person."))
            else:
                checks.append(RuleCheck("model_proposed.approval", "needs_approval",
                                        f"{name} was proposed by a model (LLM investigation), not by a runbook: "
                                        "every such step needs human approval whatever its risk."))

        if not any(c.outcome in ("deny", "needs_approval") for c in checks):
            checks.append(RuleCheck("default.allow", "pass", f"{name} passed every rule and is allowed."))
        else:
            checks.append(RuleCheck("default.allow", "skip", "not reached: an earlier rule fired."))
        return checks

    def _max_actions(self, action: Action, ctx: DecisionContext, exempt: bool) -> RuleCheck:
        rule = "limits.max_actions_per_incident"
        limit = self._policy.limits.max_actions_per_incident
        if exempt:
            return RuleCheck(rule, "skip", f"{action.name} is exempt from the per-incident limit.")
        # the caller's count, or the history's, whichever is larger: an omitted count must not reset it
        from_history = sum(1 for h in ctx.history
                           if ctx.incident_id is not None and h.incident_id == ctx.incident_id
                           and h.action not in self._policy.limits.exempt_actions)
        done = max(ctx.actions_in_incident, from_history)
        if done >= limit:
            return RuleCheck(rule, "deny", f"this incident has already taken {done} actions, the most the "
                                           f"policy allows is {limit}; escalate instead.")
        return RuleCheck(rule, "pass", f"{done} of {limit} actions used in this incident.")

    def _circuit_breaker(self, action: Action, ctx: DecisionContext) -> list[RuleCheck]:
        spec = ACTION_TOOLS[action.name]
        cb = self._policy.limits.circuit_breaker
        out: list[RuleCheck] = []
        for kind, rule, frac, floor_min, total, current in (
            (ResourceKind.node, "circuit_breaker.nodes", cb.max_nodes_out_fraction, cb.min_nodes_allowed,
             ctx.total_nodes, ctx.nodes_out_of_service),
            (ResourceKind.gpu, "circuit_breaker.gpus", cb.max_gpus_out_fraction, cb.min_gpus_allowed,
             ctx.total_gpus, ctx.gpus_out_of_service),
        ):
            if not spec.takes_capacity or spec.target_kind != kind:
                out.append(RuleCheck(rule, "skip", f"{action.name} takes no {kind.value} out of service."))
                continue
            limit = max(floor_min, math.floor(frac * total))
            # the target counts once whether or not it is already out (NotReady, cordoned): a lone
            # NotReady node may still be cordoned, but when most of the cluster is out at once (a
            # partition) acting on any of it is refused - that is a job for a human
            after = len(set(current) | {action.target})
            if after > limit:
                out.append(RuleCheck(rule, "deny",
                                     f"{action.key} would leave {after} of {total} {kind.value}s out of "
                                     f"service, above the circuit breaker's limit of {limit}; escalate "
                                     f"instead."))
            else:
                out.append(RuleCheck(rule, "pass", f"{after} of {total} {kind.value}s out of service "
                                                   f"afterwards, within the limit of {limit}."))
        return out

    def _freeze(self, action: Action, ctx: DecisionContext, exempt: bool) -> list[RuleCheck]:
        p = self._policy
        now = ctx.now_wall if ctx.now_wall is not None else datetime.fromtimestamp(ctx.now_s, UTC)
        out: list[RuleCheck] = []
        for w in p.freeze_windows:
            rule = f"freeze_windows.{w.name}"
            if exempt:
                out.append(RuleCheck(rule, "skip", f"{action.name} is exempt from freeze windows."))
            elif not w.active_at(now):
                out.append(RuleCheck(rule, "pass", f"freeze window {w.name} is not active."))
            elif ctx.emergency_override and p.emergency_override.enabled:
                if p.emergency_override.approval:
                    out.append(RuleCheck(rule, "needs_approval",
                                         f"freeze window {w.name} is active; the emergency override lets "
                                         f"{action.name} through only with human approval."))
                else:
                    out.append(RuleCheck(rule, "pass", f"freeze window {w.name} is active but overridden "
                                                       f"as an emergency."))
            else:
                out.append(RuleCheck(rule, "deny", f"freeze window {w.name} is active: no changes until it "
                                                   f"ends unless declared an emergency."))
        return out

    @staticmethod
    def _max_replicas(action: Action, limit: int, prefix: str) -> RuleCheck:
        want = action.params.replicas if isinstance(action.params, ScaleParams) else None
        if isinstance(want, int) and want > limit:
            return RuleCheck(f"{prefix}.max_replicas", "deny",
                             f"{action.target} would get {want} replicas, past the policy's maximum of {limit}: "
                             "more capacity than that is a person's decision.")
        return RuleCheck(f"{prefix}.max_replicas", "pass",
                         f"{want} replicas is within the policy's maximum of {limit}.")

    def _cooldown(self, action: Action, ctx: DecisionContext) -> RuleCheck:
        rule = f"actions.{action.name}.cooldown"
        cooldown = self._policy.action_policy(action.name).cooldown
        if not cooldown:
            return RuleCheck(rule, "skip", f"{action.name} has no cooldown.")
        times = [h.at_s for h in ctx.history if h.action == action.name and h.target == action.target]
        if times:
            since = ctx.now_s - max(times)
            if since < cooldown:
                return RuleCheck(rule, "deny",
                                 f"{action.key} ran {format_duration(max(since, 0.0))} ago; its cooldown is "
                                 f"{format_duration(cooldown)}.")
        return RuleCheck(rule, "pass", f"{action.key} is outside its {format_duration(cooldown)} cooldown.")

    def _rate_limit(self, action: Action, ctx: DecisionContext) -> list[RuleCheck]:
        """One check per rate limit. A lone limit keeps the rule id `actions.<a>.rate_limit`; in a list,
        each is named by its scope (`actions.escalate.rate_limit.incident`)."""
        rule = f"actions.{action.name}.rate_limit"
        written = self._policy.action_policy(action.name).rate_limit
        limits = self._policy.action_policy(action.name).rate_limits()
        if not limits:
            return [RuleCheck(rule, "skip", f"{action.name} has no rate limit.")]
        out: list[RuleCheck] = []
        for rl in limits:
            rule_id = f"{rule}.{rl.per}" if isinstance(written, list) else rule
            if rl.per in ("target", "resource"):
                scope = f"on {action.target}"
            elif rl.per == "incident":
                scope = f"in incident {ctx.incident_id}" if ctx.incident_id else "outside any incident"
            else:
                scope = "cluster-wide"
            recent = sum(1 for h in ctx.history
                         if h.action == action.name and ctx.now_s - h.at_s < rl.window
                         and (rl.per == "global"
                              or (rl.per == "incident" and h.incident_id == ctx.incident_id)
                              or (rl.per in ("target", "resource") and h.target == action.target)))
            if recent >= rl.count:
                out.append(RuleCheck(rule_id, "deny",
                                     f"{action.name} already ran {recent} times {scope} in the last "
                                     f"{format_duration(rl.window)}; the limit is {rl.count}."))
            else:
                out.append(RuleCheck(rule_id, "pass", f"{recent} of {rl.count} {action.name} {scope} in the "
                                                      f"last {format_duration(rl.window)}."))
        return out

    def _condition(self, rule: str, name: str, cond: Condition, ctx: DecisionContext) -> RuleCheck:
        matched: list[str] = []
        # unknown context matches: a condition that tightens must not be dodged by leaving a field out
        if cond.namespace is not None:
            if ctx.namespace is not None and ctx.namespace != cond.namespace:
                return RuleCheck(rule, "pass", f"namespace is {ctx.namespace}, not {cond.namespace}.")
            matched.append(f"namespace {cond.namespace}" if ctx.namespace else "namespace unknown")
        if cond.node_label:
            if ctx.node_labels is not None and any(ctx.node_labels.get(k) != v
                                                   for k, v in cond.node_label.items()):
                return RuleCheck(rule, "pass", f"node labels do not match {cond.node_label}.")
            matched.append(f"node labels {cond.node_label}" if ctx.node_labels is not None
                           else "node labels unknown")
        if cond.model_stage is not None:
            if ctx.model_stage is not None and ctx.model_stage != cond.model_stage:
                return RuleCheck(rule, "pass", f"model stage is {ctx.model_stage}, not {cond.model_stage}.")
            matched.append(f"model stage {cond.model_stage}" if ctx.model_stage else "model stage unknown")
        what = ", ".join(matched)
        if cond.deny:
            return RuleCheck(rule, "deny", f"{name} is not allowed here ({what}).")
        return RuleCheck(rule, "needs_approval", f"{name} needs human approval here ({what}).")
