"""The conversation store: every chat turn, from the terminal, HTTP and Slack, in one SQLite table.

Layer: interfaces. Table `opsmedic_chat`, in the same database file as the audit log, approvals and
checkpoints (WAL mode, busy timeout: the daemon and a terminal chat may write at once). A conversation id
names where a conversation happens — `cli:alice`, `http:alice`, `slack:C0123:1712345678.000100` — so that
the LLM sees the previous turns of *that* conversation only.

The store is a convenience for context and for reading a conversation back; the audit log, not this
table, is the record of what was asked and done (`chat_question`, `chat_action_request`).
"""

from __future__ import annotations

import json
import sqlite3
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

_SCHEMA = """
CREATE TABLE IF NOT EXISTS opsmedic_chat (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    conversation TEXT NOT NULL,
    at           TEXT NOT NULL,
    user         TEXT NOT NULL,
    role         TEXT NOT NULL,
    text         TEXT NOT NULL,
    intent       TEXT,
    meta         TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS opsmedic_chat_conversation ON opsmedic_chat (conversation, id);
"""

Speaker = Literal["user", "assistant"]


@dataclass(frozen=True)
class Turn:
    id: int
    conversation: str
    at: str
    user: str
    role: Speaker
    text: str
    intent: str | None
    meta: dict[str, Any]


class ConversationStore:
    def __init__(self, db: str | Path) -> None:
        path = str(db).removeprefix("sqlite:///")
        if path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(path, timeout=30.0, isolation_level=None, check_same_thread=False)
        self._conn.execute("PRAGMA busy_timeout = 30000")
        self._conn.execute("PRAGMA journal_mode = WAL")
        for stmt in _SCHEMA.split(";"):
            if stmt.strip():
                self._conn.execute(stmt)

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def add(self, conversation: str, user: str, role: Speaker, text: str, *, intent: str | None = None,
            meta: dict[str, Any] | None = None) -> int:
        at = datetime.now(UTC).isoformat(timespec="milliseconds")
        with self._lock:
            cur = self._conn.execute(
                "INSERT INTO opsmedic_chat (conversation, at, user, role, text, intent, meta) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (conversation, at, user, role, text, intent, json.dumps(meta or {}, default=str)))
            return int(cur.lastrowid or 0)

    def history(self, conversation: str, limit: int = 20) -> list[Turn]:
        """The last `limit` turns of one conversation, oldest first."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT id, conversation, at, user, role, text, intent, meta FROM opsmedic_chat WHERE conversation = ? "
                "ORDER BY id DESC LIMIT ?", (conversation, limit)).fetchall()
        return [Turn(r[0], r[1], r[2], r[3], r[4], r[5], r[6], json.loads(r[7] or "{}")) for r in reversed(rows)]

    def conversations(self) -> list[str]:
        with self._lock:
            return [r[0] for r in self._conn.execute(
                "SELECT conversation FROM opsmedic_chat GROUP BY conversation ORDER BY MAX(id) DESC").fetchall()]
