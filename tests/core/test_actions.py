"""The tool registry: exactly the whitelisted actions, their facts (risk, reversibility, target, capacity),
and parameter validation that refuses anything else."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from core.actions import ACTION_TOOLS, get_tool, validate_action
from core.domain import ACTION_NAMES, Action, ResourceKind, Risk
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
    a = Action(name=name, target="x", params=params)  # type: ignore[arg-type]
    with pytest.raises(PermanentToolError, match="invalid parameters") as info:
        validate_action(a)
    assert isinstance(info.value, ToolError) and a.key in str(info.value)


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
        Action(name="notify", target="x", params={"b": 1, "a": 2}).digest()
        == Action(name="notify", target="x", params={"a": 2, "b": 1}).digest()
    )
