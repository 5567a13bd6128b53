"""opsmedic's exception hierarchy, in one place.

Every layer raises these; third-party errors (kubernetes, MLflow, sqlite, yaml, pydantic) are translated
into them at the boundary where they occur, so callers catch one family::

    OpsmedicError
    ├── InputError                 bad input from a user or a file: names what is wrong and where (exit 2)
    │   ├── ScenarioError          a scenario file breaks the contract in SCENARIOS.md
    │   ├── PolicyError            a policy file is invalid
    │   ├── RunbookError           a runbook is invalid
    │   ├── ConfigError            settings / opsmedic.toml / environment
    │   └── PayloadError           an alert payload, Slack request or API body is malformed
    ├── ToolError                  an action or read tool failed
    │   ├── TransientToolError     worth retrying (timeouts, 5xx, 429, connection refused)
    │   └── PermanentToolError     retrying will not help (404, 403, invalid request)
    ├── ApprovalError              an approval was refused (unknown, expired, used, wrong digest or approver)
    ├── PolicyViolation            an action reached execution without an allow (a bug; always fatal)
    └── AuditError                 the audit log could not be written or is corrupt
"""

from __future__ import annotations


class OpsmedicError(Exception):
    """Base of every error opsmedic raises on purpose."""


class InputError(OpsmedicError):
    """Bad input. `where` names the file (and key or line) and `what` the problem."""

    def __init__(self, what: str, where: str | None = None) -> None:
        self.what = what
        self.where = where
        super().__init__(f"{where}: {what}" if where else what)


class ScenarioError(InputError):
    pass


class PolicyError(InputError):
    pass


class RunbookError(InputError):
    pass


class ConfigError(InputError):
    pass


class PayloadError(InputError):
    pass


class ToolError(OpsmedicError):
    pass


class TransientToolError(ToolError):
    pass


class PermanentToolError(ToolError):
    pass


class ApprovalError(OpsmedicError):
    pass


class PolicyViolation(OpsmedicError):
    pass


class AuditError(OpsmedicError):
    pass
