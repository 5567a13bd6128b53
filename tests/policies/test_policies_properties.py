"""Property tests (hypothesis): for random policies, actions and sequences of approval operations, an
action the policy sends to approval never becomes consumable without a valid, unexpired, digest-matching
approval by enough allowed approvers other than the requester. The store is checked against a small
reference model of the rules, operation by operation."""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from core.domain import ACTION_NAMES, Action, ApprovalStatus, Verdict
from core.errors import ApprovalError, PolicyError
from policies import ApprovalStore, AuditLog, DecisionContext, Policy, PolicyEngine, parse_policy

POOL = ["U1", "U2", "U3", "opsmedic"]  # possible approvers; `opsmedic` is also a possible requester
USERS = [*POOL, "mallory"]  # mallory is never an approver
TARGETS = ["node-0", "node-1", "node-0/gpu-1", "fraud-model", "pod-a"]
PROPS = settings(max_examples=150, deadline=None, database=None,
                 suppress_health_check=[HealthCheck.filter_too_much])


@st.composite
def policies(draw: st.DrawFn) -> Policy:
    refs = st.lists(st.sampled_from([*POOL, "group:oncall"]), max_size=4, unique=True)
    actions: dict[str, Any] = {}
    for name in draw(st.lists(st.sampled_from(ACTION_NAMES), unique=True, max_size=6)):
        ap: dict[str, Any] = {"approvals_required": draw(st.sampled_from([1, 2]))}
        if draw(st.booleans()):
            ap["risk"] = draw(st.sampled_from(["low", "medium", "high", "critical"]))
        if draw(st.booleans()):
            ap["approval"] = draw(st.booleans())
        if approvers := draw(refs):
            ap["approvers"] = approvers
        if draw(st.booleans()):
            ap["conditions"] = [{"namespace": "prod"}]
        actions[name] = ap
    data = {
        "mode": draw(st.sampled_from(["enforce", "dry_run"])),
        "defaults": {"approvers": draw(refs), "approval_expiry": draw(st.sampled_from(["1m", "30m", "1h"]))},
        "approvers": {"groups": {"oncall": draw(st.lists(st.sampled_from(POOL), min_size=1, unique=True))}},
        "actions": actions,
    }
    try:
        return parse_policy(data, "random.yaml")
    except PolicyError:
        # e.g. a two-person rule with one approver: the loader refuses it, which is tested elsewhere
        draw(st.just(None).filter(lambda _: False))
        raise AssertionError("unreachable") from None


@st.composite
def actions(draw: st.DrawFn, names: tuple[str, ...] = ACTION_NAMES) -> Action:
    name = draw(st.sampled_from(names))
    params: dict[str, Any] = {"replicas": 2} if name == "scale_deployment" else {}
    if name == "drain_node" and draw(st.booleans()):
        params["grace_period_s"] = draw(st.integers(0, 60))
    return Action(name=name, target=draw(st.sampled_from(TARGETS)), params=params)  # type: ignore[arg-type]


contexts = st.builds(
    DecisionContext,
    incident_id=st.just("inc-1"),
    now_s=st.just(1000.0),
    requested_by=st.sampled_from(USERS),
    total_nodes=st.integers(1, 8),
    total_gpus=st.integers(1, 64),
    nodes_out_of_service=st.lists(st.sampled_from(["node-0", "node-1", "node-2"]), unique=True),
    namespace=st.sampled_from([None, "prod", "dev"]),
    emergency_override=st.booleans(),
)
# the approval property is about what happens after needs_approval: keep the breaker out of the way
calm_contexts = st.builds(DecisionContext, incident_id=st.just("inc-1"), now_s=st.just(1000.0),
                          requested_by=st.sampled_from(USERS), total_nodes=st.just(8), total_gpus=st.just(64),
                          namespace=st.sampled_from([None, "prod", "dev"]))

# time steps: mostly small (so approvals can succeed), sometimes past any expiry
steps = st.integers(0, 9).flatmap(
    lambda k: st.floats(0, 5000) if k == 0 else st.sampled_from([0.0, 1.0, 30.0]))
OPS = {
    "approve": st.tuples(st.just("approve"), st.sampled_from([*POOL, *POOL, "mallory"]),
                         st.sampled_from(["right", "none", "right", "none", "wrong"]), steps),
    "reject": st.tuples(st.just("reject"), st.sampled_from(USERS), st.just("none"), steps),
    "consume": st.tuples(st.just("consume"), st.just(""), st.sampled_from(["right", "right", "wrong"]),
                         steps),
    "expire": st.tuples(st.just("expire"), st.just(""), st.just("none"), steps),
}
# weighted: approvals and consumes are where the interesting interleavings are; a rejection ends the story
OP_KINDS = ["approve"] * 4 + ["consume"] * 3 + ["reject", "expire"]
ops = st.lists(st.sampled_from(OP_KINDS).flatmap(OPS.__getitem__), min_size=2, max_size=14)


