"""opsmedic's governor: the policy engine, approval requests and the hash-chained audit log.

Where this sits: the engines layer. `agents` (the governor and remediator nodes) and the interfaces
(`opsmedic.cli`, the daemon, chat) import it; it imports only `core` and `infra.db` (plus pydantic, PyYAML
and the standard library), never agents, tools, knowledge or sandbox. Nothing in here calls an LLM: every
decision is deterministic code.

- `policies.model`     policy YAML schema, `load_policy` (the bundled `default.yaml` when no path is given)
- `policies.engine`    `PolicyEngine.decide(action, ctx) -> PolicyDecision`, `explain`, approval requests
- `policies.approvals` `ApprovalStore`: SQLite-backed, bound to action digests, expiring, used once
- `policies.audit`     `AuditLog`: SQLite-backed, append-only, hash-chained, `verify()` and `story()`
"""

from policies.approvals import ApprovalStore
from policies.audit import GENESIS_HASH, AuditLog, AuditVerification, entry_hash, format_entry
from policies.engine import DecisionContext, HistoryEntry, PolicyEngine, RuleCheck
from policies.model import (
    ActionPolicy,
    CircuitBreaker,
    Condition,
    Defaults,
    EmergencyOverride,
    FreezeWindow,
    Limits,
    Policy,
    RateLimit,
    load_policy,
    parse_duration,
    parse_policy,
    parse_policy_text,
)

__all__ = [
    "GENESIS_HASH",
    "ActionPolicy",
    "ApprovalStore",
    "AuditLog",
    "AuditVerification",
    "CircuitBreaker",
    "Condition",
    "DecisionContext",
    "Defaults",
    "EmergencyOverride",
    "FreezeWindow",
    "HistoryEntry",
    "Limits",
    "Policy",
    "PolicyEngine",
    "RateLimit",
    "RuleCheck",
    "entry_hash",
    "format_entry",
    "load_policy",
    "parse_duration",
    "parse_policy",
    "parse_policy_text",
]
