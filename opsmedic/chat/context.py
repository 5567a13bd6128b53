"""`ChatContext`: what one chat turn may read and use (database, policy engine, telemetry, clock, backend).

Layer: interfaces (`opsmedic.chat`). Its own module because every part of a turn takes it — the entry point
(`opsmedic.chat.service`), requests to act (`opsmedic.chat.actions`) and the on-call answers
(`opsmedic.chat.oncall`) — and none of them may import another only to name it.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core.domain import ClusterSnapshot
from opsmedic.chat.roles import Roles

if TYPE_CHECKING:
    from core.settings import Settings
    from knowledge.runbooks import Runbook
    from policies.engine import PolicyEngine


@dataclass
class ChatContext:
    """What the chat may read and use. The daemon passes its live telemetry, clock, backend and ledger;
    the terminal chat has only the database (and then never executes: allowed actions are queued).

    `db_path` is opsmedic's database as the stores take it: a SQLite file's path (or `sqlite:///` URL), or
    a `postgresql://` URL (the name is kept for the callers that pass it)."""

    db_path: str | Path
    channel: str = "cli"  # cli | http | slack
    conversation: str | None = None  # default: "<channel>:<user>"
    llm: Any | None = None  # agents.llm.Llm
    telemetry: Any | None = None  # tools.backend.TelemetrySource
    clock: Any | None = None  # agents.state.Clock
    backend: Any | None = None  # tools.backend.ActionBackend
    ledger: Any | None = None  # tools.ledger.ExecutionLedger
    engine: PolicyEngine | None = None
    roles: Roles = field(default_factory=Roles.from_env)
    runbooks: Sequence[Runbook] | None = None
    index: Any | None = None  # knowledge.index.RunbookIndex, for hybrid runbook search
    history_turns: int = 6

    @classmethod
    def from_settings(cls, settings: Settings | None = None, *, with_llm: bool = True, **kw: Any) -> ChatContext:
        """The database, policy, runbooks and LLM that the daemon would use, from settings and the
        environment: the database is the configured one (`settings.database()`: Postgres for a
        `postgresql://` database_url, else the SQLite file) unless `db_path` is given."""
        from core.settings import load_settings
        from policies.engine import PolicyEngine
        from policies.model import load_policy

        settings = settings or load_settings()
        llm = None
        if with_llm and settings.llm_base_url and settings.llm_model:
            from agents.llm import build_llm

            llm = build_llm(settings)
        if "db_path" not in kw:
            kw["db_path"] = settings.database().location
        kw.setdefault("engine", PolicyEngine(load_policy(settings.policy_file)))
        if settings.runbooks_dir is not None:
            from knowledge.runbooks import load_runbooks

            kw.setdefault("runbooks", load_runbooks(settings.runbooks_dir).runbooks)
        return cls(llm=llm, **kw)

    def snapshot(self) -> ClusterSnapshot | None:
        if self.telemetry is None:
            return None
        try:
            snap: ClusterSnapshot = self.telemetry.snapshot()
            return snap
        except Exception:  # live telemetry is a bonus: the records still answer without it
            return None

    def runbook_list(self) -> Sequence[Runbook]:
        return self.runbooks if self.runbooks is not None else _bundled_runbooks()


@functools.lru_cache(maxsize=1)
def _bundled_runbooks() -> tuple[Runbook, ...]:
    from knowledge.runbooks import load_runbooks

    return tuple(load_runbooks().runbooks)
