"""PolicyEngine.decide: one test (or more) per rule, the circuit breaker's partition case, dry_run."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from policy_helpers import act, make_ctx, policy_from

from core.domain import Action, Risk, Verdict
from core.errors import PermanentToolError, PolicyError
from policies import DecisionContext, HistoryEntry, PolicyEngine

ONCALL = ["U0OPSMEDIC", "eval-approver"]


def hist(name: str, target: str, at_s: float, incident_id: str | None = "old") -> HistoryEntry:
    return HistoryEntry(action=name, target=target, at_s=at_s, incident_id=incident_id)  # type: ignore[arg-type]


def engine_with(data: dict[str, Any]) -> PolicyEngine:
    return PolicyEngine(policy_from(data))


# ---- defaults ---------------------------------------------------------------------------------------


def test_low_risk_action_is_allowed(engine: PolicyEngine) -> None:
    d = engine.decide(act("restart_pod", "fraud-model-1"), make_ctx())
    assert (d.verdict, d.rule, d.risk, d.dry_run) == (Verdict.allow, "default.allow", Risk.low, False)
    assert d.approvers == [] and d.approvals_required == 0
    assert d.reasons and d.reasons[0].endswith(".")


def test_high_risk_action_needs_oncall_approval(engine: PolicyEngine) -> None:
    for name, target in [("drain_node", "node-2"), ("reset_gpu", "node-0/gpu-2"),
                         ("retrain_model", "fraud-model")]:
        d = engine.decide(act(name, target), make_ctx())
        assert d.verdict == Verdict.needs_approval, d
        assert d.rule == f"actions.{name}.approval"
        assert d.risk == Risk.high
        assert d.approvers == ONCALL and d.approvals_required == 1


def test_scenario_actions_pass_the_default_policy(engine: PolicyEngine) -> None:
    allowed = [act("cordon_node", "node-2"), act("reschedule_pod", "fraud-model-2"),
               act("rollback_model", "fraud-model"), act("promote_model", "fraud-model"),
               act("notify", "cluster", message="hi"), act("escalate", "cluster"),
               act("scale_deployment", "chat-llm", replicas=3), act("pause_job", "llama-ft"),
               act("resume_job", "llama-ft"), act("uncordon_node", "node-2")]
    for a in allowed:
        assert engine.decide(a, make_ctx()).verdict == Verdict.allow, a


def test_unlisted_action_uses_registry_risk() -> None:
    e = engine_with({"defaults": {"approvers": ["U1", "U2"]}})
    d = e.decide(act("drain_node", "node-1"), make_ctx())
    assert (d.verdict, d.risk, d.approvers) == (Verdict.needs_approval, Risk.high, ["U1", "U2"])
    assert e.decide(act("reschedule_pod", "p"), make_ctx()).verdict == Verdict.allow


def test_unlisted_high_risk_action_without_any_approver_is_denied() -> None:
    d = engine_with({}).decide(act("reset_gpu", "node-0/gpu-1"), make_ctx())
    assert (d.verdict, d.rule) == (Verdict.deny, "actions.reset_gpu.approvers")


# ---- whitelist, enabled, limits ---------------------------------------------------------------------


def test_whitelist_refuses_unknown_actions_and_bad_params(engine: PolicyEngine) -> None:
    rogue = Action.model_construct(name="delete_everything", target="cluster", params={})
    d = engine.decide(rogue, make_ctx())
    assert (d.verdict, d.rule, d.risk) == (Verdict.deny, "whitelist", Risk.critical)
    # invalid parameters: such an action cannot even be built (`Action` parses them with the catalogue's model)
    with pytest.raises(PermanentToolError, match="invalid parameters"):
        act("scale_deployment", "chat-llm")  # replicas missing
    with pytest.raises(PermanentToolError, match="invalid parameters"):
        act("restart_pod", "p", force=True)  # no such parameter
    # and one built around that check is still refused by the whitelist rule
    for name, params in (("scale_deployment", {}), ("restart_pod", {"force": True})):
        d = engine.decide(Action.model_construct(name=name, target="p", params=params), make_ctx())
        assert (d.verdict, d.rule) == (Verdict.deny, "whitelist")


def test_disabled_action_is_denied() -> None:
    e = engine_with({"actions": {"restart_pod": {"enabled": False}}})
    d = e.decide(act("restart_pod", "p"), make_ctx())
    assert (d.verdict, d.rule) == (Verdict.deny, "actions.restart_pod.enabled")


def test_max_actions_per_incident(engine: PolicyEngine) -> None:
    d = engine.decide(act("restart_pod", "p"), make_ctx(actions_in_incident=8))
    assert (d.verdict, d.rule) == (Verdict.deny, "limits.max_actions_per_incident")
    assert "escalate" in d.reasons[0]
    assert engine.decide(act("restart_pod", "p"), make_ctx(actions_in_incident=7)).verdict == Verdict.allow
    # telling a human is never blocked by the limit
    d = engine.decide(act("escalate", "cluster"), make_ctx(actions_in_incident=50))
    assert d.verdict == Verdict.allow


def test_max_actions_counts_the_history_when_the_count_is_left_out() -> None:
    e = engine_with({"limits": {"max_actions_per_incident": 2}})
    history = [hist("restart_pod", "a", 1.0, "inc-1"), hist("restart_pod", "b", 2.0, "inc-1"),
               hist("notify", "cluster", 3.0, "inc-1")]
    d = e.decide(act("reschedule_pod", "c"), make_ctx(history=history))
    assert d.rule == "limits.max_actions_per_incident"
    other = [hist("restart_pod", "a", 1.0, "inc-9"), hist("restart_pod", "b", 2.0, "inc-9")]
    assert e.decide(act("reschedule_pod", "c"), make_ctx(history=other)).verdict == Verdict.allow


# ---- circuit breaker --------------------------------------------------------------------------------


def test_cordon_within_the_breaker(engine: PolicyEngine) -> None:
    d = engine.decide(act("cordon_node", "node-2"), make_ctx())
    assert d.verdict == Verdict.allow


def test_cordon_of_the_lone_notready_node_passes(engine: PolicyEngine) -> None:
    # node-2 is NotReady, so already counted out; cordoning it must still pass (counted once)
    d = engine.decide(act("cordon_node", "node-2"), make_ctx(nodes_out_of_service=["node-2"]))
    assert d.verdict == Verdict.allow, d.reasons


def test_second_node_out_trips_the_breaker(engine: PolicyEngine) -> None:
    d = engine.decide(act("cordon_node", "node-3"), make_ctx(nodes_out_of_service=["node-2"]))
    assert (d.verdict, d.rule) == (Verdict.deny, "circuit_breaker.nodes")
    assert "escalate instead" in d.reasons[0]


def test_partition_denies_cordoning_any_notready_node(engine: PolicyEngine) -> None:
    ctx = make_ctx(nodes_out_of_service=["node-1", "node-2", "node-3"])
    for node in ["node-0", "node-1", "node-2", "node-3"]:
        d = engine.decide(act("cordon_node", node), ctx)
        assert (d.verdict, d.rule) == (Verdict.deny, "circuit_breaker.nodes"), node
        assert "escalate instead" in d.reasons[0]
    # a drain would need approval, but the breaker's deny wins (and is named first)
    d = engine.decide(act("drain_node", "node-2"), ctx)
    assert (d.verdict, d.rule) == (Verdict.deny, "circuit_breaker.nodes")
    # actions that take no capacity are untouched: uncordon and escalate still pass
    assert engine.decide(act("uncordon_node", "node-1"), ctx).verdict == Verdict.allow
    assert engine.decide(act("escalate", "cluster"), ctx).verdict == Verdict.allow


def test_breaker_fraction_on_a_larger_cluster(engine: PolicyEngine) -> None:
    ctx = make_ctx(total_nodes=8, nodes_out_of_service=["node-0"])
    assert engine.decide(act("cordon_node", "node-1"), ctx).verdict == Verdict.allow  # 2 <= floor(0.25*8)
    ctx = make_ctx(total_nodes=8, nodes_out_of_service=["node-0", "node-1"])
    assert engine.decide(act("cordon_node", "node-2"), ctx).rule == "circuit_breaker.nodes"


def test_gpu_breaker(engine: PolicyEngine) -> None:
    gpu = "node-0/gpu-2"
    d = engine.decide(act("reset_gpu", gpu), make_ctx(total_gpus=16))
    assert d.verdict == Verdict.needs_approval
    out = [f"node-1/gpu-{i}" for i in range(4)]  # 4 of 16 already out: the limit
    d = engine.decide(act("reset_gpu", gpu), make_ctx(total_gpus=16, gpus_out_of_service=out))
    assert (d.verdict, d.rule) == (Verdict.deny, "circuit_breaker.gpus")
    # resetting a GPU already counted out (fallen off the bus) while within the limit passes
    d = engine.decide(act("reset_gpu", out[0]), make_ctx(total_gpus=16, gpus_out_of_service=out))
    assert d.verdict == Verdict.needs_approval


def test_breaker_min_allowed_protects_small_clusters() -> None:
    e = engine_with({"limits": {"circuit_breaker": {"min_nodes_allowed": 0}}})
    d = e.decide(act("cordon_node", "node-0"), make_ctx(total_nodes=2))  # floor(0.25*2) = 0
    assert d.rule == "circuit_breaker.nodes"
    assert PolicyEngine(policy_from({})).decide(act("cordon_node", "node-0"),
                                                make_ctx(total_nodes=2)).verdict == Verdict.allow


# ---- freeze windows -----------------------------------------------------------------------------------

FROZEN = {"defaults": {"approvers": ["U1"]},
          "freeze_windows": [{"name": "newyear", "start": "2025-01-01T00:00:00Z",
                              "end": "2025-01-02T00:00:00Z"}]}


def test_freeze_window_denies() -> None:
    d = engine_with(FROZEN).decide(act("restart_pod", "p"), make_ctx())
    assert (d.verdict, d.rule) == (Verdict.deny, "freeze_windows.newyear")


def test_freeze_window_outside_its_time() -> None:
    later = make_ctx(now_wall=datetime(2025, 1, 2, 0, 0, tzinfo=UTC))
    assert engine_with(FROZEN).decide(act("restart_pod", "p"), later).verdict == Verdict.allow


def test_emergency_override_needs_approval() -> None:
    d = engine_with(FROZEN).decide(act("restart_pod", "p"), make_ctx(emergency_override=True))
    assert (d.verdict, d.rule) == (Verdict.needs_approval, "freeze_windows.newyear")
    assert d.approvers == ["U1"]


def test_emergency_override_settings() -> None:
    no_approval = {**FROZEN, "emergency_override": {"approval": False}}
    assert engine_with(no_approval).decide(act("restart_pod", "p"),
                                           make_ctx(emergency_override=True)).verdict == Verdict.allow
    disabled = {**FROZEN, "emergency_override": {"enabled": False}}
    assert engine_with(disabled).decide(act("restart_pod", "p"),
                                        make_ctx(emergency_override=True)).verdict == Verdict.deny


def test_escalation_is_never_frozen() -> None:
    assert engine_with(FROZEN).decide(act("escalate", "cluster"), make_ctx()).verdict == Verdict.allow


def test_recurring_freeze_window_in_its_zone() -> None:
    e = engine_with({"freeze_windows": [{"name": "release", "cron": "0 14 * * 3", "duration": "2h"}]})
    wed = datetime(2025, 1, 1, tzinfo=UTC)  # a Wednesday
    for hour, minute, frozen in [(13, 59, False), (14, 0, True), (15, 59, True), (16, 0, False)]:
        d = e.decide(act("restart_pod", "p"), make_ctx(now_wall=wed.replace(hour=hour, minute=minute)))
        assert (d.verdict == Verdict.deny) is frozen, (hour, minute)
    thursday = datetime(2025, 1, 2, 14, 30, tzinfo=UTC)
    assert e.decide(act("restart_pod", "p"), make_ctx(now_wall=thursday)).verdict == Verdict.allow
    berlin = engine_with({"freeze_windows": [{"name": "night", "cron": "0 23 * * *", "duration": "2h",
                                              "timezone": "Europe/Berlin"}]})
    # 23:30 UTC is 00:30 in Berlin (winter): inside the window that began at 23:00 Berlin time
    assert berlin.decide(act("restart_pod", "p"),
                         make_ctx(now_wall=datetime(2025, 1, 1, 23, 30, tzinfo=UTC))).verdict == Verdict.deny
    assert berlin.decide(act("restart_pod", "p"),
                         make_ctx(now_wall=datetime(2025, 1, 1, 21, 30, tzinfo=UTC))).verdict == Verdict.allow


def test_without_now_wall_the_epoch_clock_is_used() -> None:
    e = engine_with(FROZEN)
    inside = datetime(2025, 1, 1, 6, tzinfo=UTC).timestamp()
    d = e.decide(act("restart_pod", "p"), DecisionContext(now_s=inside))
    assert d.rule == "freeze_windows.newyear"


# ---- cooldown and rate limits -------------------------------------------------------------------------


def test_cooldown_per_target(engine: PolicyEngine) -> None:
    now = 10_000.0
    history = [hist("restart_pod", "p1", now - 120)]
    d = engine.decide(act("restart_pod", "p1"), make_ctx(history=history))
    assert (d.verdict, d.rule) == (Verdict.deny, "actions.restart_pod.cooldown")
    assert "2m ago" in d.reasons[0] and "5m" in d.reasons[0]
    assert engine.decide(act("restart_pod", "p2"), make_ctx(history=history)).verdict == Verdict.allow
    old = [hist("restart_pod", "p1", now - 301)]
    assert engine.decide(act("restart_pod", "p1"), make_ctx(history=old)).verdict == Verdict.allow


def test_cooldown_beats_approval(engine: PolicyEngine) -> None:
    history = [hist("drain_node", "node-2", 9_000.0)]
    d = engine.decide(act("drain_node", "node-2"), make_ctx(history=history))
    assert (d.verdict, d.rule) == (Verdict.deny, "actions.drain_node.cooldown")


def test_global_rate_limit(engine: PolicyEngine) -> None:
    history = [hist("restart_pod", f"p{i}", 10_000.0 - 3000 + i) for i in range(20)]
    d = engine.decide(act("restart_pod", "fresh"), make_ctx(history=history))
    assert (d.verdict, d.rule) == (Verdict.deny, "actions.restart_pod.rate_limit")
    stale = [hist("restart_pod", f"p{i}", 10_000.0 - 3600 - i) for i in range(20)]
    assert engine.decide(act("restart_pod", "fresh"), make_ctx(history=stale)).verdict == Verdict.allow


def test_per_target_rate_limit() -> None:
    e = engine_with({"actions": {"notify": {"rate_limit": {"count": 2, "window": "10m", "per": "target"}}}})
    history = [hist("notify", "team-a", 9_900.0), hist("notify", "team-a", 9_950.0)]
    assert e.decide(act("notify", "team-a"), make_ctx(history=history)).rule == "actions.notify.rate_limit"
    assert e.decide(act("notify", "team-b"), make_ctx(history=history)).verdict == Verdict.allow


# ---- conditions ---------------------------------------------------------------------------------------

COND = {"defaults": {"approvers": ["U1"]},
        "actions": {"rollback_model": {"conditions": [{"model_stage": "Production"}]},
                    "restart_pod": {"conditions": [{"namespace": "kube-system", "deny": True},
                                                   {"node_label": {"pool": "h100"}}]}}}


def test_condition_requires_approval_when_it_matches() -> None:
    e = engine_with(COND)
    d = e.decide(act("rollback_model", "fraud-model"), make_ctx(model_stage="Production"))
    assert (d.verdict, d.rule) == (Verdict.needs_approval, "actions.rollback_model.conditions[0]")
    assert d.approvers == ["U1"]
    assert e.decide(act("rollback_model", "fraud-model"),
                    make_ctx(model_stage="Staging")).verdict == Verdict.allow
    # context left out: the tightening condition still applies
    assert e.decide(act("rollback_model", "fraud-model"), make_ctx()).verdict == Verdict.needs_approval


def test_condition_deny_and_node_labels() -> None:
    e = engine_with(COND)
    d = e.decide(act("restart_pod", "coredns"), make_ctx(namespace="kube-system", node_labels={}))
    assert (d.verdict, d.rule) == (Verdict.deny, "actions.restart_pod.conditions[0]")
    d = e.decide(act("restart_pod", "p"), make_ctx(namespace="ml", node_labels={"pool": "h100"}))
    assert (d.verdict, d.rule) == (Verdict.needs_approval, "actions.restart_pod.conditions[1]")
    d = e.decide(act("restart_pod", "p"), make_ctx(namespace="ml", node_labels={"pool": "l4"}))
    assert d.verdict == Verdict.allow


# ---- approvers, dry_run, determinism, explain ---------------------------------------------------------


def test_requester_is_not_offered_as_approver(engine: PolicyEngine) -> None:
    d = engine.decide(act("drain_node", "node-2"), make_ctx(requested_by="U0OPSMEDIC"))
    assert d.verdict == Verdict.needs_approval and d.approvers == ["eval-approver"]
    lonely = engine_with({"actions": {"drain_node": {"approvers": ["U1"]}}})
    d = lonely.decide(act("drain_node", "node-2"), make_ctx(requested_by="U1"))
    assert (d.verdict, d.rule) == (Verdict.deny, "actions.drain_node.approvers")


def test_two_person_rule_and_groups() -> None:
    e = engine_with({"approvers": {"groups": {"sre": ["A", "B"]}},
                     "actions": {"reset_gpu": {"approvers": ["group:sre", "C", "A"],
                                               "approvals_required": 2}}})
    d = e.decide(act("reset_gpu", "node-0/gpu-0"), make_ctx())
    assert d.approvers == ["A", "B", "C"] and d.approvals_required == 2


def test_dry_run_decides_as_usual_but_flags_it() -> None:
    e = engine_with({"mode": "dry_run", "defaults": {"approvers": ["U1"]}})
    d = e.decide(act("restart_pod", "p"), make_ctx())
    assert (d.verdict, d.dry_run) == (Verdict.allow, True)
    d = e.decide(act("drain_node", "node-1"), make_ctx())
    assert (d.verdict, d.dry_run) == (Verdict.needs_approval, True)
    d = e.decide(act("cordon_node", "node-1"), make_ctx(nodes_out_of_service=["node-2"]))
    assert (d.verdict, d.dry_run) == (Verdict.deny, True)


def test_decisions_are_deterministic(engine: PolicyEngine) -> None:
    ctx = make_ctx(nodes_out_of_service=["node-1"], history=[hist("restart_pod", "p", 9_999.0)])
    for a in [act("drain_node", "node-1"), act("restart_pod", "p"), act("cordon_node", "node-3")]:
        assert engine.decide(a, ctx) == engine.decide(a, ctx)


def test_explain_lists_every_rule(engine: PolicyEngine) -> None:
    text = engine.explain(act("drain_node", "node-2"), make_ctx())
    head = "drain_node@node-2 -> needs_approval (rule actions.drain_node.approval"
    assert text.splitlines()[0].startswith(head)
    for rule in ["whitelist", "actions.drain_node.enabled", "limits.max_actions_per_incident",
                 "circuit_breaker.nodes", "circuit_breaker.gpus", "actions.drain_node.cooldown",
                 "actions.drain_node.rate_limit", "actions.drain_node.approval", "default.allow"]:
        assert rule in text
    assert "[APPR] actions.drain_node.approval" in text and "approval: 1 of U0OPSMEDIC, eval-approver" in text
    text = engine.explain(act("cordon_node", "node-2"), make_ctx(nodes_out_of_service=["node-1", "node-3"]))
    assert "[DENY] circuit_breaker.nodes" in text


def test_approval_request_is_bound_and_stable(engine: PolicyEngine) -> None:
    a = act("drain_node", "node-2", grace_period_s=10)
    ctx = make_ctx()
    d = engine.decide(a, ctx)
    req = engine.approval_request(d, ctx)
    assert req.digest == a.digest() and req.action == a
    assert req.expires_at_s == ctx.now_s + 1800 and req.requested_at_s == ctx.now_s
    assert req.approvers == ONCALL and req.rule == "actions.drain_node.approval"
    assert engine.approval_request(d, ctx).id == req.id
    assert engine.approval_request(d, ctx, attempt=1).id != req.id
    other = engine.approval_request(engine.decide(act("drain_node", "node-3"), ctx), ctx)
    assert other.id != req.id



def test_retraining_a_model_whose_inputs_fail_validation_is_denied(engine: PolicyEngine) -> None:
    ctx = make_ctx(retrain_blocked={"fraud-model": "amount: null share 0.60 (reference 0.00)"})
    d = engine.decide(act("retrain_model", "fraud-model"), ctx)
    assert d.verdict == Verdict.deny and d.rule == "data_validation.retrain_blocked"
    assert "null share" in d.reasons[0] and "learn the breakage" in d.reasons[0]
    assert "data_validation.retrain_blocked" in engine.explain(act("retrain_model", "fraud-model"), ctx)
    # another model, or another action on this one, is untouched
    assert engine.decide(act("retrain_model", "other"), ctx).verdict == Verdict.needs_approval
    assert engine.decide(act("notify", "fraud-model", message="x"), ctx).verdict == Verdict.allow


def test_scaling_past_the_policys_maximum_is_denied_so_a_person_decides() -> None:
    from policies.model import parse_policy

    policy = parse_policy({"actions": {"scale_deployment": {"max_replicas": 4}}})
    engine = PolicyEngine(policy)
    within = engine.decide(act("scale_deployment", "fraud-model", replicas=4), make_ctx())
    past = engine.decide(act("scale_deployment", "fraud-model", replicas=5), make_ctx())
    assert within.verdict == Verdict.allow
    assert past.verdict == Verdict.deny and past.rule == "actions.scale_deployment.max_replicas"
    assert "past the policy's maximum of 4" in " ".join(past.reasons)


def test_max_replicas_is_refused_on_any_other_action() -> None:
    from policies.model import parse_policy

    with pytest.raises(PolicyError, match="max_replicas bounds scale_deployment only"):
        parse_policy({"actions": {"drain_node": {"max_replicas": 4}}})
