"""Builders shared by the policy tests (a module with a unique name: `conftest` is ambiguous across folders)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from core.domain import Action
from policies import DecisionContext, Policy, parse_policy

# Wednesday 2025-01-01 12:00 UTC: a fixed wall clock so freeze-window tests never depend on today
WALL = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)


def make_ctx(**overrides: Any) -> DecisionContext:
    base: dict[str, Any] = {
        "incident_id": "inc-1",
        "now_s": 10_000.0,
        "requested_by": "opsmedic",
        "total_nodes": 4,
        "total_gpus": 32,
        "now_wall": WALL,
    }
    base.update(overrides)
    return DecisionContext(**base)


def act(name: str, target: str = "x", **params: Any) -> Action:
    return Action(name=name, target=target, params=params)  # type: ignore[arg-type]


def policy_from(data: dict[str, Any]) -> Policy:
    return parse_policy(data, "test.yaml")
