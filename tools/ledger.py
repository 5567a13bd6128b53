"""The execution ledger: idempotency keys recorded before an action is called, checked after a restart.

Layer: tools. LangGraph re-runs a node from its top after a crash or a resume, so the `act` node asks the
ledger first: a key already `done` returns the recorded result without touching the world; a key left
`started` (the process died during the call) is settled by a verification read — the effect is there, or
the action is called again (every backend action is idempotent). Either way an approved action takes
effect once. Lives in the same database as the checkpoints, approvals and audit log: a SQLite file by
default, or Postgres for a `postgresql://` URL (through `infra.db`, which both stores share).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel

from core.domain import Action, ActionResult, canonical_json
from core.errors import ToolError
from infra.db import Conn, Db

Status = Literal["started", "done"]


class LedgerRecord(BaseModel):
    key: str
    incident_id: str
    action: Action
    status: Status
    result: ActionResult | None = None
    started_wall: float
    attempts: int = 1


_SCHEMA = """
CREATE TABLE IF NOT EXISTS opsmedic_executions (key TEXT PRIMARY KEY, incident_id TEXT NOT NULL,
 action TEXT NOT NULL, status TEXT NOT NULL, result TEXT, started_wall REAL NOT NULL,
 attempts INTEGER NOT NULL DEFAULT 1)
"""
# Postgres has no rowid: `ord` keeps the insertion order that `records()` lists in
_SCHEMA_POSTGRES = """
CREATE TABLE IF NOT EXISTS opsmedic_executions (key TEXT PRIMARY KEY, incident_id TEXT NOT NULL,
 action TEXT NOT NULL, status TEXT NOT NULL, result TEXT, started_wall DOUBLE PRECISION NOT NULL,
 attempts BIGINT NOT NULL DEFAULT 1, ord BIGSERIAL NOT NULL)
"""
_TABLE = "opsmedic_executions"  # the advisory lock that serialises writers on Postgres
_COLUMNS = "key, incident_id, action, status, result, started_wall, attempts"


def _from_row(row: tuple[Any, ...]) -> LedgerRecord:
    return LedgerRecord(key=row[0], incident_id=row[1], action=Action.model_validate_json(row[2]),
                        status=row[3], result=ActionResult.model_validate_json(row[4]) if row[4] else None,
                        started_wall=row[5], attempts=row[6])


class ExecutionLedger:
    """Idempotency keys on one SQLite file or Postgres database (a `postgresql://` URL)."""

    def __init__(self, db: str | Path) -> None:
        try:
            self._db = Db(db, ToolError)
            self._db.create_schema(_SCHEMA, _SCHEMA_POSTGRES, what="execution ledger")
        except ToolError as exc:
            raise ToolError(f"cannot open the execution ledger: {exc}") from exc
        self._order = "rowid" if self._db.kind == "sqlite" else "ord"

    def close(self) -> None:
        self._db.close()

    @staticmethod
    def _get(conn: Conn, key: str) -> LedgerRecord | None:
        row = conn.execute(f"SELECT {_COLUMNS} FROM opsmedic_executions WHERE key = ?", (key,)).fetchone()
        return _from_row(row) if row is not None else None

    def get(self, key: str) -> LedgerRecord | None:
        with self._db.reading() as conn:
            return self._get(conn, key)

    def begin(self, key: str, incident_id: str, action: Action) -> LedgerRecord | None:
        """Record the intent before calling the backend. Returns the earlier record when the key is known
        (the caller then settles it instead of calling blindly), else None."""
        # one serialised transaction: two resumers racing on the same key must not both believe they are first
        with self._db.transaction(lock=_TABLE) as conn:
            earlier = self._get(conn, key)
            if earlier is not None:
                if earlier.status == "started":
                    conn.execute("UPDATE opsmedic_executions SET attempts = attempts + 1 WHERE key = ?", (key,))
            else:
                conn.execute(
                    "INSERT INTO opsmedic_executions (key, incident_id, action, status, started_wall)"
                    " VALUES (?, ?, ?, 'started', ?)",
                    (key, incident_id, canonical_json(action.model_dump(mode="json")), time.time()))
        return earlier

    def finish(self, key: str, result: ActionResult) -> None:
        with self._db.transaction(lock=_TABLE) as conn:
            conn.execute("UPDATE opsmedic_executions SET status = 'done', result = ? WHERE key = ?",
                         (result.model_dump_json(), key))

    def records(self, incident_id: str | None = None) -> list[LedgerRecord]:
        sql = f"SELECT {_COLUMNS} FROM opsmedic_executions"
        args: tuple[str, ...] = ()
        if incident_id:
            sql += " WHERE incident_id = ?"
            args = (incident_id,)
        with self._db.reading() as conn:
            rows = conn.execute(sql + f" ORDER BY {self._order}", args).fetchall()
        return [_from_row(r) for r in rows]
