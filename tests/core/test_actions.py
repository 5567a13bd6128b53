"""The action catalogue (`core.actions`): exactly the whitelisted actions, their facts (risk, reversibility,
target, capacity, settle times), and typed parameters on `Action` that refuse anything else while keeping
today's serialised form and digests."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pytest
from pydantic import ValidationError

from core.actions import (
    ACTION_TOOLS,
    DrainParams,
    EscalateParams,
    MessageParams,
    ScaleParams,
    get_tool,
    validate_action,
)
from core.domain import ACTION_NAMES, Action, ResourceKind, Risk, canonical_json
from core.errors import PermanentToolError, ToolError


def test_the_registry_declares_exactly_the_whitelisted_actions() -> None:
    assert set(ACTION_TOOLS) == set(ACTION_NAMES)
    assert ACTION_NAMES == (
        "restart_pod",
        "reschedule_pod",
        "cordon_node",
        "uncordon_node",
        "drain_node",
        "reset_gpu",
        "scale_deployment",
        "pause_job",
        "resume_job",
        "rollback_model",
        "retrain_model",
        "promote_model",
        "abort_rollout",
        "notify",
        "escalate",
    )  # SCENARIOS.md
    for name, spec in ACTION_TOOLS.items():
        assert spec.name == name and spec.kind == "act" and spec.verify and spec.summary


@pytest.mark.parametrize("name", ["reboot_node", "delete_namespace", "kubectl", "", "drain_node "])
def test_anything_else_is_refused(name: str) -> None:
    with pytest.raises(PermanentToolError, match="not in the whitelist"):
        get_tool(name)


def test_an_action_outside_the_whitelist_cannot_even_be_built() -> None:
    with pytest.raises(ValidationError):
        Action(name="reboot_node", target="node-0")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("name", "risk", "reversible", "target", "capacity"),
    [
        ("restart_pod", Risk.low, True, ResourceKind.pod, False),
        ("reschedule_pod", Risk.medium, True, ResourceKind.pod, False),
        ("cordon_node", Risk.low, True, ResourceKind.node, True),
        ("uncordon_node", Risk.low, True, ResourceKind.node, False),
        ("drain_node", Risk.high, True, ResourceKind.node, True),
        ("reset_gpu", Risk.high, False, ResourceKind.gpu, True),
        ("rollback_model", Risk.medium, True, ResourceKind.model, False),
        ("retrain_model", Risk.high, True, ResourceKind.model, False),
        ("notify", Risk.low, True, ResourceKind.cluster, False),
        ("escalate", Risk.low, True, ResourceKind.cluster, False),
    ],
)
def test_tool_facts(name: str, risk: Risk, reversible: bool, target: ResourceKind, capacity: bool) -> None:
    spec = get_tool(name)
    assert (spec.risk, spec.reversible, spec.target_kind, spec.takes_capacity) == (
        risk,
        reversible,
        target,
        capacity,
    )


def test_only_the_reset_is_irreversible() -> None:
    assert [n for n, s in ACTION_TOOLS.items() if not s.reversible] == ["reset_gpu"]


@pytest.mark.parametrize(
    ("name", "params"),
    [
        ("cordon_node", {}),
        ("drain_node", {"grace_period_s": 0, "deadline_s": 60}),
        ("reschedule_pod", {"force": True}),
        ("scale_deployment", {"replicas": 0}),
        ("rollback_model", {"to_version": 3}),
        ("rollback_model", {}),
        ("promote_model", {"version": 4}),
        ("notify", {"message": "hello"}),
        ("escalate", {}),
    ],
)
def test_valid_parameters(name: str, params: dict[str, Any]) -> None:
    a = Action(name=name, target="x", params=params)  # type: ignore[arg-type]
    assert validate_action(a) is a


@pytest.mark.parametrize(
    ("name", "params"),
    [
        ("cordon_node", {"force": True}),  # no parameter a tool does not declare
        ("restart_pod", {"command": "rm -rf /"}),
        ("drain_node", {"grace_period_s": -1}),
        ("drain_node", {"deadline_s": 0}),
        ("reschedule_pod", {"force": "maybe"}),
        ("scale_deployment", {}),  # replicas is required
        ("scale_deployment", {"replicas": -1}),
        ("rollback_model", {"to_version": 0}),
        ("promote_model", {"min_margin": 2}),
        ("notify", {"message": "x" * 4001}),
    ],
)
def test_invalid_parameters_are_refused(name: str, params: dict[str, Any]) -> None:
    # at construction, with the error `validate_action` raised before parameters were typed
    with pytest.raises(PermanentToolError, match="invalid parameters") as info:
        Action(name=name, target="x", params=params)  # type: ignore[arg-type]
    assert isinstance(info.value, ToolError) and f"{name}@x" in str(info.value)
    # and an action built around the check is still refused by it
    rogue = Action.model_construct(name=name, target="x", params=params)  # type: ignore[arg-type]
    with pytest.raises(PermanentToolError, match="invalid parameters"):
        validate_action(rogue)


def test_the_digest_binds_name_target_and_parameters() -> None:
    a = Action(name="drain_node", target="node-1")
    assert a.digest() == Action(name="drain_node", target="node-1", params={}).digest()
    others = [
        Action(name="drain_node", target="node-2"),
        Action(name="cordon_node", target="node-1"),
        Action(name="drain_node", target="node-1", params={"grace_period_s": 0}),
    ]
    assert len({a.digest(), *(o.digest() for o in others)}) == 4
    assert (
        Action(name="escalate", target="x", params={"severity": "error", "message": "m"}).digest()
        == Action(name="escalate", target="x", params={"message": "m", "severity": "error"}).digest()
    )


def _old_digest(name: str, target: str, params: dict[str, Any]) -> str:
    """`Action.digest` as it was computed while `params` was the dict given (approvals are bound to it)."""
    return hashlib.sha256(canonical_json({"name": name, "target": target, "params": params}).encode()).hexdigest()


GIVEN: list[tuple[str, str, dict[str, Any]]] = [
    ("restart_pod", "fraud-model-0", {}),
    ("reschedule_pod", "trainer-1", {"force": True}),
    ("reschedule_pod", "trainer-1", {"force": False}),
    ("cordon_node", "node-1", {}),
    ("drain_node", "node-1", {}),
    ("drain_node", "node/x", {"grace_period_s": 10}),
    ("drain_node", "node-1", {"grace_period_s": 30, "deadline_s": 600}),  # the defaults, given: kept
    ("reset_gpu", "node-0/gpu-3", {}),
    ("scale_deployment", "fraud-model", {"replicas": 4}),
    ("pause_job", "trainer", {}),
    ("rollback_model", "fraud-model", {"to_version": 3}),
    ("rollback_model", "fraud-model", {"to_version": None}),
    ("promote_model", "fraud-model", {"version": 4, "min_margin": 0.02}),
    ("abort_rollout", "fraud-model", {}),
    ("notify", "cluster", {"message": "héllo"}),
    ("escalate", "node-1", {"message": "page", "severity": "critical", "evidence": ["xid 79", "ecc"]}),
]


@pytest.mark.parametrize(("name", "target", "params"), GIVEN)
def test_the_digest_and_stored_form_are_those_of_the_params_as_given(
        name: str, target: str, params: dict[str, Any]) -> None:
    a = Action(name=name, target=target, params=params)  # type: ignore[arg-type]
    assert a.digest() == _old_digest(name, target, params)
    assert a.model_dump() == {"name": name, "target": target, "params": params}
    assert json.loads(a.model_dump_json()) == {"name": name, "target": target, "params": params}
    for back in (Action.model_validate_json(a.model_dump_json()), Action.model_validate(a.model_dump()),
                 Action(name=a.name, target=a.target, params=a.params)):
        assert back == a and back.digest() == a.digest() and type(back.params) is type(a.params)


def test_the_params_are_the_catalogue_model_for_the_name() -> None:
    drain = Action(name="drain_node", target="node/x", params={"grace_period_s": 10})
    assert isinstance(drain.params, DrainParams)
    assert (drain.params.grace_period_s, drain.params.deadline_s) == (10, 600)
    assert drain.params_as(DrainParams).grace_period_s == 10
    assert drain.given_params() == {"grace_period_s": 10}
    for name, spec in ACTION_TOOLS.items():
        kwargs: dict[str, Any] = {"replicas": 1} if name == "scale_deployment" else {}
        assert type(Action(name=name, target="t", params=kwargs).params) is spec.params  # type: ignore[arg-type]
    # notify and escalate share a message: an escalation reads as one
    page = Action(name="escalate", target="c", params={"message": "m", "severity": "info"})
    assert page.params_as(MessageParams).message == "m" and isinstance(page.params, EscalateParams)
    with pytest.raises(PermanentToolError, match="takes NoParams, not ScaleParams"):
        Action(name="restart_pod", target="p").params_as(ScaleParams)
    with pytest.raises(PermanentToolError, match="DrainParams given, restart_pod takes NoParams"):
        Action(name="restart_pod", target="p", params=DrainParams())


def test_params_are_frozen_with_their_action() -> None:
    a = Action(name="scale_deployment", target="w", params={"replicas": 2})
    with pytest.raises(ValidationError):
        a.params.replicas = 200  # type: ignore[misc]
    assert a.given_params() == {"replicas": 2}


def test_the_catalogue_holds_the_settle_and_deadline_times() -> None:
    timed = {n: (s.settle_s, s.deadline_s) for n, s in ACTION_TOOLS.items() if s.settle_s}
    assert timed == {
        "restart_pod": (30.0, 300.0), "reschedule_pod": (30.0, 300.0), "drain_node": (70.0, 600.0),
        "reset_gpu": (30.0, 180.0), "rollback_model": (60.0, 600.0), "retrain_model": (300.0, 3600.0),
        "promote_model": (30.0, 300.0), "resume_job": (70.0, 600.0), "pause_job": (10.0, 120.0),
        "scale_deployment": (30.0, 300.0),
    }
    assert all(s.deadline_s == 0.0 for s in ACTION_TOOLS.values() if not s.settle_s)


def test_actions_are_equal_when_stored_and_digested_alike() -> None:
    bare = Action(name="drain_node", target="node-1")
    assert bare == Action(name="drain_node", target="node-1", params={})
    assert hash(bare) == hash(Action(name="drain_node", target="node-1", params=DrainParams()))
    # the same typed values, given differently, are two actions: an approval binds the one it saw
    spelled = Action(name="drain_node", target="node-1", params={"grace_period_s": 30})
    assert bare.params == spelled.params and bare != spelled and bare.digest() != spelled.digest()
