"""The alert intake table: an alert answered 202 is in the database first.

Layer: interfaces (`opsmedic.daemon`); the database seam of `infra.db` (SQLite file or Postgres, the
daemon's own database). `POST /alerts/alertmanager` validates a body, stores it here (committed, durable:
SQLite's `synchronous=FULL`, Postgres's commit) and only then answers 202 and queues it. The service marks
a row processed once a tick has acted on what it brought (opened an incident, or found one already
covering the resource); a daemon killed before that finds the row unprocessed at start and ingests it
again, in arrival order. Marked rows are never handed out again; they are pruned after `KEEP_S`.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from core.errors import ToolError
from infra.db import Db, Store

KEEP_S = 7 * 24 * 3600.0

_SQLITE = """
CREATE TABLE IF NOT EXISTS opsmedic_alert_intake (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    received_at  REAL NOT NULL,
    body         TEXT NOT NULL,
    processed_at REAL
);
CREATE INDEX IF NOT EXISTS opsmedic_alert_intake_open ON opsmedic_alert_intake (processed_at, id)
"""
_POSTGRES = """
CREATE TABLE IF NOT EXISTS opsmedic_alert_intake (
    id           BIGSERIAL PRIMARY KEY,
    received_at  DOUBLE PRECISION NOT NULL,
    body         TEXT NOT NULL,
    processed_at DOUBLE PRECISION
);
CREATE INDEX IF NOT EXISTS opsmedic_alert_intake_open ON opsmedic_alert_intake (processed_at, id)
"""


@dataclass(frozen=True)
class IntakeRow:
    id: int
    received_at: float
    body: str


class AlertIntake(Store):
    """Accepted webhook bodies (canonical JSON of the validated payload), oldest first."""

    def __init__(self, db: str | Path) -> None:
        self._db = Db(db, ToolError)
        self._db.create_schema(_SQLITE, _POSTGRES, what="alert intake table")
        self._last_prune = 0.0

    def add(self, body: str, now: float | None = None) -> int:
        """Store one accepted body; returns its id once committed."""
        now = time.time() if now is None else now
        with self._db.transaction(lock="opsmedic_alert_intake") as conn:
            row = conn.execute("INSERT INTO opsmedic_alert_intake (received_at, body) VALUES (?, ?) RETURNING id",
                               (now, body)).fetchone()
        return int(row[0])

    def pending(self, after_id: int = 0, limit: int = 10_000) -> list[IntakeRow]:
        """Unprocessed rows with id > `after_id`, in arrival order."""
        with self._db.reading() as conn:
            rows = conn.execute("SELECT id, received_at, body FROM opsmedic_alert_intake "
                                "WHERE processed_at IS NULL AND id > ? ORDER BY id LIMIT ?",
                                (after_id, limit)).fetchall()
        return [IntakeRow(int(r[0]), float(r[1]), str(r[2])) for r in rows]

    def mark(self, ids: Iterable[int], now: float | None = None) -> int:
        """Mark rows processed (idempotent); prunes old processed rows now and then. Returns rows marked."""
        todo = sorted(set(ids))
        if not todo:
            return 0
        now = time.time() if now is None else now
        marked = 0
        with self._db.transaction(lock="opsmedic_alert_intake") as conn:
            for i in range(0, len(todo), 500):
                chunk = todo[i:i + 500]
                marks = ",".join("?" * len(chunk))
                conn.execute(f"UPDATE opsmedic_alert_intake SET processed_at = ? WHERE processed_at IS NULL "
                             f"AND id IN ({marks})", (now, *chunk))
                marked += len(chunk)
            if now - self._last_prune > 3600.0:
                conn.execute("DELETE FROM opsmedic_alert_intake WHERE processed_at IS NOT NULL AND processed_at < ?",
                             (now - KEEP_S,))
                self._last_prune = now
        return marked

    def counts(self) -> dict[str, int]:
        with self._db.reading() as conn:
            row = conn.execute("SELECT COUNT(*), COUNT(processed_at) FROM opsmedic_alert_intake").fetchone()
        total, done = int(row[0]), int(row[1])
        return {"stored": total, "processed": done, "unprocessed": total - done}
