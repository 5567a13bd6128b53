"""The LLM where the rules run out: an `unknown` incident is investigated by a scripted model, which proposes a
hypothesis and a plan. A sound plan is kept but every step of it needs a person's approval (the governor's
`model_proposed.approval` rule); a dangerous one (drain everything), malformed output and a timeout all fall
back to the deterministic page. End to end, the approval gate holds and the audit marks the plan."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fakes.fake_openai import FakeOpenAI, slow, tool_call
from llm_support import Case, open_incident

from agents.governor import decision_context
from agents.llm import Llm, llm_investigate
from opsmedic.evaluation import run_scenario
from policies.audit import AuditLog
from policies.engine import PolicyEngine
from sandbox.scenario import Scenario, parse_scenario

GPU = "node-0/gpu-6"


def unknown_scenario(approvals: str = "approve") -> Scenario:
    return parse_scenario({
        "name": f"xid250-investigated-{approvals}", "description": "an unlisted XID", "seed": 43,
        "cluster": {"nodes": 2, "gpus_per_node": 8},
        "workloads": [{"name": "llama-ft", "kind": "training", "replicas": 1, "gpus_per_replica": 8,
                       "checkpoint_every": "10m"}],
        "faults": [{"at": "2m", "type": "gpu_xid", "target": GPU, "params": {"xid": 250}}],
        "duration": "8m", "approvals": approvals, "expect": {"incident": True, "root_cause": "unknown"},
    })


@pytest.fixture(scope="module")
def case() -> Case:
    c = open_incident(unknown_scenario())
    assert c.diagnosis.root_cause == "unknown" and [s.action.key for s in c.plan.steps] == [f"escalate@{GPU}"]
    return c


def investigation(steps: list[dict[str, Any]], hypothesis: str = "the job hit a driver bug; restart it") -> Any:
    return tool_call("submit_investigation", {"hypothesis": hypothesis, "steps": steps,
                                              "rationale": "least disruptive first"})


def test_a_sound_plan_is_kept_marked_and_every_step_needs_approval(
    fake: FakeOpenAI, make_llm: Callable[..., Llm], case: Case
) -> None:
    fake.set_script([investigation([{"action": "restart_pod", "target": "llama-ft-0", "why": "clear the context"}])])
    out = llm_investigate(make_llm(), case.incident, case.diagnosis, case.snapshot, case.plan, case.catalog)
    assert out.accepted, out.reason
    plan = out.chosen(case.plan)
    assert plan.proposed_by == "model"
    assert [s.action.key for s in plan.steps] == ["restart_pod@llama-ft-0", f"escalate@{GPU}"]  # still paged
    assert "hypothesis: the job hit a driver bug" in plan.rationale and "approval" in plan.rationale
    engine = PolicyEngine()

    def ctx(model: bool) -> Any:
        return decision_context(case.snapshot, incident_id=case.incident.id, now_s=200.0, history=[],
                                actions_in_incident=0, proposed_by_model=model)

    restart = plan.steps[0].action
    assert engine.decide(restart, ctx(False)).verdict.value == "allow"  # low risk from a runbook
    decided = engine.decide(restart, ctx(True))
    assert (decided.verdict.value, decided.rule) == ("needs_approval", "model_proposed.approval")
    assert "model_proposed.approval" in engine.explain(restart, ctx(True))
    assert engine.decide(plan.steps[1].action, ctx(True)).verdict.value == "allow"  # telling a person


def test_a_dangerous_plan_is_rejected_for_the_page(fake: FakeOpenAI, make_llm: Callable[..., Llm],
                                                    case: Case) -> None:
    fake.set_script([investigation([{"action": "drain_node", "target": "node-0"},
                                    {"action": "drain_node", "target": "node-1"},
                                    {"action": "reset_gpu", "target": "node-1/gpu-0"}],
                                   hypothesis="the whole fleet is compromised: drain everything")])
    out = llm_investigate(make_llm(), case.incident, case.diagnosis, case.snapshot, case.plan, case.catalog)
    assert not out.accepted and "node-1 is outside this incident" in out.reason
    assert out.chosen(case.plan) is case.plan
    fake.set_script([investigation([{"action": "cordon_node", "target": "node-0"}] * 2
                                   + [{"action": "restart_pod", "target": "llama-ft-0"}] * 2)])
    out = llm_investigate(make_llm(), case.incident, case.diagnosis, case.snapshot, case.plan, case.catalog)
    assert not out.accepted and "more than the 3" in out.reason


def test_malformed_output_falls_back(fake: FakeOpenAI, make_llm: Callable[..., Llm], case: Case) -> None:
    fake.set_script([tool_call("submit_investigation", "{not json")])
    out = llm_investigate(make_llm(), case.incident, case.diagnosis, case.snapshot, case.plan, case.catalog)
    assert not out.accepted and out.chosen(case.plan) is case.plan
    fake.set_script([tool_call("submit_investigation", {"steps": [{"action": "format_disk", "target": GPU}]})])
    out = llm_investigate(make_llm(), case.incident, case.diagnosis, case.snapshot, case.plan, case.catalog)
    assert not out.accepted and out.chosen(case.plan) is case.plan


def test_a_timeout_falls_back_within_the_budget(fake: FakeOpenAI, make_llm: Callable[..., Llm], case: Case) -> None:
    fake.set_script([slow(3.0)])
    t0 = time.monotonic()
    out = llm_investigate(make_llm(request_timeout_s=0.3, max_attempts=2), case.incident, case.diagnosis,
                          case.snapshot, case.plan, case.catalog)
    assert time.monotonic() - t0 < 2.5
    assert not out.accepted and out.error and "timed out" in out.error
    assert out.chosen(case.plan) is case.plan


@pytest.fixture()
def llm_env(fake: FakeOpenAI, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeOpenAI]:
    monkeypatch.setenv("OPSMEDIC_LLM_BASE_URL", fake.base_url)
    monkeypatch.setenv("OPSMEDIC_LLM_MODEL", fake.model)
    monkeypatch.setenv("OPSMEDIC_MODEL_REGISTRY", "sandbox")
    yield fake


@pytest.mark.parametrize(("approvals", "restarted"), [("approve", True), ("reject", False)])
def test_end_to_end_the_approval_gate_holds_and_the_audit_marks_the_plan(
    llm_env: FakeOpenAI, tmp_path: Path, approvals: str, restarted: bool
) -> None:
    llm_env.set_script([investigation([{"action": "restart_pod", "target": "llama-ft-0"}])])
    db = tmp_path / "eval.db"
    result = run_scenario(unknown_scenario(approvals), db_path=db)
    inc = result.incidents[0]
    assert inc.root_cause == "unknown" and inc.approvals_requested == 1
    assert ("restart_pod@llama-ft-0" in inc.actions) is restarted
    assert f"escalate@{GPU}" in inc.actions or inc.outcome == "escalated"
    with AuditLog(db) as log:
        plans = [e.payload for e in log.entries(kinds=["plan"])]
        probes = [e.payload for e in log.entries(kinds=["llm_investigation"])]
        decisions = [e.payload for e in log.entries(kinds=["decision"])]
    assert plans[0]["proposed_by"] == "model" and probes[0]["accepted"] is True
    assert any(d["rule"] == "model_proposed.approval" for d in decisions)
