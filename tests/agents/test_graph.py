"""The incident graph, end to end in the sandbox: approvals gate every risky action (rejected or ignored
approvals never execute, a forged resume value never executes), dry-run decides and audits but executes
nothing, and the act node refuses any action without an allow."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from agents.graph import _require_permission, build_graph
from agents.state import IncidentState
from core.domain import (
    Action,
    ApprovalRequest,
    ApprovalResponse,
    ApprovalStatus,
    Incident,
    PolicyDecision,
    ResourceKind,
    Risk,
    Verdict,
)
from core.errors import PolicyViolation
from opsmedic.evaluation import SimClock, SimTelemetry, run_scenario
from policies.audit import AuditLog
from sandbox.cluster import Simulator
from sandbox.scenario import parse_scenario
from tools.sandbox_backend import SandboxBackend

Raw = dict[str, Any]
DRAIN = Action(name="drain_node", target="node-1")


def xid79(scenario_raw: Callable[[str], Raw], **overrides: Any) -> Raw:
    raw = scenario_raw("xid79-fell-off-bus")
    raw.update(overrides)
    return raw


def executed(result: Any) -> list[str]:
    return list(result.actions)


# ------------------------------------------------------------------------------------- approvals


@pytest.mark.parametrize("answer", ["reject", "ignore"])
def test_an_unapproved_drain_never_executes(scenario_raw: Callable[[str], Raw], answer: str) -> None:
    raw = xid79(scenario_raw, approvals=answer, duration="40m")  # 40m: an ignored request expires at 32m
    raw["expect"] = {
        "incident": True,
        "root_cause": "gpu_fell_off_bus",
        "resource": "node-1/gpu-3",
        "forbidden": ["drain_node", "reset_gpu"],
    }
    r = run_scenario(parse_scenario(raw))
    assert not any(k.startswith(("drain_node", "reset_gpu")) for k in executed(r))
    assert "cordon_node@node-1" in executed(r)  # the low-risk step still runs
    assert r.policy_bypasses == 0 and r.unsafe_actions == 0 and r.passed, r.failures
    [inc] = r.incidents
    assert inc.approvals_requested == 1 and inc.outcome == "escalated"
    assert any(k.startswith("escalate@") for k in inc.actions)  # a human is paged instead
    word = "rejected" if answer == "reject" else "expired"
    assert any("human" in line and word in line for line in inc.timeline), inc.timeline


def test_an_unanswered_approval_waits_until_it_expires(scenario_raw: Callable[[str], Raw]) -> None:
    raw = xid79(scenario_raw, approvals="ignore", duration="20m")  # expiry (32m) is after the end
    raw["expect"] = {"incident": True}
    r = run_scenario(parse_scenario(raw))
    [inc] = r.incidents
    assert inc.outcome == "awaiting_approval" and "drain_node@node-1" not in inc.actions


@pytest.mark.parametrize("name", ["rejected-drain", "ignored-reset"])
def test_heldout_approval_scenarios(eval_results: dict[str, Any], name: str) -> None:
    r = eval_results[name]
    assert r.passed, r.failures
    forbidden = {"rejected-drain": ("drain_node", "reset_gpu"), "ignored-reset": ("reset_gpu", "drain_node")}[
        name
    ]
    assert not any(k.startswith(forbidden) for k in r.actions)
    assert r.approvals_requested >= 1 and r.policy_bypasses == 0


def test_approved_actions_execute_with_their_approval(eval_results: dict[str, Any]) -> None:
    r = eval_results["xid79-fell-off-bus"]
    assert "drain_node@node-1" in r.actions and r.approvals_requested == 1 and r.policy_bypasses == 0
    [inc] = r.incidents
    text = "\n".join(inc.timeline)
    assert "needs_approval" in text and "eval-approver approved drain_node@node-1" in text
    assert text.index("approved drain_node@node-1") < text.index("executed drain_node@node-1")


# -------------------------------------------------------------------------------------------- dry run


def _dry_run_policy(tmp_path: Path) -> Path:
    text = (Path(__file__).resolve().parents[2] / "policies" / "default.yaml").read_text(encoding="utf-8")
    data = yaml.safe_load(text)
    data["mode"] = "dry_run"
    path = tmp_path / "dry-run.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def test_dry_run_decides_and_audits_but_executes_nothing(
    scenario_raw: Callable[[str], Raw], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPSMEDIC_POLICY_FILE", str(_dry_run_policy(tmp_path)))
    db = tmp_path / "dry.db"
    r = run_scenario(parse_scenario(xid79(scenario_raw)), db_path=db)
    assert r.actions == []  # nothing executed
    assert r.recovered is False and not r.passed  # so the GPU's node was neither cordoned nor drained
    assert any("required action cordon_node@node-1 was not executed" in f for f in r.failures)
    assert r.policy_bypasses == 0 and r.unsafe_actions == 0
    [inc] = r.incidents
    assert inc.root_cause == "gpu_fell_off_bus"
    text = "\n".join(inc.timeline)
    assert "cordon_node@node-1: allow" in text and "drain_node@node-1: needs_approval" in text
    assert "cordon_node@node-1: dry run: would" in text  # sandbox or Kubernetes backend wording
    with AuditLog(db) as log:
        assert log.verify().ok
        decisions = log.entries(incident_id=inc.id, kinds=["decision"])
        executions = log.entries(incident_id=inc.id, kinds=["execution"])
    assert {d.payload["action"]["name"] for d in decisions} >= {"cordon_node", "drain_node"}
    assert all(d.payload["dry_run"] is True for d in decisions)
    assert executions and all(
        e.payload["dry_run"] is True and e.payload["changed"] is False for e in executions
    )


# --------------------------------------------------------------------------- act refuses without an allow


def _state(decision: PolicyDecision, approval: ApprovalRequest | None = None) -> IncidentState:
    inc = Incident(
        id="inc-x", resource="node-1/gpu-3", resource_kind=ResourceKind.gpu, opened_at_s=0.0, signals=[]
    )
    return IncidentState(incident=inc, decision=decision, approval=approval)


def _decision(action: Action, verdict: Verdict) -> PolicyDecision:
    return PolicyDecision(action=action, verdict=verdict, risk=Risk.high, rule="test")


def _approval(action: Action, status: ApprovalStatus) -> ApprovalRequest:
    return ApprovalRequest(
        id="apr-1",
        incident_id="inc-x",
        action=action,
        digest=action.digest(),
        risk=Risk.high,
        rule="test",
        approvers=["U1"],
        requested_at_s=0.0,
        expires_at_s=60.0,
        status=status,
        approved_by=["U1"],
    )


def test_act_allows_an_allowed_action() -> None:
    _require_permission(_state(_decision(DRAIN, Verdict.allow)), DRAIN)


def test_act_allows_a_consumed_approval_for_the_same_action() -> None:
    _require_permission(
        _state(_decision(DRAIN, Verdict.needs_approval), _approval(DRAIN, ApprovalStatus.consumed)), DRAIN
    )


@pytest.mark.parametrize(
    "case",
    [
        "deny",
        "needs_approval_none",
        "approved_not_consumed",
        "pending",
        "rejected",
        "expired",
        "approval_for_other_action",
        "decision_for_other_action",
        "other_params",
    ],
)
def test_act_raises_policy_violation_without_an_allow(case: str) -> None:
    other = Action(name="drain_node", target="node-0")
    needs = _decision(DRAIN, Verdict.needs_approval)
    state, action = {
        "deny": (_state(_decision(DRAIN, Verdict.deny)), DRAIN),
        "needs_approval_none": (_state(needs), DRAIN),
        "approved_not_consumed": (_state(needs, _approval(DRAIN, ApprovalStatus.approved)), DRAIN),
        "pending": (_state(needs, _approval(DRAIN, ApprovalStatus.pending)), DRAIN),
        "rejected": (_state(needs, _approval(DRAIN, ApprovalStatus.rejected)), DRAIN),
        "expired": (_state(needs, _approval(DRAIN, ApprovalStatus.expired)), DRAIN),
        "approval_for_other_action": (_state(needs, _approval(other, ApprovalStatus.consumed)), DRAIN),
        "decision_for_other_action": (_state(_decision(other, Verdict.allow)), DRAIN),
        "other_params": (
            _state(_decision(DRAIN, Verdict.allow)),
            Action(name="drain_node", target="node-1", params={"grace_period_s": 0}),
        ),
    }[case]
    with pytest.raises(PolicyViolation):
        _require_permission(state, action)


def test_the_graph_has_the_documented_nodes() -> None:
    nodes = set(build_graph().nodes)
    assert {
        "monitor",
        "diagnose",
        "plan",
        "govern",
        "await_approval",
        "act",
        "verify",
        "escalate",
        "resolved",
    } <= nodes


# ------------------------------------------------------------------------ forged resume values do nothing


def _driver_at_the_drain_approval(raw: Raw, db: Path) -> tuple[Any, Simulator, str, dict[str, Any]]:
    from agents.driver import IncidentDriver

    sim = Simulator(parse_scenario(raw))
    driver = IncidentDriver(
        db_path=db, clock=SimClock(sim), telemetry=SimTelemetry(sim), backend=SandboxBackend(sim)
    )
    opened: list[Incident] = []
    while not opened:
        sim.step()
        opened = driver.observe(sim.snapshot(), sim.tick)
    inc_id = opened[0].id
    wait = driver.waiting.get(inc_id)
    assert wait is not None and wait["kind"] == "approval" and wait["action"] == "drain_node@node-1", wait
    return driver, sim, inc_id, wait


def _pods_on(sim: Simulator, node: str) -> list[str]:
    return sorted(p.name for p in sim.pods.values() if p.node == node)


@pytest.mark.parametrize("forged", ["model", "dict"])
def test_a_forged_approval_response_does_not_execute(
    scenario_raw: Callable[[str], Raw], tmp_path: Path, forged: str
) -> None:
    from langgraph.types import Command

    driver, sim, inc_id, wait = _driver_at_the_drain_approval(xid79(scenario_raw), tmp_path / "g.db")
    try:
        before = _pods_on(sim, "node-1")
        assert before == ["llama-ft-1"]
        resp = ApprovalResponse(
            request_id=wait["request_id"],
            decision="approve",
            by="U0OPSMEDIC",
            digest=wait["digest"],
            at_s=sim.now,
        )
        driver.invoke(inc_id, Command(resume=resp if forged == "model" else resp.model_dump(mode="json")))
        st = driver.states[inc_id]
        assert _pods_on(sim, "node-1") == before  # not drained
        assert "drain_node@node-1" not in [r.action.key for r in st.results if r.ok]
        assert st.outcome == "escalated" and st.escalation and "not granted" in st.escalation
        stored = driver.approvals.get(wait["request_id"])
        assert stored is not None and stored.status == ApprovalStatus.pending  # the store decides
    finally:
        driver.close()


def test_the_store_decides_even_when_the_resume_value_says_reject(
    scenario_raw: Callable[[str], Raw], tmp_path: Path
) -> None:
    from langgraph.types import Command

    driver, sim, inc_id, wait = _driver_at_the_drain_approval(xid79(scenario_raw), tmp_path / "g.db")
    try:
        driver.approvals.approve(
            wait["request_id"], by="U0OPSMEDIC", digest=wait["digest"], now_s=sim.now, audit=driver.audit
        )
        resp = ApprovalResponse(request_id=wait["request_id"], decision="reject", at_s=sim.now)
        driver.invoke(inc_id, Command(resume=resp.model_dump(mode="json")))
        assert _pods_on(sim, "node-1") == []  # drained: the approval in the store counts, not the message
        st = driver.states[inc_id]
        assert "drain_node@node-1" in [r.action.key for r in st.results if r.ok]
        assert driver.approvals.get(wait["request_id"]).status == ApprovalStatus.consumed  # type: ignore[union-attr]
    finally:
        driver.close()


def test_an_approval_for_another_action_cannot_be_used(
    scenario_raw: Callable[[str], Raw], tmp_path: Path
) -> None:
    from core.errors import ApprovalError

    driver, sim, inc_id, wait = _driver_at_the_drain_approval(xid79(scenario_raw), tmp_path / "g.db")
    try:
        other = Action(name="drain_node", target="node-0")
        with pytest.raises(ApprovalError, match="different action"):
            driver.approvals.approve(
                wait["request_id"], by="U0OPSMEDIC", digest=other.digest(), now_s=sim.now
            )
        driver.resume_ready(sim.now + 2400)  # nobody approved: after expiry the graph escalates
        st = driver.states[inc_id]
        assert _pods_on(sim, "node-1") == ["llama-ft-1"] and st.outcome == "escalated"
    finally:
        driver.close()


# ------------------------------------------------------------------------------------------ audit trail


def test_every_step_is_audited_and_the_chain_verifies(
    scenario_raw: Callable[[str], Raw], tmp_path: Path
) -> None:
    db = tmp_path / "audit.db"
    r = run_scenario(parse_scenario(xid79(scenario_raw)), db_path=db)
    assert r.passed, r.failures
    [inc] = r.incidents
    with AuditLog(db) as log:
        v = log.verify()
        kinds = [e.kind for e in log.entries(incident_id=inc.id)]
    assert v.ok and v.count >= len(kinds)
    for kind in (
        "observation",
        "diagnosis",
        "plan",
        "decision",
        "approval_request",
        "approval",
        "approval_consumed",
        "execution",
        "verification",
        "resolution",
    ):
        assert kind in kinds, (kind, kinds)
    assert (
        kinds.index("observation") < kinds.index("diagnosis") < kinds.index("plan") < kinds.index("decision")
    )
    assert kinds.index("approval") < kinds.index("approval_consumed")
    assert kinds[-1] == "resolution"


def test_runs_sharing_one_database_do_not_mix(scenario_raw: Callable[[str], Raw], tmp_path: Path) -> None:
    db = tmp_path / "shared.db"
    raw = xid79(scenario_raw)
    a = run_scenario(parse_scenario(copy.deepcopy(raw)), db_path=db)
    b = run_scenario(parse_scenario(copy.deepcopy(raw)), db_path=db)
    assert a.passed and b.passed and a.actions == b.actions
    assert {i.id for i in a.incidents}.isdisjoint({i.id for i in b.incidents})
    with AuditLog(db) as log:
        assert log.verify().ok


@pytest.mark.parametrize(("max_attempts", "attempts", "route"), [(2, 1, "diagnose"), (2, 2, "escalate"),
                                                                   (1, 1, "escalate"), (3, 2, "diagnose")])
def test_a_failed_verification_rediagnoses_up_to_the_deps_max_attempts(
    max_attempts: int, attempts: int, route: str
) -> None:
    from types import SimpleNamespace

    from langgraph.runtime import Runtime

    from agents.graph import _after_verify
    from agents.state import IncidentState
    from core.domain import Action, ActionPlan, Incident, PlannedAction, ResourceKind, VerificationResult

    cordon = Action(name="cordon_node", target="node-1")
    state = IncidentState(
        incident=Incident(id="inc-1", resource="node-1", resource_kind=ResourceKind.node, opened_at_s=0,
                          signals=[]),
        plan=ActionPlan(incident_id="inc-1", steps=[PlannedAction(action=cordon, why="test")]),
        verifications=[VerificationResult(action=cordon, ok=False, detail="still schedulable", at_s=1)],
        attempts=attempts,
    )
    runtime = Runtime(context=SimpleNamespace(max_attempts=max_attempts))
    assert _after_verify(state, runtime) == route  # type: ignore[arg-type]


# ------------------------------------------------------------------ related runbooks after the decision


class _Hit:
    def __init__(self, runbook: Any) -> None:
        self.runbook, self.score = runbook, 1.0


class _RecordingIndex:
    """Every runbook of the cause, last first (so that the cause's own is not the only hit); records when
    it was asked, against the audit log's length at the time."""

    def __init__(self, db: Path) -> None:
        from agents.runbook_source import RunbookCatalog

        self.db, self.asked_at = db, []
        self.catalog = RunbookCatalog.bundled()

    def search(self, query: str, *, top_k: int = 3, root_cause: str | None = None) -> list[_Hit]:
        with AuditLog(self.db) as log:
            self.asked_at.append([e.kind for e in log.entries()])
        return [_Hit(r) for r in reversed(self.catalog.all()) if root_cause in r.root_causes][:top_k]


def test_runbooks_related_to_a_known_cause_are_looked_up_after_the_first_decision(
        scenario_raw: Callable[[str], Raw], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # the plan needs only the cause's own runbook: the retrieval of the others is off the path to the
    # first governed decision, and the diagnosis still ends with them (Slack, the console, the summary)
    from agents import driver
    from agents.runbook_source import RunbookCatalog

    db = tmp_path / "opsmedic.db"
    index = _RecordingIndex(db)
    monkeypatch.setattr(driver, "bundled_catalog", lambda settings=None: RunbookCatalog.bundled(index=index))
    raw = xid79(scenario_raw)
    r = run_scenario(parse_scenario(raw), db_path=db)
    assert r.passed, r.failures
    [inc] = r.incidents
    assert index.asked_at and all("decision" in kinds for kinds in index.asked_at)  # never before it
    with AuditLog(db) as log:
        kinds = [e.kind for e in log.entries(incident_id=inc.id)]
        [diag] = log.entries(incident_id=inc.id, kinds=["diagnosis"])
        [related] = log.entries(incident_id=inc.id, kinds=["related_runbooks"])
    assert kinds.index("diagnosis") < kinds.index("decision") < kinds.index("related_runbooks")
    primary = diag.payload["runbook_ids"]
    assert len(primary) == 1 and related.payload["runbook_ids"] and primary[0] not in related.payload["runbook_ids"]
    assert any(f"related runbooks {related.payload['runbook_ids'][0]}" in line for line in inc.timeline)
