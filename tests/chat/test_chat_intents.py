"""The deterministic intent parser: the questions and requests of the issue, in plain words."""

from __future__ import annotations

import pytest

from opsmedic.chat.intents import parse
from opsmedic.chat.roles import Roles


@pytest.mark.parametrize(("text", "kind", "subject", "action"), [
    ("why is node-2 cordoned?", "why", "node-2", "cordon_node"),
    ("Why was node-1 drained", "why", "node-1", "drain_node"),
    ("why wasn't node-1/gpu-3 reset?", "why", "node-1/gpu-3", "reset_gpu"),
    ("why was gpu 3 on node-1 not reset", "why", "node-1/gpu-3", "reset_gpu"),
    ("status of fraud-model", "status", "fraud-model", None),
    ("how is node-1/gpu-3 doing?", "status", "node-1/gpu-3", None),
    ("fraud-model?", "status", "fraud-model", None),
    ("pending approvals", "approvals", None, None),
    ("anything waiting for approval?", "approvals", None, None),
    ("what happened to inc-1a2b3c-1?", "incident", "inc-1a2b3c-1", None),
    ("open incidents", "incidents", None, None),
    ("what does the runbook for XID 79 say", "runbook", "XID 79", None),
    ("runbook for thermal throttling", "runbook", "thermal throttling", None),
    ("roll back fraud-model", "act", "fraud-model", "rollback_model"),
    ("please drain node-3", "act", "node-3", "drain_node"),
    ("can you uncordon node-1", "act", "node-1", "uncordon_node"),
    ("cordon node-0", "act", "node-0", "cordon_node"),
    ("reset node-1/gpu-3", "act", "node-1/gpu-3", "reset_gpu"),
    ("restart llama-ft-0", "act", "llama-ft-0", "restart_pod"),
    ("approve apr-85b02135def5981c0485", "approve", "apr-85b02135def5981c0485", "approve"),
    ("help", "help", None, None),
    ("tell me a joke", "unknown", None, None),
])
def test_parse(text: str, kind: str, subject: str | None, action: str | None) -> None:
    intent = parse(text)
    assert (intent.kind, intent.subject, intent.action) == (kind, subject, action)


def test_parameters_and_negation() -> None:
    assert parse("roll back fraud-model to v2").params == {"to_version": 2}
    assert parse("scale fraud-model to 4").params == {"replicas": 4}
    assert parse("why was node-1 not drained?").negated
    assert not parse("why was node-1 drained?").negated
    assert parse("open incidents").open_only and not parse("incidents").open_only


def test_known_names_win_over_guesses() -> None:
    assert parse("how is llama-ft doing", known=["llama-ft", "llama-ft-1"]).subject == "llama-ft"
    assert parse("how is llama-ft-1 doing", known=["llama-ft", "llama-ft-1"]).subject == "llama-ft-1"


def test_roles_from_env() -> None:
    open_roles = Roles.from_env({"OPSMEDIC_CHAT_OPERATORS": "alice, U123"})
    assert open_roles.role_of("alice") == "operator" and open_roles.role_of("U123") == "operator"
    assert open_roles.role_of("bob") == "viewer"  # no viewer list: anyone identified may ask
    assert open_roles.role_of("") == "none"
    closed = Roles.from_env({"OPSMEDIC_CHAT_OPERATORS": "alice", "OPSMEDIC_CHAT_VIEWERS": "bob"})
    assert closed.role_of("bob") == "viewer" and closed.role_of("carol") == "none"
    assert Roles.from_env({"OPSMEDIC_CHAT_OPERATORS": "*"}).can_act("anyone")