@PROPS
@given(policies(), actions(), contexts)
def test_decision_invariants(policy: Policy, action: Action, ctx: DecisionContext) -> None:
    engine = PolicyEngine(policy)
    d = engine.decide(action, ctx)
    assert d == engine.decide(action, ctx)  # deterministic
    assert d.dry_run == (policy.mode == "dry_run")
    if policy.approval_needed(action.name):
        assert d.verdict != Verdict.allow  # an action that needs approval is never simply allowed
    if d.verdict == Verdict.needs_approval:
        assert ctx.requested_by not in d.approvers
        assert set(d.approvers) <= set(policy.approvers_for(action.name))
        assert len(d.approvers) >= d.approvals_required >= 1
    else:
        assert d.approvers == [] and d.approvals_required == 0


@settings(PROPS, max_examples=300)
@given(policies(), calm_contexts, ops, st.booleans(), st.data())
def test_needs_approval_is_never_consumable_without_a_valid_approval(
        policy: Policy, ctx: DecisionContext, sequence: list[tuple[str, str, str, float]],
        requester_listed: bool, data: st.DataObject) -> None:
    # mostly actions that this policy sends to approval: those are the ones the property is about
    gated = tuple(n for n in ACTION_NAMES if policy.approval_needed(n))
    names = gated if gated and data.draw(st.integers(0, 3)) > 0 else ACTION_NAMES
    action = data.draw(actions(names))
    engine = PolicyEngine(policy)
    decision = engine.decide(action, ctx)
    event(decision.verdict.value)
    if decision.verdict != Verdict.needs_approval:
        return
    req = engine.approval_request(decision, ctx)
    if requester_listed:  # the store must refuse the requester even if a request lists them
        req = req.model_copy(update={"approvers": [*req.approvers, ctx.requested_by]})
    store, audit = ApprovalStore(":memory:"), AuditLog(":memory:")
    store.request(req, requested_by=ctx.requested_by, audit=audit)
    right, wrong = action.digest(), action.model_copy(update={"target": "elsewhere"}).digest()
    allowed = set(decision.approvers)

    # reference model of the approval rules
    status, approved_by, now, consumed, audited = "pending", list[str](), ctx.now_s, 0, 1
    for op, user, digest_kind, dt in sequence:
        now += dt
        live = now < req.expires_at_s
        # a refused approve/reject of a pending request, or consume of an approved one, past its expiry
        # marks it expired
        expires_now = not live and status == ("approved" if op == "consume" else "pending")
        digest = {"right": right, "wrong": wrong, "none": None}[digest_kind]
        try:
            if op == "approve":
                expect = (status == "pending" and live and digest_kind != "wrong" and user != ctx.requested_by
                          and user in req.approvers and user not in approved_by)
                got = store.approve(req.id, by=user, digest=digest, now_s=now, audit=audit)
                audited += 1
                approved_by.append(user)
                status = "approved" if len(approved_by) >= req.approvals_required else "pending"
            elif op == "reject":
                expect = status == "pending" and live and user in req.approvers
                got = store.reject(req.id, by=user, reason="no", now_s=now, audit=audit)
                audited += 1
                status = "rejected"
            elif op == "consume":
                expect = status == "approved" and live and digest_kind == "right"
                got = store.consume(req.id, digest=right if digest_kind == "right" else wrong, now_s=now,
                                    audit=audit)
                audited += 1
                # the safety property itself, checked on the store's own record
                assert got.status == ApprovalStatus.consumed and consumed == 0
                assert len(set(got.approved_by)) >= decision.approvals_required
                assert set(got.approved_by) <= allowed and ctx.requested_by not in got.approved_by
                assert now < got.expires_at_s and got.digest == right
                consumed += 1
                status = "consumed"
                event("consumed")
            else:
                expect = True
                expired = store.expire_due(now, audit=audit)
                if status in ("pending", "approved") and not live:
                    assert [r.id for r in expired] == [req.id]
                    status = "expired"
                    audited += 1
                else:
                    assert expired == []
                continue
            assert expect, f"{op} by {user!r} succeeded but the rules refuse it"
            assert got.status.value == status and got.approved_by == approved_by
        except ApprovalError:
            audited += 1
            assert not expect, f"{op} by {user!r} was refused but the rules allow it"
            if expires_now:
                status = "expired"
        stored = store.get(req.id)
        assert stored is not None and stored.status.value == status and stored.approved_by == approved_by
    assert audit.verify().ok and audit.count() == audited
