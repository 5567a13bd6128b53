"""The LLM behind the diagnostician and remediator, against the scripted fake server: a good answer is
accepted, and a malformed answer, a hallucinated action or target, a disagreement, a timeout, HTTP errors
and an endpoint that is down all end with the deterministic result and a recorded reason."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable
from typing import Any

import pytest
from fakes.fake_openai import (
    ChatRequest,
    FakeOpenAI,
    FakeReply,
    agreeable,
    error,
    json_reply,
    slow,
    text,
    tool_call,
)
from llm_support import Case
from prometheus_client import REGISTRY

from agents import prompts
from agents.llm import (
    Llm,
    LlmConfig,
    PlanProposal,
    StepProposal,
    build_llm,
    llm_diagnose,
    llm_plan,
    validate_plan,
)
from core.settings import Settings


def baseline_of(req: ChatRequest) -> dict[str, Any]:
    blocks = prompts_blocks(req)
    return json.loads(prompts.unescape(blocks["baseline"]))


def prompts_blocks(req: ChatRequest) -> dict[str, str]:
    from fakes.fake_openai import data_blocks

    return data_blocks("\n".join(req.text_of("user")))


# ------------------------------------------------------------------------------------- good answers


def test_good_diagnosis_after_read_tools_is_accepted(fake: FakeOpenAI, make_llm: Callable[..., Llm],
                                                     xid79_case: Case) -> None:
    c = xid79_case

    def script(req: ChatRequest) -> FakeReply:
        if req.index == 0:
            return tool_call("gpu_metrics", {"gpu": "node-1/gpu-3"})
        if req.index == 1:
            return tool_call("pod_logs", {"pod": "llama-ft-1", "lines": 5})
        answer = baseline_of(req)
        answer["summary"] = "XID 79: node-1/gpu-3 fell off the PCIe bus; the node must leave service."
        answer["evidence"].append({"kind": "nvml", "resource": "node-1/gpu-3", "detail": "GPU absent from NVML"})
        answer["runbook_ids"].append("gpu-xid119-gsp-timeout")
        return tool_call("submit_diagnosis", answer)

    fake.set_script(script)
    out = llm_diagnose(make_llm(), c.incident, c.snapshot, c.finding, c.catalog, deterministic=c.diagnosis)
    assert out.accepted, out.reason
    d = out.chosen(c.diagnosis)
    assert d.source == "llm"
    assert (d.root_cause, d.resource) == (c.diagnosis.root_cause, c.diagnosis.resource)
    assert d.runbook_ids[0] == c.diagnosis.runbook_ids[0]  # the plan's runbook cannot be changed this way
    assert "gpu-xid119-gsp-timeout" in d.runbook_ids
    assert d.summary.startswith("XID 79")
    assert any(e.kind == "llm:nvml" for e in d.evidence)
    assert out.usage.calls == 3 and out.usage.tools_called == ["gpu_metrics", "pod_logs"]
    assert out.usage.prompt_tokens > 0 and out.usage.completion_tokens > 0
    # tool results came back to the model as delimited data
    tool_msgs = [m for m in fake.requests[1].messages if m.get("role") == "tool"]
    assert tool_msgs and tool_msgs[0]["content"].startswith('<data name="tool_result" source="gpu_metrics">')
    payload = out.audit_payload()
    assert payload["verdict"] == "accepted" and payload["usage"]["total_tokens"] == out.usage.total_tokens
    json.dumps(payload)  # the audit log stores it as JSON


def test_good_plan_with_a_tuned_parameter_is_accepted(fake: FakeOpenAI, make_llm: Callable[..., Llm],
                                                      xid79_case: Case) -> None:
    c = xid79_case

    def script(req: ChatRequest) -> FakeReply:
        plan = baseline_of(req)
        for s in plan["steps"]:
            if s["action"] == "drain_node":
                s["params"] = {"grace_period_s": 120}
                s["why"] = "move the training job off the broken node"
        plan["rationale"] = "the runbook, with a longer grace period for the checkpoint"
        return tool_call("submit_plan", plan)

    fake.set_script(script)
    out = llm_plan(make_llm(), c.incident, c.diagnosis, c.runbook, c.snapshot, c.plan)
    assert out.accepted, out.reason
    plan = out.chosen(c.plan)
    assert [s.action.key for s in plan.steps] == [s.action.key for s in c.plan.steps]
    drain = next(s for s in plan.steps if s.action.name == "drain_node")
    assert drain.action.given_params() == {"grace_period_s": 120}
    assert drain.why == "move the training job off the broken node"
    assert "grace_period_s" in out.reason


def test_plain_text_answer_then_structured_output(fake: FakeOpenAI, make_llm: Callable[..., Llm],
                                                  xid79_case: Case) -> None:
    """A model that answers in prose is asked once more through response_format json_schema."""
    c = xid79_case
    fake.set_script(lambda req: json_reply(baseline_of(req)) if req.json_schema else text("It is a bad GPU."))
    out = llm_diagnose(make_llm(), c.incident, c.snapshot, c.finding, c.catalog, deterministic=c.diagnosis)
    assert out.accepted, out.reason
    assert fake.requests[-1].json_schema is not None
    assert fake.requests[-1].json_schema.get("name") == "DiagnosisProposal"


# --------------------------------------------------------------------------------- unsafe or wrong


def test_malformed_answers_fall_back(fake: FakeOpenAI, make_llm: Callable[..., Llm], xid79_case: Case) -> None:
    c = xid79_case
    fake.set_script([tool_call("submit_diagnosis", "{not json"),
                     tool_call("submit_diagnosis", {"root_cause": "gpu_fell_off_bus"})])  # then repeats
    out = llm_diagnose(make_llm(max_steps=3), c.incident, c.snapshot, c.finding, c.catalog,
                       deterministic=c.diagnosis)
    assert not out.accepted and out.error and "malformed" in out.error
    assert out.chosen(c.diagnosis) == c.diagnosis
    assert out.usage.steps == 4  # three turns and one structured-output request, no more


def test_disagreeing_diagnosis_is_rejected_and_recorded(fake: FakeOpenAI, make_llm: Callable[..., Llm],
                                                        xid79_case: Case) -> None:
    c = xid79_case

    def script(req: ChatRequest) -> FakeReply:
        d = baseline_of(req)
        d["root_cause"] = "gpu_thermal_throttle"
        return tool_call("submit_diagnosis", d)

    fake.set_script(script)
    out = llm_diagnose(make_llm(), c.incident, c.snapshot, c.finding, c.catalog, deterministic=c.diagnosis)
    assert not out.accepted and out.error is None
    assert "gpu_thermal_throttle" in out.reason and "gpu_fell_off_bus" in out.reason
    assert out.chosen(c.diagnosis) is c.diagnosis
    assert out.audit_payload()["submitted"]["root_cause"] == "gpu_thermal_throttle"


@pytest.mark.parametrize(("step", "expect"), [
    ({"action": "delete_namespace", "target": "node-1"}, "not a whitelisted action"),
    ({"action": "drain_node", "target": "node-9"}, "does not exist"),
    ({"action": "drain_node", "target": "node-0"}, "applies drain_node to node-1, not node-0"),
    ({"action": "reset_gpu", "target": "node-1/gpu-3"}, "does not prescribe reset_gpu"),
    ({"action": "drain_node", "target": "node-1", "params": {"grace_period_s": -5}}, "invalid parameters"),
])
def test_hallucinated_action_or_target_is_rejected(fake: FakeOpenAI, make_llm: Callable[..., Llm],
                                                   xid79_case: Case, step: dict[str, Any], expect: str) -> None:
    c = xid79_case

    def script(req: ChatRequest) -> FakeReply:
        plan = baseline_of(req)
        plan["steps"].append(step)
        return tool_call("submit_plan", plan)

    fake.set_script(script)
    out = llm_plan(make_llm(), c.incident, c.diagnosis, c.runbook, c.snapshot, c.plan)
    assert not out.accepted
    assert expect in out.reason
    assert out.chosen(c.plan) is c.plan


def test_plan_that_leaves_out_a_required_step_is_rejected(xid79_case: Case) -> None:
    c = xid79_case
    only_cordon = PlanProposal(steps=[StepProposal(action="cordon_node", target="node-1")])
    plan, reason = validate_plan(only_cordon, c.plan, c.runbook, c.snapshot, c.incident)
    assert plan is None and "leaves out drain_node@node-1" in reason


def test_rollback_to_a_version_that_does_not_exist_is_rejected(rollback_case: Case) -> None:
    c = rollback_case
    assert [s.action.key for s in c.plan.steps][0] == "rollback_model@fraud-model"
    for v, ok in [(9, False), (4, False), (2, True)]:
        steps = [StepProposal(action=s.action.name, target=s.action.target,
                              params={"to_version": v} if s.action.name == "rollback_model" else {})
                 for s in c.plan.steps]
        plan, reason = validate_plan(PlanProposal(steps=steps), c.plan, c.runbook, c.snapshot, c.incident)
        assert (plan is not None) == ok, reason


def test_made_up_tools_are_refused_not_run(fake: FakeOpenAI, make_llm: Callable[..., Llm], xid79_case: Case) -> None:
    """A model cannot act by calling a tool it was not given (e.g. one it read about in a log)."""
    c = xid79_case
    fake.set_script(lambda req: tool_call("drain_node", {"node": "node-0"}) if req.index == 0 else agreeable(req))
    out = llm_diagnose(make_llm(), c.incident, c.snapshot, c.finding, c.catalog, deterministic=c.diagnosis)
    assert out.accepted
    assert out.usage.tools_called == ["refused:drain_node"]
    reply = [m for m in fake.requests[1].messages if m.get("role") == "tool"][0]["content"]
    assert "there is no tool 'drain_node'" in reply


# ----------------------------------------------------------------------------------- availability


def test_timeout_falls_back_within_the_budget(fake: FakeOpenAI, make_llm: Callable[..., Llm],
                                              xid79_case: Case) -> None:
    c = xid79_case
    fake.set_script([slow(3.0)])
    t0 = time.monotonic()
    out = llm_diagnose(make_llm(request_timeout_s=0.3, max_attempts=2), c.incident, c.snapshot, c.finding,
                       c.catalog, deterministic=c.diagnosis)
    assert time.monotonic() - t0 < 2.5
    assert not out.accepted and out.error and "timed out" in out.error
    assert out.chosen(c.diagnosis) is c.diagnosis
    assert len(fake.requests) == 2  # retried once, then gave up


def test_server_error_is_retried(fake: FakeOpenAI, make_llm: Callable[..., Llm], xid79_case: Case) -> None:
    c = xid79_case
    replies: list[Any] = [error(500), error(503)]
    fake.set_script(lambda req: replies[req.index] if req.index < len(replies) else agreeable(req))
    before = REGISTRY.get_sample_value("opsmedic_llm_requests_total", {"purpose": "plan", "result": "error"}) or 0
    out = llm_plan(make_llm(max_attempts=3), c.incident, c.diagnosis, c.runbook, c.snapshot, c.plan)
    assert out.accepted, out.reason
    after = REGISTRY.get_sample_value("opsmedic_llm_requests_total", {"purpose": "plan", "result": "error"})
    assert after == before + 2


def test_persistent_server_error_falls_back(fake: FakeOpenAI, make_llm: Callable[..., Llm], xid79_case: Case) -> None:
    c = xid79_case
    fake.set_script([error(500, "model overloaded")])
    out = llm_plan(make_llm(max_attempts=2), c.incident, c.diagnosis, c.runbook, c.snapshot, c.plan)
    assert not out.accepted and out.error and "HTTP 500" in out.error and "model overloaded" in out.error


def _closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = int(s.getsockname()[1])
    s.close()
    return port


def test_endpoint_down_is_a_clear_message_and_is_skipped_for_a_while(xid79_case: Case) -> None:
    c = xid79_case
    llm = Llm(LlmConfig(base_url=f"http://127.0.0.1:{_closed_port()}/v1", model="m", api_key="k",
                        max_attempts=2, down_cooldown_s=60))
    out = llm_diagnose(llm, c.incident, c.snapshot, c.finding, c.catalog, deterministic=c.diagnosis)
    assert not out.accepted and out.error and "is unreachable" in out.error and "127.0.0.1" in out.error
    assert out.chosen(c.diagnosis) is c.diagnosis
    t0 = time.monotonic()
    again = llm_plan(llm, c.incident, c.diagnosis, c.runbook, c.snapshot, c.plan)
    assert time.monotonic() - t0 < 0.2
    assert again.error and "skipped" in again.error and again.usage.calls == 0


def test_token_budget_stops_the_loop(fake: FakeOpenAI, make_llm: Callable[..., Llm], xid79_case: Case) -> None:
    c = xid79_case
    fake.set_script([tool_call("resource_status", {"resource": "node-1"}, usage=(900, 100))])
    out = llm_diagnose(make_llm(max_tokens=2500), c.incident, c.snapshot, c.finding, c.catalog,
                       deterministic=c.diagnosis)
    assert not out.accepted and out.error and "token budget" in out.error
    assert out.usage.total_tokens == 3000 and out.usage.calls == 3


def test_cost_accounting(fake: FakeOpenAI, make_llm: Callable[..., Llm], xid79_case: Case) -> None:
    c = xid79_case
    fake.set_script(lambda req: FakeReply(**{**agreeable(req).__dict__, "usage": (1000, 200)}))
    before = REGISTRY.get_sample_value("opsmedic_llm_cost_usd_total", {"purpose": "diagnosis"}) or 0.0
    out = llm_diagnose(make_llm(price_in_per_mtok=2.5, price_out_per_mtok=10.0), c.incident, c.snapshot,
                       c.finding, c.catalog, deterministic=c.diagnosis)
    assert out.accepted
    assert out.usage.prompt_tokens == 1000 and out.usage.completion_tokens == 200
    assert out.usage.cost_usd == pytest.approx(0.0045)
    after = REGISTRY.get_sample_value("opsmedic_llm_cost_usd_total", {"purpose": "diagnosis"})
    assert after == pytest.approx(before + 0.0045)


def test_no_llm_is_a_no_op(xid79_case: Case) -> None:
    c = xid79_case
    out = llm_plan(None, c.incident, c.diagnosis, c.runbook, c.snapshot, c.plan)
    assert not out.accepted and out.chosen(c.plan) is c.plan


def test_build_llm_is_off_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    assert build_llm(Settings()) is None
    assert build_llm(Settings(llm_base_url="http://127.0.0.1:9/v1")) is None
    monkeypatch.setenv("OPSMEDIC_LLM_PRICE_IN_PER_MTOK", "3")
    monkeypatch.setenv("OPSMEDIC_LLM_MAX_STEPS", "4")
    llm = build_llm(Settings(llm_base_url="http://127.0.0.1:9/v1", llm_model="m"))
    assert llm is not None and llm.config.price_in_per_mtok == 3.0 and llm.config.max_steps == 4
    assert llm.config.api_key == "test-key-not-real"  # from OPENAI_API_KEY, never from a file
