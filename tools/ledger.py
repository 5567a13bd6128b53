"""The execution ledger: idempotency keys recorded before an action is called, checked after a restart.

Layer: tools. LangGraph re-runs a node from its top after a crash or a resume, so the `act` node asks the
ledger first: a key already `done` returns the recorded result without touching the world; a key left
`started` (the process died during the call) is settled by a verification read — the effect is there, or
the action is called again (every backend action is idempotent). Either way an approved action takes
effect once. Lives in the same SQLite file as the checkpoints, approvals and audit log.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path
from typing import Literal

from pydantic import BaseModel

from opsmedic.domain import Action, ActionResult, canonical_json
from opsmedic.errors import ToolError

Status = Literal["started", "done"]


class LedgerRecord(BaseModel):
    key: str
    incident_id: str
    action: Action
    status: Status
    result: ActionResult | None = None
    started_wall: float
    attempts: int = 1


class ExecutionLedger:
    def __init__(self, db: str | Path) -> None:
        path = str(db).removeprefix("sqlite:///")
        if path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        try:
            self._conn = sqlite3.connect(path, timeout=30.0, isolation_level=None, check_same_thread=False)
            self._conn.execute("PRAGMA journal_mode = WAL")
            self._conn.execute("PRAGMA synchronous = FULL")  # a recorded intent survives a power cut
            self._conn.execute(
                "CREATE TABLE IF NOT EXISTS opsmedic_executions (key TEXT PRIMARY KEY, incident_id TEXT NOT NULL,"
                " action TEXT NOT NULL, status TEXT NOT NULL, result TEXT, started_wall REAL NOT NULL,"
                " attempts INTEGER NOT NULL DEFAULT 1)")
        except sqlite3.Error as exc:
            raise ToolError(f"cannot open the execution ledger {path}: {exc}") from exc

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def get(self, key: str) -> LedgerRecord | None:
        with self._lock:
            row = self._conn.execute(
                "SELECT key, incident_id, action, status, result, started_wall, attempts FROM opsmedic_executions"
                " WHERE key = ?", (key,)).fetchone()
        if row is None:
            return None
        return LedgerRecord(key=row[0], incident_id=row[1], action=Action.model_validate_json(row[2]),
                            status=row[3], result=ActionResult.model_validate_json(row[4]) if row[4] else None,
                            started_wall=row[5], attempts=row[6])

    def begin(self, key: str, incident_id: str, action: Action) -> LedgerRecord | None:
        """Record the intent before calling the backend. Returns the earlier record when the key is known
        (the caller then settles it instead of calling blindly), else None."""
        with self._lock:
            # one transaction: two resumers racing on the same key must not both believe they are first
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                earlier = self.get(key)
                if earlier is not None:
                    if earlier.status == "started":
                        self._conn.execute(
                            "UPDATE opsmedic_executions SET attempts = attempts + 1 WHERE key = ?", (key,))
                else:
                    self._conn.execute(
                        "INSERT INTO opsmedic_executions (key, incident_id, action, status, started_wall)"
                        " VALUES (?, ?, ?, 'started', ?)",
                        (key, incident_id, canonical_json(action.model_dump(mode="json")), time.time()))
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            return earlier

    def finish(self, key: str, result: ActionResult) -> None:
        with self._lock:
            self._conn.execute("UPDATE opsmedic_executions SET status = 'done', result = ? WHERE key = ?",
                               (result.model_dump_json(), key))

    def records(self, incident_id: str | None = None) -> list[LedgerRecord]:
        with self._lock:
            keys = [r[0] for r in self._conn.execute(
                "SELECT key FROM opsmedic_executions" + (" WHERE incident_id = ?" if incident_id else "")
                + " ORDER BY rowid", (incident_id,) if incident_id else ()).fetchall()]
        return [rec for k in keys if (rec := self.get(k)) is not None]
